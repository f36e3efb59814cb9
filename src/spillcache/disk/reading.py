"""The read path of a tier: a disk hit, membership, counts, and reading the whole store.

Only entries of this process's generation are served (:mod:`spillcache.disk.generation`);
values still queued are served from the queue.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import lmdb

from .env import DAMAGE_IN_TXN, damaged, key_bytes
from .generation import Generation
from .meta import GENERATION, describe
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
            env = txns.env
            if env is None:
                env = txns.current()
            try:
                txn = env.begin(buffers=True)
            except lmdb.MapResizedError:
                pass
            else:
                try:
                    # In the value's transaction: the store cannot be emptied in between.
                    stored = txn.get(GENERATION, db=txns.meta_db)
                    if generation is None or stored == generation:  # type: ignore[comparison-overlap]
                        value = txn.get(key_bytes(key), db=txns.data_db)
                        return None if value is None else decode(value)
                    seen = None if stored is None else bytes(stored)
                except DAMAGE_IN_TXN as exc:
                    raise damaged(txns.path, exc) from exc
                finally:
                    txn.abort()
                self.view.went_stale(generation, seen)
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
                value = txn.get(key_bytes(key), db=txns.data_db)
                return None if value is None else decode(value)
            seen = None if stored is None else bytes(stored)
        self.view.went_stale(generation, seen)
        return None

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
            return txn.get(key_bytes(key), db=txns.data_db) is not None

    def __len__(self) -> int:
        pending = self.writes.keys()
        txns = self.txns
        with txns.read() as txn:
            stored = int(txn.stat(txns.data_db)["entries"])
            new = sum(1 for k in pending if txn.get(key_bytes(k), db=txns.data_db) is None)
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
            return describe(txn, txns.data_db, txns.meta_db)

    def scan(self, visit: Callable[[int, memoryview], None]) -> int:
        """Call ``visit(key, value)`` for every stored entry in key order; return the count.

        One read transaction covers the whole scan (a consistent snapshot); ``value`` is valid
        only during its call.
        """
        count = 0
        txns = self.txns
        with txns.read() as txn:
            for raw_key, value in txn.cursor(db=txns.data_db):
                visit(int.from_bytes(raw_key, "big"), value)
                count += 1
        return count
