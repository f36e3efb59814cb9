"""The ``spillcache demo``: warm epochs, a preload and a second run, over a slow data set."""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from .dataset import CachedDataset
from .footprint import ENTRY_OVERHEAD, sample_nbytes
from .stats import CacheStats

__all__ = ["run_demo"]


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
    """What one demo epoch did.

    ``run`` is 1 for the first run, 2 for the second run reusing its store, and 3 for the run
    on a fresh store with a preload; ``what`` says in a few words what the epoch shows.
    """

    epoch: int
    seconds: float
    samples: int
    ram_hit_rate: float
    disk_hit_rate: float
    miss_rate: float
    run: int = 1
    what: str = ""


def _delta(after: CacheStats, before: CacheStats) -> tuple[float, float, float]:
    ram = after.ram_hits - before.ram_hits
    disk = after.disk_hits - before.disk_hits
    miss = after.misses - before.misses
    total = max(1, ram + disk + miss)
    return ram / total, disk / total, miss / total


_HEADER = (
    f"{'run':>3} {'epoch':>5}  {'':<22} {'seconds':>7} {'samples/s':>9} {'RAM hits':>8} "
    f"{'disk hits':>9} {'misses':>7}"
)


def run_demo(  # noqa: PLR0913 - keyword-only knobs mirroring `spillcache demo`'s options
    *,
    samples: int = 1200,
    sample_kib: int = 128,
    latency: float = 0.01,
    epochs: int = 3,
    path: str | os.PathLike[str] | None = None,
    echo: Callable[[str], None] = print,
) -> list[EpochReport]:
    """Show the three wins of a cache on a slow data set: warm epochs, preload, persistence.

    Run 1 trains ``epochs`` epochs through a :class:`CachedDataset` whose RAM budget is a third
    of the data: the first epoch loads every sample from the slow source, the next ones are
    served from RAM and the LMDB store. Run 2 opens the same store again, as the next training
    job would, and its first epoch is warm. Run 3 starts on a fresh store with
    :meth:`CachedDataset.start_preload`, which loads samples ahead of training, many at once.

    Parameters
    ----------
    samples, sample_kib, latency, epochs
        Size of the data set, of each sample's image (KiB), the source's seconds per sample and
        the number of epochs of run 1.
    path : str, os.PathLike or None
        Store directory of runs 1 and 2; ``None`` uses a temporary one. With a path, a later
        demo starts warm in run 1 too. The preload run always uses a temporary store.
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
    echo(_HEADER)
    reports: list[EpochReport] = []

    def record(report: EpochReport) -> None:
        reports.append(report)
        echo(_line(report))

    with tempfile.TemporaryDirectory(prefix="spillcache-demo-") as scratch:
        store = Path(scratch, "store") if path is None else Path(path).expanduser()
        with CachedDataset(source, store, ram_budget=budget) as dataset:
            for epoch in range(1, epochs + 1):
                record(_epoch(dataset, 1, epoch, None if epoch == 1 else "warm: RAM + store"))
        # A new CachedDataset on the same directory: what the next training job does.
        with CachedDataset(source, store, ram_budget=budget) as dataset:
            record(_epoch(dataset, 2, 1, "reused store from disk"))
        with CachedDataset(source, Path(scratch, "preload"), ram_budget=budget) as dataset:
            record(_epoch(dataset, 3, 1, "fresh store + preload", preload=True))
    _summary(reports, echo)
    return reports


def _line(r: EpochReport) -> str:
    """One row of the table under :data:`_HEADER`."""
    return (
        f"{r.run:>3} {r.epoch:>5}  {r.what:<22} {r.seconds:>7.2f} {r.samples / r.seconds:>9.0f} "
        f"{r.ram_hit_rate:>8.1%} {r.disk_hit_rate:>9.1%} {r.miss_rate:>7.1%}"
    )


def _epoch(
    dataset: CachedDataset, run: int, epoch: int, what: str | None, *, preload: bool = False
) -> EpochReport:
    """Train one epoch through a shuffling DataLoader and report it (``what``: by its misses)."""
    loader = DataLoader(
        dataset, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(epoch)
    )
    before = dataset.stats()
    start = time.perf_counter()
    if preload:
        dataset.start_preload(loader)  # follows the loader's next shuffled order
    seen = sum(len(batch["label"]) for batch in loader)
    seconds = time.perf_counter() - start
    ram, disk, miss = _delta(dataset.stats(), before)
    if what is None:  # a store given with --path may be warm from an earlier demo
        what = "cold: the slow source" if miss > 0.5 else "warm: a past run's store"
    return EpochReport(epoch, seconds, seen, ram, disk, miss, run, what)


def _summary(reports: list[EpochReport], echo: Callable[[str], None]) -> None:
    """Each win as a speed-up over the cold first epoch of run 1."""
    cold = reports[0].seconds

    def times(seconds: float) -> str:
        return f"{cold / max(seconds, 1e-9):.1f}x"

    warm = [r.seconds for r in reports if r.run == 1 and r.epoch > 1]
    if warm:
        echo(f"warm epochs:  {times(min(warm))} the cold epoch (the source is not called)")
    reused, preloaded = reports[-2], reports[-1]
    echo(f"second run:   {times(reused.seconds)} (its first epoch is served by the store on disk)")
    echo(
        f"preload:      {times(preloaded.seconds)} on a fresh store (samples are loaded ahead of "
        "training, many at once; misses are the requests that waited for one)"
    )
