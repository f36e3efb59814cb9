"""The preload engine: the Preloader, its load threads and coordinator, and single flight.

A :class:`Preloader` walks the indices of an order (:mod:`.order`) and has up to ``limit``
load threads (:mod:`.concurrency`, :mod:`.tuner`) load the ones neither tier holds, each
sample inserted as soon as it is loaded; a coordinator thread starts the threads and reports
(:mod:`.progress`). Its lifecycle is one state (:mod:`.lifecycle`); once it is stopped, a
guard (:mod:`.guard`) keeps its threads away from the store. The cache's
:class:`~spillcache.flight.SingleFlight` records which indices are being loaded right now, by
the preload or by training, so that each is loaded once.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from .. import forksafe
from ..cache import SpillCache
from ..flight import PRELOAD_COUNTERS, Flight
from ..indices import check_index
from ..settings import AUTO_MAX_THREADS
from ..signalsafe import Condition
from ..stats import CacheStats
from .concurrency import Concurrency, Slot
from .guard import StoreGuard
from .lifecycle import Lifecycle, State
from .options import PreloadOptions
from .progress import REFRESH_SECONDS, Failures, Progress, Status
from .tuner import Tuner

__all__ = ["Preloader"]

# The package's name, not this module's: the logger users configure and filter by.
logger = logging.getLogger("spillcache.preload")

# Indices a load thread of the preload asks a batched source (``__getitems__``) for at once.
_PRELOAD_BATCH = 32
# stop() waits this long for the coordinator to notice.
_STOP_JOIN_SECONDS = 0.5
# Share of the RAM budget in use from which the preload no longer promotes disk entries.
_RAM_FULL = 0.95


# -- the preloader ---------------------------------------------------------------------------


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

    Attributes
    ----------
    peak_threads : int
        Largest number of load threads so far.
    processed : int
        Indices done with: loaded, skipped, promoted or failed.
    error : BaseException or None
        What ended the preload early, if anything did.
    """

    def __init__(
        self,
        cache: SpillCache,
        indices: Iterator[object],
        options: PreloadOptions,
        *,
        total: int | None,
    ) -> None:
        self._cache = cache
        self._load = options.load
        self._load_many = options.load_many
        self._indices = indices
        self._length = options.length
        self._flights = cache.flights
        self._stats = options.stats
        self._progress = Progress(
            total=total, bar=options.progress, summary=options.summary, ram_budget=cache.ram_budget
        )
        self._failures = Failures(cache.path)
        threads = options.threads
        self._slots = Concurrency(
            1 if threads == "auto" else threads,
            Tuner(AUTO_MAX_THREADS) if threads == "auto" else None,
        )
        self._cond = Condition()
        # Serializes the order's iterator (a generator cannot be advanced by two threads).
        self._order_lock = threading.Lock()
        self._guard = StoreGuard()
        self._life = Lifecycle(self._cond)
        self._coordinator: threading.Thread | None = None
        self.error: BaseException | None = None
        # Promote disk entries into RAM until it is (nearly) full.
        self._promoting = cache.ram_budget > 0
        # The shared counters when this preload started: its summary reports the difference.
        self._counted = dict.fromkeys(PRELOAD_COUNTERS, 0)
        self.peak_threads = self._pool = 0
        self.processed = 0
        self._started_at = 0.0
        forksafe.register(self._before_fork, self._after_fork_in_parent, self._after_fork_in_child)

    # -- control ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the coordinator thread (once)."""
        with self._cond:
            self._life.start()
            now = time.monotonic()
            self._started_at = self._slots.started_at = now
            self._progress.begin(now)
            self._counted = self._flights.counters()
        _live.add(self)
        self._coordinator = threading.Thread(
            target=self._run, name="spillcache-preload", daemon=True
        )
        try:
            self._coordinator.start()
        except BaseException:
            # E.g. "can't start new thread": end stopped, or wait() would never return.
            self._coordinator = None
            self.stop()
            raise

    @property
    def running(self) -> bool:
        """Whether the preload is still at work."""
        return self._life.running

    @property
    def in_flight(self) -> int:
        """Load threads at work on a sample right now."""
        return self._slots.active

    @property
    def limit(self) -> int:
        """Loads allowed in flight now."""
        return self._slots.limit

    @property
    def peak_limit(self) -> int:
        """Highest limit so far."""
        return self._slots.peak_limit

    @property
    def tuning(self) -> list[tuple[float, int, float]]:
        """With ``threads="auto"``, the last measurements.

        Each is (seconds since the start, loads in flight, samples per second).
        They tell how the storage scales: rates that double with the concurrency mean
        latency-bound storage; a rate that stops growing at some concurrency means an IOPS or
        CPU limit.
        """
        return self._slots.tuning

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the preload is done or stopped; False if ``timeout`` expired first.

        Raises
        ------
        RuntimeError
            If the preload itself failed (e.g. iterating ``order`` raised); loads that raise
            are only counted.
        """
        if not self._life.wait(timeout):
            return False
        if self.error is not None:
            raise RuntimeError(f"the preload failed: {self.error!r}") from self.error
        return True

    def stop(self) -> None:
        """Stop; return once no thread of the preload will touch the store.

        Loads in progress in user code are not waited for: their threads finish on their own
        and hand their samples to training threads waiting for them (which cache them), never
        to the store. Idempotent.
        """
        with self._cond:
            first = self._life.stop()
        # Every call waits here, not only the first: a second stop() (a second Ctrl-C, the
        # exit hook) must not return while the first still waits for a thread in the store.
        self._guard.close()
        coordinator = self._coordinator
        if first and coordinator is not None and coordinator is not threading.current_thread():
            coordinator.join(_STOP_JOIN_SECONDS)
        with self._cond:
            self._life.finish()

    # -- the coordinator -------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._progress.open()
            while self._coordinate():
                self._refresh()
            if not self._life.stopped:
                self._refresh(final=True)
        except Exception as exc:  # the summary writer failed, or a thread did not start
            self._abort(exc)
        finally:
            try:
                self._progress.close()
            finally:
                with self._cond:
                    self._life.finish()  # whatever happened: wait() must return

    def _coordinate(self) -> bool:
        """Start the load threads the limit allows, or wait a while; False once it ends.

        A preload that ends on its own ends once its load threads are gone; a stopped one at
        once.
        """
        with self._cond:
            life = self._life
            if life.stopped or (not life.takes_work and not self._pool):
                return False
            spawn = max(0, self._slots.limit - self._pool) if life.takes_work else 0
            self._pool += spawn
            self.peak_threads = max(self.peak_threads, self._pool)
            if not spawn:
                self._cond.wait(REFRESH_SECONDS)
        for _ in range(spawn):
            threading.Thread(target=self._work, name="spillcache-preload-load", daemon=True).start()
        return True

    # -- the load threads ------------------------------------------------------------------------

    def _work(self) -> None:
        try:
            while (slot := self._reserve()) is not None:
                self._pass(slot)
        except BaseException as exc:
            if isinstance(exc, Exception):  # the order's iterator raised, or a bug
                # Before leaving the pool: once it is empty the coordinator may end, and
                # wait() must then raise.
                self._abort(exc)
            with self._cond:
                self._pool -= 1
                self._cond.notify_all()
            if not isinstance(exc, Exception):
                raise

    def _abort(self, exc: Exception) -> None:
        """End the preload because of ``exc``, which wait() then raises (the first one)."""
        closed = self._cache.closed  # the user closed the cache under us: no failure
        with self._cond:
            first = not closed and self.error is None
            if first:
                self.error = exc
            # Published with the error: whoever sees the preload stop sees why.
            self._life.end_early()
        if first:
            logger.error("the preload failed: %r", exc, exc_info=exc)

    def _reserve(self) -> Slot | None:
        """A slot for one more pass, or None when this thread must end (and has left)."""
        with self._cond:
            if not self._life.takes_work or self._pool > self._slots.limit:
                self._pool -= 1
                self._cond.notify_all()
                return None
            return self._slots.reserve(time.monotonic())

    def _pass(self, slot: Slot) -> None:
        # Whatever raises (the order's iterator, the store), the slot is given back.
        completed, counter = 0, None
        try:
            if self._load_many is not None:
                completed = self._fill_batch(self._load_many, self._next_batch())
            else:
                found = self._next_index()
                if found is not None:
                    completed, counter = self._fill(*found)
        finally:
            self._release(slot, completed=completed, counter=counter)

    def _next_batch(self) -> list[tuple[int, Flight]]:
        """Up to ``_PRELOAD_BATCH`` indices to load, claimed (fewer at the end of the order)."""
        batch: list[tuple[int, Flight]] = []
        try:
            while len(batch) < _PRELOAD_BATCH and (found := self._next_index()) is not None:
                batch.append(found)
        except BaseException:
            for _, flight in batch:
                self._flights.cancel(flight)
            raise
        return batch

    def _fill_batch(
        self, load_many: Callable[[list[int]], list[Any]], batch: list[tuple[int, Flight]]
    ) -> int:
        """Load ``batch`` in one call and store each sample; return how many completed.

        Every flight of ``batch`` ends here, landed or cancelled.
        """
        if not batch:
            return 0
        started = 0
        try:
            indices = [index for index, _ in batch]
            try:
                samples = load_many(indices)
                if len(samples) != len(batch):
                    raise ValueError(
                        f"__getitems__ returned {len(samples)} samples for {len(batch)} indices"
                    )
            except Exception as exc:
                self._report_error(indices, exc)
                self._flights.count("preload_errors", len(batch))
                return len(batch)
            for (index, flight), sample in zip(batch, samples, strict=True):
                started += 1
                _, counter = self._fill(index, flight, loaded=(sample,))
                if counter is not None:
                    self._flights.count(counter)
        finally:
            for _, flight in batch[started:]:
                self._flights.cancel(flight)
        return started

    def _fill(
        self, index: int, flight: Flight, loaded: tuple[object] | None = None
    ) -> tuple[bool, str | None]:
        """Load and store ``index``; return whether it completed and the counter it adds to.

        ``loaded``: its sample, loaded already (by a batched load). ``flight`` ends here
        whatever happens, landed or cancelled: training threads may be waiting for it.
        """
        landed = False
        try:
            try:
                sample = self._load(index) if loaded is None else loaded[0]
            except Exception as exc:
                self._report_error(index, exc)
                return True, "preload_errors"
            stored: bool | None = None
            with self._guard.open() as usable:
                if usable:
                    try:
                        stored = self._cache.put(index, sample, evict=False)
                    except Exception as exc:  # e.g. a leaf type the codec refuses
                        # Training then loads it and meets the same error, as it would
                        # without a cache.
                        self._report_error(index, exc)
                        return True, "preload_errors"
            # Also after stop: a training thread may be waiting for exactly this sample, and
            # then caches it in our place.
            self._flights.land(flight, sample, stored=stored is True)
            landed = True
        finally:
            if not landed:
                self._flights.cancel(flight)
        if stored is False:
            self._cache_full()
        return True, "preload_loads" if stored else None

    def _next_index(self) -> tuple[int, Flight] | None:
        """The next index to load, claimed; None when the order is exhausted or we stop."""
        while True:
            with self._order_lock:
                if not self._life.takes_work:
                    return None
                try:
                    raw = next(self._indices)
                except StopIteration:
                    with self._cond:
                        self._life.exhaust()
                    return None
            found = self._offer(raw)
            if found is not None:
                return found

    def _offer(self, raw: object) -> tuple[int, Flight] | None:
        """``raw`` as a claimed index to load, or None if there is nothing to load."""
        try:
            i = check_index(raw, self._length, "preload")
        except (TypeError, IndexError) as exc:
            self._done("preload_errors")
            self._report_error(raw, exc)
            return None
        flight = self._flights.claim(i, by_preload=True)
        if flight is None:  # training is loading it
            self._done("preload_skips")
            return None
        promoted: bool | None = None
        try:
            with self._guard.open() as usable:
                where = self._cache.where(i) if usable else None
                if usable and where == "disk" and self._promoting:
                    promoted = self._cache.promote(i)
                    if promoted is None:  # unreadable: load it again
                        where = None
                    elif not promoted and self._ram_full():
                        self._promoting = False
        except BaseException:
            self._flights.cancel(flight)  # nobody may wait for it forever
            raise
        if usable and where is None:
            return i, flight
        self._flights.cancel(flight)  # waiters find it in the cache
        if usable:
            self._done("preload_promotions" if promoted else "preload_skips")
        return None

    def _ram_full(self) -> bool:
        """Whether the RAM tier is too full for more promotions to be worth their reads.

        A promotion that failed says little alone (the sample was too big, or a put overtook
        it): promotions stop once less than one mean entry, or ``1 - _RAM_FULL`` of the
        budget, is free.
        """
        stats = self._cache.stats()
        free = self._cache.ram_budget - stats.ram_bytes
        mean = stats.ram_bytes // stats.ram_items if stats.ram_items else 0
        return free < max(mean, (1 - _RAM_FULL) * self._cache.ram_budget)

    def _cache_full(self) -> None:
        with self._cond:
            first = self._life.end_early()
        if first:
            self._failures.report_full(self._cache.ram_budget, self._cache.disk_budget)

    def _report_error(self, index: object, exc: BaseException) -> None:
        self._failures.report(index, exc)

    # -- bookkeeping -----------------------------------------------------------------------------

    def _done(self, counter: str) -> None:
        self._flights.count(counter)
        with self._cond:
            self.processed += 1

    def _release(self, slot: Slot, *, completed: int, counter: str | None = None) -> None:
        if counter is not None:
            self._flights.count(counter)
        with self._cond:
            self.processed += completed
            if self._slots.release(slot, completed=completed, now=time.monotonic()):
                self._cond.notify_all()  # the limit changed: the coordinator starts threads

    # -- visibility ------------------------------------------------------------------------------

    def _refresh(self, *, final: bool = False) -> None:
        """Update the progress bar and log scalars when due (coordinator thread only)."""
        slots = self._slots
        status = Status(time.monotonic(), self.processed, slots.active, slots.limit)
        if self._progress.refresh(status, self._read_stats, final=final) and final:
            counters = self._flights.counters()
            ours = {name: counters[name] - self._counted[name] for name in counters}
            failed = self.error is not None
            self._progress.report(ours, failed=failed, now=status.now, tuning=slots.describe())

    def _read_stats(self) -> CacheStats | None:
        """The cache's statistics; None once the store may no longer be used."""
        with self._guard.open() as usable:
            return self._stats() if usable else None

    # -- fork ------------------------------------------------------------------------------------

    # The child of a fork (a DataLoader worker) has none of our threads and never uses the
    # parent's preload: nothing to prepare, and the child starts from a stopped state with
    # new locks (any of the old ones may have been held by a thread of the parent).
    def _before_fork(self) -> None:
        pass

    def _after_fork_in_parent(self) -> None:
        pass

    def _after_fork_in_child(self) -> None:
        self._cond = Condition()
        self._order_lock = threading.Lock()
        self._guard = StoreGuard(closed=True)
        self._life = Lifecycle(self._cond, State.STOPPED)
        self._pool = self._slots.active = 0
        self._coordinator = None


_live: weakref.WeakSet[Preloader] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    """Stop running preloads before the stores close at exit (atexit runs this one first)."""
    for preloader in list(_live):
        with contextlib.suppress(Exception):
            preloader.stop()
