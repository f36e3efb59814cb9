"""Walking the order: the next indices a load thread loads, each claimed in the single flight.

Load threads share one iterator of the order (advanced under a lock: a generator cannot be
advanced by two threads). An index outside the data set is counted as an error, one training
is loading is skipped, one the cache holds is skipped or promoted (:mod:`.promotion`); the
others are claimed in the cache's :class:`~spillcache.flight.SingleFlight`, so that training
asking for one of them waits for the preload's load instead of loading it again.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from ..flight import Flight
from ..indices import check_index
from .promotion import Found, Promotion
from .run import PreloadRun

__all__ = ["Claim", "Claims"]

#: An index to load, and its claim (which whoever holds it must land or cancel).
Claim = tuple[int, Flight]

# What ``Claims._take`` returns when there is nothing more to take.
_END = object()


class Claims:
    """Takes the next indices of the order and claims those to load.

    Parameters
    ----------
    run : PreloadRun
        The preload's shared state.
    indices : iterator
        The order (what :func:`~spillcache.preload.preview_order` returned).
    length : int
        Length of the data set.
    """

    def __init__(self, run: PreloadRun, indices: Iterator[object], length: int) -> None:
        self._run = run
        self._indices = indices
        self._length = length
        self._promotion = Promotion(run)
        self._lock = threading.Lock()

    def next(self) -> Claim | None:
        """The next index to load, claimed; None when the order is exhausted or we stop."""
        while (raw := self._take()) is not _END:
            claim = self._offer(raw)
            if claim is not None:
                return claim
        return None

    def next_batch(self, size: int) -> list[Claim]:
        """Up to ``size`` indices to load, claimed (fewer at the end of the order)."""
        batch: list[Claim] = []
        try:
            while len(batch) < size and (claim := self.next()) is not None:
                batch.append(claim)
        except BaseException:
            for _, flight in batch:
                self._run.flights.cancel(flight)
            raise
        return batch

    def reset_in_child(self) -> None:
        """New locks in the child of a fork (a thread of the parent may have held the old)."""
        self._lock = threading.Lock()

    def _take(self) -> object:
        """The next item of the order; ``_END`` once it is used up or the preload takes no work."""
        run = self._run
        with self._lock:
            if not run.life.takes_work:
                return _END
            try:
                return next(self._indices)
            except StopIteration:
                with run.cond:
                    run.life.exhaust()
                return _END

    def _offer(self, raw: object) -> Claim | None:
        """``raw`` as a claimed index to load, or None if there is nothing to load."""
        i = self._check(raw)
        if i is None:
            return None
        flights = self._run.flights
        flight = flights.claim(i, by_preload=True)
        if flight is None:  # training is loading it
            self._run.done("preload_skips")
            return None
        try:
            found = self._promotion.find(i)
        except BaseException:
            flights.cancel(flight)  # nobody may wait for it forever
            raise
        if found is Found.MISSING:
            return i, flight
        flights.cancel(flight)  # waiters find it in the cache
        if found is not Found.CLOSED:
            self._run.done("preload_promotions" if found is Found.PROMOTED else "preload_skips")
        return None

    def _check(self, raw: object) -> int | None:
        """``raw`` as an index of the data set; None (counted, reported) if it is not one."""
        try:
            return check_index(raw, self._length, "preload")
        except (TypeError, IndexError) as exc:
            self._run.done("preload_errors")
            self._run.failures.report(raw, exc)
            return None
