"""Change counters of a node tier, shared through a mapped file: puts, clears and joins.

An admission of a value read from the disk tier must not land after a newer put of the same
key (or a clear) in another process: it would serve the older value to every process. So
each put bumps its key's *stamp* (one of 4096 counters, by key) and each clear bumps all of
them (an epoch word), inside the tier's write transaction, which LMDB serializes across
processes. A reader takes the stamp before it looks for the key, and its admission is
declined if the stamp changed meanwhile (:meth:`NodeTier.admit`'s ``stamp``). Keys sharing a
counter only decline each other's admissions now and then (a put during a disk read).

Why the order is safe: a put commits the disk tier before it bumps the stamp, so a reader
that sees the new stamp reads the new value from disk; a reader that saw the old stamp
either admits before the put's transaction (which then replaces its entry) or after it (and
is declined). A put whose transaction failed must still not leave the key's older value
behind: if even removing it fails, ``taints`` counts it, and while it is non-zero the tier
serves nothing until an admission empties it (degrade.py). ``joins`` counts the processes
that ever attached, so that one process can tell another joined without a system call.
Words are 8-byte aligned stores: never torn.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

__all__ = ["NO_STAMP", "STAMPS_BYTES", "PutStamps"]

#: The stamp :meth:`NodeTier.fetch` gives when the tier holds another generation's values:
#: an admission with it is always declined (stamps are never negative).
NO_STAMP = -1

_MAGIC = 0x53504E4F44535431  # "SPNODST1"
_W_MAGIC, _W_EPOCH, _W_JOINS, _W_TAINTS = 0, 1, 2, 3
_FIRST = 8
_BUCKETS = 4096
#: Size of the stamps file, allocated up front (a mapped write never faults with SIGBUS).
STAMPS_BYTES = 8 * (_FIRST + _BUCKETS)


class PutStamps:
    """The change counters in the file ``path``, mapped by every process that opens it.

    Parameters
    ----------
    path : Path
        The stamps file.
    create : bool
        Create it (the tier's first user), with every page allocated.

    Raises
    ------
    OSError
        If the file is missing, foreign or cannot be allocated (a full file system).
    """

    def __init__(self, path: Path, *, create: bool = False) -> None:
        if create:
            _create(path)
        fd = os.open(path, os.O_RDWR)
        try:
            self._mm = mmap.mmap(fd, STAMPS_BYTES)
        finally:
            os.close(fd)
        raw = memoryview(self._mm)
        self._words = raw.cast("Q")
        self._views: tuple[memoryview, ...] = (raw, self._words)
        if self._words[_W_MAGIC] != _MAGIC:
            self.close()
            raise OSError(f"{path} is not a spillcache node stamps file")

    def read(self, key: int) -> int:
        """The stamp of ``key``: changes whenever ``key`` is put or the tier is cleared."""
        words = self._words
        return words[_W_EPOCH] + words[_FIRST + key % _BUCKETS]

    def bump(self, key: int) -> None:
        """A put of ``key`` (inside the tier's write transaction)."""
        self._words[_FIRST + key % _BUCKETS] += 1

    def bump_all(self) -> None:
        """A clear (inside the tier's write transaction)."""
        self._words[_W_EPOCH] += 1

    @property
    def taints(self) -> int:
        """Failed puts whose key may still hold an older value: nonzero, the tier serves none."""
        return self._words[_W_TAINTS]

    def taint(self, count: int) -> None:
        """Add ``count`` (negative: remove) to :attr:`taints`, under the tier's writer lock."""
        self._words[_W_TAINTS] += count

    @property
    def joins(self) -> int:
        """How many times a process attached to the tier."""
        return self._words[_W_JOINS]

    def count_join(self) -> None:
        """One more process attached (under the tier's gate, so never two at once)."""
        self._words[_W_JOINS] += 1

    def close(self) -> None:
        """Unmap the file (every process maps its own). Idempotent."""
        for view in reversed(self._views):
            view.release()
        self._views = ()
        self._mm.close()


def _create(path: Path) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.posix_fallocate(fd, 0, STAMPS_BYTES)
        with mmap.mmap(fd, STAMPS_BYTES) as mm, memoryview(mm) as raw, raw.cast("Q") as words:
            words[_W_MAGIC] = _MAGIC
    finally:
        os.close(fd)
