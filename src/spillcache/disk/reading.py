"""The read path of a tier: a disk hit, membership, counts, and reading the whole store.

Only entries of this process's generation are served (:mod:`spillcache.disk.generation`);
values still queued are served from the queue.
"""

from __future__ import annotations

import contextlib
import heapq
from collections.abc import Callable
from typing import TypeVar, cast

import lmdb

from ..codec import FORMAT_VERSION, UnknownSpec, learn
from ..errors import CodecError, StoreError
from .env import DAMAGE_IN_TXN, damaged
from .generation import Generation
from .index import Snapshot, entries_of, lookup, sparse_entries
from .lookup import decoded, find, find_in, learn_spec
from .meta import GENERATION, describe
from .packing import entries_count
from .transactions import Transactions
from .writer import WriteQueue

__all__ = ["Reading"]

T = TypeVar("T")


class Reading:
    """The read methods of :class:`~spillcache.disk.tier.DiskTier`.

    A base class of the tier rather than an object it holds: a disk hit pays no extra call.

    Attributes
    ----------
    writes : WriteQueue
        The tier's write queue (queued values are read from it).
    txns : Transactions
        The store's transactions.
    view : Generation
        The generation this process serves.
    """

    writes: WriteQueue
    txns: Transactions
    view: Generation

    def read(self, key: int, decode: Callable[[memoryview | bytes], T]) -> T | None:
        """Decode the entry for ``key`` inside its read transaction, or return None.

        ``decode`` must copy what it keeps: the buffer it gets is valid only during the call.
        Decoding errors propagate. An entry of another generation than this process's (the
        store was emptied by another process since) is None.
        """
        writes = self.writes
        if writes.queue or writes.inflight:
            pending = writes.pending(key)
            if pending is not None:
                return decode(pending)
        # Every disk hit comes through here: Transactions.read's two context managers would
        # cost about a quarter of a small sample's hit. Its retry (another process grew the
        # map) is taken only when begin() asks for it.
        txns = self.txns
        gate = txns.gate
        generation = self.view.current
        gate.enter()
        try:
            try:
                txn = (txns.env or txns.current()).begin(buffers=True)
            except lmdb.MapResizedError:
                pass
            else:
                try:
                    # In the value's transaction: the store cannot be emptied in between. The
                    # generation is read once per snapshot (CheckedChunks): a get less a hit.
                    last = txns.checked.snapshot
                    snapshot = (
                        last
                        if last[0] == txn.id() and last[2] is generation
                        else _checked(txn, txns, generation)
                    )
                    if snapshot is not None:
                        value = find_in(txn, txns.dbs, key, snapshot[1])
                        if value is None:
                            return None
                        try:
                            return decode(value)
                        except UnknownSpec:  # a spec this process has not learnt yet
                            return decoded(txn, txns.dbs, value, decode)
                    stored = txn.get(GENERATION, db=txns.meta_db)
                    seen = None if stored is None else bytes(stored)
                except DAMAGE_IN_TXN as exc:
                    raise damaged(txns.path, exc) from exc
                finally:
                    txn.abort()
                # Another generation's snapshot: this process has one (None matches them all).
                self.view.went_stale(cast(bytes, generation), seen)
                return None
        finally:
            gate.leave()
        return self._read_retried(key, decode, generation)

    def _read_retried(
        self, key: int, decode: Callable[[memoryview | bytes], T], generation: bytes | None
    ) -> T | None:
        """:meth:`read` once another process grew the map: in a transaction that adopts it."""
        txns = self.txns
        with txns.read() as txn:
            stored = txn.get(GENERATION, db=txns.meta_db)
            if generation is None or stored == generation:  # type: ignore[comparison-overlap]
                value = find(txn, txns.dbs, key, txns.checked)
                return None if value is None else decoded(txn, txns.dbs, value, decode)
            seen = None if stored is None else bytes(stored)
        self.view.went_stale(generation, seen)
        return None

    def learn_spec(self, spec: int) -> None:
        """Make the store's structure spec ``spec`` known to the decoder.

        For a record read elsewhere than from this tier (the node tier holds records as the
        disk tier stores them); CodecError if the store lacks the spec or it is damaged.
        """
        txns = self.txns
        with txns.read() as txn:
            learn_spec(txn, txns.dbs, spec)

    def contains(self, key: int) -> bool:
        """Whether ``key`` is stored (in this process's generation) or queued."""
        if key in self.writes.queue or key in self.writes.inflight:
            return True
        txns = self.txns
        generation = self.view.current
        with txns.read() as txn:
            stored = txn.get(GENERATION, db=txns.meta_db)
            if generation is not None and stored != generation:  # type: ignore[comparison-overlap]
                return False
            return _indexed(txn, txns, key)

    def __len__(self) -> int:
        pending = self.writes.keys()
        txns = self.txns
        with txns.read() as txn:
            stored = entries_count(txn, txns.dbs)
            new = sum(1 for k in pending if not _indexed(txn, txns, k))
        return stored + new

    def get_meta(self, name: str) -> bytes | None:
        """A metadata value recorded with :meth:`~spillcache.disk.tier.DiskTier.set_meta`."""
        txns = self.txns
        with txns.read() as txn:
            value = txn.get(b"user:" + name.encode(), db=txns.meta_db)
            return None if value is None else bytes(value)

    def describe(self) -> dict[str, object]:
        """Items, format version, fingerprint and creation time, read from the store."""
        txns = self.txns
        with txns.read() as txn:
            return describe(txn, txns.dbs)

    def scan(self, visit: Callable[[int, memoryview], None]) -> int:
        """Call ``visit(key, record)`` for every stored entry in key order; return the count.

        One read transaction covers the whole scan (a consistent snapshot); ``record`` is
        valid only during its call, and decodes with :func:`~spillcache.codec.decode` (the
        store's specs are learnt first). A damaged index or pack entry is visited as an empty
        record (which fails to decode).
        """
        count = 0
        txns = self.txns
        dbs = txns.dbs
        with txns.read() as txn:
            fmt = txn.get(b"format_version", db=dbs.meta)
            if fmt is not None and bytes(fmt) != str(FORMAT_VERSION).encode():
                raise StoreError(
                    f"the store at {str(txns.path)!r} has format {bytes(fmt).decode()}, which "
                    f"this spillcache (format {FORMAT_VERSION}) does not read: open it with "
                    "SpillCache to rebuild it, or read it with the version that wrote it"
                )
            for raw_spec, spec in txn.cursor(db=dbs.specs):
                with contextlib.suppress(CodecError):
                    learn(bytes(spec), int.from_bytes(raw_spec, "big"))
            dense = entries_of(txn, dbs.chunks)
            for key, entry in heapq.merge(dense, sparse_entries(txn, dbs.keys)):
                try:
                    record = find(txn, dbs, key, txns.checked) if entry else _DAMAGED
                except CodecError:
                    record = _DAMAGED
                if record is not None:
                    visit(key, record)
                    count += 1
        return count


_DAMAGED = memoryview(b"")


def _checked(
    txn: lmdb.Transaction[memoryview], txns: Transactions, generation: bytes | None
) -> Snapshot | None:
    """The snapshot of ``txn``, found to hold ``generation`` (None: another generation's)."""
    stored = txn.get(GENERATION, db=txns.meta_db)
    if generation is not None and stored != generation:  # type: ignore[comparison-overlap]
        return None
    return txns.checked.held(txn.id(), generation)


def _indexed(txn: lmdb.Transaction[memoryview], txns: Transactions, key: int) -> bool:
    try:
        return lookup(txn, txns.dbs.chunks, txns.dbs.keys, key) != 0
    except CodecError:
        return False
