"""DataLoader workers sharing one store: warm-epoch throughput, memory and source calls.

Run: ``python -m benchmarks.workers [--quick]``. A data set twice the RAM budget is read for two
epochs through ``DataLoader(num_workers=0/2/4)`` (fork). Reported per setting: epoch-1 and
epoch-2 samples/s, source calls per epoch (counted across processes), and the peak of the PSS
summed over the main process and its workers (RSS would count shared pages once per process).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
from torch.utils.data import DataLoader

from spillcache import CachedDataset


class CountingSource(torch.utils.data.Dataset[dict[str, Any]]):
    """Deterministic 256 KiB samples, each costing ``latency`` s; counts calls in shared memory."""

    def __init__(self, n: int, latency: float) -> None:
        self.n = n
        self.latency = latency
        self.calls = mp.get_context("fork").Value("l", 0)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        with self.calls.get_lock():
            self.calls.value += 1
        time.sleep(self.latency)
        image = np.random.default_rng(i).standard_normal((64, 1024), dtype=np.float32)
        return {"image": torch.from_numpy(image), "id": f"{i:08d}", "label": i % 10}


class PeakPss:
    """Samples the PSS summed over this process and its children every 20 ms."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    total += proc.memory_full_info().pss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
            self.peak = max(self.peak, total)
            self._stop.wait(0.02)

    def __enter__(self) -> PeakPss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run(n: int, workers: int, latency: float) -> dict[str, float]:
    source = CountingSource(n, latency)
    sample_bytes = 64 * 1024 * 4
    baseline = psutil.Process().memory_full_info().pss
    with tempfile.TemporaryDirectory() as tmp, PeakPss() as pss:
        ds = CachedDataset(source, Path(tmp) / "s", ram_budget=n * sample_bytes // 2, probes=0)
        loader = DataLoader(
            ds,
            batch_size=16,
            shuffle=True,
            num_workers=workers,
            multiprocessing_context="fork" if workers else None,
            generator=torch.Generator().manual_seed(0),
        )
        result: dict[str, float] = {}
        for epoch in (1, 2):
            calls = source.calls.value
            start = time.perf_counter()
            seen = sum(len(b["label"]) for b in loader)
            result[f"epoch{epoch}_samples_s"] = seen / (time.perf_counter() - start)
            result[f"epoch{epoch}_source_calls"] = source.calls.value - calls
        ds.close()
    result["peak_pss_mib"] = (pss.peak - baseline) / 2**20
    result["data_mib"] = n * sample_bytes / 2**20
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes (CI smoke test)")
    args = parser.parse_args()
    n = 64 if args.quick else 1024
    print(
        "| num_workers | epoch 1 samples/s | epoch 2 samples/s | source calls (epoch 1, 2) "
        "| peak PSS growth, all processes (MiB) | data (MiB) | RAM budget (MiB) |"
    )
    print("|---|---|---|---|---|---|---|")
    for workers in (0, 2, 4):
        r = run(n, workers, latency=0.002)
        print(
            f"| {workers} | {r['epoch1_samples_s']:.0f} | {r['epoch2_samples_s']:.0f} | "
            f"{r['epoch1_source_calls']:.0f}, {r['epoch2_source_calls']:.0f} | "
            f"{r['peak_pss_mib']:.0f} | {r['data_mib']:.0f} | {r['data_mib'] / 2:.0f} |"
        )


if __name__ == "__main__":
    main()
