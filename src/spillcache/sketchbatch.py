"""Many accesses counted at once in a frequency sketch: the vectorised drain of its read buffer.

No threads, I/O or torch. :class:`BatchCounter` counts an array of keys into a sketch table
with numpy: the hashing of :func:`spillcache.sketch.estimate` (the same counters for every key)
and its conservative update, applied once per distinct key with that key's number of accesses.
"""

from __future__ import annotations

from typing import Final

import numpy as np
from numpy.typing import NDArray

__all__ = ["BatchCounter"]

_LOW32: Final = np.uint64(0xFFFFFFFF)
_32: Final = np.uint64(32)
_2: Final = np.uint64(2)
_U64: Final = (1 << 64) - 1


class BatchCounter:
    """Conservative update of a batch of keys in a blocked count-min sketch.

    Parameters
    ----------
    multiplier : int
        The sketch's hash multiplier (below ``2**80``): a key's counters come from bits 40-79
        of ``key * multiplier``.
    saturated : int
        A counter's highest value.

    Notes
    -----
    A key seen ``n`` times in the batch has its four counters raised to at least its estimate
    plus ``n``, as ``n`` updates one after the other would. Two keys sharing a counter in one
    batch raise it to the larger of their values where one after the other might raise it
    further: estimates stay upper bounds of the true counts, only sometimes lower than
    sequential updates would leave them.
    """

    def __init__(self, multiplier: int, saturated: int) -> None:
        self._m0 = np.uint64(multiplier & 0xFFFFFFFF)
        self._m_high = np.uint64(multiplier >> 32 & _U64)
        self._m_low = np.uint64(multiplier & _U64)
        self._saturated = saturated

    def slots(self, keys: NDArray[np.uint64], mask: int) -> NDArray[np.intp]:
        """The four counter offsets of each key, shape ``(4, len(keys))``.

        Parameters
        ----------
        keys : numpy.ndarray of uint64
            Sample indices.
        mask : int
            Block mask, shifted to a byte offset (below ``2**30``).
        """
        low = keys & _LOW32
        # Bits 32-95 of the product, modulo 2**64 (numpy wraps): the limbs' partial products,
        # each below 2**64, summed in wrapping arithmetic.
        q = (low * self._m0 >> _32) + low * self._m_high + (keys >> _32) * self._m_low
        block = (q >> _2).astype(np.intp) & mask  # product bits 40 and up
        y = (q >> _32).astype(np.intp) & 0xFFFF  # product bits 64-79
        slots = np.empty((4, len(keys)), np.intp)
        np.bitwise_or(block, y & 15, out=slots[0])
        np.bitwise_or(block | 16, y >> 4 & 15, out=slots[1])
        np.bitwise_or(block | 32, y >> 8 & 15, out=slots[2])
        np.bitwise_or(block | 48, y >> 12, out=slots[3])
        return slots

    def count(self, table: bytearray, keys: NDArray[np.uint64], mask: int) -> None:
        """Record one access of every key in ``keys`` (repeats count once each) in ``table``.

        Parameters
        ----------
        table : bytearray
            The counters: 64-byte blocks of four 16-counter quarters.
        keys : numpy.ndarray of uint64
            Sample indices, in any order.
        mask : int
            Block mask, ``(blocks - 1) << 6``.
        """
        distinct, times = _runs(np.sort(keys))
        slots = self.slots(distinct, mask)
        counters = np.frombuffer(table, np.uint8)
        seen = counters[slots]
        low = np.minimum(np.minimum(seen[0], seen[1]), np.minimum(seen[2], seen[3]))
        raised = np.empty(slots.shape, np.uint8)
        np.minimum(low + times, self._saturated, out=raised, casting="unsafe")
        np.maximum.at(counters, slots.ravel(), raised.ravel())


def _runs(ordered: NDArray[np.uint64]) -> tuple[NDArray[np.uint64], NDArray[np.intp]]:
    """The distinct values of a sorted array and how often each occurs.

    What ``np.unique(return_counts=True)`` returns without sorting, in a few calls instead of
    its dozens of Python-level ones.
    """
    edges = np.ones(len(ordered) + 1, bool)
    np.not_equal(ordered[1:], ordered[:-1], out=edges[1:-1])
    at = np.flatnonzero(edges)
    return ordered[at[:-1]], at[1:] - at[:-1]
