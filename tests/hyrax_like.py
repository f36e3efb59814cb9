"""Hyrax 0.13's call patterns without Hyrax: data sets and a DataProvider's ``resolve_data``.

``Provider.resolve_data`` follows ``hyrax.datasets.data_provider.DataProvider.resolve_data`` of
Hyrax 0.13 line by line (joins, per-data-set augmentation, the cache calls), so that the tests
that run without Hyrax installed see the calls Hyrax makes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from spillcache import DataCache


class Images:
    """A map-style Hyrax data set: ``get_<field>`` getters, ``len``, ``data_location``."""

    # Loads by get_image, across forked DataLoader workers (set by a test; not picklable).
    calls: Any = None

    def __init__(self, config: Mapping[str, Any], data_location: str, n: int = 12) -> None:
        self.config = config
        self.data_location = data_location
        self.n = n

    def __len__(self) -> int:
        return self.n

    def get_image(self, idx: int) -> np.ndarray:
        if self.calls is not None:
            with self.calls.get_lock():
                self.calls.value += 1
        return np.full((2, 3), idx, dtype=np.float32)

    def get_label(self, idx: int) -> np.int64:
        return np.int64(idx % 3)

    def get_object_id(self, idx: int) -> str:
        return f"obj{idx:04d}"

    def augment_image(self, data: np.ndarray, idx: int, rng_seed: np.int64) -> np.ndarray:
        return -data

    def augment_cache_key(self, idx: int, rng_seed: np.int64) -> np.int64 | None:
        return None  # Hyrax's default: augmented results are not cached


class CachingImages(Images):
    """Caches augmented results: Hyrax's ``CachingAugmentDataset`` key."""

    def augment_cache_key(self, idx: int, rng_seed: np.int64) -> np.int64 | None:
        return np.int64(idx * 1_000_000 + (rng_seed % 1_000_000))


class Catalog:
    """A joined secondary data set: rows matched by ``object_id``, some objects missing."""

    def __init__(self, config: Mapping[str, Any], data_location: str) -> None:
        self.config = config
        self.data_location = data_location
        self.ids = [f"obj{i:04d}" for i in range(0, 12, 2)][::-1]  # every other, reversed

    def __len__(self) -> int:
        return len(self.ids)

    def get_object_id(self, idx: int) -> str:
        return self.ids[idx]

    def get_redshift(self, idx: int) -> np.float64:
        return np.float64(int(self.ids[idx][3:]) / 10)

    def get_name(self, idx: int) -> np.str_:
        return np.str_(f"galaxy {self.ids[idx]}")


CLASSES = {"Images": Images, "CachingImages": CachingImages, "Catalog": Catalog}


class Provider:
    """Hyrax 0.13's DataProvider reduced to what talks to the cache."""

    def __init__(self, config: Mapping[str, Any], request: Mapping[str, Any]) -> None:
        self.config = config
        self.prepped_datasets: dict[str, Any] = {}
        self.requested_fields: dict[str, tuple[Any, ...]] = {}
        self.augment_enabled: dict[str, Any] = {}
        self.join_fields: dict[str, Any] = {}
        self.primary = None
        for name, definition in request.items():
            dataset = CLASSES[str(definition["dataset_class"])](
                config, str(definition["data_location"])
            )
            self.prepped_datasets[name] = dataset
            fields = definition.get("fields") or [m[4:] for m in dir(dataset) if m[:4] == "get_"]
            self.requested_fields[name] = tuple(fields)
            if definition.get("augment"):
                self.augment_enabled[name] = ["image"]
            if definition.get("join_field"):
                self.join_fields[name] = definition["join_field"]
            if definition.get("primary_id_field"):
                self.primary = name
        self.join_maps = {
            name: {self.prepped_datasets[name].get_object_id(i): i for i in range(len(ds))}
            for name, ds in self.prepped_datasets.items()
            if name in self.join_fields
        }
        self.augment_rng = np.random.default_rng(config["data_set"].get("seed") or None)
        self.epoch_rng = np.random.default_rng(int(self.augment_rng.integers(2**62)))
        augment_active = {fn: bool(self.augment_enabled.get(fn)) for fn in self.prepped_datasets}
        self.data_cache = DataCache(config, self.prepped_datasets, augment_active)

    def __len__(self) -> int:
        return len(self.prepped_datasets[self.primary or next(iter(self.prepped_datasets))])

    def __getitem__(self, idx: int) -> dict[str, Any]:
        return self.resolve_data(idx)

    def on_epoch_start(self) -> None:
        self.epoch_rng = np.random.default_rng(int(self.augment_rng.integers(2**62)))

    def _augment(self, name: str, base: dict[str, Any], idx: int, seed: np.int64) -> dict[str, Any]:
        out = {}
        for field, value in base.items():
            fn = getattr(self.prepped_datasets[name], f"augment_{field}", None)
            if fn is not None and field in self.augment_enabled[name]:
                view = value.view()
                view.flags.writeable = False  # Hyrax protects cached arrays so
                out[field] = fn(view, idx, seed)
            else:
                out[field] = value
        return out

    def resolve_data(self, idx: int) -> dict[str, Any]:
        i64 = np.iinfo(np.int64)
        any_augment = bool(self.augment_enabled)
        rng_seed = (
            self.epoch_rng.integers(i64.min, i64.max, dtype=np.int64) if any_augment else None
        )
        primary = self.prepped_datasets[self.primary] if self.primary else None
        object_id = None if primary is None else str(primary.get_object_id(idx))
        result: dict[str, Any] = {}
        for name, fields in self.requested_fields.items():
            dataset = self.prepped_datasets[name]
            if name in self.join_maps:
                real_idx = self.join_maps[name].get(object_id)
                if real_idx is None:
                    result[name] = None
                    continue
            else:
                real_idx = idx
            effective = rng_seed if self.augment_enabled.get(name) else None
            cached, already = self.data_cache.try_fetch(name, real_idx, effective)
            if cached is not None and (already or effective is None):
                result[name] = cached
            elif cached is not None:
                augmented = self._augment(name, cached, real_idx, rng_seed)
                self.data_cache.insert_augmented(name, real_idx, rng_seed, augmented)
                result[name] = augmented
            else:
                base = {field: getattr(dataset, f"get_{field}")(real_idx) for field in fields}
                self.data_cache.insert_base(name, real_idx, base)
                if effective is not None:
                    augmented = self._augment(name, base, real_idx, rng_seed)
                    self.data_cache.insert_augmented(name, real_idx, rng_seed, augmented)
                    result[name] = augmented
                else:
                    result[name] = base
        if object_id is not None:
            result["object_id"] = object_id
        return result
