"""The preload engine: a background fill that follows the sampler and adapts to the storage.

A :class:`Preloader` walks the indices a sampler is about to draw and has a pool of daemon
threads load the ones neither tier holds, each sample inserted as soon as it is loaded. Its
pieces:

* :func:`preview_order` turns a sampler into the indices it will yield without disturbing it
  (a random sampler is previewed from a *copy* of its generator state).
* the cache's :class:`~spillcache.flight.SingleFlight` records which indices are being loaded
  right now, by the preload or by training, so that every index is loaded once: training
  joins a preload load in progress, and the preload skips what training is loading.
* A hill-climbing tuner sets the number of loads in flight (``threads="auto"``): it doubles
  the count while the measured throughput grows, backs off when it stops, and probes up and
  down now and then. Throughput comes from Little's law (mean number in flight / mean time a
  load holds its slot), which, unlike counting completions in a short window, is not fooled by
  loads that finish in waves.
* Memory stays flat: at most ``threads`` loaded samples exist outside the cache, the RAM tier
  only takes free space (it never evicts for the preload), and the disk tier's writer bounds
  what is queued.
* :meth:`Preloader.stop` returns at once: the rest of the order is dropped, and a load stuck
  in user code is left to finish on its own daemon thread, whose result then reaches any
  training thread waiting for it, which caches it, but never the store from that thread (a
  guard keeps every thread of the preload away from the store once it is stopped, which
  ``close()`` and interpreter exit always do first).
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import dataclasses
import inspect
import itertools
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sized
from typing import Any, Literal, Protocol, cast

import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    RandomSampler,
    Sampler,
    SequentialSampler,
    SubsetRandomSampler,
    WeightedRandomSampler,
)

from . import forksafe
from .cache import SpillCache
from .flight import PRELOAD_COUNTERS, Flight, SingleFlight
from .indices import check_index
from .stats import CacheStats
from .userwarn import warn

__all__ = [
    "AUTO_MAX_THREADS",
    "Preloader",
    "StatsLogger",
    "check_log_every",
    "check_threads",
    "preview_order",
]

logger = logging.getLogger(__name__)

Threads = int | Literal["auto"]

#: Upper bound of ``threads="auto"``: enough for a network file system with tens of
#: milliseconds of latency, few enough that a machine is never swamped (ask for more with an
#: explicit count).
AUTO_MAX_THREADS = 64
# The tuner works on log2(concurrency): a doubling is kept when it brings at least this much
# more throughput. Doubling gives 2x on storage that is latency-bound and 1x on storage that is
# saturated; 1.2 is above the noise of a window and catches the partial gains of a machine
# whose CPUs are shared with other work.
_GROW = 1.2
# A halving is kept when it costs at most this much throughput (fewer threads for the same
# rate). Together with _GROW this leaves a dead band, so the tuner does not oscillate.
_KEEP = 0.87
# Windows at the chosen concurrency between two probes: the first probe after a climb comes
# after _FIRST_PROBE_WINDOWS, the next after _HOLD_WINDOWS, doubling while probes change
# nothing (a probe costs throughput) up to _MAX_HOLD_WINDOWS.
_FIRST_PROBE_WINDOWS = 2
_HOLD_WINDOWS = 8
_MAX_HOLD_WINDOWS = 64
# Windows in a row whose rate leaves the dead band around the held rate before the tuner
# takes it for a change of the storage and probes at the short interval again.
_DRIFT_WINDOWS = 3
# A measurement window closes once it saw this many completions (and two per slot) and lasted
# this long. After a change, a window starts only once every load begun under the previous
# setting is done and then one load per slot more: the first loads at a new setting meet
# queues (at a semaphore, at the GIL) that are still building up, and would look fast.
_WINDOW_COMPLETIONS = 4
_WINDOW_SECONDS = 0.05
# How often the coordinator wakes up to refresh the progress bar and log, when nothing else
# wakes it.
_REFRESH_SECONDS = 0.25
# Scalars are logged every ``log_every`` processed indices, and at least this often.
_LOG_SECONDS = 10.0
# How often a StatsLogger's thread looks at the counters (of DataLoader workers, mostly).
_WATCH_SECONDS = 0.2
# Indices a load thread of the preload asks a batched source (``__getitems__``) for at once.
_PRELOAD_BATCH = 32
# stop() waits this long for the coordinator to notice.
_STOP_JOIN_SECONDS = 0.5
# Tuner measurements kept in ``Preloader.tuning``.
_TUNING_KEPT = 64
# Share of the RAM budget in use from which the preload no longer promotes disk entries.
_RAM_FULL = 0.95


def check_threads(value: object, name: str = "preload_threads") -> Threads:
    """``value`` if it is a positive int or ``"auto"``.

    Raises ``TypeError`` for other types (``bool``, ``float``, ...) and ``ValueError`` for other
    values (``0``, ``"fast"``).
    """
    if value == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f'{name}={value!r} is not an int; use a positive int or "auto"')
    if isinstance(value, str) or value < 1:
        raise ValueError(f'{name}={value!r} is invalid; use a positive int or "auto"')
    return value


def check_log_every(every: object) -> int:
    """``every`` if it is a positive int (``TypeError`` for other types, else ``ValueError``)."""
    if isinstance(every, bool) or not isinstance(every, int):
        raise TypeError(f"log_every={every!r} is not an int; use a positive int")
    if every < 1:
        raise ValueError(f"log_every={every!r} is invalid; use a positive int")
    return every


# -- the order -------------------------------------------------------------------------------

# Samplers whose iteration draws only from ``self.generator``: a shallow copy holding a clone
# of that generator yields exactly what the original will.
_GENERATOR_SAMPLERS = (RandomSampler, SubsetRandomSampler, WeightedRandomSampler)
# Samplers whose iteration has no side effects at all.
_PURE_SAMPLERS = (SequentialSampler, DistributedSampler)


def preview_order(order: object, length: int) -> tuple[Iterator[object], int | None]:
    """The indices ``order`` will yield, obtained without changing what it will yield.

    Call it at the moment the preload starts: a random sampler's generator state is copied
    *now*, so training that draws from the sampler afterwards gets exactly the previewed
    permutation.

    Parameters
    ----------
    order : None, iterable of int, sampler or DataLoader
        ``None``: ``0 .. length - 1``. An iterable (list, range, array, ...) is iterated lazily,
        in the preload's thread. Samplers that can be previewed: ``SequentialSampler``,
        ``DistributedSampler`` (its order depends only on seed and epoch: call ``set_epoch``
        first), ``RandomSampler``, ``SubsetRandomSampler`` and ``WeightedRandomSampler`` with an
        explicit ``generator``, and a ``BatchSampler`` of any of them. A ``DataLoader`` is
        previewed through its batch sampler (or sampler), for the next iterator it creates
        (a ``DataLoader`` with ``persistent_workers=True`` matches only in its first epoch).
        Any other sampler cannot be previewed without risking a side effect: it gets a
        warning and ``0 .. length - 1``.
    length : int
        Length of the data set.

    Returns
    -------
    indices : iterator
        The indices (not yet checked: the preload counts invalid ones as errors).
    total : int or None
        How many indices there are, when known.

    Raises
    ------
    TypeError
        If ``order`` is neither ``None``, an iterable, a sampler nor a ``DataLoader``.
    """
    if order is None:
        return iter(range(length)), length
    if isinstance(order, DataLoader):
        indices, total, advice = _preview_loader(order)
    elif isinstance(order, Sampler):
        indices, total, advice = _preview_sampler(order, None)
    elif isinstance(order, (str, bytes)) or not isinstance(order, Iterable):
        raise TypeError(
            f"order must be None, an iterable of indices, a sampler or a DataLoader, not "
            f"{type(order).__name__}"
        )
    else:
        return iter(order), len(order) if isinstance(order, Sized) else None
    if indices is None:
        warn(
            f"the preload cannot follow this sampler's order: {advice}; preloading in index "
            f"order 0..{length - 1} instead",
            UserWarning,
        )
        return iter(range(length)), length
    return indices, total


_Preview = tuple[Iterator[object] | None, int | None, str]


def _preview_loader(loader: DataLoader[Any]) -> _Preview:
    # With batching the loader draws from its batch sampler alone: given as
    # ``batch_sampler=``, it leaves ``loader.sampler`` an unused SequentialSampler.
    drawn = loader.sampler if loader.batch_sampler is None else loader.batch_sampler
    sampler = cast(Sampler[Any], drawn)
    inner = sampler.sampler if type(sampler) is BatchSampler else sampler
    shared = (
        loader.generator is not None
        and type(inner) in _GENERATOR_SAMPLERS
        and getattr(inner, "generator", None) is loader.generator
    )
    if not shared:
        return _preview_sampler(sampler, None)
    # A new DataLoader iterator draws its workers' base seed from ``loader.generator`` before
    # the sampler's first draw from the same generator (``DataLoader(shuffle=True,
    # generator=g)``): replay that draw on the copy.
    generator = _clone_generator(loader.generator)
    torch.empty((), dtype=torch.int64).random_(generator=generator)
    return _preview_sampler(sampler, generator)


def _preview_sampler(sampler: Sampler[Any], generator: torch.Generator | None) -> _Preview:
    """``(indices, total, "")``, or ``(None, None, advice)`` if it cannot be previewed."""
    kind = type(sampler)
    if kind is BatchSampler:
        # The batches hold the inner sampler's indices in its order (a dropped last batch
        # is merely preloaded for nothing).
        return _preview_sampler(sampler.sampler, generator)  # type: ignore[attr-defined]
    total = len(sampler) if isinstance(sampler, Sized) else None
    if kind in _PURE_SAMPLERS:
        return iter(sampler), total, ""
    if kind in _GENERATOR_SAMPLERS:
        own = getattr(sampler, "generator", None)
        if own is not None:
            twin = copy.copy(sampler)
            twin.generator = generator if generator is not None else _clone_generator(own)  # type: ignore[attr-defined]
            return iter(twin), total, ""
        return (
            None,
            None,
            f"the {kind.__name__} has no generator, so its order is drawn from torch's global "
            f"random state when training iterates it and cannot be known in advance; give it "
            f"one: {kind.__name__}(..., generator=torch.Generator().manual_seed(seed)), or "
            f"DataLoader(..., shuffle=True, generator=torch.Generator().manual_seed(seed))",
        )
    return (
        None,
        None,
        f"spillcache cannot tell whether iterating a {kind.__name__} has side effects; pass "
        f"order= an iterable of the indices training will draw, or one of the samplers "
        f"spillcache can preview (SequentialSampler, DistributedSampler, or RandomSampler, "
        f"SubsetRandomSampler, WeightedRandomSampler with a generator)",
    )


def _clone_generator(generator: torch.Generator) -> torch.Generator:
    twin = torch.Generator(device=generator.device)
    twin.set_state(generator.get_state())
    return twin


class _Guard:
    """Lets threads use the store until it is closed; closing waits for the current users."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._users = 0
        self.closed = False

    @contextlib.contextmanager
    def open(self) -> Iterator[bool]:
        """Yield whether the store may be used; it stays usable until the block ends."""
        with self._cond:
            entered = not self.closed
            self._users += entered
        try:
            yield entered
        finally:
            if entered:
                with self._cond:
                    self._users -= 1
                    if not self._users:
                        self._cond.notify_all()

    def close(self) -> None:
        """Refuse new users and wait until the current ones are done (they never block long)."""
        with self._cond:
            self.closed = True
            while self._users:
                self._cond.wait()


# -- adaptive concurrency --------------------------------------------------------------------


class _Tuner:
    """Hill climbing of the concurrency on a log2 scale, fed one throughput per window.

    Starts at 1 and doubles while a doubling raises throughput by ``_GROW``. Then it holds
    the best level and probes one step down (kept if it loses less than ``1 - _KEEP``:
    fewer threads for the same rate) or up (kept, and climbing resumes, if it gains
    ``_GROW``). The first probe after a climb goes down, soon, to undo a step that only
    looked useful; later probes alternate, and each one that changes nothing doubles the
    windows until the next, up to ``_MAX_HOLD_WINDOWS``. A rate that stays out of the dead
    band for ``_DRIFT_WINDOWS`` windows brings the probes back to ``_HOLD_WINDOWS``. It never
    runs more than twice the level it holds, and that only for one window.
    """

    def __init__(self, maximum: int) -> None:
        self.limit = 1
        self._max = maximum
        self._base = 1
        self._base_rate = self._reference = 0.0
        self._phase: Literal["start", "grow", "hold", "up", "down"] = "start"
        self._held = self._outside = 0
        self._wait = self._interval = _HOLD_WINDOWS
        self._up_next = False

    def observe(self, rate: float) -> int:
        """Take the throughput measured at ``self.limit``; return the next limit."""
        phase = self._phase
        if phase == "start":
            self._base_rate = rate
            self._climb()
        elif phase in ("grow", "up"):
            if rate >= self._base_rate * _GROW:
                self._base, self._base_rate = self.limit, rate
                self._interval = _HOLD_WINDOWS
                self._climb()
            elif phase == "grow":
                self._hold(up_next=False, wait=_FIRST_PROBE_WINDOWS)
            else:
                self._hold(up_next=False, wait=self._backoff())
        elif phase == "down":
            if rate >= self._base_rate * _KEEP:
                self._base, self._base_rate = self.limit, rate
                self._interval = _HOLD_WINDOWS
                self._hold(up_next=False, wait=_FIRST_PROBE_WINDOWS)
            else:
                self._hold(up_next=True, wait=self._backoff())
        else:
            # Follow a storage whose speed drifts; one window is too noisy to replace it.
            self._base_rate = 0.5 * (self._base_rate + rate)
            inside = self._reference * _KEEP <= rate <= self._reference * _GROW
            self._outside = 0 if inside else self._outside + 1
            # Several windows in a row: the one after a probe is often off, which is no drift.
            if self._outside >= _DRIFT_WINDOWS:
                self._reference = self._base_rate
                self._interval = self._wait = _HOLD_WINDOWS
            self._held += 1
            if self._held >= self._wait:
                self._probe()
        return self.limit

    def _climb(self) -> None:
        if self._base < self._max:
            self.limit = min(self._max, 2 * self._base)
            self._phase = "grow"
        else:
            self._hold(up_next=False, wait=_FIRST_PROBE_WINDOWS)

    def _backoff(self) -> int:
        self._interval = min(_MAX_HOLD_WINDOWS, 2 * self._interval)
        return self._interval

    def _hold(self, *, up_next: bool, wait: int) -> None:
        self.limit = self._base
        self._phase = "hold"
        self._reference = self._base_rate
        self._held = self._outside = 0
        self._wait = wait
        self._up_next = up_next

    def _probe(self) -> None:
        can_up, can_down = self._base < self._max, self._base > 1
        self._held = 0
        if can_up and (self._up_next or not can_down):
            self.limit, self._phase = min(self._max, 2 * self._base), "up"
        elif can_down:
            self.limit, self._phase = self._base // 2, "down"


# -- visibility ------------------------------------------------------------------------------


class SummaryWriterLike(Protocol):
    """What spillcache needs of a ``tensorboardX.SummaryWriter``."""

    def add_scalar(self, tag: str, scalar_value: float, global_step: int | None = None) -> Any:
        """Record one scalar."""


class StatsLogger:
    """Writes cache statistics to TensorBoard, from the process that created it only.

    Each tag's steps only grow: the cache's statistics are logged at the number of requests
    counted so far (``stats().requests``: this process's and its DataLoader workers'), also
    when a preload logs them, and a preload's own scalars at the number of indices processed
    by all the preloads that logged here. Hit rates are those of the requests since the
    previous point (a warm epoch shows as 1.0), not since the start.

    Requests of this process are logged every ``every`` :meth:`tick` calls; once
    :meth:`watch` was called (the data set was handed to worker processes), a thread of this
    process also looks at the counters every 0.2 s and logs whenever they crossed another
    multiple of ``every`` requests.

    Parameters
    ----------
    writer : SummaryWriter, str or os.PathLike
        A ``tensorboardX.SummaryWriter`` (or anything with its ``add_scalar``), or a log
        directory for a new one, which :meth:`close` then closes.
    every : int
        Log the cache's statistics every ``every`` calls of :meth:`tick`.
    """

    def __init__(self, writer: SummaryWriterLike | str | os.PathLike[str], every: int) -> None:
        self.every = check_log_every(every)
        self._owned = isinstance(writer, (str, os.PathLike))
        if isinstance(writer, (str, os.PathLike)):
            # Imported when needed: importing tensorboardX takes seconds.
            from tensorboardX import SummaryWriter  # noqa: PLC0415

            self._writer: SummaryWriterLike = SummaryWriter(
                logdir=os.path.expanduser(os.fspath(writer))
            )
        elif callable(getattr(writer, "add_scalar", None)):
            self._writer = writer
        else:
            raise TypeError(
                f"summary_writer must be a SummaryWriter (with add_scalar) or a log directory, "
                f"not {type(writer).__name__}"
            )
        self._pid = os.getpid()
        # A request costs no lock and no system call: next() on a count is atomic under the
        # GIL, and _requests (the latest count) is a plain store.
        self._calls = itertools.count(1)
        self._requests = 0
        # Serializes the writes; _stats_step keeps the cache's steps from going back when two
        # threads log out of order.
        self._lock = threading.Lock()
        self._stats_step = self._preloaded = 0
        self._last = CacheStats()
        self._stats: Callable[[], Callable[[], CacheStats] | None] | None = None
        self._watcher: threading.Thread | None = None
        self._stop = threading.Event()
        forksafe.register(self)

    def follow(self, stats: Callable[[], CacheStats]) -> None:
        """Set what :meth:`watch`'s thread logs (``stats()``, the data set's statistics).

        A bound method is held weakly: the thread must not keep its data set alive (and
        ends once the data set is gone).
        """
        if inspect.ismethod(stats):
            self._stats = weakref.WeakMethod(stats)
        else:
            self._stats = lambda: stats

    def watch(self) -> None:
        """Start the thread that logs the requests of worker processes (once; idempotent)."""
        if os.getpid() != self._pid or self._stats is None or self._stop.is_set():
            return
        with self._lock:
            if self._watcher is not None:
                return
            self._watcher = threading.Thread(
                target=self._watch, args=(self._stats,), name="spillcache-stats", daemon=True
            )
            self._watcher.start()

    def _watch(self, ref: Callable[[], Callable[[], CacheStats] | None]) -> None:
        while not self._stop.wait(_WATCH_SECONDS):
            current = _read(ref)  # no reference to the data set is kept while we wait
            if current is None:  # the data set was collected
                return
            if isinstance(current, CacheStats):
                with self._lock:
                    if current.requests // self.every > self._last.requests // self.every:
                        self._log_locked(current)

    def tick(self, stats: Callable[[], CacheStats]) -> None:
        """Count one request; every ``every``-th logs ``stats()`` (call outside any lock)."""
        n = self._requests = next(self._calls)
        if n % self.every == 0:
            self.log_stats(stats())

    def log_stats(self, stats: CacheStats) -> None:
        """Log the counters of ``stats`` at the number of requests so far."""
        # Checked before taking the lock, which a thread of the parent may have held at a fork.
        if os.getpid() != self._pid:
            return
        with self._lock:
            self._log_locked(stats)

    def _log_locked(self, stats: CacheStats) -> None:
        """Log ``stats`` with the hit rates since the previous point (caller holds the lock)."""
        last, self._last = self._last, stats
        scalars: dict[str, float] = {}
        requests = stats.requests - last.requests
        if requests > 0:  # no rate for an interval without requests (a preload's, say)
            ram = stats.ram_hits - last.ram_hits
            scalars["spillcache/hit_rate"] = (ram + stats.disk_hits - last.disk_hits) / requests
            scalars["spillcache/ram_hit_rate"] = ram / requests
        scalars |= {
            "spillcache/ram_bytes": stats.ram_bytes,
            "spillcache/ram_items": stats.ram_items,
            "spillcache/disk_bytes": stats.disk_bytes,
            "spillcache/disk_items": stats.disk_items,
            "spillcache/rejected": stats.rejected,
            "spillcache/preload_errors": stats.preload_errors,
        }
        self._stats_step = max(self._stats_step, stats.requests)
        self._write(scalars, self._stats_step)

    def log_preload(self, scalars: dict[str, float], processed: int) -> None:
        """Log a preload's ``scalars`` after it processed ``processed`` more indices.

        The step is the total of ``processed`` over all calls: it goes on growing from one
        preload to the next.
        """
        if os.getpid() != self._pid:
            return
        with self._lock:
            self._preloaded += processed
            self._write(scalars, self._preloaded)

    def _write(self, scalars: dict[str, float], step: int) -> None:
        """Log ``scalars`` at ``step`` (caller holds the lock)."""
        for tag, value in scalars.items():
            self._writer.add_scalar(tag, value, step)

    def close(self) -> None:
        """Stop the thread of :meth:`watch`; close the writer if this logger created it."""
        if os.getpid() != self._pid:
            return
        self._stop.set()
        watcher = self._watcher
        if watcher is not None and watcher is not threading.current_thread():
            watcher.join()
        if self._owned:
            self._writer.close()  # type: ignore[attr-defined]

    # -- fork: a forked DataLoader worker counts its requests in our statistics --------------

    def _before_fork(self) -> None:
        pass

    def _after_fork_in_parent(self) -> None:
        self.watch()

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self._watcher = None


def _read(ref: Callable[[], Callable[[], CacheStats] | None]) -> CacheStats | bool | None:
    """``ref()()``: None if the data set is gone, False if reading failed."""
    stats = ref()
    if stats is None:
        return None
    try:
        return stats()
    except Exception as exc:  # the cache was closed under us: close() comes next
        logger.debug("reading the statistics to log failed: %r", exc)
        return False


# -- the preloader ---------------------------------------------------------------------------


@dataclasses.dataclass
class _Slot:
    """One pass of a load thread: find the next index to load, load it, store it."""

    epoch: int
    reserved_at: float


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
        Where samples go.
    load : callable
        ``load(index)`` returns the sample (``dataset[index]``).
    indices : iterator
        What :func:`preview_order` returned.
    length : int
        Length of the data set (indices outside it are counted as errors and skipped).
    total : int or None
        Number of indices, for the progress bar.
    threads : int or "auto"
        Loads in flight: a fixed count, or tuned to the storage between 1 and
        :data:`AUTO_MAX_THREADS`.
    flights : SingleFlight
        Shared with training.
    progress : bool
        Show a tqdm progress bar on stderr.
    stats : callable
        Returns the cache's statistics (for the bar and TensorBoard).
    summary : StatsLogger or None
        Where to log scalars, every ``summary.every`` processed indices.
    load_many : callable or None
        ``load_many(indices)`` returns their samples, in order (a batched source's
        ``__getitems__``): each load thread then loads up to 32 indices per call.

    Attributes
    ----------
    limit : int
        Loads allowed in flight now.
    peak_limit, peak_threads : int
        Highest limit and largest number of load threads so far.
    processed : int
        Indices done with: loaded, skipped, promoted or failed.
    tuning : list of (float, int, float)
        With ``threads="auto"``, the last measurements: seconds since the start,
        concurrency, samples per second. They tell how the storage scales: rates that double
        with the concurrency mean latency-bound storage; a rate that stops growing at some
        concurrency means an IOPS or CPU limit.
    error : BaseException or None
        What ended the preload early, if anything did.
    """

    def __init__(
        self,
        cache: SpillCache,
        load: Callable[[int], object],
        indices: Iterator[object],
        *,
        length: int,
        total: int | None,
        threads: Threads,
        flights: SingleFlight,
        progress: bool,
        stats: Callable[[], CacheStats],
        summary: StatsLogger | None = None,
        load_many: Callable[[list[int]], list[Any]] | None = None,
    ) -> None:
        self._cache = cache
        self._load = load
        self._load_many = load_many
        self._indices = indices
        self._length = length
        self._total = total
        self._flights = flights
        self._progress = progress
        self._stats = stats
        self._summary = summary
        self._tuner = _Tuner(AUTO_MAX_THREADS) if threads == "auto" else None
        self._cond = threading.Condition(threading.Lock())
        # Serializes the order's iterator (a generator cannot be advanced by two threads).
        self._order_lock = threading.Lock()
        self._guard = _Guard()
        self._finished = threading.Event()
        self._started = self._stopping = self._stopped = self._exhausted = False
        self._coordinator: threading.Thread | None = None
        # The progress bar, if any (coordinator thread only).
        self._bar: Any = None
        self.error: BaseException | None = None
        # Promote disk entries into RAM until it is (nearly) full.
        self._promoting = cache.ram_budget > 0
        # The shared counters when this preload started: its summary reports the difference.
        self._counted = dict.fromkeys(PRELOAD_COUNTERS, 0)
        self._reported: set[type[BaseException]] = set()
        self.limit = self.peak_limit = 1 if threads == "auto" else threads
        self.peak_threads = self._pool = 0
        self.processed = 0
        self.tuning: list[tuple[float, int, float]] = []
        # Slots in flight, and the tuner's measurement window: ``_area`` integrates the slots
        # in flight over time since ``_window_start``; ``_window_busy`` sums the time each
        # completed slot was held. A window starts only once the ``_old`` slots reserved under
        # an earlier limit are all released, and ``_settling`` more slots after that.
        self._active = 0
        self._epoch = self._old = self._settling = 0
        self._window_start: float | None = None
        self._area = self._area_at = self._window_busy = 0.0
        self._window_done = 0
        self._started_at = self._refreshed_at = self._logged_at = 0.0
        self._logged = 0
        forksafe.register(self)

    # -- control ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the coordinator thread (once)."""
        with self._cond:
            if self._started:
                raise RuntimeError("a Preloader starts only once")
            self._started = True
            now = time.monotonic()
            self._started_at = self._refreshed_at = self._logged_at = now
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
        return self._started and not self._finished.is_set()

    @property
    def in_flight(self) -> int:
        """Load threads at work on a sample right now."""
        return self._active

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the preload is done or stopped; False if ``timeout`` expired first.

        Raises
        ------
        RuntimeError
            If the preload itself failed (e.g. iterating ``order`` raised); loads that raise
            are only counted.
        """
        if not self._finished.wait(timeout):
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
            first = not self._stopped
            self._stopped = self._stopping = True
            self._cond.notify_all()
        # Every call waits here, not only the first: a second stop() (a second Ctrl-C, the
        # exit hook) must not return while the first still waits for a thread in the store.
        self._guard.close()
        coordinator = self._coordinator
        if first and coordinator is not None and coordinator is not threading.current_thread():
            coordinator.join(_STOP_JOIN_SECONDS)
        self._finished.set()

    # -- the coordinator -------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            with self._bar_errors():
                self._bar = self._open_bar()
            while True:
                with self._cond:
                    ending = self._stopping or self._exhausted
                    if self._stopped or (ending and not self._pool):
                        break
                    spawn = 0 if ending else max(0, self.limit - self._pool)
                    self._pool += spawn
                    self.peak_threads = max(self.peak_threads, self._pool)
                    if not spawn:
                        self._cond.wait(_REFRESH_SECONDS)
                for _ in range(spawn):
                    threading.Thread(
                        target=self._work, name="spillcache-preload-load", daemon=True
                    ).start()
                self._refresh()
            if not self._stopped:
                self._refresh(final=True)
        except Exception as exc:  # the summary writer failed, or a thread did not start
            self._abort(exc)
        finally:
            bar, self._bar = self._bar, None
            try:
                if bar is not None:
                    with self._bar_errors():
                        bar.close()
            finally:
                self._finished.set()  # whatever happened: wait() must return

    def _open_bar(self) -> Any:
        if not self._progress:
            return None
        # Imported when needed: a tenth of a second that most runs (no TTY) never need.
        from tqdm.auto import tqdm  # noqa: PLC0415

        return tqdm(
            total=self._total,
            desc="spillcache preload",
            unit=" samples",
            file=sys.stderr,
            dynamic_ncols=True,
            mininterval=_REFRESH_SECONDS,
            leave=False,
        )

    @contextlib.contextmanager
    def _bar_errors(self) -> Iterator[None]:
        """Drop the progress bar if the block fails: the preload goes on without it."""
        try:
            yield
        except Exception as exc:  # e.g. EPIPE: stderr is a pipe nobody reads any more
            bar, self._bar = self._bar, None
            logger.warning("the preload's progress bar failed (%r); going on without it", exc)
            if bar is not None:
                with contextlib.suppress(Exception):
                    bar.close()

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
            self._stopping = True
            self._cond.notify_all()
        if first:
            logger.error("the preload failed: %r", exc, exc_info=exc)

    def _reserve(self) -> _Slot | None:
        """A slot for one more pass, or None when this thread must end (and has left)."""
        with self._cond:
            if self._stopping or self._exhausted or self._pool > self.limit:
                self._pool -= 1
                self._cond.notify_all()
                return None
            now = time.monotonic()
            self._add_active_locked(1, now)
            return _Slot(self._epoch, now)

    def _pass(self, slot: _Slot) -> None:
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
                if self._stopping or self._exhausted:
                    return None
                try:
                    raw = next(self._indices)
                except StopIteration:
                    self._exhausted = True
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
            first = not self._stopping
            self._stopping = True
            self._cond.notify_all()
        if first:
            logger.warning(
                "the preload of the store at %s stopped early: the cache is full (the RAM tier "
                "is at ram_budget=%d bytes and the store refuses new entries: disk_budget=%s or "
                "too little free disk space, see stats().rejected)",
                self._cache.path,
                self._cache.ram_budget,
                self._cache.disk_budget,
            )

    def _report_error(self, index: object, exc: BaseException) -> None:
        kind = type(exc)
        with self._cond:
            first = kind not in self._reported
            self._reported.add(kind)
        if first:
            logger.warning(
                "preloading index %r failed with %s: %s; it is not cached in the store at %s, "
                "and training loads it itself when it asks for it (further %s errors of this "
                "preload are only counted in stats().preload_errors)",
                index,
                kind.__name__,
                exc,
                self._cache.path,
                kind.__name__,
                exc_info=exc,
            )

    # -- bookkeeping -----------------------------------------------------------------------------

    def _done(self, counter: str) -> None:
        self._flights.count(counter)
        with self._cond:
            self.processed += 1

    def _release(self, slot: _Slot, *, completed: int, counter: str | None = None) -> None:
        if counter is not None:
            self._flights.count(counter)
        with self._cond:
            now = time.monotonic()
            self._add_active_locked(-1, now)
            self.processed += completed
            if slot.epoch != self._epoch:
                self._old -= 1
            elif self._window_start is None:
                # Settling (the very first load, too, pays for opening the store and starting
                # its writer).
                self._settling -= 1
                if self._settling <= 0 and not self._old:
                    self._start_window_locked(now)
            elif completed:
                self._window_done += 1
                self._window_busy += now - slot.reserved_at
                if self._tuner is not None:
                    self._tune_locked(self._tuner, now)

    def _add_active_locked(self, delta: int, now: float) -> None:
        self._area += self._active * (now - self._area_at)
        self._area_at = now
        self._active += delta

    def _start_window_locked(self, now: float) -> None:
        self._window_start = self._area_at = now
        self._area = self._window_busy = 0.0
        self._window_done = 0

    def _tune_locked(self, tuner: _Tuner, now: float) -> None:
        """Close a complete window and feed its throughput to the tuner.

        By Little's law, throughput = mean number in flight / mean time in flight; both
        means are smooth even when completions come in bursts.
        """
        start = self._window_start
        # A coarse clock can give loads a duration of zero: wait until some time was measured.
        if start is None or now - start < _WINDOW_SECONDS or self._window_busy <= 0:
            return
        if self._window_done < max(_WINDOW_COMPLETIONS, 2 * self.limit):
            return
        self._add_active_locked(0, now)
        rate = (self._area / (now - start)) / (self._window_busy / self._window_done)
        self.tuning.append((now - self._started_at, self.limit, rate))
        del self.tuning[:-_TUNING_KEPT]
        self._start_window_locked(now)
        limit = tuner.observe(rate)
        if limit != self.limit:
            self.limit = limit
            self.peak_limit = max(self.peak_limit, limit)
            self._epoch += 1
            self._old = self._active
            self._settling = limit
            self._window_start = None
            self._cond.notify_all()  # the coordinator starts threads

    # -- visibility ------------------------------------------------------------------------------

    def _refresh(self, *, final: bool = False) -> None:
        """Update the progress bar and log scalars when due (coordinator thread only)."""
        now = time.monotonic()
        processed = self.processed
        summary = self._summary
        due_log = summary is not None and (
            final
            or processed - self._logged >= summary.every
            or now - self._logged_at >= _LOG_SECONDS
        )
        due_bar = self._bar is not None and now - self._refreshed_at >= _REFRESH_SECONDS
        if not (final or due_log or due_bar):
            return
        with self._guard.open() as usable:
            stats = self._stats() if usable else None
        if stats is None:
            return
        self._refreshed_at = now
        if self._bar is not None:
            with self._bar_errors():
                self._show(self._bar, stats, processed)
        if due_log and summary is not None:
            rate = (processed - self._logged) / max(now - self._logged_at, 1e-9)
            summary.log_preload(
                {
                    "spillcache/preload_items_per_s": rate,
                    "spillcache/preload_in_flight": self._active,
                    "spillcache/preload_concurrency": self.limit,
                    "spillcache/preload_processed": processed,
                },
                processed - self._logged,
            )
            summary.log_stats(stats)
            self._logged_at, self._logged = now, processed
        if final:
            counters = self._flights.counters()
            ours = {name: counters[name] - self._counted[name] for name in counters}
            failed = self.error is not None
            logger.log(
                logging.WARNING if failed else logging.INFO,
                "preload %s %.1f s: %d loaded, %d skipped, %d promoted, %d failed%s",
                "failed after" if failed else "done in",
                now - self._started_at,
                ours["preload_loads"],
                ours["preload_skips"],
                ours["preload_promotions"],
                ours["preload_errors"],
                self._describe_tuning(),
            )

    def _show(self, bar: Any, stats: CacheStats, processed: int) -> None:
        budget = self._cache.ram_budget
        ram = f"RAM {100 * stats.ram_bytes / budget:.0f}%" if budget else "RAM off"
        bar.set_postfix_str(
            f"{ram}, disk {bar.format_sizeof(stats.disk_bytes, 'B', 1024)}, "
            f"in flight {self._active}/{self.limit}",
            refresh=False,
        )
        bar.update(processed - bar.n)

    def _describe_tuning(self) -> str:
        if self._tuner is None or not self.tuning:
            return ""
        by_level: dict[int, list[float]] = {}
        for _, level, rate in self.tuning:
            by_level.setdefault(level, []).append(rate)
        rates = ", ".join(
            f"{level}: {sorted(r)[len(r) // 2]:.0f}/s" for level, r in sorted(by_level.items())
        )
        return f"; loads in flight settled at {self.limit} (samples/s by loads in flight: {rates})"

    # -- fork ------------------------------------------------------------------------------------

    # The child of a fork (a DataLoader worker) has none of our threads and never uses the
    # parent's preload: nothing to prepare, and the child starts from a stopped state with
    # new locks (any of the old ones may have been held by a thread of the parent).
    def _before_fork(self) -> None:
        pass

    def _after_fork_in_parent(self) -> None:
        pass

    def _after_fork_in_child(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._order_lock = threading.Lock()
        self._guard = _Guard()
        self._guard.closed = True
        self._started = self._stopping = self._stopped = True
        self._pool = self._active = 0
        self._coordinator = None
        self._finished = threading.Event()
        self._finished.set()


_live: weakref.WeakSet[Preloader] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    """Stop running preloads before the stores close at exit (atexit runs this one first)."""
    for preloader in list(_live):
        with contextlib.suppress(Exception):
            preloader.stop()
