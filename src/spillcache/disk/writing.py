"""The write path of a tier: buffers to encode into, and admitting values to the write queue.

The writer thread's batches come back through :meth:`Writing.store_batch` to be committed
(:mod:`spillcache.disk.commits`).
"""

from __future__ import annotations

from pathlib import Path

from ..signalsafe import Condition
from .buffers import RECYCLE_MIN, BufferPool
from .commits import Committer
from .events import Events
from .fill import FillPolicy
from .generation import Generation
from .transactions import Transactions
from .values import Buffer, Value
from .writer import Batch, Pending, WriteQueue

__all__ = ["Writing"]


class Writing:
    """The write methods of :class:`~spillcache.disk.tier.DiskTier`.

    A base class of the tier rather than an object it holds: a put pays no extra call.

    Attributes
    ----------
    path : Path
        The store directory (named in errors).
    lock : Condition
        The tier's lock, which guards the queue, the pool and the counters.
    writes : WriteQueue
        The queue values are admitted to.
    pool : BufferPool
        Buffers to encode into; takes back those of refused values.
    fill : FillPolicy
        Refuses values while the store is full.
    txns : Transactions
        Tells whether the store is read-only.
    view : Generation
        The generation values are admitted to.
    events : Events
        Counts refused values.
    committer : Committer
        Commits the writer thread's batches.
    """

    path: Path
    lock: Condition
    writes: WriteQueue
    pool: BufferPool
    fill: FillPolicy
    txns: Transactions
    view: Generation
    events: Events
    committer: Committer

    def buffer(self, size: int, *, keep: bool = False) -> Buffer | None:
        """A buffer of at least ``size`` bytes to encode a value into, or None if small.

        For :meth:`~spillcache.codec.Encoding.into`: the view it returns, given to
        :meth:`write`, hands the buffer back once the value is committed (or dropped), unless
        views of it still live.

        ``keep``: the caller keeps views of the value (the RAM tier, by
        :func:`~spillcache.codec.view`). The buffer then fits exactly, and the writer
        prepares the next ones of this size in advance, their pages touched: the memory a RAM
        tier grows into is fresh, and its page faults would otherwise slow the caller
        (docs/design.rst, "Buffer pool").
        """
        if size < RECYCLE_MIN:  # before the call: every put asks
            return None
        return self.pool.take(size, keep=keep)

    def write(self, key: int, value: Value, generation: bytes | None = None) -> bool:
        """Queue ``value`` for ``key``; False when the store refuses new entries.

        It refuses them when full, read-only, stale (emptied by another process since), or
        when ``generation``, the one the caller opened (if given), is no longer this process's.

        ``value``: bytes, or a :class:`~spillcache.disk.values.Deferred` value the writer
        thread finishes (its :meth:`~spillcache.disk.values.Deferred.finish` may be given
        :meth:`buffer`) and takes back the buffer of once it is committed or dropped.
        """
        pending: Pending = value
        if not isinstance(value, bytes) and len(value) < RECYCLE_MIN:
            # Finished here: for a small value, the writer's extra trips through the GIL cost
            # the caller more than the copy (docs/design.rst, "Small values").
            pending = value.snapshot()
        writes, view, lock, fill = self.writes, self.view, self.lock, self.fill
        with lock:
            if writes.closed:
                raise ValueError(f"the cache at {str(self.path)!r} is closed")
            while writes.forking:
                lock.wait()
            if (
                self.txns.read_only
                or view.stale
                or generation not in (None, view.current)
                or (fill.full and fill.refuses_locked(len(pending)))  # a call only when full
            ):
                self.events.rejected += 1
                self.pool.recycle_locked((pending,))
                return False
            writes.add_locked(key, pending)
        return True

    def store_batch(self, batch: Batch, generation: bytes | None) -> None:
        """Store ``batch``, taken from the queue at ``generation`` (the writer thread's sink)."""
        self.committer.store_batch(batch, generation)
