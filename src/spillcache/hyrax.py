"""DataCache: a drop-in for Hyrax's ``hyrax.datasets.data_cache.DataCache``."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import numpy as np

from .cache import SpillCache
from .config import CacheSettings, settings_from_config

__all__ = ["DataCache"]


class DataProvider(Protocol):
    """What Hyrax's DataProvider offers the cache."""

    def __len__(self) -> int: ...

    def resolve_data(self, idx: int) -> Any: ...


class DataCache:
    """Hyrax's ``DataCache`` interface, backed by a :class:`SpillCache`.

    Reads ``config["data_set"]``: ``use_cache``, ``preload_cache``, ``preload_threads`` (Hyrax's
    keys) and ``cache_dir``, ``cache_ram_budget``, ``cache_disk_budget``,
    ``cache_fingerprint`` (spillcache's; see the configuration reference for defaults).

    Building one is cheap: the store opens at the first ``try_fetch``/``insert_into_cache``.
    Hyrax never closes its caches; a ``DataCache`` that is no longer referenced releases its
    store (environment, temporary directory, threads) when garbage collected.

    One ``cache_dir`` serves many data sets: each data request gets its own store inside it,
    named by a digest of ``config["data_request"]`` and ``len(data_provider)`` (or of
    ``cache_fingerprint`` when set), which is also the store's fingerprint.

    Parameters
    ----------
    config : Mapping
        The Hyrax configuration.
    data_provider : DataProvider
        Offers ``len()`` and ``resolve_data(idx)``.

    Raises
    ------
    ValueError
        When a cache key of ``config["data_set"]`` has a wrong type or value.
    """

    def __init__(self, config: Mapping[str, Any], data_provider: DataProvider) -> None:
        self.settings: CacheSettings = settings_from_config(config)
        self._provider = data_provider
        self._config = config
        self._cache: SpillCache | None = None
        self._opening = threading.Lock()

    @property
    def fingerprint(self) -> str:
        """The identity of this provider's data: the store's fingerprint and directory name."""
        if self.settings.cache_fingerprint is not None:
            basis: object = ["fingerprint", self.settings.cache_fingerprint]
        else:
            basis = ["data_request", self._config.get("data_request"), len(self._provider)]
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
        if not isinstance(idx, (int, np.integer)) or isinstance(idx, bool):
            raise RuntimeError(f"DataCache indices must be int, not {type(idx).__name__}")
        idx = int(idx)
        if not 0 <= idx < len(self._provider):
            raise IndexError(
                f"index {idx} is out of range for a data set of length {len(self._provider)}"
            )
        return idx

    def try_fetch(self, idx: int) -> Any | None:
        """The cached sample for ``idx``, or ``None`` (always ``None`` when caching is off)."""
        cache = self.cache
        return None if cache is None else cache.get(self._check_index(idx))

    def insert_into_cache(self, idx: int, data: Any) -> None:
        """Cache ``data`` as the sample of ``idx`` (does nothing when caching is off)."""
        cache = self.cache
        if cache is not None:
            cache.put(self._check_index(idx), data)

    def start_preload_thread(self) -> None:
        """Start preloading when ``preload_cache`` is true.

        Currently a documented no-op: the preload engine is not part of this release.
        """

    def close(self) -> None:
        """Close the store (also happens when the cache is garbage collected)."""
        if self._cache is not None:
            self._cache.close()

    def __enter__(self) -> DataCache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
