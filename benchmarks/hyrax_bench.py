"""Hyrax 0.9+'s DataCache against spillcache's, through Hyrax's own code (needs Hyrax installed).

1. ``try_fetch`` of a Hyrax-like sample (tomlkit field names, a float32 image, an int64 label,
   a str id): a RAM hit of Hyrax's dict cache, a RAM hit of spillcache, a disk hit of spillcache
   (RAM off; the store in the page cache). Rounds alternate; medians of the rounds.
2. Epoch 1, epoch 2 and a second run's epoch 1 through Hyrax's DataProvider and a DataLoader
   with ``num_workers=2``, over a data set whose ``get_image`` takes ``--delay`` ms, with
   Hyrax's own cache and with spillcache switched in.

Run: ``PYTHONPATH=src python -m benchmarks.hyrax_bench`` (in an environment with Hyrax).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import hyrax.datasets.data_cache as hyrax_cache
import numpy as np
import tomlkit
import torch
from hyrax.config_utils import ConfigManager
from hyrax.datasets.data_provider import DataProvider
from hyrax.datasets.random.hyrax_random_dataset import HyraxRandomDataset

import spillcache

HyraxDataCache = hyrax_cache.DataCache


class Stub:
    """A data set as the cache sees it."""

    def __len__(self) -> int:
        return 1000

    def augment_cache_key(self, idx: int, rng_seed: np.int64) -> None:
        return None


def _sample(shape: tuple[int, ...], idx: int) -> dict[str, Any]:
    names = tomlkit.parse('f = ["image", "label", "object_id"]')["f"]
    return {
        names[0]: np.full(shape, idx, dtype=np.float32),
        names[1]: np.int64(idx % 10),
        names[2]: f"{idx:08d}",
    }


def _per_call_us(cache: Any, n: int, repeat: int) -> float:
    fetch = cache.try_fetch
    start = time.perf_counter()
    for _ in range(repeat):
        for i in range(n):
            fetch("data", i)
    return (time.perf_counter() - start) / (n * repeat) * 1e6


def fetch_costs(shape: tuple[int, ...], rounds: int, tmp: Path) -> dict[str, float]:
    n, repeat = 200, 5
    config = tomlkit.parse(f'[data_set]\nuse_cache = true\ncache_dir = "{tmp}"\n')
    datasets = {"data": Stub()}
    hyrax = HyraxDataCache(config, datasets, {"data": False})
    ram = spillcache.DataCache(config, datasets, {"data": False})
    for i in range(n):
        hyrax.insert_base("data", i, _sample(shape, i))
        ram.insert_base("data", i, _sample(shape, i))
    config["data_set"]["cache_ram_budget"] = 0  # type: ignore[index]
    disk = spillcache.DataCache(config, datasets, {"data": False})  # shares ram's store
    disk.insert_base("data", 0, _sample(shape, 0))  # makes the fields known
    times: dict[str, list[float]] = {"hyrax dict": [], "spillcache RAM": [], "spillcache disk": []}
    for _ in range(rounds):
        times["hyrax dict"].append(_per_call_us(hyrax, n, repeat))
        times["spillcache RAM"].append(_per_call_us(ram, n, repeat))
        times["spillcache disk"].append(_per_call_us(disk, n, repeat))
    assert disk.stats().ram_hits == 0 and disk.stats().misses == 0
    ram.close()
    disk.close()
    return {k: statistics.median(v) for k, v in times.items()}


class SlowDataset(HyraxRandomDataset):
    """Hyrax's random data set with a slow ``get_image`` (a file system, a decoder)."""

    delay = 0.002

    def get_image(self, idx: int) -> np.ndarray:
        time.sleep(self.delay)
        return super().get_image(idx)


def epochs(use_spillcache: bool, size: int, tmp: Path) -> list[float]:
    hyrax_cache.DataCache = spillcache.DataCache if use_spillcache else HyraxDataCache
    doc = ConfigManager().config  # Hyrax's defaults
    doc["data_set"]["seed"] = 1
    doc["data_set"]["cache_dir"] = str(tmp)
    random = doc["data_set"]["HyraxRandomDataset"]
    random["size"], random["shape"] = size, [5, 64, 64]
    request = {
        "data": {
            "dataset_class": "SlowDataset",
            "data_location": str(tmp / "data"),
            "primary_id_field": "object_id",
            "fields": ["image", "label", "object_id"],
        }
    }
    out = []
    for _run in range(2):
        provider = DataProvider(doc, request)
        for _epoch in range(2 if _run == 0 else 1):
            loader = torch.utils.data.DataLoader(
                provider,
                batch_size=32,
                shuffle=True,
                num_workers=2,
                collate_fn=provider.collate,
                multiprocessing_context="fork",
            )
            start = time.perf_counter()
            count = sum(len(batch["object_id"]) for batch in loader)
            out.append(time.perf_counter() - start)
            assert count == size
        if use_spillcache:
            provider.data_cache.close()
    hyrax_cache.DataCache = HyraxDataCache
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--delay", type=float, default=2.0, help="ms per get_image")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for shape in [(5, 64, 64), (5, 150, 150)]:
            costs = fetch_costs(shape, args.rounds, Path(tmp) / f"fetch-{shape[-1]}")
            kib = int(np.prod(shape)) * 4 // 1024
            print(f"try_fetch, image {shape} float32 ({kib} KiB), median us per call:")
            for name, us in costs.items():
                print(f"  {name:16s} {us:8.2f}")
        SlowDataset.delay = args.delay / 1000
        print(f"\n{args.size} samples, get_image {args.delay} ms, DataLoader num_workers=2 (s):")
        print("  cache            epoch 1  epoch 2  run 2 epoch 1")
        rows: dict[str, list[list[float]]] = {"hyrax dict": [], "spillcache": []}
        for r in range(3):
            for name, flag in (("hyrax dict", False), ("spillcache", True)):
                rows[name].append(epochs(flag, args.size, Path(tmp) / f"epochs-{name[0]}{r}"))
        for name, runs in rows.items():
            med = [statistics.median(col) for col in zip(*runs, strict=True)]
            print(f"  {name:16s} {med[0]:7.2f}  {med[1]:7.2f}  {med[2]:7.2f}")


if __name__ == "__main__":
    main()
