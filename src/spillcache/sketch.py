"""Approximate recent access counts of keys: the frequency sketch of the RAM tier's policy.

No threads, I/O or torch: :class:`FrequencySketch` is the counting half of the TinyLFU policy of
:class:`~spillcache.ram.RamTier`, which sizes it and asks it how often a key was seen.
"""

from __future__ import annotations

from array import array

import numpy as np

from .sketchbatch import BatchCounter

__all__ = ["BUFFER", "SATURATED", "FrequencySketch", "estimate"]

# Odd 128-bit multiplier (golden-ratio and splitmix64 digits).  The product of a key with it
# mixes every key bit into the bits above 40; its disjoint slices (see
# ``FrequencySketch.frequency``) pick a key's block and its four counters in the block.
# Dense, strided and 2**62-offset keys collide no more than random ones (measured), at the
# cost of one multiplication.
_MUL = 0x9E3779B97F4A7C15F39CC0605CEDC835
# Only the product's bits below 80 are used, which only the multiplier's bits below 80 make: a
# smaller product costs fewer digit operations on every access.
_MUL80 = _MUL & ((1 << 80) - 1)
_MAX_WIDTH = 1 << 22  # counters per row: a 16 MiB table; block numbers may use bits 40-63
_HALVE = bytes(c >> 1 for c in range(256))
#: A counter's highest value (8-bit saturating counters).
SATURATED = 255
_MIN_WIDTH = 1024
# Counters per sketch row for each resident entry.  The rows must be several times wider than
# the number of keys whose counts matter (residents plus their challengers, e.g. 3x for a data
# set of 3x the budget), or collisions make cold keys look warm: at 4 per entry about 2 % of
# keys were over-estimated in a uniform pass and shuffled epochs lost 4-7 % of their hits, at 8
# about 0.2 % and under 1 %.
_WIDTH_PER_ENTRY = 8
# Halve all counters after this many recorded accesses per resident entry (TinyLFU's sample
# size W = 10 x cache size): long enough to see reuse across a few epochs, short enough that
# a hot set that is no longer drawn fades.
_AGING_PER_ENTRY = 10
#: Accesses a sketch holds in its read buffer, uncounted, before it counts them all at once.
#: Hashing in Python cost 8,600 instructions of a 29,500-instruction 4 KiB RAM hit; counted with
#: numpy, a buffer of 1,024 costs about 72 ns (700 instructions) an access, and of 4,096 about
#: 55 ns (170 instructions less per hit, for a 3x longer pause of the hit that drains: 0.22 ms).
BUFFER = 1024
# A drain of fewer accesses than this hashes them in Python (about 0.5 µs each): numpy's
# dozen calls cost about 27 µs whatever the count.
_VECTOR_AT = 64
_BATCH = BatchCounter(_MUL80, SATURATED)


class FrequencySketch:
    """Approximate access counts: a blocked 4-row count-min sketch of 8-bit saturating counters.

    Counts are only ever over-estimated (collisions add, never subtract).  Conservative update
    (raise only the counters at the current minimum) keeps that over-estimate small.  Every
    ``period`` increments all counters are halved, so frequency means "recent frequency".

    A key's four counters lie in one 64-byte block (one CPU cache line), one in each 16-byte
    quarter, as in Caffeine's sketch: a lookup then costs one cache miss instead of four (a
    share of a RAM hit that matters, see design.rst).  The quarters play the four rows.

    Accesses can also be recorded by appending their keys to :attr:`pending`, the read buffer
    (as Caffeine's reads do): its owner calls :meth:`drain` once :data:`BUFFER` are pending, and
    every estimate drains first, so it counts every access recorded before it.  Draining
    counts with numpy, for a fraction of the cost of counting one access at a time.

    Attributes
    ----------
    pending : array.array
        Keys (typecode ``"Q"``) whose accesses are recorded but not yet counted.
    """

    __slots__ = ("_adds", "_mask", "_max_width", "_period", "_table", "capacity", "pending")

    def __init__(self, max_bytes: int) -> None:
        self._max_width = min(_MAX_WIDTH, max(_MIN_WIDTH, 1 << ((max_bytes // 4).bit_length() - 1)))
        self.capacity = 0
        self._table = bytearray(4 * _MIN_WIDTH)
        self._mask = self._block_mask()
        self._period = _AGING_PER_ENTRY * _MIN_WIDTH // _WIDTH_PER_ENTRY
        self._adds = 0
        self.pending = array("Q")

    def _block_mask(self) -> int:
        """A block's offset is ``(hash << 6) & mask``: the table holds ``len // 64`` blocks."""
        return (len(self._table) // 64 - 1) << 6

    @property
    def nbytes(self) -> int:
        """Bytes held by the counters."""
        return len(self._table)

    def reserve(self, entries: int) -> None:
        """Size the sketch for at least ``entries`` residents (amortized: doubles at least).

        Parameters
        ----------
        entries : int
            Number of resident entries whose frequencies must stay distinguishable.
        """
        first = self.capacity == 0
        self.capacity = max(entries, 2 * self.capacity)
        target = min(self._max_width, _WIDTH_PER_ENTRY * self.capacity)
        # A key's block is ``hash & (blocks - 1)``; after doubling, it is its old block or
        # that block + old count, and both copies hold the old counts, so every estimate stays
        # an upper bound of the true count.  The copies a key does not use are noise for later
        # keys, though, which is why the tier sizes the sketch for the full budget up front.
        width = factor = len(self._table) // 4
        while factor < target:
            factor *= 2
        if first:
            # Sized at the first admission, when next to nothing is counted yet: a fresh
            # zeroed table costs no page until a counter on it is used (a 16 MiB sketch is not
            # touched in full by a cache that holds a handful of samples).
            self._table = bytearray(4 * factor)
        elif factor > width:
            # Tiling once by a power of two equals doubling repeatedly, in one copy.
            self._table = self._table * (factor // width)
        self._mask = self._block_mask()
        # Past the memory cap, age as if the cache were only as large as the sketch can track:
        # counters then stay low instead of filling up with collisions, and admission degrades
        # to the scan-safe "keep what is resident" rather than to random churn.
        self._period = _AGING_PER_ENTRY * min(self.capacity, target // _WIDTH_PER_ENTRY)

    def frequency(self, key: int, record: bool) -> int:
        """Estimated recent access count of ``key`` (never below the true count).

        One method both reads and records, hashing once.  Hits record through :attr:`pending`
        instead (:meth:`~spillcache.ram.RamTier.lookup`).

        Parameters
        ----------
        key : int
            Sample index.
        record : bool
            Count one access of ``key`` first.

        Returns
        -------
        int
            The estimate, including the access just recorded (and every pending one).
        """
        if self.pending:
            self.drain()
        low = estimate(self._table, key, self._mask, record)
        if not record:
            return low
        adds = self._adds + 1
        if adds < self._period:
            self._adds = adds
        else:
            self._adds = 0
            self._table = self._table.translate(_HALVE)
        return low

    def record(self, key: int) -> None:
        """Record an access of ``key`` in the read buffer; drain the buffer once full.

        A key below 0 or past 64 bits cannot go in the buffer: it is counted at once.
        """
        pending = self.pending
        try:
            pending.append(key)
        except OverflowError:
            self.frequency(key, True)
        if len(pending) >= BUFFER:
            self.drain()

    def drain(self) -> None:
        """Count every pending access, halving the counters where one at a time would."""
        pending = self.pending
        start = 0
        while start < len(pending):
            stop = min(len(pending), start + self._period - self._adds)
            self._count(pending, start, stop)
            self._adds += stop - start
            if self._adds >= self._period:
                self._adds = 0
                self._table = self._table.translate(_HALVE)
            start = stop
        del pending[:]

    def _count(self, pending: array[int], start: int, stop: int) -> None:
        """Count the accesses ``pending[start:stop]`` (no aging)."""
        table, mask = self._table, self._mask
        if stop - start < _VECTOR_AT:
            for key in pending[start:stop]:
                estimate(table, key, mask, True)
        else:
            _BATCH.count(table, np.frombuffer(pending, np.uint64)[start:stop], mask)


def estimate(table: bytearray | memoryview, key: int, mask: int, record: bool) -> int:
    """Estimated count of ``key`` in ``table``, after recording one access if ``record``.

    The hashing and conservative update of every spillcache sketch (this one and the node
    tier's shared one): ``table`` holds 64-byte blocks of four 16-counter quarters, and
    ``mask`` is ``(blocks - 1) << 6``.

    Parameters
    ----------
    table : bytearray or memoryview
        The counters (writable bytes).
    key : int
        Sample index.
    mask : int
        Block mask, already shifted to a byte offset.
    record : bool
        Count one access of ``key`` first (counters saturate at :data:`SATURATED`).
    """
    # The product's bits 40 and up pick the block, bits 64-79 the counters in it.
    x = key * _MUL80 >> 34
    block = x & mask
    # Counter bits in a one-digit int: each shift of the wide product allocates a long int.
    y = x >> 30 & 0xFFFF
    i0 = block | (y & 15)
    i1 = block | 16 | ((y >> 4) & 15)
    i2 = block | 32 | ((y >> 8) & 15)
    i3 = block | 48 | (y >> 12)
    c0 = table[i0]
    c1 = table[i1]
    c2 = table[i2]
    c3 = table[i3]
    # Comparisons rather than min(): a builtin call costs a visible share of get().
    low01 = c0 if c0 < c1 else c1
    low23 = c2 if c2 < c3 else c3
    low = low01 if low01 < low23 else low23
    if record and low < SATURATED:
        low += 1
        if c0 < low:
            table[i0] = low
        if c1 < low:
            table[i1] = low
        if c2 < low:
            table[i2] = low
        if c3 < low:
            table[i3] = low
    return low
