"""The concurrency tuner of ``threads="auto"``: a fast ramp, then hill climbing on log2(loads).

It is fed one throughput per measurement window (see :mod:`.concurrency`) and answers with
the next number of loads in flight. While :attr:`Tuner.ramping`, the windows are short (one
round of completions); afterwards they are long and settled.
"""

from __future__ import annotations

import statistics
from typing import Literal

__all__ = ["Tuner"]

# The ramp doubles the concurrency after every short window whose throughput is at least this
# many times the previous level's: near the 2x that a doubling gives on latency-bound storage,
# far above what it gives on saturated storage (about 1x, and a short window's error).
_RAMP_GROW = 1.5
# After the ramp, the tuner works on log2(concurrency): a doubling is kept when it brings at
# least this much more throughput. 1.2 is above the noise of a window and catches the partial
# gains of a machine whose CPUs are shared with other work.
_GROW = 1.2
# A halving is kept when it costs at most this much throughput (fewer threads for the same
# rate). Together with _GROW this leaves a dead band, so the tuner does not oscillate.
_KEEP = 0.87
# Windows at the chosen concurrency between two probes: the first probe after a climb comes
# after _FIRST_PROBE_WINDOWS, the next after _HOLD_WINDOWS, doubling while probes change
# nothing (a probe costs throughput) up to _MAX_HOLD_WINDOWS.
_FIRST_PROBE_WINDOWS = 2
_HOLD_WINDOWS = 8
_MAX_HOLD_WINDOWS = 64
# Windows in a row whose rate leaves the dead band around the held rate before the tuner
# takes it for a change of the storage and probes at the short interval again.
_DRIFT_WINDOWS = 3
# The held rate is the median of this many last windows at the held level: a window in which
# the machine stalled the loads (other work on its CPUs) must not make a probe down look good.
_RECENT_WINDOWS = 5

# The ramp starts at this many loads in flight: the second costs nothing measurable where it
# does not help (a load thread also encodes and stores its sample, which overlaps the next load).
_START = 2
# A first round whose loads kept at least this many CPUs busy or waited for one (their threads'
# CPU demand, see .demand, per second in flight, times the loads in flight) may have saturated the
# GIL already, under which Python code keeps at most one CPU busy: one load at a time is measured
# before the ramp goes on, or its first step (4) would be 4x the best count. Sleeping loads
# demand 0.03-0.08 CPUs at 2, Python code that computes about 1.
_SATURATED_CPUS = 0.7

_Phase = Literal["ramp", "floor", "check", "grow", "hold", "up", "down"]


class Tuner:
    """A ramp like TCP's slow start, then hill climbing of the concurrency on a log2 scale.

    Starts at ``_START`` and doubles after each short window (:attr:`ramping`) while a
    doubling raises throughput by ``_RAMP_GROW``, as on latency-bound storage. If the loads of
    the first window kept ``_SATURATED_CPUS`` busy, a long window at one load decides first:
    kept if it loses less than ``1 - _KEEP``, else the ramp goes on from the start. The first level
    that gains less is measured again with a long window, and kept if it gains ``_GROW`` over
    the level below it (then climbing goes on with long windows), else left for that level.
    Every such gain of a long window must be confirmed by the next window at the same level.
    Then it holds the best level and probes one step down (kept if it loses less than
    ``1 - _KEEP``: fewer threads for the same rate) or up (kept, and climbing resumes, if it
    gains ``_GROW``). The first probe after a careful climb goes down, soon, to undo a step
    that only looked useful (after the ramp: after ``_HOLD_WINDOWS``, or twice that at the
    maximum); later probes alternate, and each one that changes nothing doubles the windows
    until the next, up to ``_MAX_HOLD_WINDOWS``. The held rate is the median of the last
    ``_RECENT_WINDOWS`` windows at the held level. A rate that stays out of the dead band for
    ``_DRIFT_WINDOWS`` windows brings the probes back to ``_HOLD_WINDOWS``. It never runs
    more than twice the best level it measured.

    Parameters
    ----------
    maximum : int
        The most loads in flight it ever asks for.
    """

    def __init__(self, maximum: int) -> None:
        self.limit = self._base = min(_START, maximum)
        self._max = maximum
        self._base_rate = self._reference = 0.0
        self._phase: _Phase = "ramp"
        self._held = self._outside = 0
        self._wait = self._interval = _HOLD_WINDOWS
        self._up_next = False
        self._recent: list[float] = []
        self._gained: float | None = None  # a first window at a higher level that gained

    @property
    def ramping(self) -> bool:
        """Whether the next window is a short one, of the ramp."""
        return self._phase == "ramp"

    @property
    def climbing(self) -> bool:
        """Whether the next window decides if a higher level is kept."""
        return self._phase in ("check", "grow", "up")

    def observe(self, rate: float, cpus: float = 0.0) -> int:
        """Take the throughput measured at ``self.limit``; return the next limit.

        ``cpus``: how many CPUs the loads of the window kept busy or waited for (read in the
        first window only).
        """
        phase = self._phase
        if phase == "ramp":
            self._ramp(rate, cpus)
        elif phase == "floor":
            self._floor(rate)
        elif phase in ("check", "grow", "up"):
            self._climbed(rate, phase)
        elif phase == "down":
            self._shrunk(rate)
        else:
            self._follow(rate)
        return self.limit

    def _ramp(self, rate: float, cpus: float) -> None:
        first = self._base_rate == 0
        if first and cpus >= _SATURATED_CPUS and self.limit > 1:
            self._base, self._base_rate = self.limit, rate
            self.limit, self._phase = 1, "floor"
        # The first window has no level below it to beat.
        elif first or rate >= self._base_rate * _RAMP_GROW:
            self._base, self._base_rate = self.limit, rate
            if self._base >= self._max:
                # A ramp that ends at the maximum measured every level below: it counts as a
                # probe down that changed nothing.
                self._interval = 2 * _HOLD_WINDOWS
            self._climb("ramp", wait=2 * _HOLD_WINDOWS)
            if not self.ramping:
                self._reference = 0.0  # held at a rate of a short window: see _follow
        else:
            # Too little gain for a short window to tell: a long one decides, at this level.
            self._phase = "check"

    def _floor(self, rate: float) -> None:
        if rate >= self._base_rate * _KEEP:
            # The start's rate came from a short window: probe it again soon, with a long one.
            self._base, self._base_rate = 1, rate
            self._hold(up_next=True, wait=_FIRST_PROBE_WINDOWS)
        else:
            # The loads were not bound by one CPU: the ramp goes on from the start.
            self._climb("ramp", wait=2 * _HOLD_WINDOWS)
            if not self.ramping:
                self._reference = 0.0  # held at a rate of a short window: see _follow

    def _climbed(self, rate: float, phase: _Phase) -> None:
        """A window at a higher level: a gain is kept only once a second window agrees."""
        if rate >= self._base_rate * _GROW and self._gained is None:
            # One window can catch a lull in other work on the machine's CPUs; two in a row
            # rarely do. Waiting costs nothing where the gain is real: it is at the higher level.
            self._gained = rate
            return
        if self._gained is not None and rate >= self._base_rate * _GROW:
            rate = min(rate, self._gained)
        self._gained = None
        if phase == "check":
            self._check(rate)
        else:
            self._grown(rate, probing=phase == "up")

    def _check(self, rate: float) -> None:
        if rate >= self._base_rate * _GROW:
            self._base, self._base_rate = self.limit, rate
            self._climb("grow", wait=_FIRST_PROBE_WINDOWS)
        else:
            # The level below was reached by a clear gain: no need to probe it again soon.
            self._hold(up_next=False, wait=_HOLD_WINDOWS)
            self._reference = 0.0  # held at a rate of a short window: see _follow

    def _grown(self, rate: float, *, probing: bool) -> None:
        if rate >= self._base_rate * _GROW:
            self._base, self._base_rate = self.limit, rate
            self._interval = _HOLD_WINDOWS
            self._climb("grow", wait=_FIRST_PROBE_WINDOWS)
        elif probing:
            self._hold(up_next=False, wait=self._backoff())
        else:
            self._hold(up_next=False, wait=_FIRST_PROBE_WINDOWS)

    def _shrunk(self, rate: float) -> None:
        if rate >= self._base_rate * _KEEP:
            self._base, self._base_rate = self.limit, rate
            self._interval = _HOLD_WINDOWS
            self._hold(up_next=False, wait=_FIRST_PROBE_WINDOWS)
        else:
            self._hold(up_next=True, wait=self._backoff())

    def _follow(self, rate: float) -> None:
        if not self._reference:
            # The held rate came from a short window of the ramp (which at high levels also
            # counts the time new threads take to start): the first long window replaces it,
            # or every later one would look like a drift.
            self._base_rate = self._reference = rate
            self._recent = [rate]
        else:
            # Follow a storage whose speed drifts; one window is too noisy to replace it.
            self._recent.append(rate)
            del self._recent[:-_RECENT_WINDOWS]
            self._base_rate = statistics.median(self._recent)
            inside = self._reference * _KEEP <= rate <= self._reference * _GROW
            self._outside = 0 if inside else self._outside + 1
            # Several windows in a row: the one after a probe is often off, which is no drift.
            if self._outside >= _DRIFT_WINDOWS:
                self._reference = self._base_rate
                self._interval = self._wait = _HOLD_WINDOWS
        self._held += 1
        if self._held >= self._wait:
            self._probe()

    def _climb(self, phase: _Phase, *, wait: int) -> None:
        """One step up in ``phase``; at the maximum, hold it and probe after ``wait`` windows."""
        if self._base < self._max:
            self.limit = min(self._max, 2 * self._base)
            self._phase = phase
        else:
            self._hold(up_next=False, wait=wait)

    def _backoff(self) -> int:
        self._interval = min(_MAX_HOLD_WINDOWS, 2 * self._interval)
        return self._interval

    def _hold(self, *, up_next: bool, wait: int) -> None:
        self.limit = self._base
        self._phase = "hold"
        self._reference = self._base_rate
        self._recent = [self._base_rate]
        self._held = self._outside = 0
        self._wait = wait
        self._up_next = up_next

    def _probe(self) -> None:
        can_up, can_down = self._base < self._max, self._base > 1
        self._held = 0
        if can_up and (self._up_next or not can_down):
            self.limit, self._phase = min(self._max, 2 * self._base), "up"
        elif can_down:
            self.limit, self._phase = self._base // 2, "down"
