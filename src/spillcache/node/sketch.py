"""Access frequencies shared by every process of a node: a count-min sketch in a mapped file.

The same sketch as the process-local RAM tier's, hashed and updated by the same
:func:`spillcache.sketch.estimate` (a blocked 4-row count-min sketch of 8-bit
saturating counters, conservative update, all counters halved after 10 recorded accesses per
resident entry), laid out in a file on the tier's memory file system that every user maps.
Processes update counters without a lock: two processes raising the same counter at the same
moment lose one of the two increments, which only makes an estimate a little low for a while;
a torn counter cannot happen (counters are single bytes). Only halving takes the file's lock.
"""

from __future__ import annotations

import fcntl
import mmap
import os
from pathlib import Path

import numpy as np

from ..sketch import estimate

__all__ = ["SharedSketch"]

_MAGIC = 0x53504E4F44534B31  # "SPNODSK1"
_HEADER = 4096  # one page of header words; the counters start page-aligned after it
_W_MAGIC, _W_BYTES, _W_ADDS, _W_ITEMS = 0, 1, 2, 3
_AGING_PER_ENTRY = 10
_WIDTH_PER_ENTRY = 8
# Halving costs a pass over the whole table: at least this many table bytes per recorded
# access between halvings (~0.1 ns of a 1-10 us access), however few entries are resident.
_BYTES_PER_ADD = 256
_FLUSH = 16


class SharedSketch:
    """A frequency sketch in the file ``path``, mapped by every process that opens it.

    Parameters
    ----------
    path : Path
        The sketch file.
    nbytes : int or None
        Create the file with this many bytes of counters (a power of two, at least 64 KiB);
        None maps an existing one.

    Raises
    ------
    OSError
        If the file is missing, foreign or cannot be allocated (e.g. the file system is full:
        its pages are allocated up front, so a mapped counter never faults with SIGBUS).
    """

    def __init__(self, path: Path, nbytes: int | None = None) -> None:
        if nbytes is not None:
            _create(path, nbytes)
        fd = os.open(path, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            self._mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self._path = path
        raw = memoryview(self._mm)
        self._header = raw[:_HEADER].cast("Q")
        self._table = raw[_HEADER:]
        self._views: tuple[memoryview, ...] = (raw, self._header, self._table)
        if self._header[_W_MAGIC] != _MAGIC or self._header[_W_BYTES] != size - _HEADER:
            self.close()
            raise OSError(f"{path} is not a spillcache node sketch")
        self._mask = ((size - _HEADER) // 64 - 1) << 6
        self._max_entries = (size - _HEADER) // 4 // _WIDTH_PER_ENTRY
        self._min_entries = (size - _HEADER) // _BYTES_PER_ADD // _AGING_PER_ENTRY
        self._unflushed = 0

    @property
    def nbytes(self) -> int:
        """Bytes of counters."""
        return len(self._table)

    def publish_items(self, items: int) -> None:
        """Tell every process how many entries are resident (the aging period follows)."""
        self._header[_W_ITEMS] = items

    def frequency(self, key: int, record: bool) -> int:
        """Estimated recent access count of ``key``, after recording one access if ``record``.

        Parameters
        ----------
        key : int
            Sample index.
        record : bool
            Count one access of ``key`` first.
        """
        low = estimate(self._table, key, self._mask, record)
        if not record:
            return low
        self._count_one()
        return low

    def _count_one(self) -> None:
        # Counted locally, added to the shared count in batches: fewer stores to a shared line.
        self._unflushed += 1
        if self._unflushed < _FLUSH:
            return
        header = self._header
        header[_W_ADDS] += self._unflushed
        self._unflushed = 0
        entries = min(max(header[_W_ITEMS], self._min_entries), self._max_entries)
        if header[_W_ADDS] >= _AGING_PER_ENTRY * entries:
            self._halve(_AGING_PER_ENTRY * entries)

    def _halve(self, period: int) -> None:
        """Halve every counter, once, however many processes see the period pass together."""
        fd = os.open(self._path, os.O_RDWR)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX)
            if self._header[_W_ADDS] >= period:
                counters = np.frombuffer(self._table, dtype=np.uint8)
                np.right_shift(counters, 1, out=counters)
                self._header[_W_ADDS] = 0
        finally:
            os.close(fd)

    def clear(self) -> None:
        """Forget every count."""
        self._table[:] = bytes(len(self._table))
        self._header[_W_ADDS] = 0

    def close(self) -> None:
        """Unmap the file (every process maps its own). Idempotent."""
        for view in reversed(self._views):
            view.release()
        self._views = ()
        self._mm.close()


def _create(path: Path, nbytes: int) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.posix_fallocate(fd, 0, _HEADER + nbytes)
        with (
            mmap.mmap(fd, _HEADER + nbytes) as mm,
            memoryview(mm) as raw,
            raw[:_HEADER].cast("Q") as header,
        ):
            header[_W_MAGIC] = _MAGIC
            header[_W_BYTES] = nbytes
    finally:
        os.close(fd)
