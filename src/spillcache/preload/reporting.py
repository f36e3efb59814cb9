"""What a running preload shows and logs: its bar and scalars while it runs, a line when done.

The coordinator thread alone calls a :class:`Reporter`; it reads the cache's statistics only
while the store may be used, and reports the counters this preload added to the cache's
shared ones (:mod:`.progress` draws and formats).
"""

from __future__ import annotations

import time

from ..flight import PRELOAD_COUNTERS
from ..stats import CacheStats
from .options import PreloadOptions
from .progress import Progress, Status
from .run import PreloadRun

__all__ = ["Reporter"]


class Reporter:
    """The progress bar, the scalars and the last log line of one preload.

    Parameters
    ----------
    run : PreloadRun
        The preload's shared state.
    options : PreloadOptions
        Its settings (``progress``, ``summary``, ``stats``).
    total : int or None
        Number of indices, for the bar.
    """

    def __init__(self, run: PreloadRun, options: PreloadOptions, total: int | None) -> None:
        self._run = run
        self._stats = options.stats
        self._progress = Progress(
            total=total,
            bar=options.progress,
            summary=options.summary,
            ram_budget=run.cache.ram_budget,
        )
        # The shared counters when this preload started: its last line reports the difference.
        self._counted = dict.fromkeys(PRELOAD_COUNTERS, 0)

    def begin(self, now: float) -> None:
        """The preload starts at ``now``."""
        self._progress.begin(now)
        self._counted = self._run.flights.counters()

    def open(self) -> None:
        """Show the bar, if wanted."""
        self._progress.open()

    def close(self) -> None:
        """Remove the bar."""
        self._progress.close()

    def refresh(self, *, final: bool = False) -> None:
        """Update the bar and log scalars when due; ``final``: log the last line too."""
        run = self._run
        slots = run.slots
        status = Status(time.monotonic(), run.processed, slots.active, slots.limit)
        if self._progress.refresh(status, self._read_stats, final=final) and final:
            counters = run.flights.counters()
            ours = {name: counters[name] - self._counted[name] for name in counters}
            failed = run.error is not None
            self._progress.report(ours, failed=failed, now=status.now, tuning=slots.describe())

    def _read_stats(self) -> CacheStats | None:
        """The cache's statistics; None once the store may no longer be used."""
        with self._run.guard.open() as usable:
            return self._stats() if usable else None
