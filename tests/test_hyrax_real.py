"""Hyrax 0.13's own config loader, DataProvider and data sets with spillcache switched in.

Needs Hyrax (``pip install hyrax==0.13``; heavy: torchvision, mlflow, lancedb, ...), so CI
skips it; run by hand in an environment that has it::

    PYTHONPATH=src python -m pytest -m hyrax_real tests/test_hyrax_real.py
"""

from __future__ import annotations

import logging
import multiprocessing
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.hyrax_real
pytest.importorskip("hyrax", reason="Hyrax is not installed (pip install hyrax==0.13)")

import hyrax.datasets.data_cache  # noqa: E402
from hyrax.config_utils import ConfigManager  # noqa: E402
from hyrax.datasets.data_provider import DataProvider  # noqa: E402
from hyrax.datasets.random.hyrax_random_dataset import HyraxRandomDataset  # noqa: E402
from hyrax.pytorch_ignite import setup_dataset  # noqa: E402

import spillcache  # noqa: E402
from spillcache.hyrax import DatasetsDataCache  # noqa: E402

# get_image calls across forked DataLoader workers.
LOADS = multiprocessing.get_context("fork").Value("i", 0)


class CountedRandomDataset(HyraxRandomDataset):  # registered in Hyrax's registry by its name
    """Hyrax's random data set, counting its loads."""

    def get_image(self, idx: int) -> np.ndarray:
        with LOADS.get_lock():
            LOADS.value += 1
        return super().get_image(idx)

    def augment_image(self, data: np.ndarray, idx: int, rng_seed: np.int64) -> np.ndarray:
        return -data

    def augment_cache_key(self, idx: int, rng_seed: np.int64) -> np.int64 | None:
        return np.int64(rng_seed)  # the full int64 range, negative keys included


TOML = """
[data_set]
cache_dir = "{tmp}/cache"
cache_ram_budget = "64MiB"

[data_set.HyraxRandomDataset]
size = 40
shape = [2, 8, 8]
metadata_fields = []  # their getters are bound closures: Hyrax's provider would not pickle

[data_request.train.data]
dataset_class = "CountedRandomDataset"
data_location = "{tmp}/data"
primary_id_field = "object_id"
fields = ["image", "label", "object_id"]

[data_request.infer.data]
dataset_class = "CountedRandomDataset"
data_location = "{tmp}/data"
primary_id_field = "object_id"
fields = ["image", "label", "object_id"]
"""


@pytest.fixture
def config(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> Any:
    path = tmp_path / "config.toml"
    path.write_text(TOML.format(tmp=tmp_path))
    with caplog.at_level(logging.WARNING, logger="hyrax.config_utils"):
        loaded = ConfigManager(runtime_config_filepath=path).config
    # Keys Hyrax has no default for are kept, with a warning each (not an error).
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "'cache_dir' which has no default defined" in warned
    assert "'cache_ram_budget' which has no default defined" in warned
    assert type(loaded["data_set"]["cache_dir"]).__name__ == "String"  # tomlkit
    return loaded


@pytest.fixture(autouse=True)
def switched_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hyrax.datasets.data_cache, "DataCache", spillcache.DataCache)
    LOADS.value = 0


def test_hyrax_provider_runs_on_spillcache_and_the_next_run_reads_the_store(config: Any) -> None:
    providers = setup_dataset(config)  # Hyrax's train and infer providers of one config
    train, infer = providers["train"], providers["infer"]
    assert type(train.data_cache) is DatasetsDataCache
    first = [train.resolve_data(i) for i in range(40)]
    again = [train.resolve_data(i) for i in range(40)]
    assert LOADS.value == 40
    assert all(a["data"] is b["data"] for a, b in zip(first, again, strict=True))
    assert type(next(iter(first[0]["data"]))) is not str  # Hyrax's keys: tomlkit Strings
    # Hyrax's infer verb disables the cache: it still reads what training stored.
    infer.data_cache.disable()
    for i in range(40):
        got = infer.resolve_data(i)
        assert np.array_equal(got["data"]["image"], first[i]["data"]["image"])
    assert LOADS.value == 40 and infer.data_cache.stats().disk_hits == 40
    assert train.data_cache.store_path("data") == infer.data_cache.store_path("data")

    rerun = setup_dataset(config)["train"]
    got = rerun.resolve_data(7)["data"]
    assert [type(k) for k in got] == [str, str, str]  # from disk: base types
    assert np.array_equal(got["image"], first[7]["data"]["image"])
    assert got["label"] == first[7]["data"]["label"] and LOADS.value == 40


def test_hyrax_augmentation_with_spillcache(config: Any, tmp_path: Path) -> None:
    request = {
        "data": {
            "dataset_class": "CountedRandomDataset",
            "data_location": str(tmp_path / "data"),
            "primary_id_field": "object_id",
            "fields": ["image", "object_id"],
            "augment": True,
        }
    }
    provider = DataProvider(config, request)
    one = provider.resolve_data(3)
    two = provider.resolve_data(3)  # a base hit: Hyrax re-augments with the new seed
    assert LOADS.value == 1
    base = provider.prepped_datasets["data"].get_image(3)
    assert np.array_equal(one["data"]["image"], -base)
    assert np.array_equal(two["data"]["image"], -base)
    stats = provider.data_cache.stats()
    assert stats.ram_hits == 1 and stats.ram_items == 3  # one base and two augmented entries


def test_hyrax_provider_in_dataloader_workers_shares_the_store(config: Any) -> None:
    for _run in range(2):
        provider = setup_dataset(config, splits=("train",))["train"]
        for _epoch in range(2):
            loader = torch.utils.data.DataLoader(
                provider,
                batch_size=8,
                shuffle=True,
                num_workers=2,
                collate_fn=provider.collate,
                multiprocessing_context="fork",
            )
            ids = sorted(i for batch in loader for i in batch["object_id"])
            assert len(ids) == 40
        provider.data_cache.close()
    assert LOADS.value == 40  # 2 runs x 2 epochs x 2 workers: every sample loaded once


def test_hyrax_provider_in_spawned_workers_fills_the_store(config: Any) -> None:
    provider = setup_dataset(config, splits=("train",))["train"]
    loader = torch.utils.data.DataLoader(
        provider,
        batch_size=8,
        num_workers=2,
        collate_fn=provider.collate,
        multiprocessing_context="spawn",  # the provider and its cache are pickled
    )
    images = np.concatenate([batch["data"]["image"] for batch in loader])  # Hyrax collates numpy
    assert images.shape == (40, 2, 8, 8)
    path = provider.data_cache.store_path("data")
    assert path is not None and spillcache.cache_info(path).items == 40  # written by workers
    got = provider.resolve_data(5)["data"]  # the main process reads what they stored
    assert provider.data_cache.stats().disk_hits == 1
    assert np.array_equal(got["image"], images[5])
