"""Batched sources: the first epoch over a source whose every call costs one round trip.

Run: ``python -m benchmarks.batched [--quick]``. The source stands for a database or object
store: each call, ``dataset[i]`` or ``dataset.__getitems__(indices)``, costs one 20 ms round
trip (a sleep) plus the samples' own small cost. The first epoch (every sample a miss) runs
through ``DataLoader(batch_size=32, shuffle=True)`` with 0 and 2 workers, and through the
preload (``start_preload(loader)``, then the epoch), each with the batched path (the source
has ``__getitems__``) and without it (the same source hiding it, so every miss is a call of
its own). Reported: epoch seconds and source calls; rounds alternate the two paths.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from spillcache import CachedDataset

ROUND_TRIP = 0.020
BATCH = 32


class RoundTripSource(torch.utils.data.Dataset[dict[str, Any]]):
    """Deterministic 64 KiB samples; every call costs ``ROUND_TRIP`` s; counts calls."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.calls = mp.get_context("fork").Value("l", 0)

    def __len__(self) -> int:
        return self.n

    def _call(self) -> None:
        with self.calls.get_lock():
            self.calls.value += 1
        time.sleep(ROUND_TRIP)

    @staticmethod
    def sample(i: int) -> dict[str, Any]:
        image = np.random.default_rng(i).standard_normal((16, 1024), dtype=np.float32)
        return {"image": torch.from_numpy(image), "label": i % 10}

    def __getitem__(self, i: int) -> dict[str, Any]:
        self._call()
        return self.sample(i)


class BatchedSource(RoundTripSource):
    """The same source with a batched read: one round trip per call, whatever its size."""

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        self._call()
        return [self.sample(i) for i in indices]


def first_epoch(source: RoundTripSource, workers: int, preload: bool) -> tuple[float, int]:
    """Seconds and source calls of a first epoch (the preload, if any, included)."""
    with tempfile.TemporaryDirectory() as tmp:
        ds = CachedDataset(source, Path(tmp) / "s", probes=0, fingerprint="bench")
        loader = DataLoader(
            ds,
            batch_size=BATCH,
            shuffle=True,
            num_workers=workers,
            multiprocessing_context="fork" if workers else None,
            generator=torch.Generator().manual_seed(0),
        )
        calls = source.calls.value
        start = time.perf_counter()
        if preload:
            ds.start_preload(loader)
        seen = sum(len(batch["label"]) for batch in loader)
        seconds = time.perf_counter() - start
        ds.close()
    assert seen == len(source)
    return seconds, source.calls.value - calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes (CI smoke test)")
    args = parser.parse_args()
    n, rounds = (128, 1) if args.quick else (1024, 3)
    print(f"{n} samples, {ROUND_TRIP * 1e3:.0f} ms per source call, batch size {BATCH}")
    print("| set-up | source calls, per item | batched | first epoch s, per item | batched |")
    print("|---|---|---|---|---|")
    for workers, preload in ((0, False), (2, False), (0, True)):
        seconds: dict[str, list[float]] = {"item": [], "batched": []}
        calls: dict[str, int] = {}
        for r in range(rounds):
            order = ("item", "batched") if r % 2 == 0 else ("batched", "item")
            for kind in order:
                source = RoundTripSource(n) if kind == "item" else BatchedSource(n)
                s, calls[kind] = first_epoch(source, workers, preload)
                seconds[kind].append(s)
        label = f"{workers} workers" + (", preload" if preload else "")
        print(
            f"| {label} | {calls['item']} | {calls['batched']} | "
            f"{statistics.median(seconds['item']):.2f} | "
            f"{statistics.median(seconds['batched']):.2f} |"
        )


if __name__ == "__main__":
    main()
