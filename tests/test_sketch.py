"""Tests of the frequency sketch's read buffer: accesses appended, counted in batches by numpy."""

from __future__ import annotations

import random

import numpy as np

from spillcache import sketch
from spillcache.sketch import BUFFER, FrequencySketch
from spillcache.sketchbatch import BatchCounter


def _sketch(entries: int = 1000) -> FrequencySketch:
    s = FrequencySketch(16 << 20)
    s.reserve(entries)
    return s


def _scalar_slots(key: int, mask: int) -> list[int]:
    """The four counters ``estimate`` uses for ``key``, computed as it does."""
    x = key * sketch._MUL80 >> 34
    block, y = x & mask, x >> 30 & 0xFFFF
    quarters = [y & 15, y >> 4 & 15, y >> 8 & 15, y >> 12]
    return [block | 16 * q | n for q, n in enumerate(quarters)]


def test_batch_hashing_picks_the_counters_of_one_at_a_time() -> None:
    rng = random.Random(5)
    keys = [0, 1, 2**32 - 1, 2**32, 2**62, 2**62 + 1, 2**64 - 1]
    keys += [rng.getrandbits(64) for _ in range(500)] + [rng.randrange(10_000) for _ in range(500)]
    counter = BatchCounter(sketch._MUL80, sketch.SATURATED)
    for mask in ((1024 // 64 - 1) << 6, ((16 << 20) // 64 - 1) << 6):
        slots = counter.slots(np.array(keys, np.uint64), mask)
        assert [list(column) for column in slots.T] == [_scalar_slots(k, mask) for k in keys]


def test_pending_accesses_are_counted_before_any_estimate() -> None:
    s = _sketch()
    s.pending.extend([7, 7, 7, 9])
    assert s.frequency(7, False) == 3
    assert len(s.pending) == 0
    assert s.frequency(9, True) == 2


def test_a_vectorised_drain_counts_every_repeat_of_a_key() -> None:
    s = _sketch()
    keys = [k % 50 for k in range(BUFFER)]  # 50 keys, 20 or 21 times each
    assert len(keys) >= sketch._VECTOR_AT
    s.pending.extend(keys)
    s.drain()
    assert [s.frequency(k, False) for k in range(50)] == [keys.count(k) for k in range(50)]


def test_a_drain_halves_where_one_access_at_a_time_would() -> None:
    s, reference = _sketch(), _sketch()
    period = s._period
    # The period ends at the 11th of 20 accesses of key 10**9: halved to 5, then 9 more.
    accesses = list(range(period - 11)) + [10**9] * 20
    s.pending.extend(accesses)
    s.drain()
    for k in accesses:
        reference.frequency(k, True)
    assert s.frequency(10**9, False) == reference.frequency(10**9, False) == 11 // 2 + 9
    assert s._adds == reference._adds == 9


def test_batch_estimates_stay_upper_bounds_and_match_one_at_a_time_nearly_always() -> None:
    rng = random.Random(11)
    s, reference = _sketch(4000), _sketch(4000)
    accesses = [rng.randrange(20_000) for _ in range(3 * BUFFER)]
    for k in accesses:
        s.pending.append(k)
        if len(s.pending) >= BUFFER:
            s.drain()
        reference.frequency(k, True)
    keys = sorted(set(accesses))
    batch = [s.frequency(k, False) for k in keys]
    one_by_one = [reference.frequency(k, False) for k in keys]
    assert all(accesses.count(k) <= b <= r for k, b, r in zip(keys, batch, one_by_one, strict=True))
    assert sum(b != r for b, r in zip(batch, one_by_one, strict=True)) < len(keys) // 100


def test_counters_saturate_in_a_batch() -> None:
    s = _sketch()
    s.pending.extend([3] * 300)
    s.drain()
    assert s.frequency(3, False) == sketch.SATURATED
