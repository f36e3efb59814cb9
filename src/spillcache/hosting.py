"""Hosting a preload: the one :class:`~spillcache.preload.Preloader` a cache wrapper runs.

:class:`~spillcache.CachedDataset` and Hyrax's ``DataCache`` (up to 0.8) each run at most one
preload on their cache at a time; :class:`PreloadHost` starts, waits for and stops it for both.
"""

from __future__ import annotations

import dataclasses

from .cache import SpillCache
from .preload import Preloader, PreloadOptions, preview_order
from .stats import CacheStats

__all__ = ["PreloadHost", "preload_stats"]


def preload_stats(cache: SpillCache, probe_errors: int = 0) -> CacheStats:
    """``cache.stats()`` with the preload counters of ``cache`` (and ``probe_errors``).

    A function of the cache, not a bound method of its wrapper: a preload holding it must not
    keep the wrapper alive (a reference cycle would hold the store open after ``del ds``
    until the cycle collector ran).
    """
    return dataclasses.replace(cache.stats(), **cache.flights.counters(), probe_errors=probe_errors)


class PreloadHost:
    """At most one preload of a cache wrapper: the current or last one, if any.

    Attributes
    ----------
    preloader : Preloader or None
        The current or last preload.
    """

    __slots__ = ("preloader",)

    def __init__(self) -> None:
        self.preloader: Preloader | None = None

    def start(self, cache: SpillCache, order: object, options: PreloadOptions) -> None:
        """Stop the preload running, if any, and start one of ``order`` on ``cache``.

        ``order`` is previewed first (see :func:`~spillcache.preload.preview_order`): an
        invalid one raises before the running preload is stopped.
        """
        indices, total = preview_order(order, options.length)
        self.stop()
        self.preloader = Preloader(cache, indices, options, total=total)
        self.preloader.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the preload to finish; False if ``timeout`` seconds passed first.

        True at once when no preload runs. Raises ``RuntimeError`` if the preload broke down.
        """
        preloader = self.preloader
        return True if preloader is None else preloader.wait(timeout)

    def stop(self) -> None:
        """Stop the preload, if any, without waiting for loads in progress."""
        if self.preloader is not None:
            self.preloader.stop()

    @property
    def running(self) -> bool:
        """Whether a preload is running."""
        return self.preloader is not None and self.preloader.running
