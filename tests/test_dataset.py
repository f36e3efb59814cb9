"""CachedDataset: loading through the cache, transforms, fingerprints and sample probes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Subset

from helpers import assert_sample_equal
from spillcache import (
    CachedDataset,
    FingerprintMismatch,
    NondeterministicDataError,
    SpillCacheWarning,
)
from spillcache.counters import PUTS
from spillcache.dataset import default_fingerprint


class Source(torch.utils.data.Dataset[dict[str, Any]]):
    """Deterministic samples; counts every load (per process)."""

    def __init__(self, n: int = 20, offset: int = 0) -> None:
        self.n = n
        self.offset = offset
        self.loads: list[int] = []

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < self.n:
            raise IndexError(i)
        self.loads.append(i)
        value = i + self.offset
        return {"x": torch.full((4,), float(value)), "id": f"s{value}", "label": value}


class Flaky(Source):
    """Returns different data for the same index on every load (a random transform inside)."""

    def __getitem__(self, i: int) -> dict[str, Any]:
        sample = super().__getitem__(i)
        sample["x"] = torch.rand(4)
        return sample


def test_loads_once_then_serves_from_cache(tmp_path: Path) -> None:
    source = Source()
    with CachedDataset(source, tmp_path / "s", probes=0) as ds:
        assert len(ds) == 20
        first = [ds[i] for i in range(20)]
        second = [ds[i] for i in range(20)]
        assert sorted(source.loads) == list(range(20))
        for a, b in zip(first, second, strict=True):
            assert_sample_equal(a, b)
        assert ds.cache.stats().ram_hits == 20


def test_indices(tmp_path: Path) -> None:
    with CachedDataset(Source(), tmp_path / "s", probes=0) as ds:
        assert ds[-1]["label"] == 19
        assert ds[np.int64(3)]["label"] == 3
        assert ds[torch.tensor(4)]["label"] == 4
        with pytest.raises(IndexError, match="length 20"):
            ds[20]
        with pytest.raises(IndexError, match="length 20"):
            ds[-21]
        with pytest.raises(TypeError, match="float"):
            ds[1.0]


def test_transform_runs_after_the_cache_on_every_access(tmp_path: Path) -> None:
    source = Source()

    def jitter(sample: dict[str, Any]) -> dict[str, Any]:
        return {**sample, "x": sample["x"] + torch.rand(4)}

    with CachedDataset(source, tmp_path / "s", transform=jitter, probes=0) as ds:
        a, b = ds[5], ds[5]
        assert not torch.equal(a["x"], b["x"])  # a new random draw each time
        assert source.loads == [5]
        assert torch.equal(ds.cache.get(5)["x"], torch.full((4,), 5.0))  # cached un-augmented


def test_next_run_starts_warm(tmp_path: Path) -> None:
    with CachedDataset(Source(), tmp_path / "s") as ds:
        for i in range(20):
            ds[i]
    source = Source()
    with CachedDataset(source, tmp_path / "s") as ds:
        samples = [ds[i] for i in range(20)]
    # Only the two probes are re-loaded to check the data did not change.
    assert source.loads == [0, 19]
    assert [s["label"] for s in samples] == list(range(20))


def test_explicit_fingerprint_skips_the_probes(tmp_path: Path) -> None:
    with CachedDataset(Source(), tmp_path / "s", fingerprint="v1") as ds:
        ds[3]
    source = Source()
    with CachedDataset(source, tmp_path / "s", fingerprint="v1") as ds:
        assert ds[3]["label"] == 3
    assert source.loads == []


def test_default_fingerprint_is_stable_across_processes() -> None:
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from test_dataset import Source;"
        "from spillcache.dataset import default_fingerprint;"
        "print(default_fingerprint(Source(20)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert out == default_fingerprint(Source(20))
    assert default_fingerprint(Source(21)) != out


def test_cache_fingerprint_method_is_part_of_the_identity() -> None:
    class Versioned(Source):
        def __init__(self, version: str) -> None:
            super().__init__()
            self.version = version

        def cache_fingerprint(self) -> str:
            return self.version

    assert default_fingerprint(Versioned("a")) != default_fingerprint(Versioned("b"))


def test_probes_tell_equal_length_subsets_apart(tmp_path: Path) -> None:
    full = Source(40)
    with CachedDataset(Subset(full, range(0, 20)), tmp_path / "s") as ds:
        assert [ds[i]["label"] for i in range(20)] == list(range(20))
    other = Subset(Source(40), range(20, 40))
    with (
        pytest.warns(SpillCacheWarning, match="differ"),
        CachedDataset(other, tmp_path / "s") as ds,
    ):
        assert [ds[i]["label"] for i in range(20)] == list(range(20, 40))


def test_probe_mismatch_can_raise(tmp_path: Path) -> None:
    with CachedDataset(Source(20), tmp_path / "s") as ds:
        ds[0]
    with pytest.raises(FingerprintMismatch, match="differ"):
        CachedDataset(Source(20, offset=100), tmp_path / "s", on_mismatch="error")


def test_nondeterministic_data_set_is_reported(tmp_path: Path) -> None:
    with CachedDataset(Flaky(), tmp_path / "s"):
        pass
    with pytest.raises(NondeterministicDataError, match="transform="):
        CachedDataset(Flaky(), tmp_path / "s")


def test_a_miss_reads_the_store_once_unless_a_put_landed_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = Source()
    with CachedDataset(source, tmp_path / "s", ram_budget=0, probes=0) as ds:
        disk = ds.cache._disk
        reads: list[int] = []
        read = disk.read

        def counted(key: int, decode: Any) -> Any:
            reads.append(key)
            return read(key, decode)

        monkeypatch.setattr(disk, "read", counted)
        assert [ds[i]["label"] for i in range(20)] == list(range(20))
        assert reads == list(range(20))  # the miss, and no second look: nothing was put since
        # A put landing between the miss and the claim (another thread's load) is found by
        # the second look instead of being loaded again.
        stamp = ds.cache._counters.values[PUTS]
        assert ds.cache.get(20 - 1) is not None
        ds.cache.put(5, {"x": torch.zeros(4), "id": "other", "label": -5})
        reads.clear()
        misses = ds.cache._request(stamp, "dataset")  # the state of get_or_load's miss
        assert misses.load(5, source.__getitem__)["label"] == -5
        assert reads == [5]
        assert sorted(source.loads) == list(range(20))


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="map-style"):
        CachedDataset(object(), tmp_path / "a")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="transform"):
        CachedDataset(Source(), tmp_path / "b", transform=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="probes"):
        CachedDataset(Source(), tmp_path / "c", probes=-1)
    with pytest.raises(ValueError, match="ram_budget"):
        CachedDataset(Source(), tmp_path / "d", ram_budget="much")


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_dataloader_workers_fill_and_serve_the_store(tmp_path: Path, method: str) -> None:
    path = tmp_path / "s"
    with CachedDataset(Source(24), path, ram_budget="64KiB", probes=0) as ds:
        loader = DataLoader(
            ds, batch_size=4, num_workers=2, multiprocessing_context=method, shuffle=False
        )
        labels = [int(v) for batch in loader for v in batch["label"]]
        assert labels == list(range(24))
        assert len(ds.cache) == 24  # the workers' writes were committed
    source = Source(24)
    with CachedDataset(source, path, probes=0) as ds:
        assert [ds[i]["label"] for i in range(24)] == list(range(24))
    assert source.loads == []


class SharedCount(Source):
    """Counts loads across forked worker processes."""

    def __init__(self, n: int) -> None:
        super().__init__(n)
        import multiprocessing as mp

        self.calls = mp.get_context("fork").Value("i", 0)

    def __getitem__(self, i: int) -> dict[str, Any]:
        with self.calls.get_lock():
            self.calls.value += 1
        return super().__getitem__(i)


def test_a_preload_in_the_main_process_feeds_persistent_workers(tmp_path: Path) -> None:
    from torch.utils.data import BatchSampler, SequentialSampler

    source = SharedCount(40)
    with CachedDataset(source, tmp_path / "s", ram_budget="16KiB", probes=0) as ds:
        ds.start_preload()
        assert ds.wait_preload(60)
        assert source.calls.value == 40
        loader = DataLoader(
            ds,
            batch_sampler=BatchSampler(SequentialSampler(range(40)), batch_size=8, drop_last=False),
            num_workers=2,
            persistent_workers=True,
            multiprocessing_context="fork",
        )
        for _ in range(2):
            labels = [int(v) for batch in loader for v in batch["label"]]
            assert labels == list(range(40))
        assert source.calls.value == 40  # the workers never called the source
