"""The ramp of ``threads="auto"``: the tuner and its measurement windows on simulated storages.

A discrete-event simulation drives :class:`Concurrency` and :class:`Tuner` with a fake clock,
as the preload's load threads would: a load begins whenever fewer than ``limit`` are in flight,
and its end is decided by the storage model. Nothing here depends on the machine's timing.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from spillcache.preload.concurrency import Concurrency, Slot
from spillcache.preload.tuner import Tuner

LATENCY = 0.02


@dataclass
class Servers:
    """``count`` servers taking loads in arrival order, each ``seconds`` long (a semaphore)."""

    count: int
    seconds: float
    free_at: list[float] = field(default_factory=list)

    def end(self, begin: float) -> float:
        if len(self.free_at) < self.count:
            self.free_at.append(0.0)
        self.free_at.sort()
        start = max(begin, self.free_at[0])
        self.free_at[0] = start + self.seconds
        return start + self.seconds


def latency_bound(begin: float) -> float:
    return begin + LATENCY


@dataclass
class Trace:
    done_at: list[float]  # the end of every completed load, in order
    limits: list[tuple[float, int]]  # (time, limit) after every change
    slots: Concurrency


def simulate(
    storage: Callable[[float], float],
    slots: Concurrency,
    *,
    until: float = 10.0,
    loads: int | None = None,
    spawn: float = 0.0,
) -> Trace:
    """Run loads on ``storage`` (load begin -> load end) until ``until`` or ``loads`` ended.

    As in the preload, a thread that ends a load begins the next one at once; threads that a
    higher limit adds start ``spawn`` seconds apart.
    """
    events: list[tuple[float, int, Slot | None]] = []  # a load's end, or a thread's start
    order = itertools.count()
    trace = Trace([], [(0.0, slots.limit)], slots)
    threads = 0

    def begin(now: float) -> None:
        if loads is None or len(trace.done_at) + slots.active < loads:
            heapq.heappush(events, (storage(now), next(order), slots.reserve(now)))

    def add_threads(now: float) -> None:
        nonlocal threads
        for k in range(slots.limit - threads):
            heapq.heappush(events, (now + k * spawn, next(order), None))
        threads = max(threads, slots.limit)

    add_threads(0.0)
    while events:
        now, _, slot = heapq.heappop(events)
        if now > until:
            break
        if slot is None:
            begin(now)
            continue
        trace.done_at.append(now)
        if slots.release(slot, completed=1, now=now):
            trace.limits.append((now, slots.limit))
        if slots.active < slots.limit:
            begin(now)
        else:
            threads -= 1  # above the limit: this thread ends
        add_threads(now)
    return trace


def auto(
    storage: Callable[[float], float],
    *,
    until: float = 10.0,
    loads: int | None = None,
    spawn: float = 0.0,
) -> Trace:
    slots = Concurrency(0, Tuner(64))
    return simulate(storage, slots, until=until, loads=loads, spawn=spawn)


def first_time_at(trace: Trace, limit: int) -> float:
    return next(t for t, level in trace.limits if level >= limit)


def peak(trace: Trace) -> int:
    return max(level for _, level in trace.limits)


# -- latency-bound storage -------------------------------------------------------------------


def test_the_ramp_doubles_once_per_round_up_to_the_maximum() -> None:
    trace = auto(latency_bound, until=1.0)
    # 2 at the start; the first round only opens the window (the first loads pay for opening
    # the store); then one doubling per round: 4, 8, 16, 32, 64 after rounds 2 to 6.
    assert [level for _, level in trace.limits[:6]] == [2, 4, 8, 16, 32, 64]
    assert first_time_at(trace, 64) == pytest.approx(6 * LATENCY)
    assert peak(trace) == 64


def test_the_ramp_is_not_slowed_by_threads_that_start_late() -> None:
    # On a busy machine dozens of threads take tens of ms to start: 1 ms each here, so 16
    # new threads start over 15 ms. A round opens once they are all under way.
    trace = auto(latency_bound, until=1.0, spawn=0.001)
    assert [level for _, level in trace.limits[:6]] == [2, 4, 8, 16, 32, 64]
    ramp = [rate for _, _, rate in trace.slots.tuning[:6]]
    assert all(later / earlier > 1.9 for earlier, later in itertools.pairwise(ramp))


def test_auto_loads_nearly_as_much_as_the_best_count_in_a_second() -> None:
    best = simulate(latency_bound, Concurrency(64, None), until=1.0)
    ramped = auto(latency_bound, until=1.0)
    assert len(ramped.done_at) >= 0.88 * len(best.done_at)


def test_no_probe_down_in_the_first_second_after_a_ramp_to_the_maximum() -> None:
    # Windows of at least 50 ms: the first probe comes after 16 of them.
    trace = auto(latency_bound, until=1.0)
    assert [level for t, level in trace.limits if t > first_time_at(trace, 64)] == []


def test_the_200_sample_job_ends_in_nine_rounds() -> None:
    # 2, 2 (the window opens), 4, 8, 16, 32, then 64 at a time: 200 samples in 9 rounds, where
    # 64 fixed threads need 4.
    ramped = auto(latency_bound, loads=200)
    best = simulate(latency_bound, Concurrency(64, None), loads=200)
    assert ramped.done_at[-1] == pytest.approx(9 * LATENCY)
    assert best.done_at[-1] == pytest.approx(4 * LATENCY)


# -- storage that saturates: the ramp stops, never past twice the best count ----------------------


@pytest.mark.parametrize(("count", "best"), [(8, 8), (6, 8), (3, 4), (24, 32)])
def test_on_iops_limited_storage_the_ramp_stops_at_twice_the_limit(count: int, best: int) -> None:
    trace = auto(Servers(count, LATENCY).end, until=3.0)
    assert peak(trace) <= 2 * best
    # It settles at the smallest power of two that keeps every server busy (or one below it
    # when that loses less than 13 %).
    assert trace.slots.limit in (best, best // 2)
    assert trace.slots.limit >= count * 0.87 or trace.slots.limit == best


def test_on_cpu_bound_storage_the_ramp_stops_at_the_first_step() -> None:
    # One core (the GIL): every load waits for the ones before it.
    trace = auto(Servers(1, 0.005).end, until=3.0)
    assert peak(trace) == 4  # the one doubling that measured no gain
    assert trace.slots.limit in (1, 2)
    # Windows: 2 (opened by the first load's end at 5 ms), 4 (one round: the ramp stops), and
    # a long one at 4 that opens only once the 3 loads begun during the ramp and 4 more ended
    # (at 70 ms) and lasts 50 ms.
    assert [t for t, _, _ in trace.slots.tuning[:3]] == pytest.approx([0.015, 0.035, 0.12])
    rates = [rate for _, level, rate in trace.slots.tuning if level == 2]
    assert rates and all(rate == pytest.approx(200, rel=0.01) for rate in rates)


def test_a_ramp_step_with_a_small_gain_is_measured_again_with_a_long_window() -> None:
    # 8 servers: 4 -> 8 gains 2x; 8 -> 16 nothing.
    trace = auto(Servers(8, LATENCY).end, until=3.0)
    windows = trace.slots.tuning
    at_16 = [t for t, level, _ in windows if level == 16]
    # The short window of the ramp, then the long one (and later a probe up).
    assert [level for _, level, _ in windows[:6]] == [2, 4, 8, 16, 16, 8]
    assert at_16[1] - at_16[0] >= 0.05


# -- the tuner alone -------------------------------------------------------------------------


def test_the_ramp_needs_a_clear_gain_and_then_hands_over_to_hill_climbing() -> None:
    tuner = Tuner(64)
    assert (tuner.limit, tuner.ramping) == (2, True)
    assert tuner.observe(100.0) == 4  # the first window has nothing to beat
    assert tuner.observe(149.0) == 4  # 1.49x: a long window decides
    assert not tuner.ramping
    assert tuner.observe(149.0 * 1.2) == 8  # it gains 1.2x over 2: climbing goes on, slowly
    assert not tuner.ramping


def test_the_ramp_goes_back_when_the_long_window_finds_no_gain() -> None:
    tuner = Tuner(64)
    for rate in (100.0, 200.0, 400.0):
        tuner.observe(rate)
    assert tuner.limit == 16
    assert tuner.observe(500.0) == 16  # 1.25x: not enough for the ramp
    assert tuner.observe(420.0) == 8  # the long window: no 1.2x over 8
    assert not tuner.ramping
    # 8 was reached by a clear gain: the first probe (down) waits 8 windows, not 2.
    assert [tuner.observe(400.0) for _ in range(8)] == [8] * 7 + [4]


def test_the_rate_held_after_the_ramp_comes_from_the_first_long_window() -> None:
    tuner = Tuner(8)
    for rate in (100.0, 200.0, 400.0):
        tuner.observe(rate)
    assert (tuner.limit, tuner.ramping) == (8, False)
    # The ramp's short window at 8 measured 400/s while threads were starting; the long ones
    # measure 600/s. They are no drift: the first probe still waits 16 windows.
    assert [tuner.observe(600.0) for _ in range(16)] == [8] * 15 + [4]


def test_a_stalled_window_does_not_make_a_probe_down_look_good() -> None:
    tuner = Tuner(4)
    tuner.observe(100.0)
    tuner.observe(200.0)  # the ramp ends at the maximum, 4
    # 15 windows at 200/s, then one in which the machine stalled the loads: the probe to 2.
    assert [tuner.observe(rate) for rate in [200.0] * 15 + [10.0]] == [4] * 15 + [2]
    # Half the rate at half the loads: not kept (an average with the stall would be 105/s).
    assert tuner.observe(100.0) == 4


def test_the_ramp_respects_the_maximum() -> None:
    tuner = Tuner(5)
    assert tuner.observe(1.0) == 4
    assert tuner.observe(2.0) == 5
    assert tuner.observe(2.5) == 5
    assert not tuner.ramping
    assert Tuner(1).limit == 1


def test_a_ramp_window_needs_one_round_and_some_time() -> None:
    slots = Concurrency(0, Tuner(64))
    assert slots.limit == 2
    first, second = slots.reserve(0.0), slots.reserve(0.0)
    assert not slots.release(first, completed=1, now=0.020)  # opens the first window
    assert not slots.release(second, completed=1, now=0.020)
    third = slots.reserve(0.020)
    # A coarse clock: a completion that took no measurable time does not close it.
    assert not slots.release(slots.reserve(0.020), completed=1, now=0.020)
    assert not slots.release(slots.reserve(0.020), completed=0, now=0.021)  # nothing done
    assert slots.release(third, completed=1, now=0.040)
    assert slots.limit == 4
    assert slots.tuning == [(pytest.approx(0.040), 2, pytest.approx(3 / 0.020))]
