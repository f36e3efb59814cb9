"""A cache object's request counters, and their publication from a DataLoader worker.

A process that may start workers owns a :class:`~spillcache.shared.CounterBlock`; a worker
publishes what it counts into its slot of its parent's block after each request, so that
``stats()`` in the parent counts every worker too. Which of the two a process is, is learnt at
first use: a worker learns it is one only once its loop has started.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch

from . import forksafe
from .errors import SpillCacheWarning
from .shared import FIELDS, CounterBlock, WorkerSlot, attach
from .userwarn import warn

__all__ = [
    "CORRUPT",
    "DISK_HITS",
    "MISSES",
    "NODE_HITS",
    "PUTS",
    "RAM_HITS",
    "Counters",
    "DiskCounts",
]

# Indices into Counters.values: the first six of FIELDS, which this process counts itself.
# NODE_HITS are RAM hits served by the node tier (each is counted in RAM_HITS too).
RAM_HITS, DISK_HITS, MISSES, PUTS, CORRUPT, NODE_HITS = range(6)


class DiskCounts(Protocol):
    """What the counters read from the disk tier: its counts and whether it is open."""

    @property
    def rejected(self) -> int:
        """Puts refused by the disk budget or the free-space floor."""

    @property
    def write_errors(self) -> int:
        """Entries lost to a failed write."""

    @property
    def closed(self) -> bool:
        """Whether the tier is closed."""


class Counters:
    """The counters of one cache object in this process, and of the workers it started.

    Not thread-safe: its owner calls :meth:`add`, :meth:`publish`, :meth:`snapshot` and
    :meth:`close` under its own lock.

    Parameters
    ----------
    disk : DiskCounts
        The disk tier, whose ``rejected`` and ``write_errors`` complete :data:`FIELDS`.
    parent_block : Path or None
        In a process unpickled from a parent: the block that parent's workers count into.
    """

    def __init__(self, disk: DiskCounts, parent_block: Path | None = None) -> None:
        #: This process's counts, indexed by ``RAM_HITS`` ... ``NODE_HITS``.
        self.values = [0] * 6
        self._disk = disk
        self._parent_block = parent_block
        self._worker: bool | None = None
        self._block: CounterBlock | None = None
        self._closed_totals: dict[str, int] | None = None
        self._slot: WorkerSlot | None = None
        #: Whether this process may be a worker, which publishes after each request: an owner
        #: that increments :attr:`values` itself calls :meth:`report` while it is set. Cleared
        #: once it turns out not to be one.
        self.watching = True
        self._base = (0,) * len(FIELDS)
        self._closed = False
        self._warned = False
        forksafe.register(before=self._before_fork, in_child=self._after_fork_in_child)

    @property
    def worker(self) -> bool:
        """Whether this process is a DataLoader worker (a worker then claims its slot)."""
        if self._worker is None:
            self._worker = torch.utils.data.get_worker_info() is not None
            if self._worker and self._parent_block is not None and self._slot is None:
                self._slot = attach(self._parent_block)
        return self._worker

    def add(self, field: int) -> None:
        """Count one more ``field`` and publish it to this worker's parent.

        The hit paths do this inline (``values[field] += 1``, then :meth:`report` while
        :attr:`watching`): a call less on every hit.
        """
        self.values[field] += 1
        if self.watching:
            self.report(field)

    def report(self, field: int) -> None:
        """Publish ``field`` to this worker's parent: one memory store in a worker (~0.1 us)."""
        slot = self._slot
        if slot is not None:
            slot.words[field] = self.values[field] - self._base[field]
        else:
            self.publish()

    def publish(self) -> None:
        """Publish every counter to this worker's parent (the disk tier's may have changed)."""
        if not self.watching:
            return
        slot = self._slot if self.worker else None
        if slot is None:
            self.watching = False  # not a worker, or one that cannot report: stop asking
            return
        slot.publish(
            tuple(now - then for now, then in zip(self.snapshot(), self._base, strict=True))
        )

    def snapshot(self) -> tuple[int, ...]:
        """This process's counters, in :data:`~spillcache.shared.FIELDS` order."""
        disk = self._disk
        return (*self.values, disk.rejected, disk.write_errors)

    def workers(self) -> dict[str, int] | None:
        """The counters of the workers this process started, summed; None if it started none."""
        if self._closed_totals is not None:
            return self._closed_totals
        block = self._block
        return block.totals() if block is not None and block.owned else None

    def own_block(self) -> Path | None:
        """The path of the block this process's workers count into, made on first need."""
        block = self._block
        if block is not None and block.owned:
            return block.path
        if self._closed or self._disk.closed:
            return None
        try:
            self._block = block = CounterBlock()
        except OSError as exc:
            self._block = None
            if not self._warned:
                self._warned = True
                warn(
                    f"could not create the shared counters of DataLoader workers ({exc}); "
                    "stats() counts this process only",
                    SpillCacheWarning,
                )
            return None
        return block.path

    def close(self) -> None:
        """Stop publishing; remove this process's block, keeping its totals. Idempotent."""
        self._closed = True
        self.watching = False
        block, slot = self._block, self._slot
        if block is not None and block.owned:
            self._closed_totals = block.totals()  # stats() after close still counts the workers
            block.close()
        self._slot = None
        if slot is not None:
            slot.close()

    # -- fork ------------------------------------------------------------------------------------

    def _before_fork(self) -> None:
        # A forked DataLoader worker counts into the block of the process that forked it.
        self.own_block()

    def _after_fork_in_child(self) -> None:
        block = self._block
        self._parent_block = None if block is None else block.path
        self._worker = None
        self._block = None  # the parent's: its object here must not remove the file
        self._slot = None  # a slot belongs to the process that claimed it
        self._closed_totals = None
        self.watching = not (self._closed or self._disk.closed)
        # The parent's counts came along: a worker reports only what it counts itself.
        self._base = self.snapshot()
