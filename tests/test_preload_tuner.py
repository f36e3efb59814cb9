"""The ramp of ``threads="auto"``: the tuner and its measurement windows on simulated storages.

A discrete-event simulation drives :class:`Concurrency` and :class:`Tuner` with a fake clock,
as the preload's load threads would: a load begins whenever fewer than ``limit`` are in flight,
and its end is decided by the storage model. Nothing here depends on the machine's timing.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest

from spillcache.preload.concurrency import Concurrency, Slot
from spillcache.preload.demand import thread_demand
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


@dataclass
class Barging:
    """``count`` servers of ``seconds`` each that serve whoever asks when one is free.

    A load that finds them all busy is overtaken by later ones (as at a Python semaphore, where
    a releasing thread barges past the waiters): it is served at the first gap on a server
    after ``starved`` seconds. The servers never serve more than ``count / seconds`` a second.
    """

    count: int
    seconds: float
    starved: float
    busy: list[list[float]] = field(default_factory=list)  # per server: its loads' starts

    def end(self, begin: float) -> float:
        if not self.busy:
            self.busy = [[] for _ in range(self.count)]
        for server in self.busy:
            if self._free(server, begin):
                return self._serve(server, begin)
        at = begin + self.starved - self.seconds
        while True:
            for server in self.busy:
                if self._free(server, at):
                    return self._serve(server, at)
            at += self.seconds / 4

    def _free(self, server: list[float], at: float) -> bool:
        return all(abs(start - at) >= self.seconds - 1e-12 for start in server)

    def _serve(self, server: list[float], at: float) -> float:
        server.append(at)
        del server[: -4 * int(self.starved / self.seconds + 1)]  # only recent ones can overlap
        return at + self.seconds


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
    cpu: float = 0.0,
) -> Trace:
    """Run loads on ``storage`` (load begin -> load end) until ``until`` or ``loads`` ended.

    As in the preload, a thread that ends a load begins the next one at once; threads that a
    higher limit adds start ``spawn`` seconds apart. Each load uses ``cpu`` seconds of its
    thread's CPU time (told to ``slots`` while it asks, as the preload does).
    """
    events: list[tuple[float, int, Slot | None]] = []  # a load's end, or a thread's start
    order = itertools.count()
    trace = Trace([], [(0.0, slots.limit)], slots)
    threads = 0

    def begin(now: float) -> None:
        if loads is None or len(trace.done_at) + slots.active < loads:
            # Each slot's thread clock starts at 0: only the difference counts.
            slot = slots.reserve(now, 0.0 if slots.wants_cpu else None)
            heapq.heappush(events, (storage(now), next(order), slot))

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
        used = cpu if slots.wants_cpu else None
        if slots.release(slot, completed=1, now=now, cpu=used):
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
    cpu: float = 0.0,
) -> Trace:
    slots = Concurrency(0, Tuner(64))
    return simulate(storage, slots, until=until, loads=loads, spawn=spawn, cpu=cpu)


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


def test_on_one_server_storage_the_ramp_stops_at_the_first_step() -> None:
    # One server that takes none of our CPU time (a device serving one load at a time): every
    # load waits for the ones before it, and the first round cannot tell a CPU-bound source.
    trace = auto(Servers(1, 0.005).end, until=3.0)
    assert peak(trace) == 4  # the one doubling that measured no gain
    assert trace.slots.limit in (1, 2)
    # Windows: 2 (opened by the first load's end at 5 ms), 4 (one round: the ramp stops), and
    # a long one at 4 that opens only once the 3 loads begun during the ramp and 4 more ended
    # (at 70 ms) and lasts 50 ms.
    assert [t for t, _, _ in trace.slots.tuning[:3]] == pytest.approx([0.015, 0.035, 0.12])
    rates = [rate for _, level, rate in trace.slots.tuning if level == 2]
    assert rates and all(rate == pytest.approx(200, rel=0.01) for rate in rates)


@pytest.mark.parametrize("starved", [0.2, 0.3])
def test_loads_starved_behind_a_barging_queue_do_not_make_a_higher_level_look_faster(
    starved: float,
) -> None:
    # 16 loads on 8 servers: 8 cycle in 20 ms, 8 wait 200-300 ms. Little's law on a window's
    # completions (nearly all fast) says 800/s; the servers serve 400/s.
    trace = auto(Barging(8, LATENCY, starved).end, until=3.0)
    assert peak(trace) == 16  # the ramp's step past 8, never a climb on to 32
    assert trace.slots.limit == 8
    climbs = [rate for _, level, rate in trace.slots.tuning if level > 8]
    assert climbs and max(climbs) <= 400 * 1.01


# -- CPU-bound sources: the first round tells how many CPUs its loads kept busy ----------------


def test_on_gil_bound_loads_one_load_is_measured_before_the_ramp_goes_on() -> None:
    # Python code holding the GIL: one load at a time, each 5 ms of its thread's CPU time. The
    # first round at 2 kept one CPU busy; one load loses nothing: the ramp never tries 4.
    trace = auto(Servers(1, 0.005).end, until=3.0, cpu=0.005)
    assert [level for _, level, _ in trace.slots.tuning[:2]] == [2, 1]
    assert peak(trace) == 2
    assert trace.slots.limit == 1
    # Later probes try 2 now and then (never 4: 2 gains nothing over 1).
    assert {level for _, level, _ in trace.slots.tuning} == {1, 2}


def test_loads_that_keep_two_cpus_busy_go_on_ramping_after_one_load() -> None:
    # Loads computing outside the GIL on 2 CPUs: one load gives half, so the ramp goes on from
    # 2 (4 gains nothing on 2 CPUs, a long window confirms it, and the tuner holds 2).
    trace = auto(Servers(2, 0.01).end, until=3.0, cpu=0.01)
    assert [level for _, level, _ in trace.slots.tuning[:5]] == [2, 1, 4, 4, 2]
    assert first_time_at(trace, 4) < 0.15
    assert peak(trace) == 4
    assert trace.slots.limit == 2


def test_sleeping_loads_with_a_little_cpu_ramp_as_before() -> None:
    # 0.5 ms of CPU per 20 ms load (encoding, storing): 0.05 CPUs at 2, far from saturated.
    trace = auto(latency_bound, until=1.0, cpu=0.0005)
    assert [level for _, level in trace.limits[:6]] == [2, 4, 8, 16, 32, 64]
    assert first_time_at(trace, 64) == pytest.approx(6 * LATENCY)


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
    assert tuner.observe(149.0 * 1.2) == 4  # it gains 1.2x over 2: a second window must agree
    assert tuner.observe(149.0 * 1.2) == 8  # it does: climbing goes on, slowly
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


def test_a_first_window_with_a_cpu_busy_asks_for_one_load() -> None:
    tuner = Tuner(64)
    assert tuner.observe(100.0, cpus=0.69) == 4  # below 0.7 CPUs: the ramp as before
    tuner = Tuner(64)
    assert tuner.observe(100.0, cpus=0.7) == 1
    assert not tuner.ramping  # a long window at one load
    assert tuner.observe(87.0) == 1  # loses at most 13 %: kept
    # The start's rate came from a short window: 2 is probed again after 2 windows.
    assert [tuner.observe(87.0) for _ in range(2)] == [1, 2]
    assert tuner.observe(87.0 * 1.19) == 1  # not 1.2x: back to one load
    assert Tuner(1).observe(100.0, cpus=1.0) == 1


def test_a_first_window_with_a_cpu_busy_ramps_on_if_one_load_loses() -> None:
    tuner = Tuner(64)
    tuner.observe(100.0, cpus=2.0)
    assert tuner.observe(86.0) == 4  # one load loses 14 %: the ramp goes on from 2
    assert tuner.ramping
    assert tuner.observe(200.0, cpus=2.0) == 8  # the CPUs are read in the first window only
    tuner = Tuner(2)
    tuner.observe(100.0, cpus=2.0)
    assert tuner.observe(50.0) == 2  # at the maximum already: held
    assert not tuner.ramping


def test_a_climb_needs_two_windows_that_gain() -> None:
    tuner = Tuner(64)
    tuner.observe(100.0)
    tuner.observe(100.0)  # 4 gains nothing: a long window decides
    assert tuner.observe(130.0) == 4  # a lull in other work: one window gains 1.3x
    assert tuner.observe(100.0) == 2  # the next one does not: back to 2
    tuner = Tuner(64)
    tuner.observe(100.0)
    tuner.observe(100.0)
    assert tuner.observe(130.0) == 4
    assert tuner.observe(125.0) == 8  # two that gain: kept, and climbing goes on


@pytest.mark.parametrize("seed", range(20))
def test_lulls_in_other_work_do_not_make_the_tuner_climb_where_threads_do_not_help(
    seed: int,
) -> None:
    # A CPU-bound source (200/s +- 5 % at any level) on a machine whose other work pauses now
    # and then: 3 windows in 10, at random, are 1.3x faster. Probes that catch one must not
    # climb (with one window deciding, 10 of these 20 runs reached 8).
    rng = np.random.default_rng(seed)
    tuner, limits = Tuner(64), []
    for _ in range(400):
        limits.append(tuner.limit)
        lull = 1.3 if rng.random() < 0.3 else 1.0
        tuner.observe(200.0 * lull * rng.uniform(0.95, 1.05))
    assert max(limits) == 4  # the ramp's first step (no CPU demand told), never a climb
    assert collections.Counter(limits[100:]).most_common(1)[0][0] == 1


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


def test_the_first_ramp_window_measures_the_cpu_time_of_its_loads() -> None:
    slots = Concurrency(0, Tuner(64))
    assert slots.wants_cpu
    first, second = slots.reserve(0.0, 0.0), slots.reserve(0.0, 0.0)
    assert not slots.release(first, completed=1, now=0.010, cpu=0.005)  # opens the window
    third = slots.reserve(0.010, 0.005)
    assert not slots.release(second, completed=1, now=0.015, cpu=0.006)
    # Both passes of the window: 0.006 + 0.004 s of CPU in 0.015 + 0.010 s held, at 2 slots.
    assert slots.release(third, completed=1, now=0.020, cpu=0.009)
    assert slots.limit == 1  # 0.8 CPUs: one load is measured first
    assert not slots.wants_cpu
    # Without CPU times (none measured) the same round ramps on.
    slots = Concurrency(0, Tuner(64))
    first, second = slots.reserve(0.0), slots.reserve(0.0)
    slots.release(first, completed=1, now=0.010)
    third = slots.reserve(0.010)
    slots.release(second, completed=1, now=0.015)
    assert slots.release(third, completed=1, now=0.020)
    assert slots.limit == 4


def test_a_threads_cpu_demand_counts_computing_not_sleeping() -> None:
    # Computing (Python holding the GIL) counts, whether on a CPU or waiting for one; sleeping
    # does not. Margins are wide: only which side of them a 30 ms spin and sleep fall on matters.
    start = thread_demand()
    time.sleep(0.03)
    slept = thread_demand() - start
    start, end = thread_demand(), time.perf_counter() + 0.03
    while time.perf_counter() < end:
        pass
    spun = thread_demand() - start
    assert slept < 0.01
    assert spun > 0.02
