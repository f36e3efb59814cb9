"""Two torch.distributed ranks (gloo, CPU) on one node share one store."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as tmp
from torch.utils.data import DistributedSampler

from helpers import assert_sample_equal, free_port
from spillcache import CachedDataset, SpillCache, StoreError
from spillcache.disk import filesystem as filesystem_module

N = 48
WORLD = 2


class Slow(torch.utils.data.Dataset[dict[str, Any]]):
    """Deterministic samples; records every index it loads."""

    def __init__(self) -> None:
        self.loads: list[int] = []

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> dict[str, Any]:
        self.loads.append(i)
        generator = torch.Generator().manual_seed(i)
        return {"image": torch.randn(3, 16, 16, generator=generator), "id": f"{i}", "label": i}


def _rank(rank: int, path: str, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        source = Slow()
        dataset = CachedDataset(source, path, ram_budget="64KiB")
        sampler = DistributedSampler(dataset, num_replicas=WORLD, rank=rank, seed=3)
        reference = Slow()
        epochs = []
        for epoch in range(2):
            sampler.set_epoch(epoch)
            start = len(source.loads)
            order = list(sampler)
            for i in order:
                assert_sample_equal(dataset[i], reference[i])
            # What an epoch end looks like in DDP: commit, then wait for the other ranks.
            dataset.cache.flush()
            dist.barrier()
            epochs.append({"order": order, "loads": source.loads[start:]})
        dataset.close()
        Path(out, f"{rank}.json").write_text(json.dumps({"all": source.loads, "epochs": epochs}))
    finally:
        dist.destroy_process_group()


def test_two_ranks_share_one_store(tmp_path: Path) -> None:
    store, out = tmp_path / "store", tmp_path / "out"
    out.mkdir()
    tmp.spawn(_rank, args=(str(store), free_port(), str(out)), nprocs=WORLD, join=True)
    results = [json.loads((out / f"{r}.json").read_text()) for r in range(WORLD)]
    # Each rank walked its own shard of the shuffled order, and the shards cover the data set.
    for epoch in range(2):
        covered = sorted(i for r in results for i in r["epochs"][epoch]["order"])
        assert covered == list(range(N))
    # Across ranks and the start-up probes, an index was loaded at most once per rank.
    loads = Counter(i for r in results for i in r["all"])
    assert set(loads) == set(range(N))
    assert max(loads.values()) <= WORLD
    # The first epoch loaded only what no rank had stored yet; the second loaded nothing.
    assert sum(len(r["epochs"][0]["loads"]) for r in results) <= N
    assert [r["epochs"][1]["loads"] for r in results] == [[], []]
    with SpillCache(store) as cache:
        assert len(cache) == N


def test_store_on_a_network_file_system_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "shared").mkdir()  # the mount points
    (tmp_path / "my disk").mkdir()
    mountinfo = tmp_path / "mountinfo"
    escaped = str(tmp_path / "my disk").replace(" ", "\\040")  # as the kernel writes blanks
    mountinfo.write_text(
        "22 1 0:21 / / rw - ext4 /dev/vda rw\n"
        f"30 22 0:40 / {tmp_path / 'shared'} rw - nfs4 server:/export rw\n"
        f"31 22 0:41 / {escaped} rw - lustre mds@tcp:/fs rw\n"
    )
    real = filesystem_module.filesystem_type
    monkeypatch.setattr(
        filesystem_module, "filesystem_type", lambda path: real(path, mountinfo=str(mountinfo))
    )
    assert filesystem_module.filesystem_type(tmp_path / "shared" / "cache") == "nfs4"
    assert filesystem_module.filesystem_type(tmp_path / "my disk" / "x" / "y") == "lustre"
    assert filesystem_module.filesystem_type(tmp_path / "local") == "ext4"
    with pytest.raises(StoreError, match=r"nfs4.*SLURM_TMPDIR.*allow_remote_fs"):
        SpillCache(tmp_path / "shared" / "cache")
    assert not (tmp_path / "shared" / "cache").exists()
    with SpillCache(tmp_path / "shared" / "cache", allow_remote_fs=True) as cache:
        cache.put(0, {"x": 1})
        assert cache.get(0) == {"x": 1}
