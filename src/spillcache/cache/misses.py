"""The miss hook of :class:`~spillcache.cache.SpillCache`: load what is missing, once per key."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..codec import decode, replicate
from ..counters import PUTS
from ..errors import CodecError
from ..flight import SingleFlight
from ..indices import MAX_KEY, check_key
from ..loading import Misses
from .puts import Puts
from .reads import Reads

__all__ = ["MissHook"]


class MissHook(Reads, Puts):
    """``get_or_load`` and its relatives, what data sets call (design.rst, "One miss hook")."""

    @property
    def flights(self) -> SingleFlight:
        """The loads in progress on this cache object (in this process), one per key.

        :meth:`get_or_load` claims, joins and lands them; a preloader claims the keys it loads
        here too (``flights.claim(key, by_preload=True)``), so that each key is loaded once.
        It also holds the preload counters of this cache object.
        """
        return self._flights

    def get_or_load(
        self, key: object, load: Callable[[int], Any], *, source: str | None = None
    ) -> Any:
        """The sample under ``key``; on a miss, ``load(key)``, cached and returned.

        Each key is loaded once per cache object, however many threads ask (single flight):
        a caller that finds ``key`` being loaded, by another thread or by a preload, waits for
        that load and gets its sample (a copy, unless ``copy=False``); if that load fails, the
        caller loads it itself. A load a stopped preload could no longer store is stored by
        the first caller that gets its sample. In a DataLoader worker, what was loaded is
        committed before the call returns: the samples a worker hands out are in the store
        before its siblings can ask for them.

        Parameters
        ----------
        key : int, numpy integer or 0-d integer tensor
            A non-negative integer.
        load : callable
            ``load(key)`` returns the sample to cache (``dataset[key]``); called only on a miss.
        source : str or None
            What error messages call the source, e.g. ``"dataset"``: the sample of key 5 is
            then ``dataset[5]`` (see ``put``'s ``name``).

        Returns
        -------
        object
            As :meth:`get` returns it, or the loaded sample.

        Raises
        ------
        TypeError
            If ``load`` returns ``None`` (a cache cannot tell it from a miss), or a sample that
            cannot be stored; whatever ``load`` raises propagates, and nothing is cached.
        """
        k = key if type(key) is int and 0 <= key <= MAX_KEY else check_key(key)
        stamp = self._counters.values[PUTS]
        sample = self.get(k)
        if sample is None:
            sample = self._request(stamp, source).load(k, load)
            self._hand_out()
        return sample

    def get_or_load_many(
        self,
        keys: Sequence[object],
        load_many: Callable[[list[int]], Sequence[Any]],
        *,
        source: str | None = None,
    ) -> list[Any]:
        """The samples under ``keys``, in order: hits from the cache, the misses in one call.

        ``load_many(missed)`` gets each missed key once, however often it appears in ``keys``
        (each position gets its own copy, unless ``copy=False``), and without the keys other
        threads or a preload are loading: those loads are waited for, as in
        :meth:`get_or_load`.

        Parameters
        ----------
        keys : sequence of int
            Non-negative integers.
        load_many : callable
            ``load_many(missed)`` returns their samples, in the same order (a data set's
            ``__getitems__``).
        source : str or None
            As for :meth:`get_or_load`.

        Raises
        ------
        TypeError
            If ``load_many`` returns ``None`` for a key, or a sample that cannot be stored.
        ValueError
            If ``load_many`` returns another number of samples than it was given keys.
        """
        ks = [k if type(k) is int and 0 <= k <= MAX_KEY else check_key(k) for k in keys]
        stamp = self._counters.values[PUTS]
        samples = [self.get(k) for k in ks]
        if self._request(stamp, source).load_many(ks, samples, load_many):
            self._hand_out()
        return samples

    def get_or_reserve(self, key: object) -> Any | None:
        """The sample under ``key``, the sample of a load of it in progress, or ``None``.

        For callers that load and :meth:`put` samples themselves (Hyrax's ``try_fetch``
        followed by ``insert_into_cache``): ``None`` reserves ``key`` for the caller, until
        :meth:`release`; meanwhile a preload skips it and nobody waits for it.
        """
        k = key if type(key) is int and 0 <= key <= MAX_KEY else check_key(key)
        stamp = self._counters.values[PUTS]
        sample = self.get(k)
        return sample if sample is not None else self._request(stamp, None).load(k, None)

    def release(self, key: object) -> None:
        """End the reservation of ``key`` by :meth:`get_or_reserve`, if any."""
        self._flights.release(check_key(key))

    def _request(self, stamp: int, source: str | None) -> Misses:
        """The misses of a request that began when this process had made ``stamp`` puts."""
        return Misses(
            self,
            self._flights,
            functools.partial(self._reread, since=stamp),
            copy=self._copy,
            source=source,
        )

    def _hand_out(self) -> None:
        """In a DataLoader worker: commit this request's puts before its samples leave.

        The main process gets a batch only after the worker returned it, so every sample
        it got is in the store before it can ask any worker for it again (next epoch).
        """
        if torch.utils.data.get_worker_info() is not None:
            self.commit()

    def _reread(self, key: int, since: int) -> Any | None:
        """The sample under ``key`` for a second look right after a counted miss, or None.

        ``since`` is the count of puts taken before the miss: if no put landed in this process
        since, the look is skipped (a disk read saved: see "One miss hook" in design.rst); puts of
        other processes are not waited for anyway (single flight is per process).  Counts
        nothing and admits nothing: the miss was this request's count.  A corrupt entry is
        None without a second warning or count (the miss that found it counted it).
        """
        if self._counters.values[PUTS] == since:
            return None
        with self._lock:
            value = self._ram.peek(key)
        if value is not None:
            return replicate(value) if self._copy else value
        try:
            return self._read(key, decode)
        except CodecError:
            return None
