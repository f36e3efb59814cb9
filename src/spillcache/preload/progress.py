"""What a preload reports: its counters, progress bar, TensorBoard scalars and log lines.

The counters (:data:`~spillcache.flight.PRELOAD_COUNTERS`, ``CacheStats`` field names) are
kept by the cache's :class:`~spillcache.flight.SingleFlight`, shared by every preload of it. A
:class:`Progress` shows one preload's bar on stderr and logs its scalars (from its
coordinator thread only); :class:`Failures` warns once per kind of failed load, and of a full cache.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from ..stats import CacheStats
from ..summary import StatsLogger

__all__ = ["REFRESH_SECONDS", "Failures", "Progress", "Status"]

# The package's name, not this module's: the logger users configure and filter by.
logger = logging.getLogger("spillcache.preload")

#: How often the progress bar is refreshed (and the coordinator wakes up to do it, when
#: nothing else wakes it).
REFRESH_SECONDS = 0.25
# Scalars are logged every ``log_every`` processed indices, and at least this often.
_LOG_SECONDS = 10.0


@dataclasses.dataclass(frozen=True)
class Status:
    """Where a preload stands: what the bar shows and the scalars tell."""

    now: float
    processed: int
    in_flight: int
    limit: int


class Progress:
    """The progress bar and the TensorBoard scalars of one preload (coordinator thread only).

    Parameters
    ----------
    total : int or None
        Number of indices, for the bar.
    bar : bool
        Show a tqdm progress bar on stderr.
    summary : StatsLogger or None
        Where to log scalars, every ``summary.every`` processed indices.
    ram_budget : int
        The cache's RAM budget (the bar shows how full it is).
    """

    def __init__(
        self, *, total: int | None, bar: bool, summary: StatsLogger | None, ram_budget: int
    ) -> None:
        self._total = total
        self._wants_bar = bar
        self._summary = summary
        self._ram_budget = ram_budget
        self._bar: Any = None
        self._started_at = self._refreshed_at = self._logged_at = 0.0
        self._logged = 0

    def begin(self, now: float) -> None:
        """Take ``now`` as the start of the preload."""
        self._started_at = self._refreshed_at = self._logged_at = now

    def open(self) -> None:
        """Show the bar, if wanted (a bar that fails is dropped)."""
        with self._bar_errors():
            self._bar = self._open_bar()

    def close(self) -> None:
        """Remove the bar."""
        bar, self._bar = self._bar, None
        if bar is not None:
            with self._bar_errors():
                bar.close()

    def refresh(
        self, status: Status, read_stats: Callable[[], CacheStats | None], *, final: bool
    ) -> bool:
        """Update the bar and log scalars when due; whether it did.

        ``read_stats()`` returns the cache's statistics, or None once the store may no longer
        be read (then nothing is done).
        """
        due_log = self._summary is not None and (
            final
            or status.processed - self._logged >= self._summary.every
            or status.now - self._logged_at >= _LOG_SECONDS
        )
        due_bar = self._bar is not None and status.now - self._refreshed_at >= REFRESH_SECONDS
        if not (final or due_log or due_bar):
            return False
        stats = read_stats()
        if stats is None:
            return False
        self._refreshed_at = status.now
        if self._bar is not None:
            with self._bar_errors():
                self._show(self._bar, stats, status)
        if due_log and self._summary is not None:
            self._log(self._summary, stats, status)
        return True

    def report(self, counts: dict[str, int], *, failed: bool, now: float, tuning: str) -> None:
        """Log the last line of a preload: what it did (``counts``), in how long."""
        logger.log(
            logging.WARNING if failed else logging.INFO,
            "preload %s %.1f s: %d loaded, %d skipped, %d promoted, %d failed%s",
            "failed after" if failed else "done in",
            now - self._started_at,
            counts["preload_loads"],
            counts["preload_skips"],
            counts["preload_promotions"],
            counts["preload_errors"],
            tuning,
        )

    def _log(self, summary: StatsLogger, stats: CacheStats, status: Status) -> None:
        processed = status.processed
        rate = (processed - self._logged) / max(status.now - self._logged_at, 1e-9)
        summary.log_preload(
            {
                "spillcache/preload_items_per_s": rate,
                "spillcache/preload_in_flight": status.in_flight,
                "spillcache/preload_concurrency": status.limit,
                "spillcache/preload_processed": processed,
            },
            processed - self._logged,
        )
        summary.log_stats(stats)
        self._logged_at, self._logged = status.now, processed

    def _open_bar(self) -> Any:
        if not self._wants_bar:
            return None
        # Imported when needed: most runs (no TTY) show no bar (cost: docs/design.rst).
        from tqdm.auto import tqdm  # noqa: PLC0415

        return tqdm(
            total=self._total,
            desc="spillcache preload",
            unit=" samples",
            file=sys.stderr,
            dynamic_ncols=True,
            mininterval=REFRESH_SECONDS,
            leave=False,
        )

    def _show(self, bar: Any, stats: CacheStats, status: Status) -> None:
        budget = self._ram_budget
        ram = f"RAM {100 * stats.ram_bytes / budget:.0f}%" if budget else "RAM off"
        bar.set_postfix_str(
            f"{ram}, disk {bar.format_sizeof(stats.disk_bytes, 'B', 1024)}, "
            f"in flight {status.in_flight}/{status.limit}",
            refresh=False,
        )
        bar.update(status.processed - bar.n)

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


class Failures:
    """Warns of the first failed load of each exception type; later ones are only counted.

    Parameters
    ----------
    path : os.PathLike
        The store's directory, for the warning.
    """

    def __init__(self, path: object) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._reported: set[type[BaseException]] = set()

    def report(self, index: object, exc: BaseException) -> None:
        """Loading (or storing) ``index`` raised ``exc``."""
        kind = type(exc)
        with self._lock:
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
                self._path,
                kind.__name__,
                exc_info=exc,
            )

    def report_full(self, ram_budget: int, disk_budget: object) -> None:
        """Warn that a full cache stopped the preload early."""
        logger.warning(
            "the preload of the store at %s stopped early: the cache is full (the RAM tier "
            "is at ram_budget=%d bytes and the store refuses new entries: disk_budget=%s or "
            "too little free disk space, see stats().rejected)",
            self._path,
            ram_budget,
            disk_budget,
        )
