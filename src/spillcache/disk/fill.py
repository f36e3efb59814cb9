"""How full a store may get: ``disk_budget``, the free-space floor, and refusing puts while full.

Inside each write transaction, which holds the store's write lock, the entries of a batch that
would take the data file past the budget, or its file system below the floor, are refused
before they are written (:class:`~spillcache.disk.packgrowth.PackGrowth` bounds what they add). A
store that refused an entry then refuses puts at least as large for a while, without queueing
them.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Literal

import lmdb

from .packgrowth import PackGrowth
from .values import Stored

__all__ = ["FillPolicy"]

logger = logging.getLogger(__name__)

# A store that refused an entry refuses puts at least as large as it for this long, then
# lets the writer's check (inside the next write transaction) decide again.
_FILL_RECHECK_SECONDS = 1.0
# Without a disk_budget, a commit must leave the file system this much free: max(1 GiB, 5 %),
# but at most half of it (a 4 MiB tmpfs keeps 2 MiB free rather than refusing everything).
_MIN_FREE_BYTES = 1 << 30
_MIN_FREE_FRACTION = 0.05
_MAX_FREE_FRACTION = 0.5
# Free space is measured (statvfs) inside a write transaction at most this often, or when
# less than _FREE_MARGIN above the floor is left after the batch; in between, it is predicted
# from the growth of the data file, which every process sees in LMDB's meta page.
_FREE_SECONDS = 0.25
_FREE_MARGIN = 64 << 20


def _human(size: int) -> str:
    """``size`` bytes in the largest of KiB, MiB, GiB, TiB it reaches (bytes below 1 KiB)."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift:
            return f"{size / (1 << shift):.1f} {unit}"
    return "1 byte" if size == 1 else f"{size} bytes"


class FillPolicy:
    """The budget and free-space floor of one tier's store, and whether it is full.

    Parameters
    ----------
    path : pathlib.Path
        The store directory (its file system is measured).
    budget : int or None
        Bytes the data file never exceeds; ``None``: keep the file system's floor free.

    Attributes
    ----------
    budget : int or None
        As given; the latest user of the tier may change it.
    full : bool
        The store refused an entry recently: puts of :attr:`full_size` bytes or more are
        refused without queueing them (the methods ending in ``_locked`` change it, under
        the write queue's lock).
    """

    def __init__(self, path: Path, budget: int | None) -> None:
        self.path = path
        self.budget = budget
        self.full = False
        # While full, puts of this many bytes or more are refused without queueing them.
        self.full_size = 0
        self._checked_at = 0.0
        self._limit: Literal["budget", "floor"] = "budget"
        # The last statvfs of the store's file system: when, the floor it implies, the free
        # bytes, and the data file's size then.
        self._free_at = -_FREE_SECONDS
        self._fs_floor = 0
        self._fs_free = 0
        self._fs_file = 0

    def refuses_locked(self, size: int) -> bool:
        """Whether a put of ``size`` bytes is refused before it is queued."""
        if not self.full or size < self.full_size:
            return False
        if time.monotonic() - self._checked_at >= _FILL_RECHECK_SECONDS:
            self.full = False  # the writer's check decides what is stored
        return self.full

    def refused_locked(self, smallest: int) -> None:
        """The store refused entries, the smallest of ``smallest`` bytes: refuse as large."""
        self.full = True
        self.full_size = smallest
        self._checked_at = time.monotonic()

    def admitted(
        self,
        growth: PackGrowth,
        env: lmdb.Environment,
        items: list[tuple[int, Stored]],
        size: int,
        moved: list[tuple[int, bytes]],
    ) -> tuple[list[tuple[int, Stored]], bool]:
        """The entries of ``items`` (``size`` bytes) that fit the budget and the floor.

        ``moved``: the records a commit would move out of packs it reclaims; the second
        value says whether they fit too (they come first: moving them frees their packs).
        Inside the write transaction, which holds the store's write lock: the file size it
        reads is the one every process's commits made, so processes together stay within.
        """
        room = self._room_pages(growth.psize, int(env.info()["last_pgno"]))
        keys = [key for key, _ in moved] + [key for key, _ in items]
        extra = sum(len(raw) for _, raw in moved)
        if growth.pages_for_batch(keys, size + extra) <= room:
            return items, True
        for key, raw in moved:
            growth.add(key, len(raw))
        moving = growth.pages <= room
        if not moving:
            growth = growth.fresh()
        stored: list[tuple[int, Stored]] = []
        for key, value in items:
            if growth.pages_with(key, len(value)) <= room:
                growth.add(key, len(value))
                stored.append((key, value))
        return stored, moving

    def _room_pages(self, psize: int, last_page: int) -> int:
        """Pages the data file may still grow by: to ``budget``, and above the floor.

        ``last_page``: the environment's ``last_pgno``, read inside the write transaction:
        LMDB's meta page then holds the file size that every process's commits made.
        """
        file_bytes = (last_page + 1) * psize
        room = (1 << 62) if self.budget is None else self.budget - file_bytes
        # Other processes' commits grew the file too: the prediction counts them.
        usable = self._fs_free - max(0, file_bytes - self._fs_file) - self._fs_floor
        now = time.monotonic()
        if now - self._free_at >= _FREE_SECONDS or usable < _FREE_MARGIN:
            try:
                usable = self._measure(now, file_bytes)
            except OSError as exc:  # the budget still holds; the floor cannot be checked
                logger.debug("statvfs of %s failed: %s", self.path, exc)
                return room // psize
        self._limit = "budget" if room <= usable else "floor"
        return min(room, usable) // psize

    def _measure(self, now: float, file_bytes: int) -> int:
        """Measure the free space (statvfs); the bytes usable above the floor."""
        usage = os.statvfs(self.path)
        self._free_at = now
        total = usage.f_blocks * usage.f_frsize
        floor = max(_MIN_FREE_BYTES, int(_MIN_FREE_FRACTION * total))
        # With a budget, the floor is 0: the store only never writes past the free space.
        self._fs_floor = (
            0 if self.budget is not None else min(floor, int(_MAX_FREE_FRACTION * total))
        )
        self._fs_free = usage.f_bavail * usage.f_frsize
        self._fs_file = file_bytes
        return self._fs_free - self._fs_floor

    def message(self) -> str:
        """Why the store refuses new entries, and what to do about it."""
        path = str(self.path)
        hyrax = "cache_disk_budget in a Hyrax config"
        if self.budget is None:
            return (
                f"the store at {path!r} refuses new entries that would leave its file system "
                f"with less than {_human(self._fs_floor)} free, the floor kept when no "
                f"disk_budget is set; free some space, or set disk_budget ({hyrax}) to size the "
                "store yourself"
            )
        if self._limit == "budget":
            return (
                f"the store at {path!r} refuses new entries that would take it past its "
                f"disk_budget of {_human(self.budget)}; raise disk_budget ({hyrax}) to store more"
            )
        return (
            f"the store at {path!r} refuses new entries that do not fit in the "
            f"{_human(self._fs_free)} free on its file system, although its disk_budget of "
            f"{_human(self.budget)} is not reached; free some space or lower disk_budget "
            f"({hyrax})"
        )
