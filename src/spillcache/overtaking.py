"""Disk reads in progress, and whether a put overtook each: what may enter the RAM tier.

A read of the disk tier runs outside the cache's lock; a ``put`` of the same key may land
meanwhile. The value that read returns is then older than the stored one and must not be
admitted into the RAM tier (it would be served until evicted). Like ram.py, no threads and no
I/O: the cache calls every method under its lock.
"""

from __future__ import annotations

__all__ = ["Overtaking"]


class Overtaking:
    """The keys being read from disk, counted per key, and those a put overtook."""

    __slots__ = ("_overtaken", "_reading")

    def __init__(self) -> None:
        self._reading: dict[int, int] = {}
        self._overtaken: set[int] = set()

    def start(self, key: int) -> None:
        """Note a read of ``key`` beginning."""
        self._reading[key] = self._reading.get(key, 0) + 1

    def done(self, key: int) -> bool:
        """End a read of ``key`` begun with :meth:`start`; whether a put overtook it."""
        overtaken = key in self._overtaken
        self._reading[key] -= 1
        if not self._reading[key]:
            del self._reading[key]
            self._overtaken.discard(key)
        return overtaken

    def put(self, key: int) -> None:
        """Note a put of ``key``: every read of it in progress is overtaken."""
        if key in self._reading:
            self._overtaken.add(key)
