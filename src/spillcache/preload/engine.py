"""The preload engine: the :class:`Preloader` a cache wrapper starts, waits for and stops.

A :class:`Preloader` walks the indices of an order (:mod:`.order`, :mod:`.claiming`) and has up
to ``limit`` load threads (:mod:`.concurrency`, :mod:`.tuner`) load the ones neither tier holds,
each sample stored as soon as it is loaded (:mod:`.landing`); a coordinator thread starts the
threads (:mod:`.threads`) and reports (:mod:`.reporting`). Its lifecycle is one state
(:mod:`.lifecycle`), shared by its threads with the rest of their state (:mod:`.run`); once it
is stopped (:mod:`.stopping`), a guard (:mod:`.guard`) keeps its threads away from the store.
The cache's :class:`~spillcache.flight.SingleFlight` records which indices are being loaded
right now, by the preload or by training, so that each is loaded once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from .. import forksafe
from ..cache import SpillCache
from ..settings import AUTO_MAX_THREADS
from . import stopping
from .claiming import Claims
from .concurrency import Concurrency
from .landing import Landing
from .options import PreloadOptions
from .reporting import Reporter
from .run import PreloadRun
from .threads import Crew
from .tuner import Tuner

__all__ = ["Preloader"]


class Preloader:
    """Loads the indices of an order into a cache in the background.

    Built and started by ``CachedDataset.start_preload`` and
    ``DataCache.start_preload_thread``; use those.

    ``limit`` load threads each take the next index of the order, skip it if it is cached or
    being loaded, else load and store it, and start over: no hand-off between threads per
    sample. A coordinator thread starts threads when the limit rises (threads above it retire
    after their current sample), refreshes the progress bar and logs.

    Parameters
    ----------
    cache : SpillCache
        Where samples go; its :class:`~spillcache.flight.SingleFlight` is shared with training.
    indices : iterator
        What :func:`preview_order` returned.
    options : PreloadOptions
        The source and the settings.
    total : int or None
        Number of indices, for the progress bar.

    """

    def __init__(
        self,
        cache: SpillCache,
        indices: Iterator[object],
        options: PreloadOptions,
        *,
        total: int | None,
    ) -> None:
        threads = options.threads
        slots = Concurrency(
            1 if threads == "auto" else threads,
            Tuner(AUTO_MAX_THREADS) if threads == "auto" else None,
        )
        self._run = PreloadRun(cache, slots)
        self._claims = Claims(self._run, indices, options.length)
        self._reporter = Reporter(self._run, options, total)
        landing = Landing(self._run, options.load)
        self._crew = Crew(self._run, self._claims, landing, self._reporter, options.load_many)
        forksafe.register(self._before_fork, self._after_fork_in_parent, self._after_fork_in_child)

    # -- control ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the coordinator thread (once)."""
        run = self._run
        with run.cond:
            run.life.start()
            now = time.monotonic()
            run.slots.started_at = now
            self._reporter.begin(now)
        stopping.stop_at_exit(self)
        try:
            self._crew.start()
        except BaseException:
            # E.g. "can't start new thread": end stopped, or wait() would never return.
            self.stop()
            raise

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the preload is done or stopped; False if ``timeout`` expired first.

        Raises
        ------
        RuntimeError
            If the preload itself failed (e.g. iterating ``order`` raised); loads that raise
            are only counted.
        """
        if not self._run.life.wait(timeout):
            return False
        error = self._run.error
        if error is not None:
            raise RuntimeError(f"the preload failed: {error!r}") from error
        return True

    def stop(self) -> None:
        """Stop; return once no thread of the preload will touch the store.

        Loads in progress in user code are not waited for: their threads finish on their own
        and hand their samples to training threads waiting for them (which cache them), never
        to the store. Idempotent.
        """
        stopping.stop(self._run, self._crew.coordinator)

    # -- what it did -----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the preload is still at work."""
        return self._run.life.running

    @property
    def in_flight(self) -> int:
        """Load threads at work on a sample right now."""
        return self._run.slots.active

    @property
    def limit(self) -> int:
        """Loads allowed in flight now."""
        return self._run.slots.limit

    @property
    def peak_limit(self) -> int:
        """Highest limit so far."""
        return self._run.slots.peak_limit

    @property
    def tuning(self) -> list[tuple[float, int, float]]:
        """With ``threads="auto"``, the last measurements.

        Each is (seconds since the start, loads in flight, samples per second).
        They tell how the storage scales: rates that double with the concurrency mean
        latency-bound storage; a rate that stops growing at some concurrency means an IOPS or
        CPU limit.
        """
        return self._run.slots.tuning

    @property
    def peak_threads(self) -> int:
        """Largest number of load threads so far."""
        return self._run.peak_threads

    @property
    def processed(self) -> int:
        """Indices done with: loaded, skipped, promoted or failed."""
        return self._run.processed

    @property
    def error(self) -> BaseException | None:
        """What ended the preload early, if anything did."""
        return self._run.error

    # -- fork ------------------------------------------------------------------------------------

    # The child of a fork (a DataLoader worker) has none of our threads and never uses the
    # parent's preload: nothing to prepare, and the child starts from a stopped state with
    # new locks (any of the old ones may have been held by a thread of the parent).
    def _before_fork(self) -> None:
        pass

    def _after_fork_in_parent(self) -> None:
        pass

    def _after_fork_in_child(self) -> None:
        self._run.reset_in_child()
        self._claims.reset_in_child()
        self._crew.coordinator = None
