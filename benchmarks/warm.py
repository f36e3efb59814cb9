"""Warm epochs: samples/s per contender, per-hit latency, put throughput, bytes on disk.

Every contender is filled once, warmed by a partial epoch, then timed in rounds: each round runs
one shuffled epoch of every contender, in an order rotated from round to round, so that the
machine's load swings hit all of them alike. A ratio between two contenders is the median of
the per-round ratios (interleaved pairs); a rate is the median over the rounds. Contenders that
cost milliseconds per sample are timed on a prefix of each epoch's order (``epoch_seconds``).
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spillcache import SpillCache
from spillcache.footprint import ENTRY_OVERHEAD, sample_nbytes

from .contenders import Contender, Unavailable, require, timed_fill
from .workloads import Sample, Workload, monai_identity_random, monai_transform

WARMUP = 200
LATENCY_SAMPLES = 2000


@dataclass
class Measured:
    """What one contender did on one workload."""

    name: str
    kind: str
    rates: list[float] = field(default_factory=list)  # samples/s, one per round
    epoch_samples: int = 0
    fill_seconds: float = 0.0
    disk_bytes: int | None = None
    p50_us: float = 0.0
    p99_us: float = 0.0

    @property
    def rate(self) -> float:
        return statistics.median(self.rates)


@dataclass
class WarmResult:
    workload: Workload
    measured: list[Measured]
    skipped: list[str]

    def by_name(self, name: str) -> Measured:
        return next(m for m in self.measured if m.name == name)

    def ratio(self, name: str, other: str) -> float:
        """Median over rounds of rate(name) / rate(other)."""
        a, b = self.by_name(name), self.by_name(other)
        return statistics.median(x / y for x, y in zip(a.rates, b.rates, strict=True))


def _epoch(get: Callable[[int], Any], order: Sequence[int]) -> float:
    start = time.perf_counter()
    for i in order:
        get(i)
    return time.perf_counter() - start


def _latencies(get: Callable[[int], Any], order: Sequence[int]) -> tuple[float, float]:
    times = np.empty(len(order))
    clock = time.perf_counter_ns
    for j, i in enumerate(order):
        start = clock()
        get(i)
        times[j] = clock() - start
    p50, p99 = np.percentile(times, [50, 99]) / 1e3
    return float(p50), float(p99)


def run_warm(
    workload: Workload,
    samples: list[Sample],
    factories: Sequence[Callable[[], Contender]],
    root: Path,
    *,
    rounds: int,
    epoch_seconds: float,
    log: Callable[[str], None],
) -> WarmResult:
    n = len(samples)
    contenders: list[Contender] = []
    measured: list[Measured] = []
    skipped: list[str] = []
    try:
        for factory in factories:
            try:
                contender = factory()
            except Unavailable as exc:
                skipped.append(str(exc))
                continue
            m = Measured(contender.name, contender.kind)
            m.fill_seconds = timed_fill(contender, samples, root / workload.name)
            m.disk_bytes = contender.disk_bytes()
            warm = np.random.default_rng(10_000).permutation(n)[: min(n, WARMUP)].tolist()
            per_sample = _epoch(contender.get, warm) / len(warm)
            m.epoch_samples = min(n, max(len(warm), int(epoch_seconds / per_sample)))
            log(
                f"  {workload.label}: filled {contender.name} in {m.fill_seconds:.2f} s; "
                f"epochs of {m.epoch_samples} samples"
            )
            contenders.append(contender)
            measured.append(m)
        for r in range(rounds):
            order = np.random.default_rng(r).permutation(n).tolist()
            shift = r % len(contenders)
            for contender, m in (
                list(zip(contenders, measured, strict=True))[shift:]
                + list(zip(contenders, measured, strict=True))[:shift]
            ):
                gc.collect()
                m.rates.append(m.epoch_samples / _epoch(contender.get, order[: m.epoch_samples]))
        order = np.random.default_rng(rounds).permutation(n).tolist()
        for contender, m in zip(contenders, measured, strict=True):
            m.p50_us, m.p99_us = _latencies(
                contender.get, order[: min(m.epoch_samples, LATENCY_SAMPLES)]
            )
    finally:
        for contender in contenders:
            contender.close()
    return WarmResult(workload, measured, skipped)


@dataclass
class SweepPoint:
    fraction: float
    spillcache: float  # samples/s
    ram_hit_rate: float
    monai: float | None  # samples/s of MONAI CacheDataset(cache_rate=fraction), deep copies


def accounted_bytes(samples: Sequence[Sample]) -> int:
    """Bytes the RAM tier accounts for the whole data set."""
    return sum(sample_nbytes(s) + ENTRY_OVERHEAD for s in samples)


def run_sweep(
    workload: Workload,
    samples: list[Sample],
    root: Path,
    *,
    fractions: Sequence[float],
    rounds: int,
    log: Callable[[str], None],
) -> list[SweepPoint]:
    """Warm shuffled epochs vs RAM budget (a fraction of the data): spillcache vs MONAI.

    spillcache serves what its RAM tier lacks from its store; MONAI's ``CacheDataset`` has no
    store and recomputes what it did not cache (here: regenerates the sample).
    """
    n = len(samples)
    data = accounted_bytes(samples)
    path = root / f"sweep-{workload.name}"
    with SpillCache(path, ram_budget=0) as cache:
        for i, s in enumerate(samples):
            cache.put(i, s)
    try:
        require("monai.data")
        from monai.data import CacheDataset
    except Unavailable as exc:
        CacheDataset = None  # noqa: N806
        log(f"  the RAM-budget sweep shows spillcache alone: {exc}")
    points = []
    for fraction in fractions:
        rates, hit_rates, monai_rates = [], [], []
        with SpillCache(path, ram_budget=int(fraction * data)) as cache:
            _epoch(cache.get, np.random.default_rng(99).permutation(n).tolist())
            for r in range(rounds):
                order = np.random.default_rng(r).permutation(n).tolist()
                before = cache.stats().ram_hits
                rates.append(n / _epoch(cache.get, order))
                hit_rates.append((cache.stats().ram_hits - before) / n)
        if CacheDataset is not None:
            ds = CacheDataset(
                [{"i": i} for i in range(n)],
                [monai_transform(workload.make), monai_identity_random()],
                cache_rate=fraction,
                progress=False,
                num_workers=0,
            )
            for r in range(rounds):
                order = np.random.default_rng(r).permutation(n).tolist()
                monai_rates.append(n / _epoch(ds.__getitem__, order))
            del ds
        point = SweepPoint(
            fraction,
            statistics.median(rates),
            statistics.median(hit_rates),
            statistics.median(monai_rates) if monai_rates else None,
        )
        log(f"  sweep {workload.label} budget {fraction:.0%}: {point}")
        points.append(point)
    return points
