"""Two DDP ranks (gloo over localhost) on one store: the node tier's warm hit rate and memory.

Used by ``benchmarks.nodewire`` for its ``ddp`` setting (``one_ddp``): the same figures as
its other rate settings, summed over the ranks. Each rank opens the store itself (as under
``torchrun``: ``LOCAL_WORLD_SIZE=2``), reads its ``DistributedSampler`` shard of a sequential
first pass and then of ``epochs`` warm epochs (``set_epoch`` each), with a barrier between
epochs as training's all-reduce would give.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path
from typing import Any

import torch.distributed as dist
import torch.multiprocessing as tmp
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from spillcache import SpillCache

from .nodewire import Items, pss_anon

__all__ = ["one_ddp"]

RANKS = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank(rank: int, setting: dict[str, Any], where: tuple[str, int], out: Any, done: Any) -> None:
    store, port = where
    os.environ.update(
        {"LOCAL_WORLD_SIZE": str(RANKS), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    )
    idle = pss_anon(os.getpid())
    dist.init_process_group("gloo", rank=rank, world_size=RANKS)
    cache = SpillCache(store, ram_budget=setting["budget"])
    data = Items(cache, setting["n"], setting["elements"])
    first: DistributedSampler[int] = DistributedSampler(data, shuffle=False)
    for _ in DataLoader(data, batch_size=8, sampler=first):
        pass
    dist.barrier()
    warm: DistributedSampler[int] = DistributedSampler(
        data, shuffle=setting["order"] == "shuffled", seed=1
    )
    hits = requests = 0
    for epoch in range(setting["epochs"]):
        warm.set_epoch(epoch)
        before = cache.stats()
        for _ in DataLoader(data, batch_size=8, sampler=warm):
            pass
        after = cache.stats()
        hits, requests = after.ram_hits - before.ram_hits, after.requests - before.requests
        dist.barrier()
    out.put((rank, hits, requests, pss_anon(os.getpid()), idle))
    done.wait(600)  # the tier's bytes are measured while both ranks hold it
    cache.close()
    dist.destroy_process_group()


def one_ddp(setting: dict[str, Any], tier_bytes: Any) -> dict[str, Any]:
    """Run ``setting`` as two ranks; hit rate of the last warm epoch and memory, summed."""
    ctx = tmp.get_context("spawn")
    out, done = ctx.Queue(), ctx.Event()
    with tempfile.TemporaryDirectory(dir=setting["root"]) as root:
        store = str(Path(root) / "s")
        port = _free_port()
        ranks = [
            ctx.Process(target=_rank, args=(r, setting, (store, port), out, done))
            for r in range(RANKS)
        ]
        for p in ranks:
            p.start()
        got = [out.get(timeout=1200) for _ in ranks]
        shm = tier_bytes()  # the ranks still hold the tier
        done.set()
        for p in ranks:
            p.join(120)
    hits = sum(g[1] for g in got)
    requests = sum(g[2] for g in got)
    return {
        **setting,
        "samples_s": 0.0,
        "ram_rate": hits / max(requests, 1),
        "memory": sum(g[3] for g in got) + shm,
        "idle": sum(g[4] for g in got),
        "processes": RANKS,
    }
