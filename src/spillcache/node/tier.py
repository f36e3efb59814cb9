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
import errno
import logging
import os
import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import lmdb

from .attach import Attached, attach
from .ledger import Account, Txn, pack_key
from .place import footprint, locate, memory_root
from .reclaim import reclaim
from .warn import warn_once

__all__ = ["NodeStats", "NodeTier"]

logger = logging.getLogger(__name__)

# As in the process-local tier (ram.py explains both): a candidate must beat each victim by 3
# counts; a victim is the least frequent of 3 residents drawn at random.
_MARGIN = 3
_SAMPLE = 3
# Out of room although the accounting says otherwise (a full tmpfs, or LMDB's free pages too
# fragmented for a value): the budget drops to this share of what is held, for every process.
_SHRINK_NUM, _SHRINK_DEN = 7, 8


class _Declined(Exception):
    """Abort the admitting transaction: nothing changes."""


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
            warn_once(store, "small", _too_small(store, root, budget))
            return None
        try:
            attached = attach(place, budget)
        except (OSError, lmdb.Error) as exc:
            warn_once(store, "failed", f"no node RAM tier for the store at {store!r}: {exc}")
            return None
        _warn_sizes(store, budget, attached)
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
            with ledger.env.begin(buffers=True) as txn:
                value = txn.get(pack_key(key), db=ledger.data)
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
            with ledger.env.begin(buffers=True) as txn:
                yield txn.get(pack_key(key), db=ledger.data)
        finally:
            attached.gate.leave()

    def record(self, key: int) -> None:
        """Count an access of ``key`` without reading it (e.g. a hit in a faster tier)."""
        attached = self._enter()
        try:
            attached.sketch.frequency(key, True)
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

    def admit(self, key: int, value: bytes | memoryview) -> bool:
        """Offer ``value`` for ``key``; other processes hit it as soon as this returns True.

        It replaces any value stored for ``key``. Free space is always taken; a full tier
        admits it only if its shared frequency beats each victim's by the margin.

        Returns
        -------
        bool
            Whether ``key`` is resident afterwards. False means any older value for ``key``
            is gone too (unless the tier ran out of room, see :meth:`open`).
        """
        attached = self._enter()
        try:
            return self._admit(attached, key, value)
        finally:
            attached.gate.leave()

    def _admit(self, attached: Attached, key: int, value: bytes | memoryview) -> bool:
        ledger = attached.ledger
        for retry in (True, False):
            try:
                with ledger.env.begin(write=True) as txn:
                    account = ledger.account(txn)
                    admitted = self._place(txn, attached, account, key, value)
                    ledger.save(txn, account)
            except _Declined:
                return False
            except lmdb.MapFullError:
                # Pages a killed reader's snapshot pinned are free again once its slot is gone.
                if retry and ledger.env.reader_check():
                    continue
                self._shrink(attached, f"its map of {attached.params.map_size} bytes is full")
                return False
            except lmdb.Error as exc:
                self._failed(attached, exc)
                return False
            attached.sketch.publish_items(account.items)
            return admitted
        return False

    def discard(self, key: int) -> None:
        """Remove ``key`` if it is resident."""
        attached = self._enter()
        ledger = attached.ledger
        packed = pack_key(key)
        try:
            with contextlib.suppress(lmdb.Error), ledger.env.begin(write=True) as txn:
                if ledger.size_of(txn, packed) is not None:
                    account = ledger.account(txn)
                    ledger.remove(txn, account, packed)
                    ledger.save(txn, account)
        finally:
            attached.gate.leave()

    def clear(self) -> None:
        """Remove every entry and forget every count, for every process (a store rebuilt)."""
        attached = self._enter()
        try:
            with attached.ledger.env.begin(write=True) as txn:
                attached.ledger.empty(txn)
            attached.sketch.clear()
        finally:
            attached.gate.leave()

    def _place(
        self,
        txn: Txn[bytes],
        attached: Attached,
        account: Account,
        key: int,
        value: bytes | memoryview,
    ) -> bool:
        """Inside the write transaction: make room for ``key`` and insert it, or decline."""
        ledger = attached.ledger
        size = footprint(len(value), ledger.page_size)
        packed = pack_key(key)
        old = ledger.size_of(txn, packed)
        excess = account.nbytes - (old or 0) + size - account.budget
        victims = self._victims(txn, attached, account, key, excess) if excess > 0 else []
        if victims is None or size > account.budget:
            if old is None:
                raise _Declined
            ledger.remove(txn, account, packed)  # a stale value never outlives a put
            return False
        if old is not None:
            ledger.remove(txn, account, packed)
        for victim in victims:
            ledger.remove(txn, account, victim)
        ledger.insert(txn, account, packed, value, size)
        return True

    def _victims(
        self, txn: Txn[bytes], attached: Attached, account: Account, key: int, excess: int
    ) -> list[bytes] | None:
        """Residents worth ``excess`` bytes that ``key`` beats each, or None."""
        ledger, frequency = attached.ledger, attached.sketch.frequency
        threshold = frequency(key, False) - _MARGIN
        if threshold < 0:
            return None
        packed = pack_key(key)
        chosen: dict[bytes, int] = {}
        freed = 0
        while freed < excess:
            best, best_size, best_count = b"", 0, threshold + 1
            for _ in range(_SAMPLE):
                victim, size = ledger.draw(txn, account, self._random)
                if victim in chosen or victim == packed:
                    continue
                count = frequency(int.from_bytes(victim, "big"), False)
                if count < best_count:
                    best, best_size, best_count = victim, size, count
            if not best:
                return None
            chosen[best] = best_size
            freed += best_size
        return list(chosen)

    def _shrink(self, attached: Attached, why: str) -> None:
        """Out of room although the accounting allows more: lower the budget for everyone.

        Free pages too fragmented for a value, or held by a reader, fill LMDB's map before the
        accounted bytes reach the budget; a full file system fails a write. Either way the
        budget drops below what is held (random residents go), so that later admissions reuse
        the pages they free instead of asking for new ones.
        """
        ledger = attached.ledger
        with contextlib.suppress(lmdb.Error), ledger.env.begin(write=True) as txn:
            account = ledger.account(txn)
            account.budget = min(account.budget, account.nbytes * _SHRINK_NUM // _SHRINK_DEN)
            while account.nbytes > account.budget:
                ledger.remove(txn, account, ledger.draw(txn, account, self._random)[0])
            ledger.save(txn, account)
        logger.info("node RAM tier %s: %s; budget lowered", attached.directory, why)

    def _failed(self, attached: Attached, exc: lmdb.Error) -> None:
        """An admission failed: shrink on a full file system, and warn once either way."""
        store, directory = self._store_path, str(attached.directory)
        if getattr(exc, "errno", None) == errno.ENOSPC or os.strerror(errno.ENOSPC) in str(exc):
            self._shrink(attached, str(exc))
            warn_once(
                directory,
                "full",
                f"the node RAM tier of the store at {store!r} ran out of room in {directory!r} "
                f"({exc}); it keeps what it holds and admits only in place of residents from "
                "now on. Give the memory file system more room (docker run --shm-size) or "
                "ram_budget less",
            )
        else:
            warn_once(directory, "error", f"the node RAM tier of the store at {store!r}: {exc}")

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


def _too_small(store: str, root: Path, budget: int) -> str:
    return (
        f"no node RAM tier for the store at {store!r}: {str(root)!r} has too little free space "
        f"for even 1 MiB of the {budget} bytes asked (the tier takes at most half of it). "
        "In a container, give it more: docker run --shm-size=..."
    )


def _warn_sizes(store: str, asked: int, attached: Attached) -> None:
    params = attached.params
    if params.asked != asked:
        warn_once(
            store,
            "budget",
            f"the node RAM tier of the store at {store!r} was opened with a budget of "
            f"{params.asked} bytes by another process on this node; {asked} asked here is "
            "ignored (ram_budget is per node)",
        )
    elif params.budget < asked:
        warn_once(
            store,
            "small",
            f"the node RAM tier of the store at {store!r} holds {params.budget} bytes, not the "
            f"{asked} asked: that is what half the free space of "
            f"{str(attached.directory.parent)!r} allows (docker run --shm-size=...)",
        )
