"""What the disk tier stores: bytes, or a value whose last step the writer thread takes.

The disk tier stores and returns bytes; it knows nothing of how a sample becomes them. A put
may hand it a :class:`Deferred` value instead: one whose finishing step (copying a sample's
arrays, writing a checksum) is work the writer thread can do off the training thread. The
codec implements it (:class:`spillcache.codec.Encoding`, :class:`spillcache.codec.Unsealed`);
the writer calls :meth:`Deferred.finish` without knowing what it does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

__all__ = ["Buffer", "Deferred", "Stored", "Value", "readable"]

# A buffer of the disk tier's pool (DiskTier.buffer): writable, C-contiguous bytes.
Buffer = NDArray[np.uint8]
# What a write transaction stores: bytes, or a view of a pool buffer.
Stored = bytes | memoryview


class Deferred(Protocol):
    """A value to store whose last step is left to the disk tier's writer thread."""

    def __len__(self) -> int:
        """Bytes of the stored value."""
        ...

    def finish(self, take: Callable[[int], Buffer | None], /) -> Stored:
        """The value to store, complete; in ``take(size)``'s buffer if that gives one.

        Called once, by the writer thread, before the write transaction.
        """
        ...

    def snapshot(self) -> Stored:
        """The complete value in memory of its own, to serve a read while it is queued."""
        ...

    def pooled(self) -> memoryview | None:
        """The view of a pool buffer the value lies in (taken back if it is dropped)."""
        ...


# A queued value: bytes, or a Deferred value the writer finishes.
Value = bytes | Deferred


def readable(value: Value | memoryview) -> Stored:
    """A queued or in-flight value, complete, in memory of its own: the writer recycles buffers.

    In flight, a finished value is a view of a pool buffer (complete already).
    """
    if type(value) is bytes:
        return value
    if type(value) is memoryview:
        return bytes(value)
    return value.snapshot()  # type: ignore[union-attr]
