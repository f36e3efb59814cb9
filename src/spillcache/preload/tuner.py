"""The concurrency tuner of ``threads="auto"``: hill climbing on log2(loads in flight).

It is fed one throughput per measurement window (see :mod:`.concurrency`) and answers with
the next number of loads in flight.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["Tuner"]

# The tuner works on log2(concurrency): a doubling is kept when it brings at least this much
# more throughput. Doubling gives 2x on storage that is latency-bound and 1x on storage that is
# saturated; 1.2 is above the noise of a window and catches the partial gains of a machine
# whose CPUs are shared with other work.
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


class Tuner:
    """Hill climbing of the concurrency on a log2 scale, fed one throughput per window.

    Starts at 1 and doubles while a doubling raises throughput by ``_GROW``. Then it holds
    the best level and probes one step down (kept if it loses less than ``1 - _KEEP``:
    fewer threads for the same rate) or up (kept, and climbing resumes, if it gains
    ``_GROW``). The first probe after a climb goes down, soon, to undo a step that only
    looked useful; later probes alternate, and each one that changes nothing doubles the
    windows until the next, up to ``_MAX_HOLD_WINDOWS``. A rate that stays out of the dead
    band for ``_DRIFT_WINDOWS`` windows brings the probes back to ``_HOLD_WINDOWS``. It never
    runs more than twice the level it holds, and that only for one window.
    """

    def __init__(self, maximum: int) -> None:
        self.limit = 1
        self._max = maximum
        self._base = 1
        self._base_rate = self._reference = 0.0
        self._phase: Literal["start", "grow", "hold", "up", "down"] = "start"
        self._held = self._outside = 0
        self._wait = self._interval = _HOLD_WINDOWS
        self._up_next = False

    def observe(self, rate: float) -> int:
        """Take the throughput measured at ``self.limit``; return the next limit."""
        phase = self._phase
        if phase == "start":
            self._base_rate = rate
            self._climb()
        elif phase in ("grow", "up"):
            if rate >= self._base_rate * _GROW:
                self._base, self._base_rate = self.limit, rate
                self._interval = _HOLD_WINDOWS
                self._climb()
            elif phase == "grow":
                self._hold(up_next=False, wait=_FIRST_PROBE_WINDOWS)
            else:
                self._hold(up_next=False, wait=self._backoff())
        elif phase == "down":
            if rate >= self._base_rate * _KEEP:
                self._base, self._base_rate = self.limit, rate
                self._interval = _HOLD_WINDOWS
                self._hold(up_next=False, wait=_FIRST_PROBE_WINDOWS)
            else:
                self._hold(up_next=True, wait=self._backoff())
        else:
            # Follow a storage whose speed drifts; one window is too noisy to replace it.
            self._base_rate = 0.5 * (self._base_rate + rate)
            inside = self._reference * _KEEP <= rate <= self._reference * _GROW
            self._outside = 0 if inside else self._outside + 1
            # Several windows in a row: the one after a probe is often off, which is no drift.
            if self._outside >= _DRIFT_WINDOWS:
                self._reference = self._base_rate
                self._interval = self._wait = _HOLD_WINDOWS
            self._held += 1
            if self._held >= self._wait:
                self._probe()
        return self.limit

    def _climb(self) -> None:
        if self._base < self._max:
            self.limit = min(self._max, 2 * self._base)
            self._phase = "grow"
        else:
            self._hold(up_next=False, wait=_FIRST_PROBE_WINDOWS)

    def _backoff(self) -> int:
        self._interval = min(_MAX_HOLD_WINDOWS, 2 * self._interval)
        return self._interval

    def _hold(self, *, up_next: bool, wait: int) -> None:
        self.limit = self._base
        self._phase = "hold"
        self._reference = self._base_rate
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
