"""DataLoader workers: statistics that count them, epochs that never reload, batched sources."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from spillcache import CachedDataset, SpillCache
from spillcache import shared as shared_module

TIMEOUT = 60.0
METHODS = ["fork", "spawn"]


class Logged(torch.utils.data.Dataset[dict[str, Any]]):
    """Deterministic samples; every load appends its index to a file (counted over processes)."""

    def __init__(self, n: int, log: Path) -> None:
        self.n = n
        self.log = str(log)

    def __len__(self) -> int:
        return self.n

    def _record(self, indices: list[int]) -> None:
        fd = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, np.asarray(indices, dtype=np.int32).tobytes())
        finally:
            os.close(fd)

    def __getitem__(self, i: int) -> dict[str, Any]:
        self._record([i])
        return make(i)


class Batched(Logged):
    """A source with ``__getitems__``; each call is logged as one record of its indices."""

    def __init__(self, n: int, log: Path, calls: Path) -> None:
        super().__init__(n, log)
        self.calls = str(calls)

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        self._record(list(indices))
        with open(self.calls, "a") as f:
            f.write(" ".join(map(str, indices)) + "\n")
        return [make(i) for i in indices]


def make(i: int) -> dict[str, Any]:
    return {"x": torch.full((8,), float(i)), "label": i}


def loads(log: Path) -> list[int]:
    return np.fromfile(log, dtype=np.int32).tolist() if log.exists() else []


def batched_calls(calls: Path) -> list[list[int]]:
    if not calls.exists():
        return []
    return [[int(v) for v in line.split()] for line in calls.read_text().splitlines()]


def shuffled_loader(
    ds: CachedDataset, batch_size: int, method: str, persistent: bool
) -> DataLoader[Any]:
    """Two workers of ``method`` over shuffled batches, as people train."""
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=True,
        num_workers=2,
        persistent_workers=persistent,
        multiprocessing_context=method,
    )


def epoch(loader: DataLoader[Any]) -> list[int]:
    return sorted(int(v) for batch in loader for v in batch["label"])


def blocks(pid: int) -> list[Path]:
    directory = shared_module._directory()
    return sorted(directory.glob(f"spillcache-counters-{pid}-*"))


# -- item 1: statistics ------------------------------------------------------------------------


@pytest.mark.parametrize("persistent", [True, False])
@pytest.mark.parametrize("method", METHODS)
def test_stats_count_the_workers(tmp_path: Path, method: str, persistent: bool) -> None:
    source = Logged(64, tmp_path / "log")
    with CachedDataset(source, tmp_path / "s", probes=0) as ds:
        loader = shuffled_loader(ds, 4, method, persistent)
        for _ in range(2):
            assert epoch(loader) == list(range(64))
        del loader  # persistent workers exit: their counts stay
        stats = ds.stats()
        assert (stats.misses, stats.puts, stats.ram_hits + stats.disk_hits) == (64, 64, 64)
        assert stats.requests == 128
        ds[0]  # this process's own requests add to the workers'
        assert ds.stats().requests == 129
        assert blocks(os.getpid())  # the block of this cache's workers
    assert ds.stats().requests == 129  # still counted after close
    assert blocks(os.getpid()) == []  # close removed it


def test_stats_of_a_process_exclude_other_processes(tmp_path: Path) -> None:
    import multiprocessing as mp

    def reader(ds: CachedDataset) -> None:
        for i in range(10):
            ds[i]

    with CachedDataset(Logged(10, tmp_path / "log"), tmp_path / "s", probes=0) as ds:
        for method in ("fork", "spawn"):
            child = mp.get_context(method).Process(target=reader, args=(ds,))
            if method == "spawn":
                child = mp.get_context(method).Process(target=_spawned_reader, args=(ds,))
            child.start()
            child.join(TIMEOUT)
            assert child.exitcode == 0
        assert ds.stats().requests == 0  # not its DataLoader workers: not counted


def _spawned_reader(ds: CachedDataset) -> None:
    for i in range(10):
        ds[i]


def _publish_and_die(path: str, n: int) -> None:
    slot = shared_module.attach(path)
    assert slot is not None
    slot.publish((n, 0, 0, 0, 0, 0, 0))
    os.kill(os.getpid(), signal.SIGKILL)


def test_killed_workers_leak_nothing_and_their_counts_stay(monkeypatch: pytest.MonkeyPatch) -> None:
    """kill -9 of workers: their counts stay (also once their slots are reused), no leak."""
    import multiprocessing as mp

    monkeypatch.setattr(shared_module, "_SLOTS", 4)  # slots 1 to 3 for workers
    block = shared_module.CounterBlock()
    ctx = mp.get_context("fork")
    # More workers than slots: each claim reuses the slot of one that was killed.
    for _ in range(shared_module._SLOTS + 5):
        child = ctx.Process(target=_publish_and_die, args=(str(block.path), 1))
        child.start()
        child.join(TIMEOUT)
        assert child.exitcode == -signal.SIGKILL
    assert block.totals()["ram_hits"] == shared_module._SLOTS + 5
    block.close()
    assert not block.path.exists()


def test_a_collected_cache_removes_its_block_and_leftovers_are_reclaimed(tmp_path: Path) -> None:
    import gc

    cache = SpillCache(tmp_path / "s")
    block = cache._counters.own_block()
    assert block is not None and block.exists()
    del cache
    gc.collect()
    assert blocks(os.getpid()) == []
    # A block of a process killed with -9 (a pid that no longer exists) is removed by the
    # next one created.
    import subprocess
    import sys

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(dead.stdout)
    leftover = shared_module._directory() / f"spillcache-counters-{pid}-deadbeef"
    leftover.write_bytes(b"")
    shared_module.CounterBlock().close()
    assert not leftover.exists()


def test_tensorboard_logs_the_workers_per_interval(tmp_path: Path) -> None:
    writer = FakeWriter()
    source = Logged(64, tmp_path / "log")
    with CachedDataset(source, tmp_path / "s", probes=0, summary_writer=writer, log_every=16) as ds:
        loader = DataLoader(ds, batch_size=4, shuffle=True, num_workers=2, persistent_workers=True)
        for _ in range(2):
            assert epoch(loader) == list(range(64))
            # Waits for the thread to see the epoch's last requests.
            deadline = time.monotonic() + TIMEOUT
            while writer.last_step() < ds.stats().requests and time.monotonic() < deadline:
                time.sleep(0.01)
        del loader
    points = [(step, v) for tag, v, step in writer.scalars if tag == "spillcache/hit_rate"]
    steps = [step for step, _ in points]
    assert steps == sorted(set(steps)) and steps[-1] == 128  # monotonic, at requests counted
    assert 64 in steps  # the test waited for the thread to see the end of epoch 1
    assert all(v == 1.0 for step, v in points if step > 64)  # epoch 2: all hits, per interval
    assert all(v == 0.0 for step, v in points if step <= 64)


class FakeWriter:
    def __init__(self) -> None:
        self.scalars: list[tuple[str, float, int | None]] = []
        self._lock = threading.Lock()

    def add_scalar(self, tag: str, value: float, step: int | None = None) -> None:
        with self._lock:
            self.scalars.append((tag, value, step))

    def last_step(self) -> int:
        with self._lock:
            return max(
                (s or 0 for t, _, s in self.scalars if t == "spillcache/hit_rate"), default=0
            )


# -- item 2: no reloads ------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("persistent", [True, False])
def test_later_epochs_never_reload(tmp_path: Path, method: str, persistent: bool) -> None:
    runs = 5 if method == "fork" else 2
    for run in range(runs):
        log = tmp_path / f"log{run}"
        with CachedDataset(Logged(64, log), tmp_path / f"s{run}", probes=0) as ds:
            loader = shuffled_loader(ds, 4, method, persistent)
            assert epoch(loader) == list(range(64))
            assert sorted(loads(log)) == list(range(64))
            for _ in range(2):
                assert epoch(loader) == list(range(64))
            assert len(loads(log)) == 64, f"run {run}: epochs 2 and 3 reloaded samples"


@pytest.mark.parametrize("method", METHODS)
def test_batch_size_none_never_reloads(tmp_path: Path, method: str) -> None:
    log = tmp_path / "log"
    with CachedDataset(Logged(32, log), tmp_path / "s", probes=0) as ds:
        loader = DataLoader(
            ds,
            batch_size=None,
            shuffle=True,
            num_workers=2,
            persistent_workers=True,
            multiprocessing_context=method,
        )
        for _ in range(3):
            assert sorted(int(s["label"]) for s in loader) == list(range(32))
        assert len(loads(log)) == 32


# -- item 3: batched sources -------------------------------------------------------------------


def test_getitems_serves_hits_and_loads_misses_in_one_call(tmp_path: Path) -> None:
    source = Batched(20, tmp_path / "log", tmp_path / "calls")
    with CachedDataset(source, tmp_path / "s", probes=0, transform=lambda s: s["label"]) as ds:
        assert ds[3] == 3 and ds[5] == 5  # no __getitems__ for single requests
        assert ds.__getitems__([5, 1, 3, 7, -1, 1]) == [5, 1, 3, 7, 19, 1]
        assert batched_calls(tmp_path / "calls") == [[1, 7, 19]]  # the misses, once each
        assert ds.__getitems__([1, 7, 19]) == [1, 7, 19]
        assert len(batched_calls(tmp_path / "calls")) == 1
        stats = ds.stats()
        assert (stats.misses, stats.puts) == (2 + 4, 5)  # the repeated 1 missed twice
        assert stats.requests == 2 + 6 + 3


def test_getitems_without_a_batched_source_loads_each_miss(tmp_path: Path) -> None:
    source = Logged(10, tmp_path / "log")
    with CachedDataset(source, tmp_path / "s", probes=0) as ds:
        batch = ds.__getitems__([4, 2, 4])
        assert [b["label"] for b in batch] == [4, 2, 4]
        batch[0]["x"] += 1  # each position its own copy
        assert float(batch[2]["x"][0]) == 4.0
        assert loads(tmp_path / "log") == [4, 2]


def test_getitems_rejects_a_wrong_number_of_samples(tmp_path: Path) -> None:
    class Short(Batched):
        def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
            return super().__getitems__(indices)[:-1]

    source = Short(10, tmp_path / "log", tmp_path / "calls")
    with CachedDataset(source, tmp_path / "s", probes=0) as ds:
        with pytest.raises(ValueError, match="returned 1 samples for 2 indices"):
            ds.__getitems__([0, 1])
        assert ds[0]["label"] == 0 and ds[1]["label"] == 1  # no claim left behind


def test_getitems_waits_for_a_load_in_progress(tmp_path: Path) -> None:
    gate, started = threading.Event(), threading.Event()

    class Slow(Batched):
        def __getitem__(self, i: int) -> dict[str, Any]:
            if i == 2:
                started.set()
                assert gate.wait(TIMEOUT)
            return super().__getitem__(i)

    source = Slow(10, tmp_path / "log", tmp_path / "calls")
    with CachedDataset(source, tmp_path / "s", probes=0) as ds:
        single = threading.Thread(target=lambda: ds[2])
        single.start()
        assert started.wait(TIMEOUT)
        got: list[Any] = []
        batch = threading.Thread(target=lambda: got.extend(ds.__getitems__([1, 2, 3])))
        batch.start()
        deadline = time.monotonic() + TIMEOUT
        while not batched_calls(tmp_path / "calls") and time.monotonic() < deadline:
            time.sleep(0.01)
        gate.set()
        single.join(TIMEOUT)
        batch.join(TIMEOUT)
        assert [b["label"] for b in got] == [1, 2, 3]
        assert batched_calls(tmp_path / "calls") == [[1, 3]]  # 2 was awaited, not reloaded
        assert sorted(loads(tmp_path / "log")) == [1, 2, 3]


def test_preload_uses_the_batched_source(tmp_path: Path) -> None:
    source = Batched(100, tmp_path / "log", tmp_path / "calls")
    with CachedDataset(source, tmp_path / "s", probes=0, preload_threads=2) as ds:
        ds.start_preload()
        assert ds.wait_preload(TIMEOUT)
        calls = batched_calls(tmp_path / "calls")
        assert sorted(i for call in calls for i in call) == list(range(100))
        assert len(calls) <= 100 // 32 + 2 and max(map(len, calls)) == 32
        assert ds.stats().preload_loads == 100
        assert len(loads(tmp_path / "log")) == 100


@pytest.mark.parametrize("persistent", [True, False])
@pytest.mark.parametrize("method", METHODS)
def test_dataloader_uses_the_batched_source(tmp_path: Path, method: str, persistent: bool) -> None:
    source = Batched(32, tmp_path / "log", tmp_path / "calls")
    with CachedDataset(source, tmp_path / "s", probes=0) as ds:
        loader = shuffled_loader(ds, 8, method, persistent)
        for _ in range(2):
            assert epoch(loader) == list(range(32))
        calls = batched_calls(tmp_path / "calls")
        assert len(calls) == 4 and all(len(c) == 8 for c in calls)  # one call per batch
        assert len(loads(tmp_path / "log")) == 32
        stats = ds.stats()
        assert (stats.misses, stats.requests) == (32, 64)


def test_a_logging_data_set_handed_to_workers_is_still_collected(tmp_path: Path) -> None:
    import gc
    import weakref

    writer = FakeWriter()
    ds = CachedDataset(
        Logged(8, tmp_path / "log"), tmp_path / "s", probes=0, summary_writer=writer, log_every=4
    )
    loader = DataLoader(ds, batch_size=4, num_workers=1, multiprocessing_context="fork")
    assert epoch(loader) == list(range(8))
    assert any(t.name == "spillcache-stats" for t in threading.enumerate())
    collected = weakref.ref(ds)
    del ds, loader
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline and (
        collected() is not None or any(t.name == "spillcache-stats" for t in threading.enumerate())
    ):
        gc.collect()
        time.sleep(0.05)
    assert collected() is None  # the logging thread does not keep it alive...
    assert not any(t.name == "spillcache-stats" for t in threading.enumerate())  # ...and ends
    assert blocks(os.getpid()) == []


def test_commit_from_many_threads_while_the_writer_runs(tmp_path: Path) -> None:
    """commit() in callers' threads and the writer thread never lose or reorder a write."""
    import subprocess
    import sys

    cache = SpillCache(tmp_path / "s", ram_budget=0)

    def work(t: int) -> None:
        for i in range(150):
            cache.put(t * 1000 + i, {"x": np.full(4096 * (1 + i % 40), i % 251, np.uint8)})
            cache.put(t * 1000 + i, {"x": np.full(4096, t, np.uint8)})  # the last value wins
            if i % 7 == 0:
                cache.commit()

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    cache.commit()
    check = (
        "import sys; import numpy as np; from spillcache import SpillCache\n"
        "c = SpillCache(sys.argv[1], ram_budget=0)\n"
        "got = {k: c.get(k) for t in range(4) for k in range(t * 1000, t * 1000 + 150)}\n"
        "bad = [k for k, s in got.items()\n"
        "       if s is None or s['x'].size != 4096 or not (s['x'] == k // 1000).all()]\n"
        "print(len(c), bad)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", check, str(tmp_path / "s")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split(maxsplit=1) == ["600", "[]\n"]
    cache.close()
