"""DataCache(config, datasets, augment_active): Hyrax 0.9+'s interface, Hyrax's call patterns."""

from __future__ import annotations

import gc
import multiprocessing
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomlkit
import torch

from hyrax_like import CachingImages, Images, Provider
from spillcache import DataCache, cache_info
from spillcache.disk import live_tier
from spillcache.hyrax import DatasetsDataCache

TOML = """
[data_set]
use_cache = true
cache_dir = "{tmp}/cache"
cache_ram_budget = "64MiB"
seed = 7

[data_request.train.cutouts]
dataset_class = "Images"
data_location = "{tmp}/images"
primary_id_field = "object_id"
fields = ["image", "label", "object_id"]

[data_request.train.catalog]
dataset_class = "Catalog"
data_location = "{tmp}/catalog"
join_field = "object_id"
fields = ["redshift", "name"]

[data_request.infer.cutouts]
dataset_class = "Images"
data_location = "{tmp}/other_images"
primary_id_field = "object_id"
fields = ["image", "label", "object_id"]
"""


def toml_config(tmp: Path, **data_set: Any) -> tomlkit.TOMLDocument:
    doc = tomlkit.parse(TOML.format(tmp=tmp))
    for key, value in data_set.items():
        doc["data_set"][key] = value  # type: ignore[index]
    return doc


def plain(tmp: Path, **data_set: Any) -> dict[str, Any]:
    return {"data_set": {"cache_dir": str(tmp / "cache"), **data_set}}


def stores(tmp: Path) -> list[Path]:
    return sorted((tmp / "cache").iterdir())


def test_tomlkit_config_end_to_end_with_a_join(tmp_path: Path) -> None:
    config = toml_config(tmp_path)
    provider = Provider(config, config["data_request"]["train"])  # type: ignore[arg-type]
    fields = provider.requested_fields["cutouts"]
    assert all(type(f) is tomlkit.items.String for f in fields)  # as in every Hyrax config
    first = [provider.resolve_data(i) for i in range(12)]
    assert first[1]["catalog"] is None and first[2]["catalog"]["redshift"] == 0.2
    provider.data_cache.close()

    again = Provider(config, config["data_request"]["train"])  # type: ignore[arg-type]
    assert len(stores(tmp_path)) == 2  # one store per data set
    second = [again.resolve_data(i) for i in range(12)]
    stats = again.data_cache.stats()
    assert (stats.disk_hits, stats.misses) == (12 + 6, 0)  # the catalog has 6 of the 12 objects
    for a, b in zip(first, second, strict=True):
        assert np.array_equal(a["cutouts"]["image"], b["cutouts"]["image"])
        assert a["cutouts"]["label"] == b["cutouts"]["label"]
        assert (a["catalog"] is None) == (b["catalog"] is None)
    got = second[4]["cutouts"]
    assert [type(k) for k in got] == [str, str, str]  # a disk hit returns the base types
    assert type(got["label"]) is np.int64 and type(got["object_id"]) is str
    assert type(second[4]["catalog"]["name"]) is np.str_
    assert cache_info(again.data_cache.store_path("catalog")).items == 6  # type: ignore[arg-type]


def test_ram_hits_return_the_inserted_object(tmp_path: Path) -> None:
    cache = DataCache(plain(tmp_path), {"data": Images({}, "x")}, augment_active={"data": False})
    data = {"image": np.array([1, 2, 3])}
    cache.insert_base("data", real_idx=0, data=data)
    fetched, already_augmented = cache.try_fetch("data", real_idx=0)
    assert fetched is data
    assert already_augmented is False
    cache.close()
    reopened = DataCache(plain(tmp_path), {"data": Images({}, "x")}, {"data": False})
    assert reopened.try_fetch("data", 0) == (None, False)  # the fields are not known yet
    reopened.insert_base("data", 1, {"image": np.array([0])})
    fetched, already_augmented = reopened.try_fetch("data", 0)
    assert fetched is not data and np.array_equal(fetched["image"], [1, 2, 3])
    assert already_augmented is False
    reopened.close()


class SeedKeyed(Images):
    """One augmented entry per seed: keys span the whole int64 range."""

    def augment_cache_key(self, idx: int, rng_seed: np.int64) -> np.int64 | None:
        return np.int64(rng_seed)


@pytest.mark.parametrize("seed", [np.int64(42), np.int64(-(2**63)), np.int64(-12345)])
def test_augment_first_then_base_with_real_bools(tmp_path: Path, seed: np.int64) -> None:
    datasets = {"data": SeedKeyed({}, "x")}
    cache = DataCache(plain(tmp_path), datasets, augment_active={"data": True})
    base, augmented = {"image": np.array([1, 2])}, {"image": np.array([-1, -2])}
    cache.insert_base("data", real_idx=0, data=base)
    cache.insert_augmented("data", real_idx=0, rng_seed=seed, data=augmented)
    assert cache.try_fetch("data", 0, ~seed) == (base, False)  # another key
    fetched, already_augmented = cache.try_fetch("data", real_idx=0, rng_seed=seed)
    assert fetched is augmented and already_augmented is True
    assert type(already_augmented) is bool
    fetched, already_augmented = cache.try_fetch("data", real_idx=0, rng_seed=np.int64(99))
    assert fetched is base and already_augmented is False
    fetched, already_augmented = cache.try_fetch("data", real_idx=0)  # no seed: base only
    assert fetched is base and already_augmented is False
    inactive = DataCache(plain(tmp_path / "b"), datasets, augment_active={"data": False})
    inactive.insert_base("data", 0, base)
    inactive.insert_augmented("data", 0, seed, augmented)
    assert inactive.try_fetch("data", 0, seed) == (base, False)  # augmentation inactive
    for c in (cache, inactive):
        c.close()
    reopened = DataCache(plain(tmp_path), datasets, augment_active={"data": True})
    reopened.insert_base("data", 1, base)  # makes the fields known
    fetched, already_augmented = reopened.try_fetch("data", 0, seed)
    assert already_augmented is False and np.array_equal(fetched["image"], [1, 2])
    reopened.close()


def test_augment_cache_key_none_caches_nothing_augmented(tmp_path: Path) -> None:
    datasets = {"data": Images({}, "x")}
    cache = DataCache(plain(tmp_path), datasets, augment_active={"data": True})
    cache.insert_base("data", 0, {"image": np.array([1])})
    cache.insert_augmented("data", 0, np.int64(5), {"image": np.array([-1])})
    fetched, already_augmented = cache.try_fetch("data", 0, np.int64(5))
    assert np.array_equal(fetched["image"], [1]) and already_augmented is False
    assert cache.stats().ram_items == 1
    cache.close()


def test_augmentation_through_the_provider_reruns_on_base_hits(tmp_path: Path) -> None:
    config = toml_config(tmp_path)
    request = {
        "data": {"dataset_class": "Images", "data_location": str(tmp_path), "augment": True},
        "data2": {"dataset_class": "Images", "data_location": str(tmp_path / "2")},
    }
    provider = Provider(config, request)
    provider.prepped_datasets["data"].calls = multiprocessing.Value("i", 0)
    one = provider.resolve_data(3)
    two = provider.resolve_data(3)
    assert provider.prepped_datasets["data"].calls.value == 1  # base cached, augment re-run
    assert np.array_equal(one["data"]["image"], -np.full((2, 3), 3))
    assert np.array_equal(two["data"]["image"], -np.full((2, 3), 3))
    assert two["data2"] is one["data2"]  # not augmented: the RAM hit is the same dict
    provider.data_cache.close()


def test_disable_keeps_serving_what_is_stored_and_writes_nothing(tmp_path: Path) -> None:
    datasets = {"data": Images({}, "x")}
    cache = DataCache(plain(tmp_path), datasets, {"data": True})
    for i in range(3):
        cache.insert_base("data", i, {"image": np.array([i])})
    cache.disable()
    assert cache.stats().ram_items == 0  # RAM dropped
    fetched, already_augmented = cache.try_fetch("data", 1)
    assert np.array_equal(fetched["image"], [1]) and already_augmented is False
    assert cache.stats().ram_items == 0 and cache.stats().disk_hits == 1  # and not refilled
    cache.insert_base("data", 5, {"image": np.array([5])})
    cache.insert_augmented("data", 1, np.int64(3), {"image": np.array([9])})
    assert cache.try_fetch("data", 5) == (None, False)
    path = cache.store_path("data")
    cache.close()
    assert cache_info(path).items == 3  # type: ignore[arg-type]


def test_disable_off_is_hyrax_exactly_and_disk_only_keeps_writing(tmp_path: Path) -> None:
    datasets = {"data": Images({}, "x")}
    off = DataCache(plain(tmp_path, cache_disable="off"), datasets, {"data": False})
    off.insert_base("data", 0, {"image": np.array([0])})
    off.disable()
    assert off.try_fetch("data", 0) == (None, False)
    off.insert_base("data", 1, {"image": np.array([1])})
    assert off.try_fetch("data", 1) == (None, False)
    keep = DataCache(plain(tmp_path, cache_disable="disk_only"), datasets, {"data": False})
    keep.disable()
    keep.insert_base("data", 1, {"image": np.array([1])})
    fetched, _ = keep.try_fetch("data", 1)
    assert np.array_equal(fetched["image"], [1]) and keep.stats().ram_items == 0
    path = keep.store_path("data")
    keep.close()
    assert cache_info(path).items == 2  # type: ignore[arg-type]


def test_use_cache_false_caches_nothing(tmp_path: Path) -> None:
    cache = DataCache(plain(tmp_path, use_cache=False), {"data": Images({}, "x")}, {"data": True})
    data = {"image": np.array([1])}
    cache.insert_base("data", 0, data)
    cache.insert_augmented("data", 0, np.int64(1), data)
    assert cache.try_fetch("data", 0) == (None, False)
    assert cache.try_fetch("data", 0, np.int64(1)) == (None, False)
    assert not (tmp_path / "cache").exists()


def test_train_and_infer_with_one_friendly_name_never_share_a_store(tmp_path: Path) -> None:
    config = toml_config(tmp_path)
    train = Provider(config, config["data_request"]["train"])  # type: ignore[arg-type]
    infer = Provider(config, config["data_request"]["infer"])  # type: ignore[arg-type]
    infer.prepped_datasets["cutouts"].get_image = lambda idx: np.full((2, 3), -idx, np.float32)
    for i in range(4):
        train.resolve_data(i)
        infer.resolve_data(i)
    assert train.data_cache.store_path("cutouts") != infer.data_cache.store_path("cutouts")
    fresh = Provider(config, config["data_request"]["infer"])  # type: ignore[arg-type]
    assert fresh.resolve_data(2)["cutouts"]["image"][0, 0] == -2  # infer's data, from disk
    assert fresh.data_cache.stats().disk_hits == 1
    for p in (train, infer, fresh):
        p.data_cache.close()


def test_train_and_infer_of_the_same_data_share_one_open_store(tmp_path: Path) -> None:
    config = toml_config(tmp_path)
    config["data_request"]["infer"]["cutouts"]["data_location"] = str(tmp_path / "images")  # type: ignore[index]
    train = Provider(config, config["data_request"]["train"])  # type: ignore[arg-type]
    train.resolve_data(0)
    infer = Provider(config, config["data_request"]["infer"])  # type: ignore[arg-type]
    infer.data_cache.disable()  # as Hyrax's infer verb does
    infer.prepped_datasets["cutouts"].calls = multiprocessing.Value("i", 0)
    assert np.array_equal(infer.resolve_data(0)["cutouts"]["image"], np.zeros((2, 3)))
    assert infer.prepped_datasets["cutouts"].calls.value == 0  # read from the store
    assert train.data_cache.store_path("cutouts") == infer.data_cache.store_path("cutouts")
    train.data_cache.close()
    infer.resolve_data(1)  # the store stays open for infer after train closed it
    infer.data_cache.close()


def test_the_identity_of_a_data_set_names_its_store(tmp_path: Path) -> None:
    class Fingerprinted(Images):
        version = "v1"

        def cache_fingerprint(self) -> str:
            return self.version

    def path_of(dataset: Any, sample: Any) -> Path:
        cache = DataCache(plain(tmp_path), {"data": dataset}, {"data": False})
        cache.insert_base("data", 0, sample)
        path = cache.store_path("data")
        cache.close()
        assert path is not None
        return path

    sample = {"image": np.zeros(1)}
    base = path_of(Images({}, str(tmp_path / "a")), sample)
    assert path_of(Images({}, str(tmp_path / "x" / ".." / "a")), sample) == base  # resolved
    others = [
        path_of(Images({}, str(tmp_path / "b")), sample),
        path_of(Images({}, str(tmp_path / "a"), n=13), sample),
        path_of(CachingImages({}, str(tmp_path / "a")), sample),
        path_of(Images({"data_set": {"Images": {"seed": 1}}}, str(tmp_path / "a")), sample),
        path_of(Images({}, str(tmp_path / "a")), {"image": np.zeros(1), "label": 1}),
        path_of(Fingerprinted({}, str(tmp_path / "a")), sample),
    ]
    v2 = Fingerprinted({}, str(tmp_path / "a"))
    v2.version = "v2"
    others.append(path_of(v2, sample))
    assert len({base, *others}) == 1 + len(others)
    named = DataCache(plain(tmp_path, cache_fingerprint="run2"), {"d": Images({}, "a")}, {})
    named.insert_base("d", 0, sample)
    assert named.store_path("d") not in {base, *others}
    named.close()


def test_another_field_set_goes_to_another_store(tmp_path: Path) -> None:
    cache = DataCache(plain(tmp_path), {"data": Images({}, "x")}, {"data": False})
    cache.insert_base("data", 0, {"image": np.zeros(1)})
    first = cache.store_path("data")
    cache.insert_base("data", 1, {"image": np.zeros(1), "label": 2})
    assert cache.store_path("data") != first
    assert cache.try_fetch("data", 0) == (None, False)  # not served from the other field set
    cache.close()


def test_close_releases_the_stores_and_they_reopen_on_use(tmp_path: Path) -> None:
    cache = DataCache(plain(tmp_path), {"data": Images({}, "x")}, {"data": False})
    cache.insert_base("data", 0, {"image": np.array([4, 5])})
    path = cache.store_path("data")
    assert path is not None and live_tier(path) is not None
    cache.close()
    assert live_tier(path) is None and cache.stats().ram_items == 0
    fetched, _ = cache.try_fetch("data", 0)  # reopened: a disk hit
    assert np.array_equal(fetched["image"], [4, 5]) and cache.stats().disk_hits == 1
    cache.close()


def test_unreferenced_caches_release_their_stores(tmp_path: Path) -> None:
    paths = []
    for i in range(20):
        cache = DataCache(plain(tmp_path / str(i)), {"data": Images({}, "x")}, {"data": False})
        cache.insert_base("data", 0, {"image": np.zeros(1)})
        paths.append(cache.store_path("data"))
        del cache
    gc.collect()
    assert all(p is not None and live_tier(p) is None for p in paths)


def test_a_pickled_cache_without_cache_dir_reads_the_temporary_store(tmp_path: Path) -> None:
    cache = DataCache({"data_set": {}}, {"data": Images({}, "x")}, {"data": False})
    cache.insert_base("data", 3, {"image": np.array([7])})
    clone = pickle.loads(pickle.dumps(cache))  # as a spawned DataLoader worker gets it
    assert clone.store_path("data") == cache.store_path("data")
    fetched, _ = clone.try_fetch("data", 3)
    assert np.array_equal(fetched["image"], [7]) and clone.stats().disk_hits == 1
    clone.close()
    cache.close()


def test_one_ram_budget_for_all_data_sets(tmp_path: Path) -> None:
    datasets = {"a": Images({}, "a", n=200), "b": Images({}, "b", n=200)}
    cache = DataCache(plain(tmp_path, cache_ram_budget="64KiB"), datasets, {"a": 0, "b": 0})
    for i in range(200):
        for name in datasets:
            cache.insert_base(name, i, {"image": np.zeros(256, np.float32)})
    stats = cache.stats()
    assert 0 < stats.ram_bytes <= 64 * 1024 and stats.disk_items == 400
    cache.close()


def test_pickles_for_spawn_workers_and_reads_in_a_spawned_process(tmp_path: Path) -> None:
    config = toml_config(tmp_path)
    provider = Provider(config, config["data_request"]["train"])  # type: ignore[arg-type]
    for i in range(12):
        provider.resolve_data(i)
    clone = pickle.loads(pickle.dumps(provider.data_cache))
    assert type(clone) is DatasetsDataCache and clone.stats().ram_items == 0
    fetched, _ = clone.try_fetch("cutouts", 5)
    assert fetched["object_id"] == "obj0005" and clone.stats().disk_hits == 1
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        got = pool.apply(_fetch_image, (provider.data_cache, "cutouts", 7))
    assert np.array_equal(got, np.full((2, 3), 7))
    provider.data_cache.close()


def _fetch_image(cache: DatasetsDataCache, name: str, idx: int) -> Any:
    fetched, _ = cache.try_fetch(name, idx)
    assert cache.stats().disk_hits == 1
    return fetched["image"]


def test_a_second_process_reopens_the_stores(tmp_path: Path) -> None:
    config = toml_config(tmp_path)
    provider = Provider(config, config["data_request"]["train"])  # type: ignore[arg-type]
    for i in range(12):
        provider.resolve_data(i)
    provider.data_cache.close()
    script = textwrap.dedent(f"""
        import sys, tomlkit
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from hyrax_like import Provider
        config = tomlkit.parse({TOML.format(tmp=tmp_path)!r})
        provider = Provider(config, config["data_request"]["train"])
        for i in range(12):
            provider.resolve_data(i)
        s = provider.data_cache.stats()
        print(s.disk_hits, s.misses)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["18", "0"]


def test_dataloader_workers_share_the_store(tmp_path: Path) -> None:
    config = toml_config(tmp_path)
    calls = multiprocessing.get_context("fork").Value("i", 0)

    def epoch(provider: Provider) -> list[int]:
        loader = torch.utils.data.DataLoader(
            provider,
            batch_size=3,
            num_workers=2,
            shuffle=True,
            collate_fn=lambda batch: [int(s["cutouts"]["image"][0, 0]) for s in batch],
            multiprocessing_context="fork",
        )
        return sorted(i for batch in loader for i in batch)

    for run in range(2):
        provider = Provider(config, config["data_request"]["train"])  # type: ignore[arg-type]
        provider.prepped_datasets["cutouts"].calls = calls
        assert epoch(provider) == list(range(12))
        assert epoch(provider) == list(range(12))  # new workers: served by the store
        provider.data_cache.close()
        assert calls.value == 12, run  # each sample loaded once, by whichever worker


def test_workers_ram_tiers_split_the_budget(tmp_path: Path, monkeypatch: Any) -> None:
    class Info:
        num_workers = 4

    cache = DataCache(plain(tmp_path, cache_ram_budget="64KiB"), {"a": Images({}, "a", 99)}, {})
    monkeypatch.setattr(torch.utils.data, "get_worker_info", Info)
    for i in range(99):
        cache.insert_base("a", i, {"image": np.zeros(256, np.float32)})
    assert 0 < cache.stats().ram_bytes <= 16 * 1024
    cache.close()


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((), {}, TypeError, "DataCache\\(config, data_provider\\).*DataCache\\(config, datasets"),
        (({}, 3), {}, TypeError, "two forms"),
        (({}, {"a": 1}), {}, TypeError, "two forms"),
        (({}, [1], {}), {}, TypeError, "datasets must be a mapping"),
        (({}, {}), {"augment_active": None}, TypeError, "augment_active must be a mapping"),
        (({"data_set": {"cache_disable": 1}}, {}, {}), {}, TypeError, "cache_disable"),
        (({"data_set": {"cache_disable": "no"}}, {}, {}), {}, ValueError, "cache_disable"),
    ],
)
def test_wrong_arguments_name_the_fix(args: Any, kwargs: Any, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        DataCache(*args, **kwargs)


def test_wrong_names_indices_and_augment_keys(tmp_path: Path) -> None:
    class BadKey(Images):
        def augment_cache_key(self, idx: int, rng_seed: np.int64) -> Any:
            return f"{idx}-{rng_seed}"

    cache = DataCache(plain(tmp_path), {"data": BadKey({}, "x", n=5)}, {"data": True})
    with pytest.raises(KeyError, match=r"no data set named 'other'.*'data'"):
        cache.try_fetch("other", 0)
    with pytest.raises(IndexError, match=r"real_idx 5 .* length 5"):
        cache.insert_base("data", 5, {"image": np.zeros(1)})
    with pytest.raises(TypeError, match=r"BadKey.augment_cache_key returned str"):
        cache.insert_augmented("data", 1, np.int64(3), {"image": np.zeros(1)})
    with pytest.raises(TypeError, match=r"data\[1\]\['bad'\]"):
        cache.insert_base("data", 1, {"bad": object()})
    assert cache.try_fetch("data", np.int64(1)) == (None, False)
    cache.close()


def test_after_disable_an_insert_still_tells_which_store_to_read(tmp_path: Path) -> None:
    config = toml_config(tmp_path, cache_disable="disk_only")
    config["data_request"]["infer"]["cutouts"]["data_location"] = str(tmp_path / "images")  # type: ignore[index]
    config["data_request"]["infer"]["cutouts"]["fields"] = ["image"]  # type: ignore[index]
    for mode in ("disk_only", "read_only"):  # a first inference run fills, the second reads
        config["data_set"]["cache_disable"] = mode  # type: ignore[index]
        infer = Provider(config, config["data_request"]["infer"])  # type: ignore[arg-type]
        infer.data_cache.disable()
        infer.prepped_datasets["cutouts"].calls = multiprocessing.Value("i", 0)
        for i in range(12):
            infer.resolve_data(i)
        # Train and infer name other fields: the first sample shows which store is infer's.
        want = 12 if mode == "disk_only" else 1
        assert infer.prepped_datasets["cutouts"].calls.value == want
        infer.data_cache.close()
