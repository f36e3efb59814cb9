"""One figure of ``benchmarks.compare``, measured against the spillcache on PYTHONPATH.

Run by ``benchmarks.compare`` as a script (``python benchmarks/compare_child.py KIND ELEMENTS
N``) beside a twin running the other tree; it uses only the public API (``SpillCache``,
``CachedDataset`` and their constructor arguments as the README shows them), so that the same
file measures any two versions. For every line read from stdin it times one pass and prints
its value, in the figure's unit (µs per read, puts/s, or cached / uncached epoch time): the
parent asks the two twins in turn, so that both see the same machine load. The first pass also
sets the figure up (fills the store, warms the caches); the parent drops it.
"""

from __future__ import annotations

import itertools
import json
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Generator
from functools import partial
from pathlib import Path
from typing import Any

import torch

from spillcache import CachedDataset, SpillCache

SOURCE_SECONDS = 0.002  # the first-epoch source's latency per sample
BATCH = 32  # samples per __getitems__ call


def sample(i: int, elements: int) -> dict[str, Any]:
    """The sample of every figure: one float32 tensor and a small dict of numbers."""
    return {"image": torch.full((elements,), float(i)), "meta": {"id": i, "z": 0.5}}


class Source:
    """A map-style data set of ``sample(i)``, each costing ``latency`` seconds (a sleep)."""

    def __init__(self, n: int, elements: int, latency: float = 0.0) -> None:
        self.n, self.elements, self.latency = n, elements, latency

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self.latency:
            time.sleep(self.latency)
        return sample(i, self.elements)


def timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def ram_budget(n: int, elements: int) -> int:
    """A RAM budget that holds all ``n`` samples with room to spare."""
    return 4 * n * (elements * 4 + 4096)


def filled(path: Path, n: int, elements: int, budget: int) -> SpillCache:
    cache = SpillCache(path, ram_budget=budget)
    for i in range(n):
        cache.put(i, sample(i, elements))
    cache.flush()
    return cache


def reads(cache: SpillCache, n: int) -> None:
    for i in range(n):
        cache.get(i)


Passes = Generator[float, None, None]  # set up on the first next(), then one timed pass per next()


def hit(tmp: Path, elements: int, n: int, *, ram: bool) -> Passes:
    """µs per ``get`` of a RAM hit (``ram``) or of a disk hit (``ram_budget=0``)."""
    with filled(tmp / "s", n, elements, ram_budget(n, elements) if ram else 0) as cache:
        reads(cache, n)  # warm: page cache, RAM admission, code paths
        while True:
            yield timed(partial(reads, cache, n)) / n * 1e6


def admit(tmp: Path, elements: int, n: int) -> Passes:
    """µs per ``get`` of an entry only on disk, by a cache with RAM room: the hit admits it."""
    filled(tmp / "s", n, elements, 0).close()
    while True:
        with SpillCache(tmp / "s", ram_budget=ram_budget(n, elements)) as cache:
            seconds = timed(partial(reads, cache, n))
        yield seconds / n * 1e6


def fill(tmp: Path, elements: int, n: int) -> Passes:
    """Puts/s into a fresh store (``ram_budget=0``) until flushed."""
    samples = [sample(i, elements) for i in range(n)]
    for p in itertools.count():
        with SpillCache(tmp / f"s{p}", ram_budget=0) as cache:
            start = time.perf_counter()
            for i, s in enumerate(samples):
                cache.put(i, s)
            cache.flush()
            rate = n / (time.perf_counter() - start)
        shutil.rmtree(tmp / f"s{p}")
        yield rate


def dataset(tmp: Path, elements: int, n: int, *, batched: bool) -> Passes:
    """µs per sample of warm ``ds[i]`` or ``ds.__getitems__`` (batches of BATCH) RAM hits."""
    budget = ram_budget(n, elements)
    with CachedDataset(
        Source(n, elements), tmp / "ds", ram_budget=budget, fingerprint="bench", probes=0
    ) as ds:
        batches = [list(range(i, min(n, i + BATCH))) for i in range(0, n, BATCH)]

        def epoch() -> None:
            if batched:
                for b in batches:
                    ds.__getitems__(b)
            else:
                for i in range(n):
                    ds[i]

        epoch()  # loads and caches every sample
        while True:
            yield timed(epoch) / n * 1e6


def first_epoch(tmp: Path, elements: int, n: int, *, copy: bool) -> Passes:
    """Cached / uncached seconds of a first epoch over a SOURCE_SECONDS source, per pass.

    ``CachedDataset`` with a RAM budget of a third of the data (so puts also spill), a fresh
    store each pass, the flush and close after the epoch not timed; the two epochs of a pass
    alternate which goes first.
    """
    source = Source(n, elements, SOURCE_SECONDS)
    budget = ram_budget(n, elements) // 12

    def plain() -> None:
        for i in range(n):
            source[i]

    for p in itertools.count():
        path = tmp / f"ds{p}"
        ds = CachedDataset(
            source, path, ram_budget=budget, fingerprint="bench", probes=0, copy=copy
        )

        def cached(ds: CachedDataset = ds) -> None:
            for i in range(n):
                ds[i]

        if p % 2:
            t_plain, t_cached = timed(plain), timed(cached)
        else:
            t_cached, t_plain = timed(cached), timed(plain)
        ds.close()
        shutil.rmtree(path)
        yield t_cached / t_plain


KINDS: dict[str, Callable[[Path, int, int], Passes]] = {
    "ram": partial(hit, ram=True),
    "disk": partial(hit, ram=False),
    "admit": admit,
    "fill": fill,
    "item": partial(dataset, batched=False),
    "batch": partial(dataset, batched=True),
    "epoch_copy": partial(first_epoch, copy=True),
    "epoch_nocopy": partial(first_epoch, copy=False),
}


def main(argv: list[str]) -> None:
    """Answer each line read from stdin with one pass's value; the first also sets up."""
    kind, elements, n = argv[0], int(argv[1]), int(argv[2])
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        passes = KINDS[kind](Path(tmp), elements, n)
        for _ in sys.stdin:
            print(json.dumps(next(passes)), flush=True)
        passes.close()


if __name__ == "__main__":
    main(sys.argv[1:])
