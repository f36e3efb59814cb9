"""The loads a preload has in flight: the limit, the slots held, and how the limit is tuned.

Each pass of a load thread holds a *slot* from :meth:`Concurrency.reserve` to
:meth:`Concurrency.release`. With a :class:`~.tuner.Tuner`, the releases also feed a
measurement window. While the tuner ramps up, a window is one round: it opens once the slots
in flight reach the limit (after a change: once the new threads have started; the first one at
the first release) and closes once as many passes as the limit allows completed; its
throughput is those completions over that time (the first round also tells the tuner how many
CPUs its loads kept busy or waited for: their threads' CPU demand, :mod:`.demand`, over their
time in flight, times the limit). Afterwards a window waits for the loads begun under the
previous limit to settle, lasts longer, and its throughput comes from Little's law (mean slots
in flight / mean time a slot is held), which, unlike counting completions in a short window, is
not fooled by loads that finish in waves; but while the tuner decides whether to keep a higher
limit, it is capped at the completions counted, which loads starving in an unfair queue past
the window's end cannot fool.

Not thread-safe: the preload calls every method with its lock held.
"""

from __future__ import annotations

import dataclasses

from .tuner import Tuner

__all__ = ["Concurrency", "Slot"]

# A measurement window closes once it saw this many completions (and two per slot) and lasted
# this long. After a change, a window starts only once every load begun under the previous
# setting is done and then one load per slot more: the first loads at a new setting meet
# queues (at a semaphore, at the GIL) that are still building up, and would look fast.
_WINDOW_COMPLETIONS = 4
_WINDOW_SECONDS = 0.05
# A window of the ramp lasts at least this long (with loads of microseconds, one round would
# be mostly noise).
_RAMP_SECONDS = 0.005
# Tuner measurements kept in ``Concurrency.tuning``.
_TUNING_KEPT = 64


@dataclasses.dataclass
class Slot:
    """One pass of a load thread: find the next index to load, load it, store it."""

    epoch: int
    reserved_at: float
    cpu_at: float | None = None  # the thread's CPU demand (:mod:`.demand`), if measured


class Concurrency:
    """The limit of loads in flight, the slots held, and the tuner's measurement window.

    Parameters
    ----------
    limit : int
        Loads allowed in flight without a tuner (with one, the tuner's first limit).
    tuner : Tuner or None
        Sets the limit from the measured throughput; ``None`` keeps ``limit``.

    Attributes
    ----------
    limit : int
        Loads allowed in flight now.
    peak_limit : int
        Highest limit so far.
    active : int
        Slots held now.
    tuning : list of (float, int, float)
        With a tuner, the last measurements: seconds since :attr:`started_at`, limit,
        samples per second.
    started_at : float
        When the preload started (``time.monotonic()``), the origin of :attr:`tuning`.
    """

    def __init__(self, limit: int, tuner: Tuner | None) -> None:
        self.limit = self.peak_limit = limit if tuner is None else tuner.limit
        self.tuner = tuner
        self.active = 0
        self.tuning: list[tuple[float, int, float]] = []
        self.started_at = 0.0
        # ``_area`` integrates the slots in flight over time since ``_window_start``;
        # ``_window_busy`` sums the time each completed slot was held. A window starts only
        # once the ``_old`` slots reserved under an earlier limit are all released, and
        # ``_settling`` more slots after that.
        self._epoch = self._old = self._settling = 0
        self._window_start: float | None = None
        self._area = self._area_at = self._window_busy = self._window_cpu = 0.0
        self._window_done = 0
        # Whether the last window was one of the ramp; whether the next one opens once the
        # slots in flight reach the limit (after a change: when the new threads have started).
        self._ramped = tuner is not None and tuner.ramping
        self._opens_when_full = False

    @property
    def wants_cpu(self) -> bool:
        """Whether :meth:`reserve` and :meth:`release` should be given the thread's CPU demand.

        Only until the first window closed: the one the tuner reads it from.
        """
        return self.tuner is not None and not self.tuning

    def reserve(self, now: float, cpu: float | None = None) -> Slot:
        """Hold one more slot from ``now``; ``cpu``: the thread's CPU demand then."""
        self._add_active(1, now)
        if self._opens_when_full and self.active >= self.limit:
            self._opens_when_full = False
            self._start_window(now)
        return Slot(self._epoch, now, cpu)

    def release(self, slot: Slot, *, completed: int, now: float, cpu: float | None = None) -> bool:
        """Give ``slot`` back at ``now``; whether the limit changed.

        ``completed``: how many indices the pass completed (0: it found nothing to do, which
        the window does not count). ``cpu``: the thread's CPU demand now.
        """
        self._add_active(-1, now)
        old = slot.epoch != self._epoch
        if old:
            self._old -= 1
        tuner = self.tuner
        if tuner is not None and tuner.ramping:
            return self._release_ramp(tuner, slot, completed=completed, now=now, cpu=cpu)
        if old:
            pass
        elif self._window_start is None:
            # Settling (the very first load, too, pays for opening the store and starting
            # its writer).
            self._settling -= 1
            if self._settling <= 0 and not self._old:
                self._start_window(now)
        elif completed:
            self._window_done += 1
            self._window_busy += now - slot.reserved_at
            if tuner is not None:
                return self._tune(tuner, now)
        return False

    def _release_ramp(
        self, tuner: Tuner, slot: Slot, *, completed: int, now: float, cpu: float | None
    ) -> bool:
        """:meth:`release` while the tuner ramps: a round's completions (and their CPU demand)."""
        if self._window_start is None and not self._opens_when_full:
            # The first loads pay for opening the store and starting its writer (tens of
            # ms for CPU-bound ones): the first window opens when the first one ends.
            self._start_window(now)
        elif completed and self._window_start is not None:
            self._window_done += 1
            self._window_busy += now - slot.reserved_at
            if cpu is not None and slot.cpu_at is not None:
                self._window_cpu += cpu - slot.cpu_at
            return self._tune_ramp(tuner, now)
        return False

    def describe(self) -> str:
        """What the tuner settled at, for the preload's last log line ("" without one)."""
        if self.tuner is None or not self.tuning:
            return ""
        by_level: dict[int, list[float]] = {}
        for _, level, rate in self.tuning:
            by_level.setdefault(level, []).append(rate)
        rates = ", ".join(
            f"{level}: {sorted(r)[len(r) // 2]:.0f}/s" for level, r in sorted(by_level.items())
        )
        return f"; loads in flight settled at {self.limit} (samples/s by loads in flight: {rates})"

    def _add_active(self, delta: int, now: float) -> None:
        self._area += self.active * (now - self._area_at)
        self._area_at = now
        self.active += delta

    def _start_window(self, now: float) -> None:
        self._window_start = self._area_at = now
        self._area = self._window_busy = self._window_cpu = 0.0
        self._window_done = 0

    def _tune_ramp(self, tuner: Tuner, now: float) -> bool:
        """Close a round of the ramp once it is complete; whether the limit changed.

        The round opened with every slot in flight: its completions over its time are the
        throughput, whether or not the loads finish in waves.
        """
        start = self._window_start
        if start is None or now - start < _RAMP_SECONDS or self._window_done < self.limit:
            return False
        busy = self._window_busy
        cpus = self.limit * self._window_cpu / busy if busy > 0 else 0.0
        return self._feed(tuner, now, self._window_done / (now - start), cpus)

    def _tune(self, tuner: Tuner, now: float) -> bool:
        """Close a complete window and feed its throughput to the tuner; whether the limit changed.

        By Little's law, throughput = mean number in flight / mean time in flight; both
        means are smooth even when completions come in bursts.
        """
        start = self._window_start
        # A coarse clock can give loads a duration of zero: wait until some time was measured.
        if start is None or now - start < _WINDOW_SECONDS or self._window_busy <= 0:
            return False
        if self._window_done < max(_WINDOW_COMPLETIONS, 2 * self.limit):
            return False
        self._add_active(0, now)
        rate = (self._area / (now - start)) / (self._window_busy / self._window_done)
        if tuner.climbing:
            # Behind an unfair queue (Python's semaphore lets a releasing thread barge) most
            # loads are fast and a few starve past the window: their completions alone say
            # more than the storage serves. A climb needs the completions counted to agree.
            rate = min(rate, self._window_done / (now - start))
        return self._feed(tuner, now, rate)

    def _feed(self, tuner: Tuner, now: float, rate: float, cpus: float = 0.0) -> bool:
        """Give the tuner ``rate`` (and ``cpus``) and open the next window; whether it changed."""
        self.tuning.append((now - self.started_at, self.limit, rate))
        del self.tuning[:-_TUNING_KEPT]
        limit = tuner.observe(rate, cpus)
        changed = limit != self.limit
        self.limit = limit
        self.peak_limit = max(self.peak_limit, limit)
        if tuner.ramping:
            # The next round opens once the new threads have started (tens of ms for dozens
            # on a busy machine, which would count as a slower storage).
            self._window_start = None
            self._opens_when_full = True
        elif changed or self._ramped:
            # Loads begun under the previous setting, or during the ramp, settle first.
            self._epoch += 1
            self._old = self.active
            self._settling = limit
            self._window_start = None
        else:
            self._start_window(now)
        self._ramped = tuner.ramping
        return changed
