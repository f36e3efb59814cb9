"""Load on miss: what ``SpillCache.get_or_load`` does once a key missed.

A :class:`Misses` serves the misses of one request: it joins a load of a missed key in
progress (single flight, through the cache's :class:`~spillcache.flight.SingleFlight`), or
claims the key, takes a second look in the cache (a put may have landed since the miss) and
loads and stores it; a load that a stopped preload could no longer store is stored by its
first waiter (adopted).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from .codec import clone
from .flight import Flight, SingleFlight

__all__ = ["Misses", "not_none"]

Load = Callable[[int], Any]
LoadMany = Callable[[list[int]], Sequence[Any]]


class Store(Protocol):
    """What a :class:`Misses` needs of its cache."""

    @property
    def closed(self) -> bool: ...

    def put(
        self, key: object, sample: object, *, evict: bool = True, name: str | None = None
    ) -> bool: ...


class Misses:
    """The misses of one request to a cache, loaded once per key and process.

    Parameters
    ----------
    cache : SpillCache
        Where loaded samples go.
    flights : SingleFlight
        The cache's loads in progress.
    reread : callable
        ``reread(key)``: the sample under ``key`` if a put landed since the request's miss,
        else ``None`` (counting nothing).
    copy : bool
        Whether each position of a batch gets its own copy of a sample (the cache's ``copy``).
    source : str or None
        What error messages call the source (``"dataset"``: ``dataset[5]``).
    """

    __slots__ = ("_cache", "_copy", "_flights", "_reread", "_source")

    def __init__(
        self,
        cache: Store,
        flights: SingleFlight,
        reread: Callable[[int], Any | None],
        *,
        copy: bool,
        source: str | None,
    ) -> None:
        self._cache = cache
        self._flights = flights
        self._reread = reread
        self._copy = copy
        self._source = source

    def load(self, key: int, load: Load | None) -> Any | None:
        """The sample of missed ``key``: joined, found on a second look, or loaded and stored.

        ``load`` ``None``: do not load; reserve ``key`` for the caller's own put instead (a
        claim nobody waits for, until :meth:`SingleFlight.release`) and return ``None``.
        """
        while True:
            flight, owned = self._flights.claim_or_join(key, waitable=load is not None)
            if flight is None:  # claimed by someone nobody may wait for: load it unclaimed
                return None if load is None else self._load(key, load)
            if owned:
                return self._load_claimed(flight, load)
            done, sample = self._flights.wait(flight)
            if done:
                return self._adopt(flight, sample)
            # That load failed or stopped: look again.

    def load_many(self, keys: list[int], samples: list[Any], load_many: LoadMany) -> bool:
        """Fill the misses (``None``) in ``samples``: one batched load; whether there were any.

        ``keys[p]`` is the key of ``samples[p]``. Each missed key is loaded once, however often
        it appears, and each position gets its own copy (unless ``copy`` is off); keys being
        loaded by others are waited for.
        """
        missed = [p for p, sample in enumerate(samples) if sample is None]
        if not missed:
            return False
        owned: dict[int, Flight | None] = {}
        joined: list[tuple[int, Flight]] = []
        for p in missed:
            k = keys[p]
            if k in owned:
                continue  # twice in the batch: one load
            flight, mine = self._flights.claim_or_join(k)
            if flight is None or mine:
                owned[k] = flight
            else:
                joined.append((p, flight))
        loaded = self._load_owned(owned, load_many) if owned else {}
        given: set[int] = set()
        for p in missed:
            k = keys[p]
            if k in loaded:
                sample = loaded[k]
                samples[p] = clone(sample) if k in given and self._copy else sample
                given.add(k)
        for p, flight in joined:
            samples[p] = self._await(flight, load_many)
        return True

    def _load_claimed(self, flight: Flight, load: Load | None) -> Any | None:
        """Load the key of ``flight``, claimed by the caller, and land the claim."""
        try:
            # Whoever held the claim before us may have stored it since our miss.
            sample = self._reread(flight.key)
            if sample is None and load is not None:
                sample = self._load(flight.key, load)
        except BaseException:
            self._flights.cancel(flight)
            raise
        if load is not None:
            self._flights.land(flight, sample, stored=True)
        elif sample is not None:
            self._flights.cancel(flight)  # found: no reservation needed
        return sample

    def _adopt(self, flight: Flight, sample: Any) -> Any:
        """``sample``, of a load joined in progress; stored if its owner could not."""
        # A preload stopped during the load left it uncached: store it, or it would be loaded
        # again (unless the cache was closed meanwhile, like the preload).
        if self._flights.adopt(flight) and not self._cache.closed:
            self._cache.put(flight.key, sample)
        return sample

    def _load(self, key: int, load: Load) -> Any:
        sample = not_none(load(key), key, self._source)
        self._put(key, sample)
        return sample

    def _put(self, key: int, sample: Any) -> None:
        source = self._source
        self._cache.put(key, sample, name=None if source is None else f"{source}[{key}]")

    def _load_owned(self, owned: dict[int, Flight | None], load_many: LoadMany) -> dict[int, Any]:
        """Load and cache the claimed keys of ``owned``; end every claim whatever happens."""
        loaded: dict[int, Any] = {}
        try:
            todo = []
            for k in owned:
                # Whoever held the claim before us may have stored it since our miss.
                sample = self._reread(k)
                if sample is None:
                    todo.append(k)
                else:
                    loaded[k] = sample
            fresh = _loaded_many(load_many, todo) if todo else []
            for k, sample in zip(todo, fresh, strict=True):
                loaded[k] = not_none(sample, k, self._source)
                self._put(k, sample)
            for k, sample in loaded.items():
                flight = owned[k]
                if flight is not None:
                    self._flights.land(flight, sample, stored=True)
        except BaseException:
            for flight in owned.values():
                if flight is not None:
                    self._flights.cancel(flight)  # no-op for those landed
            raise
        return loaded

    def _await(self, flight: Flight, load_many: LoadMany) -> Any:
        """The sample of a load joined in progress (or our own load if that one failed)."""
        done, sample = self._flights.wait(flight)
        if done:
            return self._adopt(flight, sample)
        return self.load(flight.key, lambda k: _loaded_many(load_many, [k])[0])


def not_none(sample: Any, key: int, source: str | None) -> Any:
    """``sample``, loaded for ``key``; raise if it is None (which a cache cannot tell from a miss).

    Parameters
    ----------
    sample : object
        What the source returned for ``key``.
    key : int
        Its key.
    source : str or None
        What the message calls the source (``"dataset"``: ``dataset[5]``).

    Raises
    ------
    TypeError
        If ``sample`` is None, naming the key.
    """
    if sample is None:
        what = "" if source is None else f" ({source}[{key}])"
        raise TypeError(
            f"the data set returned None for index {key}{what}; a cache cannot store None, "
            "which stands for a miss: return a sample (an empty dict if there is nothing to "
            "return)"
        )
    return sample


def _loaded_many(load_many: LoadMany, keys: list[int]) -> list[Any]:
    """``load_many(keys)``, one sample per key."""
    samples = list(load_many(keys))
    if len(samples) != len(keys):
        raise ValueError(
            f"load_many returned {len(samples)} samples for {len(keys)} keys; it must return "
            "one sample per key, in order"
        )
    return samples
