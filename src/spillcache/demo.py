"""The ``spillcache demo``: a slow synthetic data set three times the RAM budget, three epochs."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from .dataset import CachedDataset
from .sizing import ENTRY_OVERHEAD, sample_nbytes
from .stats import CacheStats

__all__ = ["EpochReport", "SlowDataset", "run_demo"]


class SlowDataset(torch.utils.data.Dataset[dict[str, Any]]):
    """Deterministic Hyrax-like samples that take ``latency`` seconds each to "load".

    Parameters
    ----------
    size : int
        Number of samples.
    sample_bytes : int
        Approximate bytes of each sample's image.
    latency : float
        Seconds each ``__getitem__`` sleeps, standing in for a network file system or decoding.
    """

    def __init__(self, size: int, sample_bytes: int, latency: float) -> None:
        self.size = size
        self.side = max(1, int((sample_bytes / 4 / 2) ** 0.5))
        self.latency = latency

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, Any]:
        time.sleep(self.latency)
        rng = np.random.default_rng(index)
        image = rng.standard_normal((2, self.side, self.side), dtype=np.float32)
        return {
            "cutout": {"image": torch.from_numpy(image), "mask": torch.from_numpy(image > 2.5)},
            "object_id": f"obj-{index:08d}",
            "label": index % 10,
        }

    def cache_fingerprint(self) -> str:
        """Samples depend on the image side only (besides the length)."""
        return f"side={self.side}"


@dataclasses.dataclass(frozen=True)
class EpochReport:
    """What one demo epoch did."""

    epoch: int
    seconds: float
    samples: int
    ram_hit_rate: float
    disk_hit_rate: float
    miss_rate: float


def _delta(after: CacheStats, before: CacheStats) -> tuple[float, float, float]:
    ram = after.ram_hits - before.ram_hits
    disk = after.disk_hits - before.disk_hits
    miss = after.misses - before.misses
    total = max(1, ram + disk + miss)
    return ram / total, disk / total, miss / total


def run_demo(
    *,
    samples: int = 1200,
    sample_kib: int = 128,
    latency: float = 0.01,
    epochs: int = 3,
    path: str | os.PathLike[str] | None = None,
    echo: Callable[[str], None] = print,
) -> list[EpochReport]:
    """Train-loop a slow data set through a CachedDataset and report each epoch.

    The RAM budget is a third of the data, so every epoch after the first is served partly
    from RAM and the rest from the LMDB store; the source is never called again.

    Parameters
    ----------
    samples, sample_kib, latency, epochs
        Size of the data set, of each sample's image (KiB), the source's seconds per sample and
        the number of epochs.
    path : str, os.PathLike or None
        Store directory; ``None`` uses a temporary store. With a path, a second run starts warm.
    echo : callable
        Receives each line of the report.
    """
    source = SlowDataset(samples, sample_kib * 1024, latency)
    # The RAM tier's own accounting of the whole data set (all samples are alike in size).
    data_bytes = samples * (sample_nbytes(SlowDataset(1, sample_kib * 1024, 0)[0]) + ENTRY_OVERHEAD)
    budget = data_bytes // 3
    echo(
        f"spillcache demo: {samples} samples of {sample_kib} KiB ({data_bytes / 2**20:.0f} MiB), "
        f"RAM budget {budget / 2**20:.0f} MiB, source latency {latency * 1e3:.0f} ms/sample"
    )
    echo(
        f"{'epoch':>5} {'seconds':>8} {'samples/s':>10} {'RAM hits':>9} {'disk hits':>9} "
        f"{'misses':>7}"
    )
    reports = []
    with CachedDataset(source, path, ram_budget=budget) as dataset:
        loader = DataLoader(
            dataset, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0)
        )
        for epoch in range(1, epochs + 1):
            before = dataset.cache.stats()
            start = time.perf_counter()
            seen = sum(len(batch["label"]) for batch in loader)
            seconds = time.perf_counter() - start
            ram, disk, miss = _delta(dataset.cache.stats(), before)
            reports.append(EpochReport(epoch, seconds, seen, ram, disk, miss))
            echo(
                f"{epoch:>5} {seconds:>8.2f} {seen / seconds:>10.0f} {ram:>9.1%} {disk:>9.1%} "
                f"{miss:>7.1%}"
            )
    return reports
