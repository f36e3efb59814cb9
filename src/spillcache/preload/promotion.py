"""Looking an index up before the preload loads it; promoting disk entries into free RAM.

An index a tier holds is not loaded again. One only the disk tier holds is copied into the RAM
tier (*promoted*) while the RAM tier has room: the preload fills free RAM in the order training
will read, then only the disk.
"""

from __future__ import annotations

import enum

from .run import PreloadRun

__all__ = ["Found", "Promotion"]

# Share of the RAM budget in use from which the preload no longer promotes disk entries.
_RAM_FULL = 0.95


class Found(enum.Enum):
    """What looking an index up found."""

    #: No tier holds it (or its entry is unreadable): load it.
    MISSING = "missing"
    #: A tier holds it: skip it.
    CACHED = "cached"
    #: Only the disk tier held it, and it is now in the RAM tier too.
    PROMOTED = "promoted"
    #: The store may no longer be used (the preload is stopped).
    CLOSED = "closed"


class Promotion:
    """Looks indices up in the cache, promoting disk entries until the RAM tier is nearly full.

    Parameters
    ----------
    run : PreloadRun
        The preload's shared state (its cache and store guard).
    """

    def __init__(self, run: PreloadRun) -> None:
        self._run = run
        self._promoting = run.cache.ram_budget > 0

    def find(self, key: int) -> Found:
        """Look ``key`` up (and promote it when it is only on disk and RAM has room)."""
        with self._run.guard.open() as usable:
            if not usable:
                return Found.CLOSED
            where = self._run.cache.where(key)
            if where == "disk" and self._promoting:
                return self._promote(key)
            return Found.MISSING if where is None else Found.CACHED

    def _promote(self, key: int) -> Found:
        promoted = self._run.cache.promote(key)
        if promoted is None:  # unreadable: load it again
            return Found.MISSING
        if not promoted and self._ram_full():
            self._promoting = False
        return Found.PROMOTED if promoted else Found.CACHED

    def _ram_full(self) -> bool:
        """Whether the RAM tier is too full for more promotions to be worth their reads.

        A promotion that failed says little alone (the sample was too big, or a put overtook
        it): promotions stop once less than one mean entry, or ``1 - _RAM_FULL`` of the
        budget, is free.
        """
        cache = self._run.cache
        stats = cache.stats()
        free = cache.ram_budget - stats.ram_bytes
        mean = stats.ram_bytes // stats.ram_items if stats.ram_items else 0
        return free < max(mean, (1 - _RAM_FULL) * cache.ram_budget)
