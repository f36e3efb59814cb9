"""The DataCache of Hyrax 0.9 and later: ``DataCache(config, datasets, augment_active)``."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import forksafe
from ..budget import memory_limit, parse_budget
from ..config import CacheSettings, settings_from_config
from ..footprint import ENTRY_OVERHEAD, sample_nbytes
from ..indices import check_key
from ..ram import RamTier
from ..stats import CacheStats
from .base import FORMS, DataCache
from .identity import field_names
from .stores import DatasetEntry, DatasetStores

__all__ = ["DatasetsDataCache"]

# RAM keys are (key << _SLOT_BITS) | (slot << 1) | augmented: one tier for every store's base
# entries and every data set's augmented ones, negative augment keys included.
_SLOT_BITS = 20


class DatasetsDataCache(DataCache):
    """Hyrax 0.9+'s ``DataCache``: base and augment caches per data set, backed by stores.

    Built by ``DataCache(config, datasets, augment_active)``, as Hyrax's ``DataProvider``
    builds its cache. Reads ``config["data_set"]``: ``use_cache`` (Hyrax's), ``cache_dir``,
    ``cache_ram_budget``, ``cache_disk_budget``, ``cache_fingerprint`` and ``cache_disable``.

    * **Base entries** (``insert_base``) go to one store per data set under ``cache_dir``,
      named by the data set's identity (class, resolved ``data_location``, ``len``, its
      ``cache_fingerprint()`` and config table) and the sample's field names, so a join, a
      train and an infer provider, and the next run share what is the same data. Without
      ``cache_dir``: private temporary stores, deleted at exit.
    * **Augmented entries** (``insert_augmented``) stay in RAM, keyed by the data set's
      ``augment_cache_key`` (any integer, negative included).
    * **RAM**: one tier of ``cache_ram_budget`` bytes for all of them; a RAM hit returns the
      object that was inserted (as Hyrax's cache does: cached samples must not be modified).
      In a DataLoader worker the tier gets ``cache_ram_budget / num_workers``; the workers
      share the stores.

    Parameters
    ----------
    config : Mapping
        The Hyrax configuration (a tomlkit document or nested dicts).
    datasets : Mapping
        Friendly name -> data set instance (has ``len()``; ``augment_cache_key(idx, seed)`` is
        called for augmented entries).
    augment_active : Mapping
        Friendly name -> whether augmentation is active for that data set.

    Raises
    ------
    TypeError
        When ``datasets`` or ``augment_active`` is not a mapping, or a cache key has a wrong
        type.
    ValueError
        When a cache key of ``config["data_set"]`` has an invalid value.
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        datasets: Mapping[str, Any],
        augment_active: Mapping[str, bool],
    ) -> None:
        for name, value in (("datasets", datasets), ("augment_active", augment_active)):
            if not isinstance(value, Mapping):
                raise TypeError(f"{name} must be a mapping, not {type(value).__name__}: {FORMS}")
        self.settings: CacheSettings = settings_from_config(config)
        self._budget = parse_budget(
            self.settings.cache_ram_budget, name="cache_ram_budget", total=memory_limit
        )
        self._augment_active = augment_active
        self._use_cache = self.settings.use_cache
        self._ram_on = True
        self._writes = True
        self._init_process_state()
        self._stores = DatasetStores(config, self.settings, datasets)

    def _init_process_state(self) -> None:
        self._lock = threading.Lock()
        self._ram = RamTier(self._budget)
        self._role_known = False
        self._ram_hits = self._disk_hits = self._misses = self._puts = 0
        forksafe.register(self._before_fork, self._after_fork_in_parent, self._after_fork_in_child)

    def __getstate__(self) -> dict[str, Any]:
        # For spawn/forkserver DataLoader workers: stores reopen by path, RAM starts empty.
        keep = ("settings", "_budget", "_augment_active", "_use_cache", "_ram_on", "_writes")
        return {k: self.__dict__[k] for k in (*keep, "_stores")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_process_state()

    # -- Hyrax's interface -----------------------------------------------------------------------

    def try_fetch(
        self, friendly_name: str, real_idx: int, rng_seed: np.int64 | None = None
    ) -> tuple[Any | None, bool]:
        """The cached sample and whether it is augmented already: ``(data | None, bool)``.

        With augmentation active for ``friendly_name`` and a ``rng_seed``, the augmented entry
        under ``augment_cache_key(real_idx, rng_seed)`` is tried first (``True`` when found),
        then the base entry from RAM or the store. A miss is ``(None, False)``, always when
        ``use_cache`` is false.
        """
        if not self._use_cache:
            return None, False
        state = self._stores.entries.get(friendly_name) or self._stores.entry(friendly_name)
        # The usual index, an int in range, skips the call (a RAM hit is a few microseconds).
        idx = (
            real_idx
            if type(real_idx) is int and 0 <= real_idx < state.length
            else self._index(state, friendly_name, real_idx)
        )
        if rng_seed is not None and self._ram_on and self._augment_active.get(friendly_name):
            key = self._augment_key(state, real_idx, rng_seed)
            if key is not None:
                with self._lock:
                    value = self._tier().get(key << _SLOT_BITS | state.slot << 1 | 1)
                    if value is not None:
                        self._ram_hits += 1
                        return value, True
        ram_key = idx << _SLOT_BITS | state.slot << 1
        if self._ram_on:
            with self._lock:
                value = (self._ram if self._role_known else self._tier()).get(ram_key)
                if value is not None:
                    self._ram_hits += 1
                    return value, False
        store = self._stores.store(friendly_name, state, None)
        value = None if store is None else store.get(idx)
        with self._lock:
            if value is None:
                self._misses += 1
                return None, False
            self._disk_hits += 1
            admit = self._ram_on and ram_key not in self._ram and self._ram.may_take(ram_key)
        if admit:
            nbytes = sample_nbytes(value) + ENTRY_OVERHEAD
            with self._lock:
                if self._ram_on and ram_key not in self._ram:  # an insert may have overtaken
                    self._ram.admit(ram_key, value, nbytes)
        return value, False

    def insert_base(self, friendly_name: str, real_idx: int, data: Any) -> None:
        """Cache the data set's fields ``data`` of ``real_idx``: in its store and in RAM.

        The RAM tier keeps ``data`` itself (not a copy). Does nothing when ``use_cache`` is
        false or after :meth:`disable` (unless ``cache_disable = "disk_only"``: then the store
        is still written).

        Raises
        ------
        TypeError
            For a value the store cannot hold, naming its path in ``data``.
        """
        if not self._use_cache:
            return
        state = self._stores.entry(friendly_name)
        idx = self._index(state, friendly_name, real_idx)
        # Also after disable(): the fields tell which store later fetches read.
        store = self._stores.store(friendly_name, state, field_names(data))
        if store is None or not self._writes:
            return
        store.put(idx, data, name=f"{friendly_name}[{idx}]")
        nbytes = sample_nbytes(data) + ENTRY_OVERHEAD if self._ram_on else 0
        with self._lock:
            self._puts += 1
            if self._ram_on:
                self._tier().admit(idx << _SLOT_BITS | state.slot << 1, data, nbytes)

    def insert_augmented(
        self, friendly_name: str, real_idx: int, rng_seed: np.int64, data: Any
    ) -> None:
        """Keep augmented ``data`` in RAM under ``augment_cache_key(real_idx, rng_seed)``.

        Does nothing when that key is ``None``, when ``use_cache`` is false or after
        :meth:`disable`. Augmented entries are never stored on disk: augmentation code is not
        part of a store's identity, and without a fixed seed every run draws new keys.
        """
        if not self._use_cache or not self._ram_on:
            return
        state = self._stores.entry(friendly_name)
        self._index(state, friendly_name, real_idx)
        key = self._augment_key(state, real_idx, rng_seed)
        if key is None:
            return
        nbytes = sample_nbytes(data) + ENTRY_OVERHEAD
        with self._lock:
            self._puts += 1
            if self._ram_on:
                self._tier().admit(key << _SLOT_BITS | state.slot << 1 | 1, data, nbytes)

    def disable(self) -> None:
        """Stop caching in RAM and drop what RAM holds (Hyrax's infer verb calls this).

        Per ``cache_disable``: ``"read_only"`` (default) writes nothing new but still serves
        what the stores hold (a run after training on the same data reads from disk);
        ``"disk_only"`` keeps writing the stores (so a second inference run is warm);
        ``"off"`` is Hyrax's behaviour: caching off, every fetch misses.
        """
        mode = self.settings.cache_disable
        with self._lock:
            self._ram_on = False
            self._ram.clear()
            self._writes = mode == "disk_only"
            if mode == "off":
                self._use_cache = False
                self._stores.enabled = False
        if mode == "off":
            self.close()

    # -- beyond Hyrax's interface ----------------------------------------------------------------

    def store_path(self, friendly_name: str) -> Path | None:
        """The directory of ``friendly_name``'s store; ``None`` until its fields are known."""
        if not self._use_cache:
            return None
        store = self._stores.store(friendly_name, self._stores.entry(friendly_name), None)
        return None if store is None else store.path

    def stats(self) -> CacheStats:
        """This process's counters, the RAM tier's size and the stores' sizes summed."""
        with self._lock:
            counters = {
                "ram_hits": self._ram_hits,
                "disk_hits": self._disk_hits,
                "misses": self._misses,
                "puts": self._puts,
                "ram_bytes": self._ram.nbytes,
                "ram_items": len(self._ram),
            }
        open_stores = self._stores.open_stores()
        totals = dict.fromkeys(("disk_items", "disk_bytes", "rejected", "corrupt"), 0)
        totals["write_errors"] = 0
        for store in {id(s): s for s in open_stores if not s.closed}.values():
            part = store.stats()
            for name in totals:
                totals[name] += getattr(part, name)
        return CacheStats(**counters, **totals)

    def close(self) -> None:
        """Release this cache's stores and empty its RAM tier (idempotent; also at GC)."""
        self._stores.close()
        with self._lock:
            self._ram.clear()

    # -- internals -------------------------------------------------------------------------------

    @staticmethod
    def _index(state: DatasetEntry, name: str, real_idx: object) -> int:
        idx = check_key(real_idx)
        if idx >= state.length:
            raise IndexError(
                f"real_idx {idx} is out of range for data set {name!r} of length {state.length}"
            )
        return idx

    @staticmethod
    def _augment_key(state: DatasetEntry, real_idx: object, rng_seed: object) -> int | None:
        key = state.dataset.augment_cache_key(real_idx, rng_seed)
        if key is None:
            return None
        if isinstance(key, bool) or not isinstance(key, (int, np.integer)):
            raise TypeError(
                f"{type(state.dataset).__qualname__}.augment_cache_key returned "
                f"{type(key).__name__} {key!r}; it must return an integer (np.int64) or None"
            )
        return int(key)

    def _tier(self) -> RamTier:
        """The RAM tier (caller holds the lock): in a DataLoader worker, its share of the budget."""
        if not self._role_known:
            info = torch.utils.data.get_worker_info()
            if info is not None:
                # Fresh: what the parent held stays readable through the stores.
                self._ram = RamTier(self._budget // max(1, info.num_workers))
            self._role_known = True
        return self._ram

    # -- fork ------------------------------------------------------------------------------------

    def _before_fork(self) -> None:
        self._lock.acquire()

    def _after_fork_in_parent(self) -> None:
        self._lock.release()

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self._role_known = False
