"""The preload engine: order, single flight, lifecycle, errors, memory, visibility, Hyrax."""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    RandomSampler,
    Sampler,
    SequentialSampler,
    SubsetRandomSampler,
    WeightedRandomSampler,
)

import spillcache.flight
from helpers import assert_sample_equal, hyrax_loop
from spillcache import CachedDataset, DataCache, SpillCache
from spillcache.admin import verify
from spillcache.errors import StoreError
from spillcache.footprint import ENTRY_OVERHEAD, sample_nbytes
from spillcache.preload import preview_order
from spillcache.preload.concurrency import Concurrency
from spillcache.preload.tuner import Tuner

# Generous: only reached when something is broken.
TIMEOUT = 30.0


def sample(i: int) -> dict[str, Any]:
    return {"x": np.full(4, i, dtype=np.float32), "id": f"s{i}", "label": i}


class Source(torch.utils.data.Dataset[dict[str, Any]]):
    """Deterministic samples; records every load; can block, delay or fail chosen indices."""

    def __init__(self, n: int, delay: float = 0.0) -> None:
        self.n = n
        self.delay = delay
        self.loads: list[int] = []
        self.entered: dict[int, threading.Event] = {}
        self.gates: dict[int, threading.Event] = {}
        self.failures: dict[int, list[BaseException]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        with self._lock:
            self.loads.append(i)
            failure = self.failures[i].pop(0) if self.failures.get(i) else None
        if i in self.entered:
            self.entered[i].set()
        if i in self.gates:
            self.gates[i].wait(TIMEOUT)
        if self.delay:
            time.sleep(self.delay)
        if failure is not None:
            raise failure
        return sample(i)

    def block(self, i: int) -> tuple[threading.Event, threading.Event]:
        """Make loads of ``i`` wait: (set when a load of it starts, set to let it finish)."""
        self.entered[i], self.gates[i] = threading.Event(), threading.Event()
        return self.entered[i], self.gates[i]


def open_ds(source: Any, path: Path, **kwargs: Any) -> CachedDataset:
    kwargs = {"fingerprint": "test", "probes": 0, "progress": False, **kwargs}
    return CachedDataset(source, path, **kwargs)


def wait_until(predicate: Callable[[], bool]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.002)


def twin_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def returns(call: Callable[[], Any]) -> Any:
    """``call()``, run in a daemon thread that must end (so that a hang fails the test)."""
    outcome: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as exc:
            outcome.append((False, exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(TIMEOUT)
    assert outcome, f"{call} did not return"
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


def labels(loader: DataLoader[Any]) -> list[int]:
    """The indices of one epoch of ``loader`` (its data set's samples carry their index)."""
    return [int(i) for batch in loader for i in batch["label"]]


# -- order -----------------------------------------------------------------------------------


def test_preview_of_a_random_sampler_leaves_its_order_unchanged() -> None:
    sampler = RandomSampler(range(50), generator=twin_generator(7))
    expected = list(RandomSampler(range(50), generator=twin_generator(7)))
    indices, total = preview_order(sampler, 50)
    assert list(indices) == expected
    assert total == 50
    # Training draws exactly the previewed permutation, then the next one.
    assert list(sampler) == expected
    twin = RandomSampler(range(50), generator=twin_generator(7))
    list(twin)
    assert list(sampler) == list(twin)


@pytest.mark.parametrize(
    "make",
    [
        lambda g: RandomSampler(range(30), replacement=True, num_samples=70, generator=g),
        lambda g: SubsetRandomSampler(list(range(5, 25)), generator=g),
        lambda g: WeightedRandomSampler([1.0] * 10 + [5.0] * 20, 40, generator=g),
        lambda g: BatchSampler(RandomSampler(range(30), generator=g), 4, drop_last=False),
    ],
    ids=["replacement", "subset", "weighted", "batch"],
)
def test_preview_of_generator_samplers(make: Callable[[torch.Generator], Any]) -> None:
    sampler = make(twin_generator(3))
    indices, _ = preview_order(sampler, 30)
    previewed = list(indices)
    drawn = list(sampler)
    flat = [i for batch in drawn for i in batch] if isinstance(sampler, BatchSampler) else drawn
    assert previewed == flat
    assert flat == list(_flatten(make(twin_generator(3))))


def _flatten(sampler: Any) -> Iterator[int]:
    for item in sampler:
        yield from item if isinstance(item, list) else [item]


def test_preview_of_sequential_and_distributed_samplers() -> None:
    indices, total = preview_order(SequentialSampler(range(6)), 6)
    assert (list(indices), total) == (list(range(6)), 6)
    sampler = DistributedSampler(range(20), num_replicas=2, rank=1, shuffle=True, seed=3)
    sampler.set_epoch(4)
    indices, total = preview_order(sampler, 20)
    assert list(indices) == list(sampler)
    assert total == 10


def test_preview_of_a_shuffling_dataloader_matches_its_first_epoch() -> None:
    loader = DataLoader(list(range(40)), batch_size=8, shuffle=True, generator=twin_generator(9))
    indices, _ = preview_order(loader, 40)
    previewed = list(indices)
    epoch = [int(i) for batch in loader for i in batch]
    assert previewed == epoch
    assert sorted(epoch) == list(range(40))


def test_unpreviewable_samplers_warn_and_fall_back_to_index_order() -> None:
    state = torch.get_rng_state()
    with pytest.warns(UserWarning, match=r"generator=torch\.Generator\(\)"):
        indices, _ = preview_order(RandomSampler(range(5)), 5)
    assert list(indices) == list(range(5))
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG was not drawn from

    class Custom(Sampler[int]):
        def __iter__(self) -> Iterator[int]:
            raise AssertionError("must not be iterated")

        def __len__(self) -> int:
            return 3

    with pytest.warns(UserWarning, match="side effects"):
        indices, _ = preview_order(Custom(), 3)
    assert list(indices) == [0, 1, 2]
    with pytest.raises(TypeError, match="order must be"):
        preview_order(5, 3)


@pytest.mark.parametrize("shared", [False, True], ids=["own-generator", "loader-generator"])
def test_preload_follows_a_dataloader_batch_sampler(tmp_path: Path, shared: bool) -> None:
    source = Source(50)
    with open_ds(source, tmp_path / "s", preload_threads=1) as ds:
        g = twin_generator(4)
        batches = BatchSampler(RandomSampler(ds, generator=g), 8, drop_last=False)
        # torch leaves loader.sampler an unused SequentialSampler here.
        loader = DataLoader(ds, batch_sampler=batches, generator=g if shared else None)
        ds.start_preload(loader)
        assert ds.wait_preload(TIMEOUT)
        preloaded = list(source.loads)
        epoch = labels(loader)
        assert preloaded == epoch
        assert sorted(epoch) == list(range(50)) and epoch != sorted(epoch)
        assert source.loads == preloaded  # training found everything in the cache


def test_a_dataloader_with_a_custom_batch_sampler_warns(tmp_path: Path) -> None:
    class Pairs(Sampler[list[int]]):
        def __init__(self) -> None:
            self.iterated = 0

        def __iter__(self) -> Iterator[list[int]]:
            self.iterated += 1
            return iter([[9, 8], [7, 6], [5, 4], [3, 2], [1, 0]])

        def __len__(self) -> int:
            return 5

    source = Source(10)
    pairs = Pairs()
    with open_ds(source, tmp_path / "s", preload_threads=1) as ds:
        loader = DataLoader(ds, batch_sampler=pairs)
        with pytest.warns(UserWarning, match="cannot tell whether iterating a Pairs"):
            ds.start_preload(loader)
        assert ds.wait_preload(TIMEOUT)
        assert pairs.iterated == 0  # the preview did not touch it
        assert source.loads == list(range(10))  # the fallback the warning announces
        assert labels(loader) == list(reversed(range(10)))
        assert pairs.iterated == 1


def test_preload_follows_the_sampler_order(tmp_path: Path) -> None:
    source = Source(40)
    sampler = RandomSampler(range(40), generator=twin_generator(1))
    expected = list(RandomSampler(range(40), generator=twin_generator(1)))
    with open_ds(source, tmp_path / "s", preload_threads=1) as ds:
        ds.start_preload(sampler)
        assert ds.wait_preload(TIMEOUT)
        assert source.loads == expected
        assert list(sampler) == expected  # training's order is the previewed one
        for i in expected:
            assert_sample_equal(ds[i], sample(i))
        stats = ds.stats()
        assert (stats.preload_loads, stats.ram_hits, stats.misses) == (40, 40, 0)


def test_preload_at_construction(tmp_path: Path) -> None:
    source = Source(12)
    with open_ds(source, tmp_path / "s", preload=True, preload_threads=3) as ds:
        assert ds.wait_preload(TIMEOUT)
        assert sorted(source.loads) == list(range(12))
        assert ds.stats().preload_loads == 12
    with pytest.raises(ValueError, match="preload_threads=0"):
        open_ds(source, tmp_path / "t", preload_threads=0)
    with pytest.raises(ValueError, match='"auto"'):
        open_ds(source, tmp_path / "t", preload_threads="fast")


def test_preload_is_lazy_and_takes_plain_iterables(tmp_path: Path) -> None:
    source = Source(10)
    consumed: list[int] = []

    def order() -> Iterator[int]:
        for i in (9, 2, 9, -1, 4):
            consumed.append(i)
            yield i

    with open_ds(source, tmp_path / "s", preload_threads=1) as ds:
        ds.start_preload(order())
        assert ds.wait_preload(TIMEOUT)
        assert source.loads == [9, 2, 4]  # the repeated 9 and -1 (= 9) are skipped
        assert consumed == [9, 2, 9, -1, 4]
        assert ds.stats().preload_skips == 2


# -- single flight ---------------------------------------------------------------------------


def test_every_index_is_loaded_once_across_preload_and_training(tmp_path: Path) -> None:
    n = 300
    source = Source(n, delay=0.001)
    orders = [
        list(range(n)),
        list(reversed(range(n))),
        list(np.random.default_rng(0).permutation(n)),
    ]
    results: list[list[tuple[int, dict[str, Any]]]] = [[] for _ in orders]
    with open_ds(source, tmp_path / "s", preload_threads=8) as ds:
        ds.start_preload(RandomSampler(range(n), generator=twin_generator(2)))

        def train(k: int) -> None:
            results[k] = [(int(i), ds[int(i)]) for i in orders[k]]

        threads = [threading.Thread(target=train, args=(k,)) for k in range(len(orders))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT)
        assert ds.wait_preload(TIMEOUT)
        counts = collections.Counter(source.loads)
        assert sorted(counts) == list(range(n))
        assert set(counts.values()) == {1}, counts.most_common(3)
        for run in results:
            assert len(run) == n
            for i, got in run:
                assert_sample_equal(got, sample(i))
        stats = ds.stats()
        # The preload went through its whole order: each index loaded or passed over.
        assert stats.preload_loads + stats.preload_skips == n
        assert stats.preload_errors == 0


def test_training_waits_for_the_preload_load_in_progress(tmp_path: Path) -> None:
    source = Source(10)
    entered, gate = source.block(5)
    with open_ds(source, tmp_path / "s", preload_threads=2) as ds:
        ds.start_preload([5, 6])
        assert entered.wait(TIMEOUT)
        got: list[Any] = []
        training = threading.Thread(target=lambda: got.append(ds[5]))
        training.start()
        wait_until(lambda: ds.cache.flights._flights[5].waiters == 1)
        gate.set()
        training.join(TIMEOUT)
        assert_sample_equal(got[0], sample(5))
        got[0]["x"][0] = -1  # the caller's own copy
        assert_sample_equal(ds[5], sample(5))
        assert source.loads.count(5) == 1
        assert ds.stats().preload_waits == 1


def test_a_load_landing_between_a_miss_and_the_claim_is_not_repeated(tmp_path: Path) -> None:
    source = Source(10)
    with open_ds(source, tmp_path / "s", preload_threads=1) as ds:
        cache_get = ds.cache.get
        raced = []

        def racing_get(key: object) -> Any:
            value = cache_get(key)
            if key == 5 and value is None and not raced:
                raced.append(key)
                ds.start_preload([5])  # the preload stores 5 right after training's miss
                assert ds.wait_preload(TIMEOUT)
            return value

        ds.cache.get = racing_get  # type: ignore[method-assign]
        assert_sample_equal(ds[5], sample(5))
        assert raced == [5]
        assert source.loads == [5]


def test_preload_skips_what_training_is_loading(tmp_path: Path) -> None:
    source = Source(10)
    entered, gate = source.block(7)
    with open_ds(source, tmp_path / "s", preload_threads=2) as ds:
        got: list[Any] = []
        training = threading.Thread(target=lambda: got.append(ds[7]))
        training.start()
        assert entered.wait(TIMEOUT)
        ds.start_preload([7, 8])
        assert ds.wait_preload(TIMEOUT)  # done without waiting for training's load
        assert ds.stats().preload_skips == 1
        gate.set()
        training.join(TIMEOUT)
        assert_sample_equal(got[0], sample(7))
        assert sorted(source.loads) == [7, 8]


# -- budgets and memory ----------------------------------------------------------------------


class Uniform(Source):
    """Samples of one accounted size (an array only), for byte-exact RAM budgets."""

    def __getitem__(self, i: int) -> dict[str, Any]:
        super().__getitem__(i)
        return uniform(i)


def uniform(i: int) -> dict[str, Any]:
    return {"x": np.full(256, i, dtype=np.float32)}


ONE = sample_nbytes(uniform(0)) + ENTRY_OVERHEAD  # as the RAM tier accounts it


def test_preload_fills_free_ram_in_order_then_only_the_disk(tmp_path: Path) -> None:
    # One load at a time: with more (the ramp of "auto" starts at 2), loads may end out of order.
    budget = 10 * ONE + ONE // 2
    with open_ds(Uniform(30), tmp_path / "s", ram_budget=budget, preload_threads=1) as ds:
        ds.start_preload(range(29, -1, -1))
        assert ds.wait_preload(TIMEOUT)
        stats = ds.stats()
        assert (stats.ram_items, stats.ram_bytes, len(ds.cache)) == (10, 10 * ONE, 30)
        before = stats.ram_hits
        for i in range(29, 19, -1):  # the first ten of the order are in RAM
            assert_sample_equal(ds[i], uniform(i))
        assert ds.stats().ram_hits == before + 10


def test_preload_never_evicts(tmp_path: Path) -> None:
    source = Uniform(60)
    with open_ds(source, tmp_path / "s", ram_budget=10 * ONE + ONE // 2) as ds:
        hot = range(50, 60)
        for i in hot:  # training fills the RAM tier
            ds[i]
        # The samples to preload are asked for far more often (and missed). Few enough
        # requests that the admission policy's counts are not halved meanwhile.
        for _ in range(15):
            for i in range(5):
                assert ds.cache.get(i) is None
        ds.start_preload(range(5))
        assert ds.wait_preload(TIMEOUT)
        assert (ds.stats().ram_items, ds.stats().preload_loads) == (10, 5)
        before = ds.stats().ram_hits
        for i in hot:
            assert_sample_equal(ds[i], uniform(i))
        assert ds.stats().ram_hits == before + 10  # all of training's samples are still there
        # What the preload must not do: a put of such a sample evicts a resident.
        ds.cache.put(0, uniform(0))
        assert ds.cache.get(0) is not None
        assert ds.stats().ram_hits == before + 11


def test_restart_only_promotes_from_disk_into_free_ram(tmp_path: Path) -> None:
    with open_ds(Uniform(50), tmp_path / "s", ram_budget=0, preload_threads=4) as ds:
        ds.start_preload()
        assert ds.wait_preload(TIMEOUT)
    source = Uniform(50)
    with open_ds(source, tmp_path / "s", ram_budget=10 * ONE + ONE // 2) as ds:
        ds.start_preload()
        assert ds.wait_preload(TIMEOUT)
        stats = ds.stats()
        assert source.loads == []
        assert (stats.preload_promotions, stats.preload_loads, stats.preload_skips) == (10, 0, 40)
        assert stats.ram_items == 10
        assert stats.disk_hits == 0  # promotions are not requests


def test_promotions_stop_once_ram_is_full(tmp_path: Path) -> None:
    with open_ds(Uniform(50), tmp_path / "s", ram_budget=0, preload_threads=4) as ds:
        ds.start_preload()
        assert ds.wait_preload(TIMEOUT)
    with open_ds(
        Uniform(50), tmp_path / "s", ram_budget=10 * ONE + ONE // 2, preload_threads=1
    ) as ds:
        promote, calls = ds.cache.promote, []

        def counted(key: int) -> bool | None:
            calls.append(key)
            return promote(key)

        ds.cache.promote = counted  # type: ignore[method-assign]
        ds.start_preload()
        assert ds.wait_preload(TIMEOUT)
        # Ten fill the RAM tier; the first refused with RAM full ends the promotions, so the
        # other 39 disk entries are not read for nothing.
        assert calls == list(range(11))
        assert ds.stats().preload_promotions == 10


def test_one_sample_too_big_for_ram_does_not_end_the_promotions(tmp_path: Path) -> None:
    class FirstTooBig(Uniform):
        def __getitem__(self, i: int) -> dict[str, Any]:
            value = super().__getitem__(i)
            return {"x": np.zeros(20 * 256, dtype=np.float32)} if i == 0 else value

    with open_ds(FirstTooBig(20), tmp_path / "s", ram_budget=0) as ds:
        ds.start_preload()
        assert ds.wait_preload(TIMEOUT)
    # One load at a time, so that promotions land in order (the ramp of "auto" starts at 2).
    budget = 10 * ONE + ONE // 2
    with open_ds(FirstTooBig(20), tmp_path / "s", ram_budget=budget, preload_threads=1) as ds:
        ds.start_preload()  # index 0 first: it never fits
        assert ds.wait_preload(TIMEOUT)
        stats = ds.stats()
        assert (stats.preload_promotions, stats.ram_items) == (10, 10)
        assert ds.cache.where(0) == "disk"
        assert [ds.cache.where(i) for i in range(1, 11)] == ["ram"] * 10


def test_at_most_threads_samples_exist_outside_the_cache(tmp_path: Path) -> None:
    live = 0
    peak = 0
    lock = threading.Lock()

    def gone() -> None:
        nonlocal live
        with lock:
            live -= 1

    class Tracked(Source):
        def __getitem__(self, i: int) -> dict[str, Any]:
            nonlocal live, peak
            value = super().__getitem__(i)
            with lock:
                live += 1
                peak = max(peak, live)
            weakref.finalize(value["x"], gone)
            return value

    with open_ds(Tracked(3000), tmp_path / "s", ram_budget=0, preload_threads=8) as ds:
        ds.start_preload()
        assert ds.wait_preload(TIMEOUT)
        assert ds.stats().preload_loads == 3000
    assert 1 <= peak <= 8
    assert live == 0


def test_memory_stays_flat_while_preloading_50k_samples(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys, threading, time
        import numpy as np
        from spillcache import CachedDataset

        def rss_anon():
            with open("/proc/self/status") as f:
                return next(int(l.split()[1]) * 1024 for l in f if l.startswith("RssAnon:"))

        class Small:
            def __init__(self, n):
                self.n = n
            def __len__(self):
                return self.n
            def __getitem__(self, i):
                return {"x": np.full(16, i, dtype=np.float32), "id": f"{i:08d}", "label": i}

        root = sys.argv[1]
        options = dict(fingerprint="m", probes=0, ram_budget=0, preload_threads=8, progress=False)
        warm = CachedDataset(Small(2000), root + "/warm", **options)
        warm.start_preload()
        warm.wait_preload()
        warm.close()
        ds = CachedDataset(Small(50_000), root + "/s", **options)
        base = peak = rss_anon()
        done = threading.Event()

        def watch():
            global peak
            while not done.wait(0.01):
                peak = max(peak, rss_anon())

        watcher = threading.Thread(target=watch)
        watcher.start()
        ds.start_preload()
        ds.wait_preload()
        done.set()
        watcher.join()
        peak = max(peak, rss_anon())
        print(ds.stats().preload_loads, peak - base)
        ds.close()
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    loaded, growth = map(int, out.stdout.split())
    assert loaded == 50_000
    assert growth <= 64 << 20, f"RssAnon grew by {growth >> 20} MiB"


def test_a_full_store_ends_the_preload(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = Source(20)
    with open_ds(source, tmp_path / "s", ram_budget=0, preload_threads=1) as ds:
        ds.cache._disk.write = lambda key, value, generation: False  # type: ignore[method-assign]
        with caplog.at_level(logging.WARNING, logger="spillcache.preload"):
            ds.start_preload()
            assert ds.wait_preload(TIMEOUT)
        assert source.loads == [0]
        assert "cache is full" in caplog.text


# -- errors ----------------------------------------------------------------------------------


def test_failed_loads_are_counted_logged_once_per_type_and_not_cached(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = Source(10)
    source.failures = {
        3: [ValueError("bad pixel"), ValueError("bad pixel")],
        5: [OSError("stale NFS handle")],
        7: [OSError("stale NFS handle")],
    }
    with open_ds(source, tmp_path / "s", preload_threads=1) as ds:
        with caplog.at_level(logging.WARNING, logger="spillcache.preload"):
            ds.start_preload()
            assert ds.wait_preload(TIMEOUT)
        assert ds.stats().preload_errors == 3
        assert ds.stats().preload_loads == 7
        records = [r.getMessage() for r in caplog.records]
        assert len(records) == 2
        assert "index 3 failed with ValueError: bad pixel" in records[0]
        assert "index 5 failed with OSError" in records[1]
        assert [i for i in (3, 5, 7) if i in ds.cache] == []
        with pytest.raises(ValueError, match="bad pixel"):  # a permanent error surfaces
            ds[3]
        assert_sample_equal(ds[5], sample(5))  # a transient one heals
        assert source.loads.count(5) == 2
        # Invalid indices in the order are counted the same way.
        ds.start_preload([0, 10, "x"])
        assert ds.wait_preload(TIMEOUT)
        assert ds.stats().preload_errors == 5


def test_a_failing_order_surfaces_in_wait_preload(tmp_path: Path) -> None:
    def order() -> Iterator[int]:
        yield 0
        raise RuntimeError("sampler broke")

    with open_ds(Source(5), tmp_path / "s", preload_threads=1) as ds:
        ds.start_preload(order())
        with pytest.raises(RuntimeError, match="sampler broke"):
            ds.wait_preload(TIMEOUT)
        assert ds.preloader is not None and ds.preloader.in_flight == 0  # its slot was freed
        assert_sample_equal(ds[1], sample(1))


def test_each_preload_logs_its_own_counts_and_whether_it_failed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def failing() -> Iterator[int]:
        yield from range(4)
        raise RuntimeError("sampler broke")

    with (
        open_ds(Source(10), tmp_path / "s", preload_threads=1) as ds,
        caplog.at_level(logging.INFO, logger="spillcache.preload"),
    ):
        for order in (None, None, failing()):
            ds.start_preload(order)
            with contextlib.suppress(RuntimeError):
                assert ds.wait_preload(TIMEOUT)
    summaries = [
        (r.levelname, re.sub(r"[\d.]+ s:", "T s:", r.getMessage()))
        for r in caplog.records
        if r.getMessage().startswith("preload ")
    ]
    assert summaries == [
        ("INFO", "preload done in T s: 10 loaded, 0 skipped, 0 promoted, 0 failed"),
        ("INFO", "preload done in T s: 0 loaded, 10 skipped, 0 promoted, 0 failed"),
        ("WARNING", "preload failed after T s: 0 loaded, 4 skipped, 0 promoted, 0 failed"),
    ]


def test_a_failed_preload_never_looks_successful(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing, returned = threading.Event(), threading.Event()

    def order() -> Iterator[int]:
        yield 0
        failing.set()
        raise RuntimeError("sampler broke")

    closed = SpillCache.closed

    def slow_closed(cache: SpillCache) -> bool:
        # Holds the failing load thread when it asks whether the cache is closed, for as long
        # as wait_preload() runs (or a second): wait_preload() must not end meanwhile.
        if failing.is_set() and threading.current_thread().name == "spillcache-preload-load":
            returned.wait(1.0)
        return bool(closed.fget(cache))  # type: ignore[attr-defined]

    monkeypatch.setattr(SpillCache, "closed", property(slow_closed))
    with open_ds(Source(5), tmp_path / "s", preload_threads=1) as ds:
        ds.start_preload(order())
        try:
            with pytest.raises(RuntimeError, match="sampler broke"):
                ds.wait_preload(TIMEOUT)
        finally:
            returned.set()


def test_a_store_error_while_looking_up_an_index_ends_the_preload_cleanly(
    tmp_path: Path,
) -> None:
    source = Source(5)
    with open_ds(source, tmp_path / "s", preload_threads=1) as ds:
        where = ds.cache.where

        def failing_where(key: int) -> Any:
            if key == 2:
                raise StoreError("lmdb: input/output error")
            return where(key)

        ds.cache.where = failing_where  # type: ignore[method-assign]
        ds.start_preload()
        with pytest.raises(RuntimeError, match="input/output error"):
            ds.wait_preload(TIMEOUT)
        assert ds.preloader is not None and ds.preloader.in_flight == 0
        assert ds.cache.flights._flights == {}
        assert_sample_equal(ds[2], sample(2))
        assert source.loads == [0, 1, 2]


class Boom(BaseException):
    """Like KeyboardInterrupt: not an Exception."""


def test_a_base_exception_from_the_store_does_not_strand_waiters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    died: list[type[BaseException] | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: died.append(args.exc_type))
    source = Source(10)
    entered, gate = source.block(4)
    with open_ds(source, tmp_path / "s", preload_threads=1) as ds:
        put = ds.cache.put
        booms = [Boom()]

        def failing_put(key: object, value: object, **kwargs: Any) -> bool:
            if key == 4 and booms:
                raise booms.pop()
            return put(key, value, **kwargs)

        ds.cache.put = failing_put  # type: ignore[method-assign]
        ds.start_preload([4, 5])
        assert entered.wait(TIMEOUT)
        got: list[Any] = []
        training = threading.Thread(target=lambda: got.append(ds[4]), daemon=True)
        training.start()
        wait_until(lambda: ds.cache.flights._flights[4].waiters == 1)
        gate.set()
        training.join(TIMEOUT)
        assert not training.is_alive(), "training waits forever for the failed preload load"
        assert_sample_equal(got[0], sample(4))
        assert source.loads.count(4) == 2  # training loaded it again
        assert ds.wait_preload(TIMEOUT)
        assert died == [Boom]  # it reached the thread's top, as a Ctrl-C would
        assert ds.preloader is not None and ds.preloader.in_flight == 0
        assert ds.stats().preload_loads == 1  # index 5, by a new load thread


def test_a_failed_copy_for_waiters_does_not_strand_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = Source(10)
    entered, gate = source.block(6)
    with open_ds(source, tmp_path / "s") as ds:
        owner: list[Any] = []

        def own() -> None:
            try:
                owner.append(ds[6])
            except MemoryError as exc:
                owner.append(exc)

        first = threading.Thread(target=own, daemon=True)
        first.start()
        assert entered.wait(TIMEOUT)
        got: list[Any] = []
        waiter = threading.Thread(target=lambda: got.append(ds[6]), daemon=True)
        waiter.start()
        wait_until(lambda: ds.cache.flights._flights[6].waiters == 1)

        def no_room(value: object) -> object:
            raise MemoryError("no room for the waiters' copy")

        monkeypatch.setattr(spillcache.flight, "clone", no_room)
        gate.set()
        first.join(TIMEOUT)
        waiter.join(TIMEOUT)
        assert not waiter.is_alive(), "the waiter waits forever for the failed flight"
        assert isinstance(owner[0], MemoryError)
        assert_sample_equal(got[0], sample(6))  # from the cache, where the owner put it
        assert source.loads == [6]


# -- lifecycle -------------------------------------------------------------------------------


class _StoreSpy:
    """Records, for every use of the disk tier, whether the cache was closed at the time."""

    def __init__(self, ds: CachedDataset) -> None:
        self.closed_uses: list[str] = []
        disk = ds.cache._disk
        for name in ("write", "read", "contains"):
            original = getattr(disk, name)
            setattr(disk, name, self._wrap(ds.cache, name, original))

    def _wrap(self, cache: SpillCache, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def spy(*args: Any) -> Any:
            if cache.closed:
                self.closed_uses.append(name)
            return fn(*args)

        return spy


def test_stop_and_close_return_at_once_with_slow_loads_in_flight(tmp_path: Path) -> None:
    release = threading.Event()
    started = threading.Semaphore(0)

    class Slow(Source):
        def __getitem__(self, i: int) -> dict[str, Any]:
            started.release()
            release.wait(5.0)  # a 5-second load (ended early once the test is over)
            return super().__getitem__(i)

    slow = Slow(100)
    ds = open_ds(slow, tmp_path / "s", preload_threads=4)
    spy = _StoreSpy(ds)
    try:
        ds.start_preload()
        for _ in range(4):
            assert started.acquire(timeout=TIMEOUT)
        got: list[Any] = []
        training = threading.Thread(target=lambda: got.append(ds[0]))
        training.start()  # joins the stuck preload load of index 0
        wait_until(
            lambda: 0 in ds.cache.flights._flights and ds.cache.flights._flights[0].waiters == 1
        )
        begin = time.monotonic()
        ds.stop_preload()
        stopped = time.monotonic() - begin
        assert not ds.preloading
        begin = time.monotonic()
        ds.close()
        closed = time.monotonic() - begin
        assert stopped < 2.0, f"stop_preload took {stopped:.2f} s"
        assert closed < 2.0, f"close took {closed:.2f} s"
    finally:
        release.set()
    training.join(TIMEOUT)
    wait_until(lambda: not any(t.name == "spillcache-preload-load" for t in threading.enumerate()))
    assert spy.closed_uses == []
    assert_sample_equal(got[0], sample(0))  # the stuck load still served its waiter
    assert slow.loads.count(0) == 1
    with SpillCache(tmp_path / "s", ram_budget=0) as reopened:
        assert len(reopened) == 0  # what finished after stop was discarded


def test_a_load_joined_after_stop_is_cached_by_its_waiter(tmp_path: Path) -> None:
    source = Source(10)
    entered, gate = source.block(3)
    with open_ds(source, tmp_path / "s", preload_threads=1) as ds:
        ds.start_preload([3])
        assert entered.wait(TIMEOUT)
        ds.stop_preload()  # the load of 3 goes on, but the preload may no longer store it
        got: list[Any] = []
        training = threading.Thread(target=lambda: got.append(ds[3]))
        training.start()  # joins the stopped preload's load
        wait_until(lambda: ds.cache.flights._flights[3].waiters == 1)
        gate.set()
        training.join(TIMEOUT)
        assert_sample_equal(got[0], sample(3))
        assert 3 in ds.cache
        assert_sample_equal(ds[3], sample(3))
        assert source.loads == [3]  # loaded once


def test_keyboard_interrupt_mid_preload_leaves_a_consistent_store(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys, time
        import numpy as np
        from spillcache import CachedDataset

        class Source:
            def __len__(self):
                return 20_000
            def __getitem__(self, i):
                time.sleep(0.002)
                return {"x": np.full(64, i, dtype=np.float32), "id": f"s{i}", "label": i}

        ds = CachedDataset(Source(), sys.argv[1], fingerprint="ki", probes=0, progress=False,
                           preload_threads=4)
        ds.start_preload()
        ready = False
        for i in reversed(range(20_000)):  # training, while the preload runs
            ds[i]
            if not ready and ds.preloader.processed >= 200:
                print("ready", flush=True)
                ready = True
        """
    )
    path = tmp_path / "s"
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n"
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=TIMEOUT)
    finally:
        child.kill()
    assert child.returncode == -signal.SIGINT, err
    assert "KeyboardInterrupt" in err
    report = verify(path)
    assert report.ok
    assert 200 <= report.entries < 20_000
    with SpillCache(path, ram_budget=0, fingerprint="ki") as cache:
        present = [i for i in range(20_000) if i in cache]
        assert len(present) == report.entries
        for i in present[:: max(1, len(present) // 300)]:
            got = cache.get(i)
            assert got is not None
            assert np.array_equal(got["x"], np.full(64, i, dtype=np.float32))
            assert (got["id"], got["label"]) == (f"s{i}", i)
    # Reusable: a new run loads only what is missing.
    source = Source(20_000)
    with CachedDataset(source, path, fingerprint="ki", probes=0, ram_budget=0) as ds:
        for i in range(0, 20_000, 997):
            ds[i]
        assert sorted(source.loads) == [i for i in range(0, 20_000, 997) if i not in present]


def run_script(script: str, path: Path) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with the store path as its argument; it must exit with 0."""
    out = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return out


def test_interpreter_exit_with_a_running_preload_does_not_hang(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys, threading, time
        from spillcache import CachedDataset

        started = threading.Semaphore(0)

        class Stuck:
            def __len__(self):
                return 100
            def __getitem__(self, i):
                started.release()
                time.sleep(120)

        ds = CachedDataset(Stuck(), sys.argv[1], fingerprint="x", probes=0, progress=False,
                           preload_threads=4)
        ds.start_preload()
        for _ in range(4):
            started.acquire()
        print("exiting", flush=True)
        """
    )
    out = run_script(script, tmp_path / "s")
    assert out.stdout == "exiting\n"


def test_interpreter_exit_stops_the_preload_before_the_stores_close(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import atexit, sys, threading, time

        go, returned, puts = threading.Event(), threading.Event(), []

        @atexit.register  # registered before spillcache's hooks, so it runs after them
        def release_the_load():
            go.set()
            assert returned.wait(10)
            time.sleep(0.3)  # time for the load thread to reach the store, were it to
            print("puts", puts, flush=True)

        from spillcache import CachedDataset

        class Held:
            def __len__(self):
                return 1
            def __getitem__(self, i):
                try:
                    started.set()
                    go.wait(10)
                    return {"x": i}
                finally:
                    returned.set()

        started = threading.Event()
        ds = CachedDataset(Held(), sys.argv[1], fingerprint="x", probes=0, progress=False,
                           preload_threads=1)
        put = ds.cache.put
        ds.cache.put = lambda key, *args, **kwargs: puts.append(key) or put(key, *args, **kwargs)
        ds.start_preload()
        assert started.wait(10)
        """
    )
    out = run_script(script, tmp_path / "s")
    assert out.stdout == "puts []\n", out.stderr


def test_every_stop_waits_until_the_store_is_free(tmp_path: Path) -> None:
    events: list[str] = []
    in_put, gate = threading.Event(), threading.Event()
    with open_ds(Source(10), tmp_path / "s", preload_threads=1) as ds:
        put = ds.cache.put

        def held_put(key: object, value: object, **kwargs: Any) -> bool:
            if key == 3 and threading.current_thread().name == "spillcache-preload-load":
                in_put.set()
                gate.wait(TIMEOUT)
                try:
                    return put(key, value, **kwargs)
                finally:
                    events.append("put returned")
            return put(key, value, **kwargs)

        ds.cache.put = held_put  # type: ignore[method-assign]
        ds.start_preload()
        assert in_put.wait(TIMEOUT)
        preloader = ds.preloader
        assert preloader is not None

        def stop(name: str) -> None:
            preloader.stop()
            events.append(name)

        first = threading.Thread(target=stop, args=("first stop",))
        first.start()
        wait_until(lambda: preloader._run.guard.closed)  # the first stop waits for the put
        second = threading.Thread(target=stop, args=("second stop",))  # e.g. a second Ctrl-C
        second.start()
        second.join(0.5)  # time to return early, were it going to
        gate.set()
        first.join(TIMEOUT)
        second.join(TIMEOUT)
        assert events[0] == "put returned"
        assert sorted(events[1:]) == ["first stop", "second stop"]


def test_a_preload_whose_thread_cannot_start_ends_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class NoCoordinator(threading.Thread):
        def start(self) -> None:
            if self.name == "spillcache-preload":
                raise RuntimeError("can't start new thread")
            super().start()

    source = Source(5)
    with open_ds(source, tmp_path / "s") as ds:
        with monkeypatch.context() as patch:
            patch.setattr(threading, "Thread", NoCoordinator)
            with pytest.raises(RuntimeError, match="can't start new thread"):
                ds.start_preload()
        assert not ds.preloading
        assert returns(ds.wait_preload) is True
        assert source.loads == []


def test_restarting_the_preload_replaces_the_running_one(tmp_path: Path) -> None:
    source = Source(20)
    entered, gate = source.block(0)
    with open_ds(source, tmp_path / "s", preload_threads=1) as ds:
        ds.start_preload()
        assert entered.wait(TIMEOUT)
        first = ds.preloader
        assert not ds.wait_preload(0)
        ds.start_preload(range(10, 20))
        assert first is not None and not first.running
        assert ds.wait_preload(TIMEOUT)
        gate.set()
        assert sorted(source.loads) == [0, *range(10, 20)]


def test_dataloader_workers_fork_without_the_preload(tmp_path: Path) -> None:
    n = 120
    parent = os.getpid()
    gate = threading.Event()
    held = tmp_path / "held"

    class Held(Source):
        def __getitem__(self, i: int) -> dict[str, Any]:
            if i == n - 1 and os.getpid() == parent:
                held.touch()
                gate.wait(TIMEOUT)  # keeps the preload running across the forks
            elif i == n - 1:
                # A worker that stored the last index first would let the preload promote it
                # and finish before the epoch ends (a slow, loaded machine): it waits for the
                # preload to hold it.
                wait_until(held.exists)
            return super().__getitem__(i)

    source = Held(n, delay=0.001)
    ds = open_ds(source, tmp_path / "s", preload_threads=2)
    ds.transform = lambda s: (s["label"], ds.preloading, ds.wait_preload(0), os.getpid())
    try:
        ds.start_preload()
        wait_until(lambda: ds.stats().preload_loads > 0)
        assert ds.preloading
        loader = DataLoader(ds, batch_size=10, num_workers=2, multiprocessing_context="fork")
        seen = [row for batch in loader for row in zip(*batch, strict=True)]
        assert ds.preloading  # survived the forks
        gate.set()
        assert ds.wait_preload(TIMEOUT)
        assert sorted(int(label) for label, *_ in seen) == list(range(n))
        in_workers = [row for row in seen if int(row[3]) != parent]
        assert in_workers
        assert all(not running and done for _, running, done, _ in in_workers)
        stats = ds.stats()
        # Each index once: loaded, passed over, or (a worker committed it before the preload
        # got there, now that workers commit each batch) promoted from disk to RAM.
        assert stats.preload_loads + stats.preload_skips + stats.preload_promotions == n
        assert stats.preload_loads > 0
        assert len(ds.cache) == n
    finally:
        gate.set()
        ds.close()


_PICKLE_GATE = threading.Event()


class Picklable(torch.utils.data.Dataset[dict[str, Any]]):
    """No locks or events of its own, so that it pickles (loads wait on a module global)."""

    def __len__(self) -> int:
        return 3

    def __getitem__(self, i: int) -> dict[str, Any]:
        _PICKLE_GATE.wait(TIMEOUT)
        return sample(i)


def test_a_dataset_pickles_while_preloading(tmp_path: Path) -> None:
    _PICKLE_GATE.clear()
    with open_ds(Picklable(), tmp_path / "s", preload_threads=1) as ds:
        try:
            ds.start_preload()
            assert ds.preloading
            assert pickle.dumps(ds)  # no thread, lock or writer in it
            state = ds.__getstate__()
            assert (state["_preload"].preloader, state["_summary"]) == (None, None)
            assert "_flights" not in ds.cache.__getstate__()
        finally:
            _PICKLE_GATE.set()


# -- visibility ------------------------------------------------------------------------------


def test_progress_bar(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with open_ds(Source(60, delay=0.01), tmp_path / "s", preload_threads=1, progress=True) as ds:
        ds.start_preload()
        assert ds.wait_preload(TIMEOUT)
    err = capsys.readouterr().err
    assert "spillcache preload" in err
    assert "samples/s" in err
    assert "RAM " in err and "disk " in err and "in flight " in err
    with open_ds(Source(5), tmp_path / "t", progress=None) as ds:  # stderr is no terminal
        ds.start_preload()
        assert ds.wait_preload(TIMEOUT)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("step", ["open", "update", "close"])
def test_a_failing_progress_bar_does_not_stop_the_preload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, step: str
) -> None:
    class BrokenBar:
        """A tqdm stand-in that fails at ``step`` like a write to a pipe nobody reads."""

        def __init__(self, **kwargs: Any) -> None:
            self.n = 0
            self._fail("open")

        def _fail(self, at: str) -> None:
            if at == step:
                raise BrokenPipeError(errno.EPIPE, "Broken pipe")

        def set_postfix_str(self, text: str, refresh: bool = True) -> None:
            self._fail("update")

        def format_sizeof(self, num: float, suffix: str = "", divisor: float = 1000) -> str:
            return f"{num}{suffix}"

        def update(self, n: int) -> None:
            self.n += n

        def close(self) -> None:
            self._fail("close")

    monkeypatch.setattr("tqdm.auto.tqdm", BrokenBar)
    source = Source(20)
    with open_ds(source, tmp_path / "s", preload_threads=2, progress=True) as ds:
        with caplog.at_level(logging.WARNING, logger="spillcache.preload"):
            ds.start_preload()
            assert returns(ds.wait_preload) is True
        assert not ds.preloading
        assert sorted(source.loads) == list(range(20))
        assert ds.stats().preload_loads == 20
        assert "progress bar failed (BrokenPipeError" in caplog.text


class FakeWriter:
    def __init__(self) -> None:
        self.scalars: list[tuple[str, float, int | None]] = []

    def add_scalar(self, tag: str, value: float, step: int | None = None) -> None:
        self.scalars.append((tag, value, step))

    def tags(self) -> set[str]:
        return {tag for tag, _, _ in self.scalars}


def test_tensorboard_scalars(tmp_path: Path) -> None:
    writer = FakeWriter()
    with open_ds(Source(30), tmp_path / "s", summary_writer=writer, log_every=10) as ds:
        ds.start_preload()
        assert ds.wait_preload(TIMEOUT)
        assert {
            "spillcache/preload_items_per_s",
            "spillcache/preload_in_flight",
            "spillcache/preload_concurrency",
            "spillcache/ram_bytes",
            "spillcache/disk_bytes",
        } <= writer.tags()
        # Rates are per interval: an interval without requests (the preload's) has none.
        assert "spillcache/hit_rate" not in writer.tags()
        writer.scalars.clear()
        for i in range(25):
            ds[i]
        steps = sorted({step for tag, _, step in writer.scalars if tag == "spillcache/hit_rate"})
        assert steps == [10, 20]
        hit_rate = [v for tag, v, step in writer.scalars if tag == "spillcache/hit_rate"]
        assert hit_rate == [1.0, 1.0]
    with open_ds(Source(5), tmp_path / "t", summary_writer=tmp_path / "tb", log_every=2) as ds:
        for i in range(4):
            ds[i]
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())


def test_tensorboard_steps_of_every_tag_never_decrease(tmp_path: Path) -> None:
    writer = FakeWriter()
    with open_ds(
        Source(30), tmp_path / "s", summary_writer=writer, log_every=10, preload_threads=1
    ) as ds:
        for _ in range(2):  # one preload per epoch, each followed by training
            ds.start_preload()
            assert ds.wait_preload(TIMEOUT)
            for i in range(25):
                ds[i]
    last: dict[str, int] = {}
    for tag, _, step in writer.scalars:
        assert step is not None and step >= last.get(tag, step), (tag, step, last[tag])
        last[tag] = step
    # Cache statistics count requests; the preload's own scalars count preloaded indices.
    assert (last["spillcache/hit_rate"], last["spillcache/preload_processed"]) == (50, 60)


# -- the tuner -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "settles_at", "peak"),
    [
        (lambda c: c / 0.02, 64, 64),  # latency-bound: more is always better, up to the cap
        (lambda c: min(c, 8) / 0.02, 8, 16),  # IOPS-limited at 8
        (lambda c: 200.0, 1, 4),  # CPU-bound: threads do not help (the ramp starts at 2)
        (lambda c: min(c, 24) / 0.02, 32, 64),  # saturates between two powers of two
    ],
    ids=["latency", "iops", "cpu", "saturating"],
)
def test_tuner_converges(rate: Callable[[int], float], settles_at: int, peak: int) -> None:
    noise = np.random.default_rng(0).uniform(0.9, 1.1, 400)
    tuner = Tuner(64)
    limits = []
    for factor in noise:
        limits.append(tuner.limit)
        tuner.observe(rate(tuner.limit) * factor)
    assert max(limits) == peak
    tail = limits[100:]
    assert collections.Counter(tail).most_common(1)[0][0] == settles_at
    # Probes back off: few windows are spent away from the chosen level.
    assert sum(1 for c in tail if c != settles_at) <= 8


def test_a_coarse_clock_does_not_break_the_tuner() -> None:
    tuner = Tuner(64)
    tuner.observe(10.0)
    tuner.observe(10.0)  # no gain from 2 to 4: the ramp ends, long windows decide from here
    slots = Concurrency(1, tuner)
    slots.release(slots.reserve(100.0), completed=1, now=100.0)  # settled: the window opens
    held = slots.reserve(100.5)
    # Ten loads that the clock saw take no time at all.
    for _ in range(10):
        assert not slots.release(slots.reserve(101.0), completed=1, now=101.0)
    assert (slots.tuning, slots.limit) == ([], 4)  # the window stays open
    assert slots.release(held, completed=1, now=101.0)
    # 0.5 slots in flight on average, each held 0.5 s / 11 completions.
    assert slots.tuning == [(101.0, 4, pytest.approx(11.0))]
    assert slots.limit == 2  # 11/s at 4 is no 1.2x gain over 10/s at 2


# -- Hyrax -----------------------------------------------------------------------------------


class Provider:
    def __init__(self, n: int) -> None:
        self.n = n
        self.source = Source(n)

    def __len__(self) -> int:
        return self.n

    def resolve_data(self, idx: int) -> dict[str, Any]:
        return self.source[idx]


def hyrax_config(tmp_path: Path, **data_set: Any) -> dict[str, Any]:
    return {"data_set": {"cache_dir": str(tmp_path), **data_set}, "data_request": {"x": 1}}


@pytest.mark.parametrize("threads", [3, "auto"])
def test_hyrax_start_preload_thread(tmp_path: Path, threads: int | str) -> None:
    provider = Provider(25)
    config = hyrax_config(tmp_path, preload_cache=True, preload_threads=threads)
    with DataCache(config, provider) as cache:
        cache.start_preload_thread()
        assert cache.wait_preload(TIMEOUT)
        assert sorted(provider.source.loads) == list(range(25))
        assert cache.stats().preload_loads == 25
        for i in range(25):
            assert_sample_equal(hyrax_loop(cache, provider, i), sample(i))
        assert len(provider.source.loads) == 25


def test_hyrax_preload_off_does_nothing(tmp_path: Path) -> None:
    provider = Provider(5)
    with DataCache(hyrax_config(tmp_path, preload_cache=False), provider) as cache:
        cache.start_preload_thread()
        assert not cache.preloading
        assert cache.wait_preload(0)
        assert provider.source.loads == []
    with DataCache(hyrax_config(tmp_path, use_cache=False, preload_cache=True), provider) as off:
        off.start_preload_thread()
        assert not off.preloading
        assert off.stats().preload_loads == 0


def test_hyrax_single_flight(tmp_path: Path) -> None:
    provider = Provider(10)
    entered, gate = provider.source.block(4)
    config = hyrax_config(tmp_path, preload_cache=True, preload_threads=1)
    with DataCache(config, provider) as cache:
        cache.start_preload_thread([4, 6, 7])
        assert entered.wait(TIMEOUT)
        # A miss during the preload reserves the index until its insert: the preload skips it.
        assert cache.try_fetch(6) is None
        got: list[Any] = []
        training = threading.Thread(target=lambda: got.append(hyrax_loop(cache, provider, 4)))
        training.start()
        wait_until(lambda: cache.cache.flights._flights[4].waiters == 1)
        gate.set()
        training.join(TIMEOUT)
        assert_sample_equal(got[0], sample(4))
        cache.insert_into_cache(6, provider.resolve_data(6))
        assert cache.wait_preload(TIMEOUT)
        assert sorted(provider.source.loads) == [4, 6, 7]
        stats = cache.stats()
        assert (stats.preload_waits, stats.preload_skips, stats.preload_loads) == (1, 1, 2)


def test_hyrax_fetch_joined_after_stop_caches_the_sample(tmp_path: Path) -> None:
    provider = Provider(10)
    entered, gate = provider.source.block(3)
    config = hyrax_config(tmp_path, preload_cache=True, preload_threads=1)
    with DataCache(config, provider) as cache:
        cache.start_preload_thread([3])
        assert entered.wait(TIMEOUT)
        got: list[Any] = []
        training = threading.Thread(target=lambda: got.append(hyrax_loop(cache, provider, 3)))
        training.start()  # try_fetch joins the preload's load...
        wait_until(lambda: cache.cache.flights._flights[3].waiters == 1)
        cache.stop_preload()  # ...which goes on, but the preload may no longer store it
        gate.set()
        training.join(TIMEOUT)
        assert_sample_equal(got[0], sample(3))
        assert_sample_equal(hyrax_loop(cache, provider, 3), sample(3))
        assert provider.source.loads == [3]  # loaded once: the fetch that joined it stored it


def test_hyrax_logs_statistics_every_1000_fetches(tmp_path: Path) -> None:
    provider = Provider(3)
    writer = FakeWriter()
    with DataCache(hyrax_config(tmp_path), provider, summary_writer=writer) as cache:
        cache.insert_into_cache(0, sample(0))
        for _ in range(2000):
            cache.try_fetch(0)
    steps = [step for tag, _, step in writer.scalars if tag == "spillcache/ram_items"]
    assert steps == [1000, 2000]
