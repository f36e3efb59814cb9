"""Core figures of the two tiers: RAM hit cost, disk-tier throughput, epoch hit rates.

Run: ``python -m benchmarks.core [--quick]``. Prints a Markdown table. Ratios against floors
measured in the same process are the figures to compare across machines; absolute times swing
on shared 2-core machines, so each figure is the median of several interleaved repeats.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import lmdb
import numpy as np
import torch

from spillcache import SpillCache
from spillcache.codec import clone
from spillcache.footprint import sample_nbytes


def small_sample(i: int) -> dict[str, object]:
    return {
        "cutout": {
            "image": torch.full((32, 32), float(i)),  # 4 KiB
            "mask": torch.ones((32, 32), dtype=torch.bool),
        },
        "object_id": f"{i:012d}",
        "label": i % 10,
        "redshift": 0.5,
    }


def big_sample(i: int) -> dict[str, object]:
    return {"cutout": {"image": torch.full((4, 256, 256), float(i))}, "object_id": str(i)}


def median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def ram_hit_cost(
    make: Callable[[int], dict[str, object]], n: int, repeats: int
) -> tuple[float, float]:
    """µs per RAM hit, and µs per dict lookup + clone of every tensor (the floor)."""
    samples = {i: make(i) for i in range(n)}
    with SpillCache(None, ram_budget=sum(sample_nbytes(s) for s in samples.values()) * 2) as cache:
        for i, s in samples.items():
            cache.put(i, s)

        def hits() -> None:
            for i in range(n):
                cache.get(i)

        def floor() -> None:
            for i in range(n):
                clone(samples[i])

        ours = median_time(hits, repeats) / n * 1e6
        base = median_time(floor, repeats) / n * 1e6
    return ours, base


def disk_throughput(n: int, repeats: int) -> tuple[float, float, float]:
    """GB/s of disk-tier hits, of a raw LMDB read with one copy, and of a numpy copy."""
    with tempfile.TemporaryDirectory() as tmp:
        with SpillCache(Path(tmp) / "s", ram_budget=0) as cache:
            for i in range(n):
                cache.put(i, big_sample(i))
            cache.flush()
            nbytes = 4 * 256 * 256 * 4

            def ours() -> None:
                for i in range(n):
                    cache.get(i)

            ours()  # warm the page cache
            t_ours = median_time(ours, repeats)
        env = lmdb.open(str(Path(tmp) / "raw"), map_size=1 << 32, sync=False)
        payload = np.ones(nbytes, dtype=np.uint8).tobytes()
        with env.begin(write=True) as txn:
            for i in range(n):
                txn.put(i.to_bytes(8, "big"), payload)

        def raw() -> None:
            with env.begin(buffers=True) as txn:
                for i in range(n):
                    buf = txn.get(i.to_bytes(8, "big"))
                    out = torch.empty(nbytes, dtype=torch.uint8)
                    out.numpy()[:] = np.frombuffer(buf, dtype=np.uint8)

        raw()
        t_raw = median_time(raw, repeats)
        env.close()
        src = np.ones(nbytes, dtype=np.uint8)

        def memcpy() -> None:
            for _ in range(n):
                np.copy(src)

        t_copy = median_time(memcpy, repeats)
    total = n * nbytes / 1e9
    return total / t_ours, total / t_raw, total / t_copy


def hit_rates(n: int, epochs: int) -> dict[str, list[float]]:
    """RAM hit rate / (budget / data) per warm epoch, sequential and shuffled, data = 3x budget."""
    rng = np.random.default_rng(0)
    samples = [{"image": torch.zeros(int(rng.integers(256, 4096))), "i": i} for i in range(n)]
    data = sum(sample_nbytes(s) for s in samples)
    budget = data // 3
    out: dict[str, list[float]] = {}
    for order in ("sequential", "shuffled"):
        ratios = []
        with SpillCache(None, ram_budget=budget) as cache:
            for epoch in range(epochs):
                idx = range(n) if order == "sequential" else rng.permutation(n).tolist()
                before = cache.stats().ram_hits
                for i in idx:
                    if cache.get(i) is None:
                        cache.put(i, samples[i])
                if epoch:
                    ratios.append((cache.stats().ram_hits - before) / n / (budget / data))
        out[order] = ratios
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes (CI smoke test)")
    args = parser.parse_args()
    repeats = 3 if args.quick else 7
    print("| figure | spillcache | floor | ratio |")
    print("|---|---|---|---|")
    workloads = (("4 KiB sample", small_sample, 2000), ("1 MiB sample", big_sample, 200))
    for name, make, count in workloads:
        ours, base = ram_hit_cost(make, count // 10 if args.quick else count, repeats)
        print(
            f"| RAM hit, {name} (µs) | {ours:.1f} | {base:.1f} (dict + clone) | {base / ours:.2f} |"
        )
    ours_gbs, raw_gbs, copy_gbs = disk_throughput(30 if args.quick else 300, repeats)
    print(
        f"| disk hit, 1 MiB (GB/s) | {ours_gbs:.2f} | {raw_gbs:.2f} (raw LMDB, one copy) | "
        f"{ours_gbs / raw_gbs:.2f} |"
    )
    print(f"| numpy copy, 1 MiB (GB/s) | | {copy_gbs:.2f} | {ours_gbs / copy_gbs:.2f} |")
    for order, ratios in hit_rates(300 if args.quick else 3000, 4).items():
        shown = ", ".join(f"{r:.2f}" for r in ratios)
        print(
            f"| RAM hit rate / (budget/data), {order}, epochs 2-4 | {shown} | 1.00 | "
            f"{min(ratios):.2f} |"
        )


if __name__ == "__main__":
    main()
