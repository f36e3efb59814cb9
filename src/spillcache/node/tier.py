"""The node RAM tier: encoded samples shared by every process on a node under one byte budget.

One tier per store per node, on a memory file system (``/dev/shm``), shared by the main
process, DataLoader workers (fork, spawn, forkserver) and DDP ranks that open the same store.
It stores and returns bytes (the codec's encoded values); it knows nothing of samples.
Admission and eviction follow the process-local RAM tier's TinyLFU policy, with the frequency
sketch shared by every process (sketch.py) and victims drawn uniformly from a slot table kept
in the same LMDB transaction as the entries (ledger.py).
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import lmdb

from .admission import Admission, Terms
from .attach import Attached, attach
from .degrade import too_small, untaint, warn_sizes
from .ledger import pack_key
from .place import locate, memory_root
from .reclaim import reclaim
from .stamps import NO_STAMP
from .warn import warn_once

__all__ = ["NO_STAMP", "NodeStats", "NodeTier"]

T = TypeVar("T")


@dataclass(frozen=True)
class NodeStats:
    """What a node tier holds, as seen by every process using it.

    Attributes
    ----------
    items : int
        Resident entries.
    nbytes : int
        Their accounted bytes (LMDB pages they occupy).
    budget : int
        Most accounted bytes (may be below what was asked: see :meth:`NodeTier.open`).
    directory : str
        The tier's directory on the memory file system.
    """

    items: int
    nbytes: int
    budget: int
    directory: str


class NodeTier:
    """A store's node RAM tier, as used by this process; create with :meth:`open`.

    Values are bytes-like (encoded samples) and keys non-negative ints below ``2**64``.
    Thread-safe. LMDB forbids using an environment across ``fork``: the tier closes its
    environment before every fork (waiting for the transactions of other threads) and reopens
    it after; a forked child's first call attaches anew. A spawned process opens the tier itself.
    """

    def __init__(self, store_path: str, asked: int, attached: Attached) -> None:
        self._store_path = store_path
        self._asked = asked
        self._attached: Attached | None = attached
        self._lock = threading.Lock()
        self._random = random.Random(os.getpid() ^ id(self))
        self._admission = Admission(store_path, self._random)

    @classmethod
    def open(
        cls,
        store_path: str | os.PathLike[str],
        budget: int,
        *,
        where: str | os.PathLike[str] | None = None,
    ) -> NodeTier | None:
        """Open (or create) the node tier of the store at ``store_path``.

        Parameters
        ----------
        store_path : path-like
            The store's directory; processes opening the same real path share one tier.
        budget : int
            Bytes the tier may occupy on the node, if this process creates it. A later opener
            adopts the first one's budget (one warning if it asked for another).
        where : path-like or None
            A directory on a tmpfs to hold the tier; None means ``/dev/shm``.

        Returns
        -------
        NodeTier or None
            None, after one :class:`~spillcache.node.NodeTierWarning`, when no memory file
            system is usable or it cannot hold 1 MiB (the tier is off; nothing fails). A budget
            larger than half of the free space there is shrunk to fit, with one warning.
        """
        store = os.path.realpath(store_path)
        root, why = memory_root(where)
        if root is None:
            warn_once(store, "none", f"no node RAM tier for the store at {store!r}: {why}")
            return None
        reclaim(root)  # before sizing: leftovers hold free space
        place = locate(store, root, budget)
        if place is None:
            warn_once(store, "small", too_small(store, root, budget))
            return None
        try:
            attached = attach(place, budget)
        except (OSError, lmdb.Error) as exc:
            warn_once(store, "failed", f"no node RAM tier for the store at {store!r}: {exc}")
            return None
        warn_sizes(store, budget, attached)
        return cls(store, budget, attached)

    # -- reading ---------------------------------------------------------------------------------

    def get(self, key: int, *, record: bool = True) -> bytes | None:
        """A copy of the value of ``key`` (valid after its eviction), or None.

        Parameters
        ----------
        key : int
            Sample index.
        record : bool
            Count an access of ``key`` (hit or miss) in the shared frequency sketch.
        """
        attached = self._enter()
        try:
            if record:
                attached.sketch.frequency(key, True)
            ledger = attached.ledger
            if attached.stamps.taints:  # a stale entry may be there (stamps.py)
                return None
            with ledger.env.begin(buffers=True) as txn:
                value = ledger.value(txn, pack_key(key))
                return None if value is None else bytes(value)
        finally:
            attached.gate.leave()

    @contextlib.contextmanager
    def view(self, key: int, *, record: bool = True) -> Iterator[memoryview | None]:
        """The value of ``key`` in place (no copy), valid only inside the ``with`` block.

        For a decoder that copies what it reads anyway: one copy of the value fewer than
        :meth:`get`. Keep the block short: pages it holds cannot be reused meanwhile.
        """
        attached = self._enter()
        try:
            if record:
                attached.sketch.frequency(key, True)
            ledger = attached.ledger
            if attached.stamps.taints:
                yield None
                return
            with ledger.env.begin(buffers=True) as txn:
                yield ledger.value(txn, pack_key(key))
        finally:
            attached.gate.leave()

    def record(self, key: int) -> None:
        """Count an access of ``key`` without reading it (e.g. a hit in a faster tier)."""
        attached = self._enter()
        try:
            attached.sketch.frequency(key, True)
        finally:
            attached.gate.leave()

    def fetch(
        self,
        key: int,
        reader: Callable[[memoryview], T],
        *,
        generation: bytes | None = None,
        record: bool = True,
    ) -> tuple[T | None, int]:
        """``reader`` of the value of ``key`` in place, and the stamp of ``key`` before it.

        Parameters
        ----------
        key : int
            Sample index.
        reader : callable
            Called with the value in place (valid during the call only), e.g. a decoder.
        generation : bytes or None
            The store generation of the caller: the tier serves nothing if it holds
            another's. None: no check.
        record : bool
            Count an access of ``key`` in the shared frequency sketch.

        Returns
        -------
        tuple
            ``(reader(value) or None, stamp)``: pass ``stamp`` to :meth:`admit` a value read
            elsewhere after this miss (see stamps.py); :data:`NO_STAMP` if the tier holds
            another generation's values.
        """
        attached = self._enter()
        try:
            stamp = attached.stamps.read(key)
            if record:
                attached.sketch.frequency(key, True)
            ledger = attached.ledger
            if attached.stamps.taints:  # admitting after this miss empties the tier
                return None, stamp
            with ledger.env.begin(buffers=True) as txn:
                if generation is not None and ledger.generation(txn) != generation:
                    return None, NO_STAMP
                value = ledger.value(txn, pack_key(key))
                return (None if value is None else reader(value)), stamp
        finally:
            attached.gate.leave()

    def contains(self, key: int, *, generation: bytes | None = None) -> bool:
        """Whether ``key`` is resident (for ``generation``, if given); records no access."""
        attached = self._enter()
        try:
            ledger = attached.ledger
            if attached.stamps.taints:
                return False
            with ledger.env.begin() as txn:
                if generation is not None and ledger.generation(txn) != generation:
                    return False
                return ledger.size_of(txn, pack_key(key)) is not None
        finally:
            attached.gate.leave()

    def joins(self) -> int:
        """How many times a process attached to this tier (it grows when another one joins)."""
        attached = self._enter()
        try:
            return attached.stamps.joins
        finally:
            attached.gate.leave()

    def stats(self) -> NodeStats:
        """Items, bytes and budget of the tier, shared by every process."""
        attached = self._enter()
        try:
            with attached.ledger.env.begin() as txn:
                account = attached.ledger.account(txn)
        finally:
            attached.gate.leave()
        return NodeStats(account.items, account.nbytes, account.budget, str(attached.directory))

    def problems(self) -> list[str]:
        """Inconsistencies in the tier's bookkeeping (empty when consistent)."""
        attached = self._enter()
        try:
            return attached.ledger.problems()
        finally:
            attached.gate.leave()

    # -- writing ---------------------------------------------------------------------------------

    def admit(
        self,
        key: int,
        value: bytes | memoryview,
        *,
        stamp: int | None = None,
        generation: bytes | None = None,
        evict: bool = True,
    ) -> bool:
        """Offer ``value`` for ``key``; other processes hit it as soon as this returns True.

        It replaces any value stored for ``key``. Free space is always taken; a full tier
        admits it only if its shared frequency beats each victim's by the margin.

        Parameters
        ----------
        key : int
            Sample index.
        value : bytes-like
            The encoded value.
        stamp : int or None
            The stamp :meth:`fetch` gave before ``value`` was read elsewhere: declined if
            ``key`` was put (or the tier cleared) since. None: admit unconditionally.
        generation : bytes or None
            Declined unless the tier holds this store generation's values. None: no check.
        evict : bool
            False: only into free space (a background fill).

        Returns
        -------
        bool
            Whether ``key`` is resident afterwards. False means any older value for ``key``
            is gone too (unless the tier ran out of room, see :meth:`open`, or the admission
            was declined for its stamp or generation, which leaves the tier as it is).
        """
        attached = self._enter()
        try:
            terms = Terms(stamp, generation, evict, False)
            return self._admission.run(attached, key, value, terms)[0]
        finally:
            attached.gate.leave()

    def put(
        self,
        key: int,
        value: bytes | memoryview | None,
        *,
        generation: bytes | None = None,
        evict: bool = True,
    ) -> bool:
        """A put of ``key``: offer its new value (or only drop the old one, for None).

        Bumps the stamp of ``key`` in the transaction, so that an admission of an older value
        read elsewhere before this put is declined (see stamps.py). Call it after the new
        value is committed where other processes read it (the disk tier).

        Returns
        -------
        bool
            Whether the new value is resident afterwards (never an older one).
        """
        return self.put_stamped(key, value, generation=generation, evict=evict) != NO_STAMP

    def put_stamped(
        self,
        key: int,
        value: bytes | memoryview | None,
        *,
        generation: bytes | None = None,
        evict: bool = True,
    ) -> int:
        """:meth:`put`, returning the stamp this put gave ``key`` if the new value is resident.

        While :meth:`fetch` gives that stamp and finds ``key``, the entry is this put's value
        (a later put of ``key`` or a clear changes the stamp). :data:`NO_STAMP` if not resident.
        """
        attached = self._enter()
        try:
            resident, stamp = self._admission.run(
                attached, key, value, Terms(None, generation, evict, True)
            )
        finally:
            attached.gate.leave()
        return stamp if resident else NO_STAMP

    def discard(self, key: int) -> None:
        """Remove ``key`` if it is resident."""
        attached = self._enter()
        ledger = attached.ledger
        packed = pack_key(key)
        try:
            with contextlib.suppress(lmdb.Error), ledger.env.begin(write=True) as txn:
                ledger.drop(txn, packed)
        finally:
            attached.gate.leave()

    def clear(self, generation: bytes = b"") -> None:
        """Remove every entry and forget every count, for every process (a store rebuilt).

        Parameters
        ----------
        generation : bytes
            The store generation the tier holds from now on; the default matches none (a
            cleared store: :meth:`adopt` with ``force`` takes it over again).
        """
        attached = self._enter()
        try:
            with attached.ledger.env.begin(write=True) as txn:
                attached.stamps.bump_all()
                taints = attached.stamps.taints
                attached.ledger.empty(txn)
                attached.ledger.set_generation(txn, generation)
            untaint(attached, taints)
            attached.sketch.clear()
        finally:
            attached.gate.leave()

    def adopt(self, generation: bytes, *, force: bool) -> None:
        """Make the tier hold values of the store generation ``generation``.

        Parameters
        ----------
        generation : bytes
            The caller's store generation.
        force : bool
            True for a caller that knows ``generation`` is the store's current one (it just
            opened or emptied the store): a tier holding another's is emptied. False: only a
            tier that records none yet takes it (a new tier).
        """
        attached = self._enter()
        try:
            with attached.ledger.env.begin() as txn:
                recorded = attached.ledger.generation(txn)
        finally:
            attached.gate.leave()
        if recorded != generation and (force or recorded is None):
            self.clear(generation)

    # -- lifecycle -------------------------------------------------------------------------------

    def _enter(self) -> Attached:
        """Pass the gate of this process's attachment (attached anew in a forked child)."""
        while True:
            attached = self._attached
            if attached is None:
                raise ValueError(f"the node tier of {self._store_path!r} is closed")
            attached.gate.enter()
            if attached.pid == os.getpid() and attached.handles:
                return attached
            attached.gate.leave()
            self._reattach(attached)

    def _reattach(self, inherited: Attached) -> None:
        with self._lock:
            if self._attached is inherited:
                inherited.release()  # in a forked child: unmaps the sketch, leaves the parent be
                self._attached = attach(inherited.place(), self._asked)

    def close(self) -> None:
        """Stop using the tier; the last process on the node to close it frees its memory."""
        with self._lock:
            attached, self._attached = self._attached, None
        if attached is not None:
            attached.release()

    def __enter__(self) -> NodeTier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
