"""Single flight: the loads in progress of one cache object, so that each index is loaded once.

Every loader (a preload's threads, training threads) claims an index before loading it and lands
the claim when done; whoever finds an index claimed either waits for the result (training) or
skips it (the preload). A :class:`~spillcache.SpillCache` owns one :class:`SingleFlight`
(``cache.flights``): its :meth:`~spillcache.SpillCache.get_or_load` and a preload running on it
share it. It also holds the preload counters of that cache object.
"""

from __future__ import annotations

import threading

from . import forksafe
from .codec import clone

__all__ = ["PRELOAD_COUNTERS", "Flight", "SingleFlight"]

#: The preload counters a :class:`SingleFlight` keeps, as ``CacheStats`` field names.
PRELOAD_COUNTERS = (
    "preload_loads",
    "preload_skips",
    "preload_promotions",
    "preload_errors",
    "preload_waits",
)


class Flight:
    """One load of one index in progress; others may wait for its result.

    Attributes
    ----------
    key : int
        The index being loaded.
    by_preload : bool
        Whether the preload loads it (as opposed to training).
    waitable : bool
        Whether others may wait for it (``False`` for claims whose owner may never report
        back, like Hyrax's ``try_fetch`` that is followed by an ``insert_into_cache``).
    stored : bool
        Whether the value is taken care of in the cache: its owner stored it, or a waiter
        adopted it (:meth:`SingleFlight.adopt`).
    """

    __slots__ = (
        "by_preload",
        "done",
        "key",
        "ok",
        "stored",
        "taken",
        "value",
        "waitable",
        "waiters",
    )

    def __init__(self, key: int, *, by_preload: bool, waitable: bool) -> None:
        self.key = key
        self.by_preload = by_preload
        self.waitable = waitable
        self.waiters = 0
        self.ok = False
        self.value: object = None
        # Whether ``value`` was already handed out (the next taker then gets a copy).
        self.taken = False
        self.stored = False
        # Made by the first waiter: most loads have none, and an Event costs ~3 us to make.
        self.done: threading.Event | None = None


class SingleFlight:
    """The indices being loaded in this process, so that each is loaded once.

    Every loader (the preload's threads, training threads) claims an index before loading it
    and lands the claim when done; whoever finds an index claimed either waits for the result
    (training) or skips it (the preload). Also holds the preload counters of the data set.

    Parameters
    ----------
    copy : bool
        Whether every waiter must get its own copy of a result (the cache's ``copy``).
    """

    def __init__(self, copy: bool) -> None:
        self._copy = copy
        self._lock = threading.Lock()
        self._flights: dict[int, Flight] = {}
        self._counters = dict.fromkeys(PRELOAD_COUNTERS, 0)
        forksafe.register(in_child=self._after_fork_in_child)

    def claim(self, key: int, *, by_preload: bool, waitable: bool = True) -> Flight | None:
        """Claim ``key``; ``None`` if someone else is loading it."""
        with self._lock:
            if key in self._flights:
                return None
            flight = self._flights[key] = Flight(key, by_preload=by_preload, waitable=waitable)
            return flight

    def claim_or_join(self, key: int, *, waitable: bool = True) -> tuple[Flight | None, bool]:
        """Claim ``key`` for training, or join the load in progress.

        Returns
        -------
        flight : Flight or None
            The claimed or joined flight; ``None`` when ``key`` is claimed by someone nobody
            may wait for (then load it without a claim).
        owned : bool
            True if the caller claimed it and must :meth:`land` or :meth:`cancel` it.
        """
        with self._lock:
            flight = self._flights.get(key)
            if flight is None:
                flight = self._flights[key] = Flight(key, by_preload=False, waitable=waitable)
                # The owner returns the value itself: waiters always get copies.
                flight.taken = True
                return flight, True
            if not flight.waitable:
                return None, False
            flight.waiters += 1
            if flight.done is None:
                flight.done = threading.Event()
            return flight, False

    def wait(self, flight: Flight) -> tuple[bool, object]:
        """Wait for a joined flight: ``(True, value)``, or ``(False, None)`` if it failed."""
        assert flight.done is not None  # made when the caller joined
        flight.done.wait()
        with self._lock:
            if not flight.ok:
                return False, None
            if flight.by_preload:
                self._counters["preload_waits"] += 1
            value, shared = flight.value, flight.taken
            flight.taken = True
        return True, clone(value) if shared and self._copy else value

    def land(self, flight: Flight, value: object, *, stored: bool) -> None:
        """End ``flight`` with ``value``, handing it to the waiters.

        ``stored`` tells whether the owner cached ``value``; if not (a preload stopped during
        the load), one waiter should :meth:`adopt` it.
        """
        with self._lock:
            # Removed from the table, the flight gains no waiters: ``done`` is final.
            self._remove_locked(flight)
            private = flight.taken and flight.waiters and self._copy
            flight.stored = stored
            done = flight.done
        try:
            # An owner that returns ``value`` to its caller (who may modify it) leaves the
            # waiters a snapshot; copies of it are made by each waiter but the first.
            flight.value = clone(value) if private else value
            flight.taken = flight.taken and not private
            flight.ok = True
        finally:
            # Waiters of a failed copy find the flight not ok and look again.
            if done is not None:
                done.set()

    def adopt(self, flight: Flight) -> bool:
        """Whether the caller, a waiter that got the value of ``flight``, must cache it.

        True for one waiter of a flight landed uncached, so that its load is not repeated.
        """
        with self._lock:
            adopted = flight.ok and not flight.stored
            flight.stored = True
        return adopted

    def cancel(self, flight: Flight) -> None:
        """End ``flight`` without a result: waiters then look in the cache or load it."""
        with self._lock:
            self._remove_locked(flight)
            done = flight.done
        if done is not None:
            done.set()

    def release(self, key: int) -> None:
        """Cancel the flight of ``key``, if any (Hyrax's insert after a ``try_fetch`` miss)."""
        with self._lock:
            flight = self._flights.get(key)
        if flight is not None and not flight.by_preload:
            self.cancel(flight)

    def _remove_locked(self, flight: Flight) -> None:
        if self._flights.get(flight.key) is flight:
            del self._flights[flight.key]

    def count(self, name: str, n: int = 1) -> None:
        """Add ``n`` to the counter ``name``."""
        with self._lock:
            self._counters[name] += n

    def counters(self) -> dict[str, int]:
        """The preload counters, as ``CacheStats`` field names."""
        with self._lock:
            return dict(self._counters)

    # Nothing to prepare: the child replaces the lock (a thread of the parent may hold it at the
    # moment of the fork) and forgets the loads in progress, which belong to threads it lacks.
    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self._flights = {}
