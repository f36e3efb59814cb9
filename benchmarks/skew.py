"""RAM-tier hit rates when the data set is 3x the budget: skewed, shuffled and sequential.

Skewed: after one sequential pass (what a 0..N-1 preload or an inference pass does), warm epochs
draw from a ``WeightedRandomSampler`` in which 20 % of the indices, scattered, carry 80 % of
the weight. "Admit until full" (keep whatever came first, as a plain bounded dict would) is
computed on the same draws for comparison. Shuffled and sequential: every index once per
epoch. Hit rates are reported as multiples of budget/data, the rate of an ideal uniform cache.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import WeightedRandomSampler

from spillcache import SpillCache
from spillcache.footprint import ENTRY_OVERHEAD, sample_nbytes

from .workloads import Sample, Workload

HOT_SHARE = 0.2
HOT_WEIGHT = 0.8


@dataclass
class SkewResult:
    n: int
    budget_share: float  # budget / data
    skewed: list[float]  # RAM hit rate / (budget/data), per warm epoch
    admit_until_full: float
    shuffled: list[float]
    sequential: list[float]

    @property
    def skewed_warm(self) -> float:
        """Median of the last three skewed epochs (the first ones are still learning)."""
        return statistics.median(self.skewed[-3:])


def _ratio_per_epoch(
    samples: list[Sample], budget: int, share: float, epochs: Iterable[Iterable[int]]
) -> list[float]:
    """A sequential first pass (get, put on miss), then the RAM hit rate / share per epoch."""
    ratios = []
    with SpillCache(None, ram_budget=budget) as cache:
        for i, sample in enumerate(samples):
            if cache.get(i) is None:
                cache.put(i, sample)
        for order in epochs:
            idx = list(order)
            before = cache.stats().ram_hits
            for i in idx:
                if cache.get(i) is None:
                    raise AssertionError(f"sample {i} missing from the store")
            ratios.append((cache.stats().ram_hits - before) / len(idx) / share)
    return ratios


def run_skew(workload: Workload, epochs: int, log: Callable[[str], None]) -> SkewResult:
    n = workload.n
    samples = [workload.make(i) for i in range(n)]
    sizes = [sample_nbytes(s) + ENTRY_OVERHEAD for s in samples]
    data = sum(sizes)
    budget = data // 3
    share = budget / data
    rng = np.random.default_rng(7)
    hot = rng.choice(n, size=int(HOT_SHARE * n), replace=False)
    weights = np.full(n, (1 - HOT_WEIGHT) / (n - len(hot)))
    weights[hot] = HOT_WEIGHT / len(hot)
    draws = [
        list(
            WeightedRandomSampler(
                weights.tolist(), n, replacement=True, generator=torch.Generator().manual_seed(e)
            )
        )
        for e in range(epochs)
    ]
    skewed = _ratio_per_epoch(samples, budget, share, draws)
    # Admit until full: the first samples of the sequential pass that fit, nothing after.
    resident = np.zeros(n, dtype=bool)
    resident[: int(np.searchsorted(np.cumsum(sizes), budget, side="right"))] = True
    until_full = float(statistics.median(resident[d].mean() / share for d in draws))
    shuffled = _ratio_per_epoch(
        samples,
        budget,
        share,
        (np.random.default_rng(100 + e).permutation(n).tolist() for e in range(epochs)),
    )
    sequential = _ratio_per_epoch(samples, budget, share, (range(n) for _ in range(epochs)))
    result = SkewResult(n, share, skewed, until_full, shuffled, sequential)
    log(f"  skew: {result}")
    return result
