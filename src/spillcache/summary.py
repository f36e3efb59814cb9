"""TensorBoard logging of a cache's statistics (and a preload's scalars).

A :class:`StatsLogger` writes through anything with ``tensorboardX.SummaryWriter``'s
``add_scalar`` (:class:`SummaryWriterLike`), from the process that created it only; a thread
of its own logs the requests counted by DataLoader worker processes.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, Protocol

from . import forksafe
from .settings import check_log_every
from .stats import CacheStats

__all__ = ["StatsLogger", "SummaryWriterLike"]

logger = logging.getLogger(__name__)

# How often a StatsLogger's thread looks at the counters (of DataLoader workers, mostly).
_WATCH_SECONDS = 0.2


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
            # Imported when needed: importing tensorboardX is slow (docs/design.rst).
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
        forksafe.register(in_parent=self._after_fork_in_parent, in_child=self._after_fork_in_child)

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
