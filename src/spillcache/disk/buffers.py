"""The buffer pool of a tier: large values are encoded into buffers recycled after their commit.

A fresh buffer of a MiB costs page faults (glibc hands freed blocks that large back to the
kernel), so the buffers of committed values are kept for the next puts, and the writer keeps a
few of the size the RAM tier last kept ready, their pages touched (docs/design.rst, "Buffer
pool").
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable, Iterable

import numpy as np

from .values import Buffer, Deferred, Stored

__all__ = ["RECYCLE_MIN", "STOCK_BYTES", "BufferPool", "Kept", "fits"]

# Values at least this large are encoded into pool buffers; smaller ones cost no page faults.
RECYCLE_MIN = 64 << 10
# The writer keeps this many bytes of buffers of the size last kept ready, pages touched.
STOCK_BYTES = 2 << 20


class Kept(np.ndarray):
    """A buffer handed out for keeping (:meth:`BufferPool.take`): never taken back as a spare.

    Views of it outlive the write, and they refer to the buffer, not to the memoryview the
    writer releases, so only its type tells the writer to leave it alone.
    """


def fits(buffer: Buffer, size: int, keep: bool) -> bool:
    """Whether ``buffer`` may serve a value of ``size`` bytes (see :meth:`BufferPool.take`).

    A kept buffer must fit exactly: the RAM tier charges a sample its tensors' bytes, so
    unused bytes at the end of a kept buffer would be memory nobody accounts for.
    """
    return len(buffer) == size if keep else size <= len(buffer) <= 2 * size


class BufferPool:
    """Spare buffers, at most ``limit`` bytes of them, guarded by the tier's ``lock``.

    Parameters
    ----------
    lock : threading.Condition
        The lock of the tier's write queue, which recycles values while holding it.
    limit : int
        Bytes of spare buffers kept at most (a full write queue's worth).

    Attributes
    ----------
    spare : list of numpy.ndarray
        The spare buffers, oldest first.
    spare_bytes : int
        Their bytes.
    keep_size : int
        The size of the buffer last taken for keeping (0: none since the pool was emptied).
    """

    def __init__(self, lock: threading.Condition, limit: int) -> None:
        self.lock = lock
        self.limit = limit
        self.spare: list[Buffer] = []
        self.spare_bytes = 0
        self.keep_size = 0

    def take(self, size: int, *, keep: bool = False) -> Buffer | None:
        """A buffer of at least ``size`` bytes to encode a value into, or None if small.

        ``keep``: the caller keeps views of the value. The buffer then fits exactly, and
        :meth:`restock` prepares the next ones of this size.
        """
        if size < RECYCLE_MIN:
            return None
        with self.lock:
            if keep:
                self.keep_size = size
            spare = self.spare
            for i, buffer in enumerate(spare):
                if fits(buffer, size, keep):
                    del spare[i]
                    self.spare_bytes -= len(buffer)
                    break
            else:
                buffer = np.empty(size, np.uint8)
        return buffer.view(Kept) if keep else buffer

    def restock(self, busy: Callable[[], bool]) -> None:
        """Prepare buffers of the size last kept, their pages touched (in the writer thread).

        Only while ``busy()`` (called under the lock) is false, i.e. no write waits: when puts
        come faster than the writer commits, touching pages for nothing slows them
        (docs/design.rst, "Buffer pool").
        """
        while True:
            with self.lock:
                size = self.keep_size
                if not size or busy() or not self._wants(size):
                    return
            try:
                buffer = np.empty(size, np.uint8)
            except MemoryError:  # puts will allocate their own, or fail with their own error
                return
            # Touches every page; ctypes releases the GIL meanwhile, so training runs on.
            ctypes.memset(buffer.ctypes.data, 0, size)
            with self.lock:
                self.spare.append(buffer)
                self.spare_bytes += size

    def _wants(self, size: int) -> bool:
        ready = sum(len(b) for b in self.spare if fits(b, size, keep=True))
        return ready < STOCK_BYTES and self.spare_bytes + size <= self.limit

    def recycle_locked(self, values: Iterable[Stored | Deferred]) -> None:
        """Keep the buffers of written or dropped ``values`` (caller holds the lock)."""
        for value in values:
            if type(value) is bytes:
                continue
            view = value if type(value) is memoryview else value.pooled()  # type: ignore[union-attr]
            if view is not None:
                self._recycle_view(view)

    def _recycle_view(self, view: memoryview) -> None:
        buffer: object = view.obj
        try:
            view.release()
        except BufferError:  # still exported somewhere: leave it to the garbage collector
            return
        if type(buffer) is np.ndarray:  # not a Kept one
            spare = self.spare
            spare.append(buffer)
            self.spare_bytes += len(buffer)
            while self.spare_bytes > self.limit:  # the oldest sizes go first
                self.spare_bytes -= len(spare.pop(0))

    def clear_locked(self) -> None:
        """Drop every spare buffer (an idle writer: no puts are coming)."""
        self.spare.clear()
        self.spare_bytes = 0
        self.keep_size = 0
