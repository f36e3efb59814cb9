"""What the threads of one preload share: its lifecycle, its slots, its counts, its first error.

One condition variable guards all of it and every transition of the lifecycle
(:mod:`.lifecycle`); the coordinator waits on it for the limit to change or the load threads
to leave, :meth:`~spillcache.preload.Preloader.wait` for the preload to finish.
"""

from __future__ import annotations

import logging
import time

from ..cache import SpillCache
from ..signalsafe import Condition
from .concurrency import Concurrency, Slot
from .demand import thread_demand
from .guard import StoreGuard
from .lifecycle import Lifecycle, State
from .progress import Failures

__all__ = ["PreloadRun"]

# The package's name, not this module's: the logger users configure and filter by.
logger = logging.getLogger("spillcache.preload")


class PreloadRun:
    """The state every thread of one preload shares, under one condition variable.

    Parameters
    ----------
    cache : SpillCache
        Where samples go.
    slots : Concurrency
        The limit of loads in flight and the slots held.

    Attributes
    ----------
    cache : SpillCache
        Where samples go.
    flights : SingleFlight
        The cache's single-flight table (shared with training) and preload counters.
    slots : Concurrency
        The limit of loads in flight and the slots held (used with ``cond`` held).
    failures : Failures
        Warns of failed loads and of a full cache.
    cond : Condition
        Guards the counts below and every transition of ``life``.
    life : Lifecycle
        Where the preload is in its life.
    guard : StoreGuard
        Every use of the store by a thread of the preload happens inside ``guard.open()``.
    pool : int
        Load threads alive.
    peak_threads : int
        Largest number of load threads so far.
    processed : int
        Indices done with: loaded, skipped, promoted or failed.
    error : BaseException or None
        What ended the preload early, if anything did.
    """

    def __init__(self, cache: SpillCache, slots: Concurrency) -> None:
        self.cache = cache
        self.flights = cache.flights
        self.slots = slots
        self.failures = Failures(cache.path)
        self.cond = Condition()
        self.life = Lifecycle(self.cond)
        self.guard = StoreGuard()
        self.pool = self.peak_threads = self.processed = 0
        self.error: BaseException | None = None

    def reserve(self) -> Slot | None:
        """A slot for one more pass, or None when the calling load thread must end (and has left).

        A thread ends once the preload takes no more work, or when the pool is above the limit.
        """
        with self.cond:
            if not self.life.takes_work or self.pool > self.slots.limit:
                self._leave_locked()
                return None
            return self.slots.reserve(time.monotonic(), _cpu(self.slots))

    def release(self, slot: Slot, *, completed: int, counter: str | None = None) -> None:
        """Give ``slot`` back after a pass that completed ``completed`` indices.

        ``counter``: what the pass adds to, if anything. Wakes the coordinator when the limit
        changed.
        """
        if counter is not None:
            self.flights.count(counter)
        with self.cond:
            self.processed += completed
            slots = self.slots
            if slots.release(slot, completed=completed, now=time.monotonic(), cpu=_cpu(slots)):
                self.cond.notify_all()  # the limit changed: the coordinator starts threads

    def leave(self) -> None:
        """A load thread ends (once the pool is empty the coordinator may end)."""
        with self.cond:
            self._leave_locked()

    def done(self, counter: str) -> None:
        """One index is done with outside a pass's load (skipped, promoted, or refused)."""
        self.flights.count(counter)
        with self.cond:
            self.processed += 1

    def abort(self, exc: Exception) -> None:
        """End the preload because of ``exc``, which ``wait()`` then raises (the first one)."""
        closed = self.cache.closed  # the user closed the cache under us: no failure
        with self.cond:
            first = not closed and self.error is None
            if first:
                self.error = exc
            # Published with the error: whoever sees the preload stop sees why.
            self.life.end_early()
        if first:
            logger.error("the preload failed: %r", exc, exc_info=exc)

    def end_full(self) -> None:
        """The cache refused a sample: end the preload, and warn if this ended it."""
        with self.cond:
            first = self.life.end_early()
        if first:
            self.failures.report_full(self.cache.ram_budget, self.cache.disk_budget)

    def reset_in_child(self) -> None:
        """Become stopped, with new locks and no threads (in the child of a fork).

        Any of the old locks may have been held by a thread of the parent.
        """
        self.cond = Condition()
        self.life = Lifecycle(self.cond, State.STOPPED)
        self.guard = StoreGuard(closed=True)
        self.pool = self.slots.active = 0

    def _leave_locked(self) -> None:
        self.pool -= 1
        self.cond.notify_all()


def _cpu(slots: Concurrency) -> float | None:
    # The thread's CPU demand only until the tuner's first window: the one it reads it from.
    return thread_demand() if slots.wants_cpu else None
