"""SpillCache with its node RAM tier: real DataLoader workers, real processes, real tmpfs mounts.

Every test points ``SPILLCACHE_NODE_DIR`` at a tmpfs of its own (``mount`` from
test_node_tier.py: root only, as in CI), which spawned processes and workers inherit.
Samples are ``{"x": tensor}`` whose values name their key and version, so a stale or wrong
sample is detected.
"""

from __future__ import annotations

import functools
import json
import multiprocessing as mp
import os
import signal
import time
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lmdb
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as tmp
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from helpers import free_port
from spillcache import CachedDataset, SpillCache, clear_cache, nodelink
from spillcache.node import NodeTier, NodeTierWarning
from spillcache.node.place import PREFIX
from test_node_tier import fail_once, mount, shm  # noqa: F401 - fixtures

SPAWN = mp.get_context("spawn")
MIB = 1 << 20
ELEMENTS = 1024  # 4 KiB samples


def sample(key: int, version: int = 0) -> dict[str, torch.Tensor]:
    return {"x": torch.full((ELEMENTS,), float(key + 1000 * version))}


def value(got: Any) -> float:
    assert got is not None
    x = got["x"]
    assert bool((x == x[0]).all())
    return float(x[0])


class Keys(Dataset[float]):
    """Returns what the cache holds for each index (-1.0: a miss)."""

    def __init__(self, cache: SpillCache, n: int) -> None:
        self.cache, self.n = cache, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> float:
        got = self.cache.get(i)
        return -1.0 if got is None else value(got)


def wait_for(flag: str, worker_id: int) -> None:
    """worker_init_fn: hold the worker until the test says go (no timing luck)."""
    deadline = time.monotonic() + 120
    while not os.path.exists(flag):
        assert time.monotonic() < deadline, "the test never released its workers"
        time.sleep(0.01)


def epoch(loader: DataLoader[float], flag: Path, cache: SpillCache) -> list[float]:
    it = iter(loader)  # starts (or wakes) the workers; they wait for the flag
    cache.stats()  # the main process has moved its residents to the node tier
    flag.touch()
    values = [float(v) for batch in it for v in batch]
    flag.unlink()
    return values


@pytest.fixture
def node_dir(shm: Path, monkeypatch: pytest.MonkeyPatch) -> Path:  # noqa: F811
    monkeypatch.setenv(nodelink.ENV_DIR, str(shm))
    return shm


@pytest.mark.parametrize("persistent", [False, True])
@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_workers_hit_what_the_main_process_put_before_and_between_epochs(
    tmp_path: Path, node_dir: Path, method: str, persistent: bool
) -> None:
    cache = SpillCache(tmp_path / "store", ram_budget="16MiB")
    for key in range(16):
        cache.put(key, sample(key))
    flag = tmp_path / "go"
    loader = DataLoader(
        Keys(cache, 24),
        batch_size=4,
        num_workers=2,
        multiprocessing_context=method,
        persistent_workers=persistent,
        worker_init_fn=functools.partial(wait_for, str(flag)),
    )
    first = epoch(loader, flag, cache)
    assert first == [float(k) for k in range(16)] + [-1.0] * 8
    stats = cache.stats()
    assert (stats.node_hits, stats.ram_hits, stats.disk_hits) == (16, 16, 0)
    # A persistent worker sees what the main process put a moment ago, and a replaced sample
    # is never served in its old version.
    for key in range(16, 24):
        cache.put(key, sample(key))
    cache.put(0, sample(0, version=1))
    second = epoch(loader, flag, cache)
    assert second == [1000.0] + [float(k) for k in range(1, 24)]
    stats = cache.stats()
    assert (stats.node_hits, stats.disk_hits, stats.misses) == (40, 0, 8)
    assert (stats.ram_items, stats.node_items) == (0, 24)  # held once, in the node tier
    cache.close()


def test_without_workers_the_process_keeps_its_local_tier_only(
    tmp_path: Path, node_dir: Path
) -> None:
    with SpillCache(tmp_path / "store", ram_budget="16MiB") as cache:
        for key in range(8):
            cache.put(key, sample(key))
        assert [value(cache.get(k)) for k in range(8)] == [float(k) for k in range(8)]
        stats = cache.stats()
        assert (stats.ram_hits, stats.node_hits, stats.ram_items, stats.node_items) == (8, 0, 8, 0)


# -- other processes -----------------------------------------------------------------------------


def put_and_close(store: str, where: str, key: int, version: int) -> None:
    os.environ.update({nodelink.ENV_DIR: where, "LOCAL_WORLD_SIZE": "2"})
    with SpillCache(store, ram_budget="16MiB") as cache:
        cache.put(key, sample(key, version))


def run(target: Callable[..., None], *args: Any) -> None:
    child = SPAWN.Process(target=target, args=args)
    child.start()
    child.join(120)
    assert child.exitcode == 0


def test_a_read_overtaken_by_another_process_put_does_not_admit_the_old_value(
    tmp_path: Path, node_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cross-process stale-admission race, made deterministic: their put lands between
    our disk read and our admission."""
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    store = tmp_path / "store"
    cache = SpillCache(store, ram_budget="16MiB")
    assert cache.put(3, sample(3))
    cache.flush()
    tier = NodeTier.open(store, 16 * MIB, where=node_dir)
    assert tier is not None
    tier.put(3, None)  # our next get misses the node tier and reads the disk tier
    read = nodelink._with_bytes

    def read_then_their_put(stored: memoryview | bytes) -> tuple[Any, bytes]:
        got = read(stored)
        run(put_and_close, str(store), str(node_dir), 3, 1)
        return got

    monkeypatch.setattr(nodelink, "_with_bytes", read_then_their_put)
    assert value(cache.get(3)) == 3.0  # read before their put: the old one is right here
    monkeypatch.setattr(nodelink, "_with_bytes", read)
    assert value(cache.get(3)) == 1003.0  # never the old one again
    assert value(cache.get(3)) == 1003.0
    tier.close()
    cache.close()


def read_one(store: str, where: str, key: int, expected: float) -> None:
    os.environ.update({nodelink.ENV_DIR: where, "LOCAL_WORLD_SIZE": "2"})
    with SpillCache(store, ram_budget="16MiB") as cache:
        assert value(cache.get(key)) == expected


def test_a_put_the_node_tier_fails_to_take_serves_no_older_version(
    tmp_path: Path, node_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node tier's transaction of a put fails (an I/O error): the new version is still
    what every process reads, from the disk tier."""
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    store = tmp_path / "store"
    cache = SpillCache(store, ram_budget="16MiB")
    assert cache.put(3, sample(3))
    assert cache.stats().node_items == 1
    fail_once(monkeypatch, lmdb.DiskError("I/O error"))
    with pytest.warns(NodeTierWarning, match="I/O error"):
        assert cache.put(3, sample(3, version=1))
    cache.flush()
    run(read_one, str(store), str(node_dir), 3, 1003.0)
    assert value(cache.get(3)) == 1003.0
    cache.close()


def get_all_and_report(store: str, where: str, keys: int, out: str) -> None:
    os.environ.update({nodelink.ENV_DIR: where, "LOCAL_WORLD_SIZE": "2"})
    with SpillCache(store, ram_budget="16MiB") as cache:
        got = [value(cache.get(k)) for k in range(keys)]
        stats = cache.stats()
        result = {"got": got, "node_hits": stats.node_hits, "disk_hits": stats.disk_hits}
        Path(out).write_text(json.dumps(result))


def test_a_record_read_from_disk_is_a_node_hit_in_a_process_new_to_its_spec(
    tmp_path: Path, node_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk hit offers the store's record (its spec named by id) to the node tier: another
    process, which has not read that spec yet, learns it from the store and hits."""
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    store = tmp_path / "store"
    cache = SpillCache(store, ram_budget="16MiB")
    for key in range(8):
        cache.put(key, sample(key))
    cache.flush()
    tier = NodeTier.open(store, 16 * MIB, where=node_dir)
    assert tier is not None
    for key in range(8):
        tier.put(key, None)  # the next gets read the disk tier: records into the node tier
    assert [value(cache.get(k)) for k in range(8)] == [float(k) for k in range(8)]
    assert (cache.stats().disk_hits, cache.stats().node_items) == (8, 8)
    out = tmp_path / "out.json"
    run(get_all_and_report, str(store), str(node_dir), 8, str(out))
    result = json.loads(out.read_text())
    assert result["got"] == [float(k) for k in range(8)]
    assert (result["node_hits"], result["disk_hits"]) == (8, 0)
    tier.close()
    cache.close()


def rank_with_four(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, SpillCache]:
    """A DDP rank's cache (shared from the start) that put samples 0-3."""
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    store = tmp_path / "store"
    cache = SpillCache(store, ram_budget="16MiB")
    for key in range(4):
        cache.put(key, sample(key))
    return store, cache


def test_reset_empties_the_node_tier_for_every_process(
    tmp_path: Path, node_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, cache = rank_with_four(tmp_path, monkeypatch)
    assert cache.stats().node_items == 4
    cache.reset("test")
    assert cache.stats().node_items == 0
    assert cache.get(0) is None
    run(put_and_close, str(store), str(node_dir), 5, 0)  # another process, same generation
    assert value(cache.get(5)) == 5.0
    assert cache.stats().node_hits == 1
    cache.close()


def test_a_lone_process_shares_once_another_process_joins(tmp_path: Path, node_dir: Path) -> None:
    store = tmp_path / "store"
    cache = SpillCache(store, ram_budget="16MiB")
    for key in range(4):
        cache.put(key, sample(key))
    assert (cache.stats().ram_items, cache.stats().node_items) == (4, 0)
    run(put_and_close, str(store), str(node_dir), 9, 0)
    cache.put(10, sample(10))  # notices the other process: its residents move
    stats = cache.stats()
    assert (stats.ram_items, stats.node_items) == (0, 6)
    assert [value(cache.get(k)) for k in (0, 9, 10)] == [0.0, 9.0, 10.0]
    assert cache.stats().node_hits == 3
    cache.close()


def test_with_copy_false_a_shared_process_gets_back_the_object_it_put(
    tmp_path: Path, node_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # a DDP rank: shared from the start
    store = tmp_path / "store"
    cache = SpillCache(store, ram_budget="16MiB", copy=False)
    put = sample(1)
    cache.put(1, put)
    cache.put(2, sample(2))
    stats = cache.stats()
    assert (stats.ram_items, stats.node_items) == (0, 2)  # held once, on the node
    assert cache.get(1) is put and cache.get(1) is put
    assert cache.stats().node_hits == 2
    cache.put(2, sample(2, version=1))  # a put here replaces the object kept
    assert value(cache.get(2)) == 1002.0
    run(put_and_close, str(store), str(node_dir), 1, 1)  # another process replaces key 1
    got = cache.get(1)
    assert got is not put and value(got) == 1001.0  # its value, decoded: never the old object
    cache.reset("test")
    cache.put(1, put)
    assert cache.get(1) is put
    cache.close()


# -- degraded memory file systems ------------------------------------------------------------------


def test_a_too_small_or_missing_memory_file_system_falls_back_to_disk_with_one_warning(
    tmp_path: Path,
    mount: Callable[[str], Path],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for where in (mount("4m"), tmp_path / "missing"):
        monkeypatch.setenv(nodelink.ENV_DIR, str(where))
        store = tmp_path / f"store-{where.name}"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cache = SpillCache(store, ram_budget="64MiB")
            for key in range(8):
                cache.put(key, sample(key))
            loader = DataLoader(Keys(cache, 8), batch_size=4, num_workers=2)
            assert [float(v) for b in loader for v in b] == [float(k) for k in range(8)]
            stats = cache.stats()
        assert [type(w.message) for w in caught] == [NodeTierWarning]
        # As before the node tier: forked workers read the main process's local tier.
        assert (stats.ram_hits, stats.node_hits, stats.node_budget) == (8, 0, 0)
        cache.close()


# -- crashes -------------------------------------------------------------------------------------


def admit_until_killed(store: str, where: str, started: Any) -> None:
    os.environ.update({nodelink.ENV_DIR: where, "LOCAL_WORLD_SIZE": "2"})
    cache = SpillCache(store, ram_budget="2MiB")
    started.set()
    key = 0
    while True:  # what a worker does on misses: load, put (admitted), next
        cache.get_or_load(key % 2000, sample)
        key += 1


def test_kill_9_while_admitting_leaves_a_consistent_tier_within_budget(
    tmp_path: Path, node_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    store = tmp_path / "store"
    cache = SpillCache(store, ram_budget="2MiB")  # 2000 samples of 4 KiB: 4x the budget
    tier = NodeTier.open(store, 2 * MIB, where=node_dir)
    assert tier is not None
    for round_ in range(3):
        started = SPAWN.Event()
        child = SPAWN.Process(target=admit_until_killed, args=(str(store), str(node_dir), started))
        child.start()
        assert started.wait(120)
        for key in range(round_ * 300, round_ * 300 + 300):  # both processes admit
            got = cache.get_or_load(key, sample)
            assert value(got) == float(key)
        os.kill(child.pid, signal.SIGKILL)
        child.join(60)
        assert tier.problems() == []
        stats = tier.stats()
        assert 0 < stats.nbytes <= stats.budget == 2 * MIB
    assert [value(cache.get(k)) for k in range(0, 900, 37)] == [float(k) for k in range(0, 900, 37)]
    tier.close()
    cache.close()
    assert not [p for p in node_dir.iterdir() if p.name.startswith(PREFIX)]  # last user gone


def open_admit_hang(store: str, where: str, started: Any) -> None:
    os.environ.update({nodelink.ENV_DIR: where, "LOCAL_WORLD_SIZE": "2"})
    cache = SpillCache(store, ram_budget="2MiB")
    cache.put(1, sample(1))
    started.set()
    time.sleep(600)


def test_a_killed_run_leaves_no_tier_behind_after_the_next_open(
    tmp_path: Path, node_dir: Path
) -> None:
    started = SPAWN.Event()
    child = SPAWN.Process(
        target=open_admit_hang, args=(str(tmp_path / "a"), str(node_dir), started)
    )
    child.start()
    assert started.wait(120)
    os.kill(child.pid, signal.SIGKILL)
    child.join(60)
    assert len([p for p in node_dir.iterdir() if p.name.startswith(PREFIX)]) == 1
    with SpillCache(tmp_path / "b", ram_budget="2MiB") as cache:
        cache.put(0, sample(0))  # the first use opens its tier, sweeping leftovers first
        left = [p for p in node_dir.iterdir() if p.name.startswith(PREFIX)]
        assert len(left) == 1 and cache.stats().node_budget == 2 * MIB
    assert not [p for p in node_dir.iterdir() if p.name.startswith(PREFIX)]


# -- DDP ranks -----------------------------------------------------------------------------------


def rank_body(rank: int, store: str, where: str, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    os.environ[nodelink.ENV_DIR] = where
    os.environ.pop("LOCAL_WORLD_SIZE", None)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        cache = SpillCache(store, ram_budget="16MiB")
        if rank == 0:
            for key in range(16):
                cache.put(key, sample(key))
        dist.barrier()  # rank 0's puts returned
        got = [value(cache.get(k)) for k in range(16)]
        stats = cache.stats()
        result = {"got": got, "node_hits": stats.node_hits, "ram_items": stats.ram_items}
        Path(out, f"{rank}.json").write_text(json.dumps(result))
        dist.barrier()
        cache.close()
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_share_one_node_tier(tmp_path: Path, node_dir: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    port = free_port()
    args = (str(tmp_path / "store"), str(node_dir), port, str(out))
    tmp.spawn(rank_body, args=args, nprocs=2, join=True)
    results = [json.loads((out / f"{r}.json").read_text()) for r in range(2)]
    for result in results:
        assert result["got"] == [float(k) for k in range(16)]
        assert result["node_hits"] == 16  # rank 1 never read rank 0's samples from disk
        assert result["ram_items"] == 0  # one copy on the node, not one per rank


class Counted(Dataset[dict[str, torch.Tensor]]):
    """The source: records every index it loads."""

    def __init__(self) -> None:
        self.loads: list[int] = []

    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        self.loads.append(i)
        return sample(i)


def node_rank(rank: int, nodes: list[tuple[str, str]], port: int, out: str) -> None:
    """One of 2 ranks on each of 2 simulated nodes: its node's store and memory file system."""
    store, where = nodes[rank // 2]
    os.environ.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "LOCAL_WORLD_SIZE": "2",  # as torchrun --nnodes=2 --nproc-per-node=2 sets it
            "LOCAL_RANK": str(rank % 2),
            nodelink.ENV_DIR: where,
        }
    )
    dist.init_process_group("gloo", rank=rank, world_size=4)
    try:
        source = Counted()
        dataset = CachedDataset(source, store, ram_budget="1MiB")
        probes = len(source.loads)  # each process digests 2 samples to check the store's data
        sampler: DistributedSampler[int] = DistributedSampler(dataset, seed=5)
        seen = []
        for epoch in range(3):
            sampler.set_epoch(epoch)
            for i in sampler:
                assert value(dataset[i]) == float(i)
                seen.append(i)
            dataset.cache.flush()  # the recipe's epoch end: commit, then wait for every rank
            dist.barrier()
        stats = dataset.cache.stats()
        tiers = [p.name for p in Path(where).iterdir() if p.name.startswith(PREFIX)]
        result = {
            "loads": source.loads[probes:],
            "probed": source.loads[:probes],
            "seen": seen,
            "node_hits": stats.node_hits,
            "tiers": tiers,
        }
        Path(out, f"{rank}.json").write_text(json.dumps(result))
        dist.barrier()
        dataset.close()
    finally:
        dist.destroy_process_group()


def test_two_nodes_of_two_ranks_keep_a_store_and_tier_each(
    tmp_path: Path,
    mount: Callable[[str], Path],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """docs/multiprocess.rst's multi-node recipe, simulated: one gloo group of 4 over
    localhost, two "nodes" of two ranks, each node with its own store and /dev/shm."""
    for name in ("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE"):
        monkeypatch.delenv(name, raising=False)
    nodes = [(str(tmp_path / f"node{n}" / "cache"), str(mount("64m"))) for n in range(2)]
    out = tmp_path / "out"
    out.mkdir()
    port = free_port()
    tmp.spawn(node_rank, args=(nodes, port, str(out)), nprocs=4, join=True)
    results = [json.loads((out / f"{r}.json").read_text()) for r in range(4)]
    for node, (store, where) in enumerate(nodes):
        ranks = results[2 * node : 2 * node + 2]
        loads = Counter(i for r in ranks for i in r["loads"])
        seen = {i for r in ranks for i in r["seen"]}
        assert loads and max(loads.values()) == 1  # within a node: loaded at most once
        assert set(loads) <= seen  # ... and only what its ranks asked for (probes aside)
        assert sum(r["node_hits"] for r in ranks) > 0  # the node's ranks shared its tier
        assert ranks[0]["tiers"] == ranks[1]["tiers"] and len(ranks[0]["tiers"]) == 1
        with SpillCache(store, ram_budget=0) as cache:
            probed = {i for r in ranks for i in r["probed"]}
            assert len(cache) == len(seen | probed)  # the store holds this node's samples only
        assert len([p for p in Path(where).iterdir() if p.name.startswith(PREFIX)]) == 0
    other = {i for r in results[2:] for i in r["seen"]}
    assert {i for r in results[:2] for i in r["seen"]} != other  # the nodes read different data


def test_clear_cache_empties_the_node_tier_of_a_store_in_use(
    tmp_path: Path, node_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, cache = rank_with_four(tmp_path, monkeypatch)
    cache.flush()
    assert value(cache.get(0)) == 0.0 and cache.stats().node_hits == 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clear_cache(store, force=True)
        assert cache.get(1) is None  # neither the node tier nor the store serves it now
    assert cache.stats().node_items == 0
    cache.close()
    assert not [p for p in node_dir.iterdir() if p.name.startswith(PREFIX)]
