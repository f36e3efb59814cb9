"""Landing loads: a claimed index is loaded, its sample stored, and its claim landed.

Every claim given here ends here, landed or cancelled: training threads may be waiting for it.
A claim is landed even after the preload was stopped, with the sample it loaded: a training
thread waiting for exactly that sample then stores it in the preload's place (the preload's
thread never touches the store once stopped). A load or store that raises is reported and
counted; training then loads the index itself and meets the same error, as it would without a
cache. A store that refuses a sample (the cache is full) ends the preload.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..flight import Flight
from .claiming import Claim
from .run import PreloadRun

__all__ = ["Landing"]


class Landing:
    """Loads claimed indices, stores their samples and lands their claims.

    Parameters
    ----------
    run : PreloadRun
        The preload's shared state.
    load : callable
        ``load(index)`` returns the sample.
    """

    def __init__(self, run: PreloadRun, load: Callable[[int], object]) -> None:
        self._run = run
        self._load = load

    def fill(self, index: int, flight: Flight, loaded: tuple[object] | None = None) -> str | None:
        """Load and store ``index``; return the counter it adds to (None: none).

        ``loaded``: its sample, loaded already (by a batched load).
        """
        flights = self._run.flights
        landed, stored = False, None
        try:
            outcome = self._load_and_store(index, loaded)
            if outcome is None:
                return "preload_errors"
            sample, stored = outcome
            flights.land(flight, sample, stored=stored is True)
            landed = True
        finally:
            if not landed:
                flights.cancel(flight)
        if stored is False:
            self._run.end_full()
        return "preload_loads" if stored else None

    def fill_batch(self, load_many: Callable[[list[int]], list[Any]], batch: list[Claim]) -> int:
        """Load ``batch`` in one call and store each sample; return how many completed."""
        if not batch:
            return 0
        flights = self._run.flights
        started = 0
        try:
            samples = self._load_batch(load_many, batch)
            if samples is None:
                return len(batch)
            for (index, flight), sample in zip(batch, samples, strict=True):
                started += 1
                counter = self.fill(index, flight, loaded=(sample,))
                if counter is not None:
                    flights.count(counter)
        finally:
            for _, flight in batch[started:]:
                flights.cancel(flight)
        return started

    def _load_and_store(
        self, index: int, loaded: tuple[object] | None
    ) -> tuple[object, bool | None] | None:
        """The sample and whether the store took it (None: the store may no longer be used).

        None if the load or the put raised (reported).
        """
        try:
            sample = self._load(index) if loaded is None else loaded[0]
            with self._run.guard.open() as usable:
                stored = self._run.cache.put(index, sample, evict=False) if usable else None
        except Exception as exc:  # the load, or the put (e.g. a leaf type the codec refuses)
            self._run.failures.report(index, exc)
            return None
        return sample, stored

    def _load_batch(
        self, load_many: Callable[[list[int]], list[Any]], batch: list[Claim]
    ) -> list[Any] | None:
        """The samples of ``batch``; None if loading them failed (reported and counted)."""
        indices = [index for index, _ in batch]
        try:
            samples = load_many(indices)
            if len(samples) != len(batch):
                raise ValueError(
                    f"__getitems__ returned {len(samples)} samples for {len(batch)} indices"
                )
        except Exception as exc:
            self._run.failures.report(indices, exc)
            self._run.flights.count("preload_errors", len(batch))
            return None
        return samples
