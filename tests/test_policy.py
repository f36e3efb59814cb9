"""The RAM tier's epoch guarantee, end to end through SpillCache with real samples.

Under a full pass over a data set three times the budget, every epoch after the first serves at
least 90 % of budget/data-bytes from RAM, for sequential and shuffled orders (plain LRU serves 0 %
of a sequential scan).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from spillcache import SpillCache
from spillcache.footprint import sample_nbytes


def make_samples(n: int, rng: np.random.Generator) -> list[dict[str, object]]:
    return [
        {
            "image": torch.zeros(int(rng.integers(256, 2048)), dtype=torch.float32),
            "id": f"obj-{i}",
            "label": i,
        }
        for i in range(n)
    ]


@pytest.mark.parametrize("order", ["sequential", "shuffled"])
def test_warm_epochs_hit_ram_at_budget_over_data(tmp_path: Path, order: str) -> None:
    rng = np.random.default_rng(0)
    samples = make_samples(600, rng)
    data_bytes = sum(sample_nbytes(s) for s in samples)
    budget = data_bytes // 3
    with SpillCache(tmp_path / "s", ram_budget=budget) as cache:
        for epoch in range(4):
            indices = range(600) if order == "sequential" else rng.permutation(600).tolist()
            before = cache.stats()
            for i in indices:
                if cache.get(i) is None:
                    cache.put(i, samples[i])
            after = cache.stats()
            assert after.ram_bytes <= budget
            if epoch:
                hits = after.ram_hits - before.ram_hits
                assert after.misses == before.misses  # every sample is on disk by now
                assert hits / 600 >= 0.9 * budget / data_bytes, (epoch, hits)
