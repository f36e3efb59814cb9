"""Preload throughput on simulated storages, auto vs fixed concurrency, and first-epoch times.

Run: ``python -m benchmarks.preload [--quick]`` (about 4 minutes; ``--quick`` under 1 minute).
Prints Markdown tables:

1. Preload throughput (samples/s) over a fixed time for ``preload_threads="auto"`` and the fixed
   counts 1..64 on three simulated storages: latency-bound (each load sleeps 20 ms, any number
   in parallel), IOPS-limited (20 ms loads behind a semaphore of 8) and CPU-bound (each load
   burns 5 ms of CPU time holding the GIL). "auto" pays for its ramp-up inside the same time.
2. First-epoch time of a shuffled pass with and without a preload started just before it, for
   the latency-bound and the CPU-bound source.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import RandomSampler

from spillcache.dataset import CachedDataset
from spillcache.settings import Threads

FIXED: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
LOAD_SECONDS = 0.02
IOPS = 8
CPU_SECONDS = 0.005


def make_sample(i: int) -> dict[str, Any]:
    return {"image": np.full((32, 32), i, dtype=np.float32), "id": f"{i:08d}", "label": i % 10}


class Latency(torch.utils.data.Dataset[dict[str, Any]]):
    """Each load waits ``LOAD_SECONDS`` (a network file system); unlimited parallelism."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        time.sleep(LOAD_SECONDS)
        return make_sample(i)


class Iops(Latency):
    """The same loads, but at most ``IOPS`` at a time (an IOPS-limited volume)."""

    def __init__(self, n: int) -> None:
        super().__init__(n)
        self.gate = threading.Semaphore(IOPS)

    def __getitem__(self, i: int) -> dict[str, Any]:
        with self.gate:
            time.sleep(LOAD_SECONDS)
        return make_sample(i)


class Cpu(Latency):
    """Each load burns ``CPU_SECONDS`` of this thread's CPU time in Python (holding the GIL)."""

    def __getitem__(self, i: int) -> dict[str, Any]:
        end = time.thread_time() + CPU_SECONDS
        while time.thread_time() < end:
            pass
        return make_sample(i)


STORAGES: dict[str, Callable[[int], Latency]] = {
    "latency-bound (20 ms sleep)": Latency,
    "IOPS-limited (20 ms, 8 at a time)": Iops,
    "CPU-bound (5 ms of CPU)": Cpu,
}


def open_dataset(source: Latency, root: Path, threads: Threads) -> CachedDataset:
    return CachedDataset(
        source,
        root,
        fingerprint="bench",
        probes=0,
        ram_budget="512MiB",
        preload_threads=threads,
        progress=False,
    )


class Run(NamedTuple):
    rate: float  # samples/s over the whole run, ramp-up included
    steady: float  # samples/s over its second half
    peak: int  # most load threads at once
    limit: int  # loads in flight at the end


def preload_rate(make: Callable[[int], Latency], threads: Threads, seconds: float) -> Run:
    with tempfile.TemporaryDirectory() as tmp:
        ds = open_dataset(make(1_000_000), Path(tmp) / "s", threads)
        try:
            start = time.perf_counter()
            ds.start_preload()
            ds.wait_preload(seconds / 2)
            half, half_at = ds.stats().preload_loads, time.perf_counter()
            ds.wait_preload(seconds / 2)
            loaded, end = ds.stats().preload_loads, time.perf_counter()
            preloader = ds.preloader
            assert preloader is not None
            return Run(
                loaded / (end - start),
                (loaded - half) / (end - half_at),
                preloader.peak_threads,
                preloader.limit,
            )
        finally:
            ds.close()


def first_epoch(make: Callable[[int], Latency], n: int, threads: Threads | None) -> float:
    """Seconds of a shuffled pass over a cold cache; ``threads=None``: no preload."""
    with tempfile.TemporaryDirectory() as tmp:
        ds = open_dataset(make(n), Path(tmp) / "s", threads or "auto")
        try:
            sampler = RandomSampler(range(n), generator=torch.Generator().manual_seed(0))
            start = time.perf_counter()
            if threads is not None:
                ds.start_preload(sampler)
            for i in sampler:
                ds[i]
            return time.perf_counter() - start
        finally:
            ds.close()


def sweep(seconds: float, repeats: int, only: str) -> None:
    """Each figure is the median of ``repeats`` runs. The runs are interleaved, in an order
    that rotates every round, so that bursts of load from elsewhere on the machine hit every
    setting alike."""
    settings: tuple[Threads, ...] = ("auto", *FIXED)
    header = ["storage", "auto", "auto 2nd half", "auto peak threads", "auto final"]
    header += list(map(str, FIXED))
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    verdicts = []
    for name, make in STORAGES.items():
        if only not in name:
            continue
        runs: dict[Threads, list[Run]] = {t: [] for t in settings}
        for round_ in range(repeats):
            shift = round_ * len(settings) // repeats
            for t in settings[shift:] + settings[:shift]:
                runs[t].append(preload_rate(make, t, seconds))
        rate = {t: statistics.median(r.rate for r in runs[t]) for t in settings}
        steady = statistics.median(r.steady for r in runs["auto"])
        peak = max(r.peak for r in runs["auto"])
        finals = "/".join(str(r.limit) for r in runs["auto"])
        best = max(FIXED, key=rate.__getitem__)
        cells = [name, f"{rate['auto']:.0f}", f"{steady:.0f}", str(peak), finals]
        cells += [f"**{rate[c]:.0f}**" if c == best else f"{rate[c]:.0f}" for c in FIXED]
        print("| " + " | ".join(cells) + " |", flush=True)
        verdicts.append(
            f"- {name}: auto = {rate['auto'] / rate[best]:.0%} of the best fixed count ({best}, "
            f"{rate[best]:.0f}/s; {steady / rate[best]:.0%} after ramp-up); auto's peak {peak} "
            f"threads = {peak / best:.1f}x that count"
        )
    print()
    print("\n".join(verdicts))


def epochs(n: int) -> None:
    print("| source | samples | no preload | preload auto | preload 50 threads |")
    print("|---|---|---|---|---|")
    for name, make in (
        ("latency-bound (20 ms sleep)", Latency),
        ("CPU-bound (5 ms of CPU)", Cpu),
    ):
        times = [first_epoch(make, n, t) for t in (None, "auto", 50)]
        print(f"| {name} | {n} | " + " | ".join(f"{t:.2f} s" for t in times) + " |", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs (for CI)")
    parser.add_argument("--only", default="", help="storages whose name contains this")
    parser.add_argument("--no-epochs", action="store_true", help="skip the first-epoch table")
    args = parser.parse_args(argv)
    seconds, repeats, n = (1.0, 1, 150) if args.quick else (3.0, 3, 500)
    print(f"load average before: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)\n")
    print(
        f"## Preload throughput, samples/s over {seconds:.0f} s, ramp-up included (median of "
        f"{repeats}; best fixed count in bold)\n"
    )
    sweep(seconds, repeats, args.only)
    if not args.no_epochs:
        print(f"\n## First epoch of a shuffled pass ({n} samples, cold cache)\n")
        epochs(n)
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
