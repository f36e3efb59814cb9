"""DataCache: Hyrax's interface and configuration."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helpers import hyrax_loop
from spillcache import DataCache, cache_info
from spillcache.disk import live_tier


class Provider:
    """Hyrax's DataProvider surface: len() and resolve_data()."""

    def __init__(self, n: int = 10) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def resolve_data(self, idx: int) -> dict[str, Any]:
        return {
            "cutout": {"image": np.full((3, 3), idx, dtype=np.float32), "label": idx},
            "object_id": np.str_(f"{idx:05d}"),
        }


def config(**data_set: Any) -> dict[str, Any]:
    return {"data_set": data_set, "data_request": {"train": {"dataset_class": "HSCDataSet"}}}


def test_round_trip_in_a_cache_dir(tmp_path: Path) -> None:
    provider = Provider()
    cache = DataCache(config(use_cache=True, cache_dir=str(tmp_path)), provider)
    assert cache.try_fetch(3) is None
    cache.insert_into_cache(3, provider.resolve_data(3))
    got = cache.try_fetch(3)
    assert got is not None
    assert np.array_equal(got["cutout"]["image"], np.full((3, 3), 3, dtype=np.float32))
    assert type(got["object_id"]) is np.str_
    cache.close()
    (store,) = tmp_path.iterdir()
    assert store.name == cache.fingerprint
    assert cache_info(store).items == 1
    assert cache_info(store).fingerprint == cache.fingerprint


def test_building_is_lazy_and_use_cache_false_does_nothing(tmp_path: Path) -> None:
    DataCache(config(cache_dir=str(tmp_path)), Provider())
    assert list(tmp_path.iterdir()) == []
    off = DataCache(config(use_cache=False, cache_dir=str(tmp_path)), Provider())
    off.insert_into_cache(1, {"x": 1})
    assert off.try_fetch(1) is None
    assert off.cache is None
    assert list(tmp_path.iterdir()) == []


def test_one_store_per_data_request(tmp_path: Path) -> None:
    a = DataCache(config(cache_dir=str(tmp_path)), Provider(10))
    b = DataCache(config(cache_dir=str(tmp_path)), Provider(11))
    c = {**config(cache_dir=str(tmp_path)), "data_request": {"infer": {"x": 1}}}
    fingerprints = {a.fingerprint, b.fingerprint, DataCache(c, Provider(10)).fingerprint}
    assert len(fingerprints) == 3
    same = DataCache(config(cache_dir=str(tmp_path)), Provider(10))
    assert same.fingerprint == a.fingerprint
    named = DataCache(config(cache_dir=str(tmp_path), cache_fingerprint="v2"), Provider(10))
    assert named.fingerprint not in fingerprints


def test_next_run_reuses_the_store(tmp_path: Path) -> None:
    provider = Provider()
    first = DataCache(config(cache_dir=str(tmp_path)), provider)
    for i in range(10):
        hyrax_loop(first, provider, i)
    first.close()
    second = DataCache(config(cache_dir=str(tmp_path)), provider)
    assert all(second.try_fetch(i) is not None for i in range(10))


def test_index_checks_match_hyrax(tmp_path: Path) -> None:
    cache = DataCache(config(cache_dir=str(tmp_path)), Provider(10))
    with pytest.raises(IndexError, match="length 10"):
        cache.try_fetch(10)
    with pytest.raises(RuntimeError, match="int"):
        cache.try_fetch("1")  # type: ignore[arg-type]
    assert cache.try_fetch(np.int64(2)) is None
    cache.close()


@pytest.mark.parametrize(
    ("key", "value", "error"),
    [
        ("use_cache", "yes", TypeError),
        ("preload_cache", 1, TypeError),
        ("preload_threads", 0, ValueError),
        ("preload_threads", "many", ValueError),
        ("cache_dir", 3, TypeError),
        ("cache_ram_budget", "lots", ValueError),
        ("cache_ram_budget", True, TypeError),
        ("cache_disk_budget", "-1GiB", ValueError),
        ("cache_fingerprint", 5, TypeError),
    ],
)
def test_bad_config_names_the_key(key: str, value: object, error: type[Exception]) -> None:
    # One rule (#14): a wrong type is a TypeError, a wrong value a ValueError.
    with pytest.raises(error, match=key) as caught:
        DataCache(config(**{key: value}), Provider())
    assert type(caught.value) is error


def test_hyrax_shipped_values_are_accepted(tmp_path: Path) -> None:
    cache = DataCache(
        config(use_cache=True, preload_cache=False, preload_threads=50, cache_dir=""),
        Provider(),
    )
    assert cache.settings.preload_threads == 50
    cache.start_preload_thread()  # a documented no-op for now
    cache.insert_into_cache(0, {"x": 1})
    store = cache.cache
    assert store is not None
    path = store.path
    assert path.is_dir()  # a temporary store
    cache.close()
    assert not path.exists()


def test_hundreds_of_unreferenced_caches_release_their_stores(tmp_path: Path) -> None:
    paths = []
    for i in range(300):
        cache = DataCache(config(cache_dir=str(tmp_path / str(i))), Provider(3))
        cache.insert_into_cache(0, {"x": i})
        assert cache.cache is not None
        paths.append(cache.cache.path)
        del cache
    gc.collect()
    assert all(live_tier(p) is None for p in paths)


def test_providers_with_their_own_request_get_their_own_store(tmp_path: Path) -> None:
    train, infer = Provider(10), Provider(10)
    train.data_request = {"train": {"split": 0.8}}  # type: ignore[attr-defined]
    infer.data_request = {"infer": {"split": 1.0}}  # type: ignore[attr-defined]
    a = DataCache(config(cache_dir=str(tmp_path)), train)
    b = DataCache(config(cache_dir=str(tmp_path)), infer)
    assert a.fingerprint != b.fingerprint
    a.insert_into_cache(1, {"x": 1})
    b.insert_into_cache(1, {"x": 2})  # no "already open": two stores
    assert (a.try_fetch(1), b.try_fetch(1)) == ({"x": 1}, {"x": 2})
    a.close()
    b.close()


def _fetch_in_child(cache: DataCache, queue: Any) -> None:
    queue.put(cache.try_fetch(4))


def test_data_cache_pickles_for_spawned_workers(tmp_path: Path) -> None:
    import multiprocessing as mp
    import pickle

    cache = DataCache(config(cache_dir=str(tmp_path)), Provider())
    cache.insert_into_cache(4, {"x": 4})
    assert cache.cache is not None
    cache.cache.flush()
    assert b"Lock" not in pickle.dumps(cache)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_fetch_in_child, args=(cache, queue))
    child.start()
    assert queue.get(timeout=120) == {"x": 4}
    child.join(60)
    assert child.exitcode == 0
    cache.close()


def test_hyrax_08_interface_with_a_tomlkit_config(tmp_path: Path) -> None:
    import tomlkit

    doc = tomlkit.parse(
        f'[data_set]\ncache_dir = "{tmp_path}"\ncache_ram_budget = 1000000\npreload_threads = 4\n'
        '[data_request.train.data]\ndataset_class = "X"\nfields = ["image", "label"]\n'
    )
    image, label = doc["data_request"]["train"]["data"]["fields"]  # type: ignore[index,misc]

    class TomlProvider(Provider):
        def resolve_data(self, idx: int) -> dict[str, Any]:
            return {"data": {image: np.full(3, idx), label: idx}, "object_id": str(idx)}

    provider = TomlProvider()
    cache = DataCache(doc, provider)
    for i in range(10):
        hyrax_loop(cache, provider, i)
    cache.close()
    again = DataCache(doc, provider)
    got = again.try_fetch(4)
    assert got is not None and got["data"] == {"image": got["data"]["image"], "label": 4}
    assert [type(k) for k in got["data"]] == [str, str] and again.stats().disk_hits == 1
    again.close()
