"""One store, several users in one process: shared, reference-counted (#12 item 6)."""

from __future__ import annotations

import copy
import gc
import multiprocessing
import os
import pickle
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

from spillcache import CachedDataset, DataCache, SpillCache
from spillcache.disk import live_tier

TIMEOUT = 60.0


class Source:
    """A deterministic data set; ``version`` changes every sample."""

    def __init__(self, n: int = 40, version: int = 0) -> None:
        self.n = n
        self.version = version

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"x": torch.full((64,), float(i)), "i": i, "v": self.version}

    def cache_fingerprint(self) -> str:
        return f"v{self.version}"


def check(sample: dict[str, Any], i: int, version: int = 0) -> None:
    assert (sample["i"], sample["v"]) == (i, version)
    assert torch.equal(sample["x"], torch.full((64,), float(i)))


@pytest.fixture
def no_gc() -> Iterator[None]:
    """Only reference counting frees objects: releasing must not wait for the cycle collector."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _our_lock_fds(path: Path) -> list[str]:
    lock = os.path.realpath(path / "spillcache.lock")
    fds = os.listdir("/proc/self/fd")
    return [fd for fd in fds if os.path.realpath(f"/proc/self/fd/{fd}") == lock]


def test_rerunning_a_cell_while_the_old_dataset_is_bound(tmp_path: Path, no_gc: None) -> None:
    path = tmp_path / "s"
    ds = CachedDataset(Source(), path, ram_budget="1MiB")
    for i in range(40):
        check(ds[i], i)
    old = ds
    ds = CachedDataset(Source(), path, ram_budget="1MiB")  # the cell again: old still bound
    assert ds.cache._disk is old.cache._disk  # one environment per store and process
    for i in range(40):
        check(ds[i], i)
    assert ds.stats().misses == 0  # the first object's samples, from the shared store
    old.close()  # closing one user leaves the other working
    assert old.cache.closed and not ds.cache.closed
    with pytest.raises(ValueError, match="closed"):
        old.cache.get(0)
    ds.cache.put(99, {"x": torch.zeros(2)})
    ds.cache.flush()
    assert ds.cache.get(99) is not None
    del old
    assert live_tier(path) is not None
    del ds  # the last user: released at once
    assert live_tier(path) is None
    assert _our_lock_fds(path) == []
    with SpillCache(path, fingerprint=None) as again:
        assert again.get(99) is not None


def test_two_objects_on_one_path_see_each_others_puts(tmp_path: Path) -> None:
    a = SpillCache(tmp_path / "s", ram_budget=0, fingerprint="fp")
    b = SpillCache(tmp_path / "s", ram_budget=0, fingerprint="fp")
    a.put(1, {"x": 1})  # queued, not committed yet: b reads it from the shared queue
    assert b.get(1) == {"x": 1}
    b.put(2, {"x": 2})
    b.close()
    assert a.get(2) == {"x": 2}
    assert len(a) == 2
    a.close()
    assert live_tier(tmp_path / "s") is None


def test_deepcopy_and_pickling_in_the_same_process(tmp_path: Path, no_gc: None) -> None:
    path = tmp_path / "s"
    ds = CachedDataset(Source(), path)
    for i in range(40):
        check(ds[i], i)
    twin = copy.deepcopy(ds)
    clone = pickle.loads(pickle.dumps(ds))
    assert twin.cache._disk is ds.cache._disk is clone.cache._disk
    ds.close()
    for other in (twin, clone):
        for i in range(40):
            check(other[i], i)
        assert other.stats().misses == 0
    twin.close()
    check(clone[3], 3)
    del ds, twin, other
    assert live_tier(path) is not None
    del clone
    assert live_tier(path) is None


def test_del_releases_a_preloaded_dataset_without_the_cycle_collector(
    tmp_path: Path, no_gc: None
) -> None:
    path = tmp_path / "s"
    ds = CachedDataset(Source(), path, preload=True, preload_threads=2)
    assert ds.wait_preload(TIMEOUT)
    check(ds[5], 5)
    del ds
    assert live_tier(path) is None
    assert _our_lock_fds(path) == []


class Provider(Source):
    """Hyrax's DataProvider as the 0.8 DataCache sees it."""

    def resolve_data(self, i: int) -> dict[str, Any]:
        return self[i]


def test_del_releases_a_preloaded_hyrax_data_cache_without_the_cycle_collector(
    tmp_path: Path, no_gc: None
) -> None:
    config = {
        "data_set": {
            "use_cache": True,
            "preload_cache": True,
            "preload_threads": 2,
            "cache_dir": str(tmp_path),
        }
    }
    cache = DataCache(config, Provider())
    cache.start_preload_thread()
    assert cache.wait_preload(TIMEOUT)
    assert cache.try_fetch(5) is not None
    (path,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    del cache
    assert live_tier(path) is None
    assert _our_lock_fds(path) == []


def test_two_data_caches_from_one_hyrax_config(tmp_path: Path) -> None:
    config = {"data_set": {"use_cache": True, "cache_dir": str(tmp_path)}}
    a, b = DataCache(config, Source()), DataCache(config, Source())
    a.insert_into_cache(3, {"x": 3})
    assert b.try_fetch(3) == {"x": 3}
    a.close()
    b.insert_into_cache(4, {"x": 4})
    assert b.try_fetch(4) == {"x": 4}
    b.close()


def test_another_fingerprint_in_the_same_process_leaves_the_first_object_stale(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = SpillCache(path, ram_budget=0, fingerprint="v0")
        old.put(1, {"v": 0})
        new = SpillCache(path, ram_budget=0, fingerprint="v1")  # rebuilds the shared store
        assert new.get(1) is None
        new.put(2, {"v": 1})
        assert old.get(2) is None  # never another object's data as its own
        assert old.put(3, {"v": 0}) is False  # stores nothing more
        assert old.put(4, {"v": 0}) is False
        new.flush()
        assert new.get(3) is None and new.get(2) == {"v": 1}
    stale = [w for w in caught if "emptied for other data by another cache" in str(w.message)]
    assert len(stale) == 1
    old.close()
    assert new.get(2) == {"v": 1}
    new.close()


@pytest.mark.parametrize("ram_budget", [0, "1MiB"], ids=["disk-read", "admitting-read"])
def test_a_rebuild_between_the_check_and_the_read_is_not_served(
    tmp_path: Path, ram_budget: int | str
) -> None:
    # Another object of this process rebuilds the store and puts its own sample under the
    # key right after get() checked that the store is still this object's (get inlines that
    # check on a disk hit: the rebuild comes as the disk read starts): the read then finds
    # the other data, which the check after the read must throw away.
    path = tmp_path / "s"
    with SpillCache(path, ram_budget=0, fingerprint="v0") as writer:  # so that 1 is on disk only
        writer.put(1, {"v": 0})
    old = SpillCache(path, ram_budget=ram_budget, fingerprint="v0")
    others: list[SpillCache] = []
    tier = old._disk
    read = tier.read

    def rebuilt_after_the_check(key: int, decode: Callable[[Any], Any]) -> Any:
        if not others:
            assert old._current()  # checked: still this object's data
            others.append(new := SpillCache(path, ram_budget=0, fingerprint="v1"))
            new.put(1, {"v": 1})
            new.flush()
        return read(key, decode)

    tier.read = rebuilt_after_the_check  # type: ignore[method-assign]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert old.get(1) is None
        assert old.stats().misses == 1 and old.stats().disk_hits == 0
    assert others[0].get(1) == {"v": 1}
    others[0].close()
    old.close()


def _epoch(ds: CachedDataset, context: str) -> list[tuple[int, int]]:
    loader = DataLoader(
        ds, batch_size=8, num_workers=2, multiprocessing_context=context, collate_fn=list
    )
    return [(s["i"], s["v"]) for batch in loader for s in batch]


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_workers_of_a_dataset_whose_store_is_open_twice(tmp_path: Path, context: str) -> None:
    path = tmp_path / "s"
    first = CachedDataset(Source(), path, ram_budget="1MiB")
    for i in range(0, 40, 2):
        first[i]
    second = CachedDataset(Source(), path, ram_budget="1MiB")
    assert sorted(_epoch(second, context)) == [(i, 0) for i in range(40)]
    first.close()
    assert sorted(_epoch(second, context)) == [(i, 0) for i in range(40)]
    second.close()
    # Every sample the workers loaded was stored, and the store reopens here.
    with SpillCache(path, fingerprint=None) as cache:
        assert len(cache) == 40


def _open_twice_in_child(path: str, queue: Any) -> None:
    ds = CachedDataset(Source(), path)
    ds = CachedDataset(Source(), path)
    queue.put([ds[i]["i"] for i in range(5)] + [ds.stats().misses])


def test_a_spawned_process_opens_the_store_twice(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with CachedDataset(Source(), path) as ds:  # and this process holds it open meanwhile
        check(ds[0], 0)
        ctx = multiprocessing.get_context("spawn")
        queue = ctx.Queue()
        child = ctx.Process(target=_open_twice_in_child, args=(str(path), queue))
        child.start()
        assert queue.get(timeout=TIMEOUT) == [0, 1, 2, 3, 4, 4]
        child.join(TIMEOUT)
        assert child.exitcode == 0


# -- a temporary store never leaks (#12 item 7) --------------------------------------------------

_INVALID: list[dict[str, Any]] = [
    {"ram_budget": "lots"},
    {"ram_budget": -1},
    {"disk_budget": "lots"},
    {"disk_budget": -5},
    {"disk_budget": "150%"},
    {"disk_budget": 1.5j},
    {"fingerprint": 3},
    {"on_mismatch": "ignore"},
    {"copy": "yes"},
    {"readahead": 1},
    {"allow_remote_fs": None},
]


@pytest.mark.parametrize(
    "bad", _INVALID, ids=lambda bad: "-".join(f"{k}={v}" for k, v in bad.items())
)
def test_invalid_arguments_leave_no_temporary_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: dict[str, Any]
) -> None:
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises((TypeError, ValueError)):
        SpillCache(None, **bad)
    with pytest.raises((TypeError, ValueError)):
        CachedDataset(Source(), None, **bad)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "bad",
    [{"probes": -1}, {"transform": 3}, {"preload_threads": 0}, {"progress": "x"}, {"log_every": 0}],
    ids=str,
)
def test_invalid_dataset_arguments_leave_no_temporary_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: dict[str, Any]
) -> None:
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    if "log_every" in bad:
        bad = {**bad, "summary_writer": str(tmp_path / "tb")}
    with pytest.raises((TypeError, ValueError)):
        CachedDataset(Source(), None, **bad)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("spillcache-")] == []
