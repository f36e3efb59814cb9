"""The DataCache of Hyrax up to 0.8: ``DataCache(config, data_provider)``."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from ..cache import SpillCache
from ..config import CacheSettings, settings_from_config
from ..errors import HyraxIndexError
from ..hosting import PreloadHost, preload_stats
from ..indices import check_index
from ..preload import PreloadOptions
from ..settings import LOG_EVERY
from ..stats import CacheStats
from ..summary import StatsLogger, SummaryWriterLike
from .base import DataCache

__all__ = ["ProviderDataCache"]


class DataProvider(Protocol):
    """What Hyrax's DataProvider offers the cache."""

    def __len__(self) -> int: ...

    def resolve_data(self, idx: int) -> Any: ...


class ProviderDataCache(DataCache):
    """The ``DataCache`` of Hyrax up to 0.8, backed by a :class:`SpillCache`.

    Built by ``DataCache(config, data_provider)``.

    Reads ``config["data_set"]``: ``use_cache``, ``preload_cache``, ``preload_threads`` (Hyrax's
    keys) and ``cache_dir``, ``cache_ram_budget``, ``cache_disk_budget``,
    ``cache_fingerprint`` (spillcache's; see the configuration reference for defaults).

    Building one is cheap: the store opens at the first ``try_fetch``/``insert_into_cache``.
    Hyrax never closes its caches; a ``DataCache`` that is no longer referenced releases its
    store (environment, temporary directory, threads) when garbage collected.

    One ``cache_dir`` serves many data sets: each data request gets its own store inside it,
    named by a digest of ``config["data_request"]`` and ``len(data_provider)`` (or of
    ``cache_fingerprint`` when set), which is also the store's fingerprint.

    With ``preload_cache = true``, :meth:`start_preload_thread` fills the cache in the
    background with ``preload_threads`` loads in flight (``"auto"``: tuned to the storage).
    While it runs, a ``try_fetch`` of a sample the preload is loading waits for that load and
    returns the sample, and a miss reserves the index until its ``insert_into_cache``, so that
    the preload skips it: every sample is resolved once.

    Parameters
    ----------
    config : Mapping
        The Hyrax configuration.
    data_provider : DataProvider
        Offers ``len()`` and ``resolve_data(idx)``.
    summary_writer : SummaryWriter, str, os.PathLike or None
        A ``tensorboardX.SummaryWriter`` (or a log directory for a new one): the cache's
        statistics are logged every 1000 ``try_fetch`` calls and while preloading.

    Raises
    ------
    TypeError
        When a cache key of ``config["data_set"]`` has a wrong type.
    ValueError
        When a cache key of ``config["data_set"]`` has an invalid value.
    """

    _summary: StatsLogger | None

    def __init__(
        self,
        config: Mapping[str, Any],
        data_provider: DataProvider,
        *,
        summary_writer: SummaryWriterLike | str | os.PathLike[str] | None = None,
    ) -> None:
        self.settings: CacheSettings = settings_from_config(config)
        self._provider = data_provider
        self._config = config
        self._cache: SpillCache | None = None
        self._init_process_state()
        if summary_writer is not None:
            self._summary = StatsLogger(summary_writer, LOG_EVERY)

    def _init_process_state(self) -> None:
        self._opening = threading.Lock()
        self._preload = PreloadHost()
        self._summary = None

    def __getstate__(self) -> dict[str, Any]:
        # For spawn/forkserver DataLoader workers: the store travels as its path and settings
        # (SpillCache pickles that way); locks, the preload and the summary writer stay here.
        return {
            "settings": self.settings,
            "_provider": self._provider,
            "_config": self._config,
            "_cache": self._cache,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_process_state()

    @property
    def fingerprint(self) -> str:
        """The identity of this provider's data: the store's fingerprint and directory name."""
        if self.settings.cache_fingerprint is not None:
            basis: object = ["fingerprint", self.settings.cache_fingerprint]
        else:
            # A provider's own request (when it has one) tells apart the train/validate/infer
            # providers that share one config's data_request table.
            request = getattr(self._provider, "data_request", self._config.get("data_request"))
            basis = ["data_request", request, len(self._provider)]
        text = json.dumps(basis, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    @property
    def cache(self) -> SpillCache | None:
        """The underlying cache (opened on first use); ``None`` when ``use_cache`` is false."""
        if self._cache is None and self.settings.use_cache:
            with self._opening:
                if self._cache is None:
                    root = self.settings.cache_dir
                    self._cache = SpillCache(
                        None if root is None else Path(root) / self.fingerprint,
                        ram_budget=self.settings.cache_ram_budget,
                        disk_budget=self.settings.cache_disk_budget,
                        fingerprint=self.fingerprint,
                    )
        return self._cache

    def _check_index(self, idx: object) -> int:
        return check_index(
            idx, len(self._provider), "DataCache", negative=False, type_error=HyraxIndexError
        )

    def try_fetch(self, idx: int) -> Any | None:
        """The cached sample for ``idx``, or ``None`` (always ``None`` when caching is off).

        While a preload runs, a miss on a sample it is loading waits for that load.
        """
        cache = self.cache
        if cache is None:
            return None
        i = self._check_index(idx)
        # While a preload runs, a miss joins its load of ``i`` or reserves ``i`` for the
        # caller's insert (not waitable: nothing guarantees the caller ever inserts it).
        sample = cache.get_or_reserve(i) if self.preloading else cache.get(i)
        if self._summary is not None:
            self._summary.tick(self.stats)
        return sample

    def insert_into_cache(self, idx: int, data: Any) -> None:
        """Cache ``data`` as the sample of ``idx`` (does nothing when caching is off)."""
        cache = self.cache
        if cache is not None:
            i = self._check_index(idx)
            try:
                cache.put(i, data, name=f"data_provider[{i}]")
            finally:
                cache.release(i)

    # -- preload ---------------------------------------------------------------------------------

    def start_preload_thread(self, order: object = None) -> None:
        """Start preloading in the background when ``use_cache`` and ``preload_cache`` are true.

        Returns at once; a preload already running is stopped first. Samples already cached
        are skipped; the others are resolved by ``preload_threads`` threads (``"auto"``: as
        many as the storage rewards, up to 64) and cached, the RAM tier taking only free
        space. A progress bar shows on stderr when it is a terminal.

        Parameters
        ----------
        order : None, iterable of int, sampler or DataLoader
            The order to preload in (an extension of Hyrax's interface): see
            :meth:`CachedDataset.start_preload <spillcache.CachedDataset.start_preload>`.
            ``None``: ``0 .. len - 1``.
        """
        cache = self.cache  # None when use_cache is false
        if cache is None or not self.settings.preload_cache:
            return
        options = PreloadOptions(
            load=self._provider.resolve_data,
            length=len(self._provider),
            threads=self.settings.preload_threads,
            progress=sys.stderr.isatty(),
            # Not self.stats: a bound method would keep this cache alive until gc.collect().
            stats=functools.partial(preload_stats, cache),
            summary=self._summary,
        )
        self._preload.start(cache, order, options)

    def wait_preload(self, timeout: float | None = None) -> bool:
        """Wait for the preload to finish; False if ``timeout`` seconds passed first.

        True at once when no preload runs. Raises ``RuntimeError`` if the preload broke down.
        """
        return self._preload.wait(timeout)

    def stop_preload(self) -> None:
        """Stop the preload without waiting for loads in progress (see ``CachedDataset``)."""
        self._preload.stop()

    @property
    def preloading(self) -> bool:
        """Whether a preload is running in this process."""
        return self._preload.running

    def stats(self) -> CacheStats:
        """The cache's statistics with the preload counters (zeros when caching is off)."""
        cache = self.cache
        return CacheStats() if cache is None else preload_stats(cache)

    def close(self) -> None:
        """Stop the preload and close the store (closing also happens at garbage collection)."""
        self.stop_preload()
        if self._cache is not None:
            self._cache.close()
        if self._summary is not None:
            self._summary.close()
