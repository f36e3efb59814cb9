"""Committing a batch of the write queue: finished, admitted to the budget, in this generation.

The writer thread hands each batch to the tier (:class:`~spillcache.disk.writer.Sink`), which
stores it here in one write transaction; a storage fault or a full store costs the batch, never
the training.
"""

from __future__ import annotations

import time

import lmdb

from .buffers import BufferPool
from .events import Events
from .fill import FillPolicy
from .generation import Generation
from .meta import GENERATION
from .packgrowth import PackGrowth
from .packing import PackWriter
from .transactions import Transactions
from .values import Stored
from .writer import Batch

__all__ = ["Committer"]

# After commits, the slots of killed readers are cleared once this many bytes were committed
# since the last time (the file may grow by this much while a killed reader's slot pins old
# pages), or this many seconds passed: not after every commit, since each check makes a training
# thread that holds the GIL wait (docs/design.rst, "Batch sizes").
_CHECK_BYTES = 4 << 20
_CHECK_SECONDS = 0.25
# Tries to commit a batch, growing the map in between.
_TRIES = 8
# The packs of one process's last commits a commit may move into its own, and the bytes they
# must leave unused for that: at most this much is wasted meanwhile per process.
_TAIL_PACKS = 16
_TAIL_WASTE = 16 << 10

_Items = list[tuple[int, Stored]]


class _Stale(Exception):
    """Raised inside a write transaction that finds the store of another generation."""

    def __init__(self, stored: bytes | None) -> None:
        super().__init__()
        self.stored = stored


class Committer:
    """Stores the batches of a tier's write queue.

    Parameters
    ----------
    txns : Transactions
        The store's transactions.
    view : Generation
        The generation a batch must still be the store's.
    pool : BufferPool
        Buffers to finish deferred values into; its lock is the tier's.
    fill : FillPolicy
        Which entries fit the budget and the file system's floor.
    events : Events
        Counts refused and failed entries, warns of faults and a full store.
    """

    def __init__(
        self,
        txns: Transactions,
        view: Generation,
        pool: BufferPool,
        fill: FillPolicy,
        events: Events,
    ) -> None:
        self._txns = txns
        self._view = view
        self._pool = pool
        self._lock = pool.lock
        self._fill = fill
        self._events = events
        self._readers_checked_at = 0.0
        self._unchecked_bytes = 0
        # The small packs of this process's last commits (id, bytes), oldest first.
        self._tail: list[tuple[int, int]] = []

    def store_batch(self, batch: Batch, generation: bytes | None) -> None:
        """Store ``batch``, taken from the queue while the store was at ``generation``."""
        try:
            items = self._stored_items(batch)
        except MemoryError as exc:
            self._write_fault(len(batch), exc)
            return
        need = sum(len(v) for _, v in items)
        try:
            stored = self._commit(items, need, generation)
        except _Stale as stale:
            with self._lock:
                self._events.rejected += len(items)
            assert generation is not None
            self._view.went_stale(generation, stale.stored)
            return
        except Exception as exc:  # any storage fault: training goes on without this batch
            self._write_fault(len(items), exc)
            return
        if len(stored) < len(items):
            self._refused(items, stored)
        self._unchecked_bytes += need
        if (
            self._unchecked_bytes >= _CHECK_BYTES
            or time.monotonic() - self._readers_checked_at >= _CHECK_SECONDS
        ):
            self.clear_stale_readers()

    def _commit(self, items: _Items, need: int, generation: bytes | None) -> _Items:
        """Commit what of ``items`` fits; what was stored. Grows the map when it is full."""
        for _ in range(_TRIES):
            try:
                return self._commit_once(items, need, generation)
            except lmdb.MapFullError:
                self._txns.grow_map(need)
        # The map could not be grown enough (address space or ulimit -v).
        raise MemoryError("the LMDB map could not grow")

    def _commit_once(self, items: _Items, need: int, generation: bytes | None) -> _Items:
        txns = self._txns
        with txns.write() as txn:
            # Inside the transaction, which excludes every other writer of the node: a store
            # emptied by another process since is never written to.
            current = txn.get(GENERATION, db=txns.meta_db)
            if generation is not None and current != generation:
                raise _Stale(current)
            psize = self._psize(txn)
            packs = PackWriter(txn, txns.dbs, psize)
            merging = self._merging(psize)
            moved = packs.reclaimable(pack for pack, _ in merging)
            growth = PackGrowth(txn, txns.dbs)
            stored, moving = self._fill.admitted(growth, txns.current(), items, need, moved)
            if moving:
                packs.move(moved)
            packs.store(stored)
            packs.finish()
        self._tailed(packs.last_pack, merged=bool(merging) and moving)
        return stored

    def _merging(self, psize: int) -> list[tuple[int, int]]:
        """The small packs of the last commits to move into this one's (none: not yet).

        A DataLoader worker commits every sample it loads: each commit makes a pack of one or
        two, closed at the commit's end. Once the last commits' packs leave an 8th of their
        bytes unused in their pages, and ``_TAIL_WASTE`` bytes or they are ``_TAIL_PACKS``,
        their records go into this commit's packs, densely, and they are deleted. The last
        packs of commits of a MiB (one process filling a store) are seldom worth moving.
        """
        tail = self._tail
        unused = sum(-(n + 16) % psize for _, n in tail)  # LMDB's page header: 16 bytes
        enough = unused >= _TAIL_WASTE or len(tail) >= _TAIL_PACKS
        if enough and 8 * unused >= sum(n for _, n in tail):
            return tail
        return []

    def _tailed(self, last: tuple[int, int] | None, *, merged: bool) -> None:
        """After a commit: its last pack joins the tail (the last ``_TAIL_PACKS`` are kept)."""
        tail = [] if merged else self._tail
        self._tail = (tail if last is None else [*tail, last])[-_TAIL_PACKS:]

    def _psize(self, txn: lmdb.Transaction[bytes]) -> int:
        return int(txn.stat(self._txns.meta_db)["psize"])

    def clear_stale_readers(self) -> None:
        """Free the slots of killed readers: they pin old pages and make the file grow."""
        self._unchecked_bytes = 0
        self._readers_checked_at = time.monotonic()
        self._txns.check_readers()

    def _stored_items(self, batch: Batch) -> _Items:
        """``batch`` by key, each Deferred value finished (which replaces it in ``batch``).

        Before the transaction: it holds the store's write lock, which every process shares.
        """
        items: _Items = []
        finished: Batch = {}
        for key, value in sorted(batch.items()):  # keys are unique: values are not compared
            if type(value) is bytes or type(value) is memoryview:
                items.append((key, value))
            else:
                stored = value.finish(self._pool.take)  # type: ignore[union-attr]
                finished[key] = stored
                items.append((key, stored))
        if finished:
            # Under the lock: read() may be looking the batch up. The buffers are recycled
            # with the batch's values once it is committed.
            with self._lock:
                batch.update(finished)
        return items

    def _write_fault(self, entries: int, exc: BaseException) -> None:
        with self._lock:
            self._events.write_errors += entries
            self._fill.refused_locked(0)
        self._events.warn_once(
            "write",
            f"writing to the store at {str(self._txns.path)!r} failed ({exc}); {entries} entries "
            "were not stored and new entries are refused until space frees up; training goes on",
        )

    def _refused(self, items: _Items, stored: _Items) -> None:
        """Count the entries of ``items`` not in ``stored``; refuse puts as large for a while."""
        kept = {key for key, _ in stored}
        sizes = [len(value) for key, value in items if key not in kept]
        with self._lock:
            self._events.rejected += len(sizes)
            self._fill.refused_locked(min(sizes))
        self._events.warn_once("full", self._fill.message())
