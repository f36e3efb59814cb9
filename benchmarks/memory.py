"""Anonymous memory of each cache in the spill workload, one fresh process per contender.

The data set is 3x the RAM budget. Each process imports what it needs, builds its cache, takes
its baseline ``RssAnon`` (``/proc/self/status``: private memory, not the page cache that LMDB's
and diskcache's files occupy), then runs a sequential first epoch that fills the cache from
the source, a sequential and a shuffled warm epoch, sampling ``RssAnon`` as it goes. spillcache
also reports the bytes its RAM tier accounts for, to compare with the measured growth.

Run by the suite; by hand: ``python -m benchmarks.memory CONTENDER WORKLOAD BUDGET ROOT``.
"""

from __future__ import annotations

import ctypes
import gc
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .contenders import DISABLED
from .workloads import CUTOUT, SMALL, Workload, monai_transform

CONTENDERS = ("spillcache", "plain dict", "MONAI CacheDataset", "MONAI LMDBDataset", "diskcache")
REPO = Path(__file__).resolve().parents[1]


def rss_anon() -> int:
    """Bytes of this process's resident anonymous memory."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status (not Linux?)")


def per_sample_bytes(workload: Workload) -> int:
    """Bytes the RAM tier accounts for one sample of ``workload``."""
    from spillcache.codec import decode, encode
    from spillcache.footprint import ENTRY_OVERHEAD, sample_nbytes

    return sample_nbytes(decode(encode(workload.make(0)))) + ENTRY_OVERHEAD


def spill_size(workload: Workload, budget: int) -> int:
    """Samples in a data set 3x ``budget``."""
    return math.ceil(3 * budget / per_sample_bytes(workload))


def _trimmed_rss_anon() -> int | None:
    """``RssAnon`` once glibc has returned the free memory it keeps to the system, if glibc."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return None
    return rss_anon()


class _Peak:
    """Peak ``RssAnon`` over the samples taken every ``every`` calls of :meth:`tick`."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.calls = 0
        self.peak = rss_anon()

    def tick(self) -> None:
        self.calls += 1
        if self.calls % self.every == 0:
            self.peak = max(self.peak, rss_anon())


def _build(
    name: str, workload: Workload, n: int, budget: int, root: Path
) -> tuple[Callable[[int], Any], Callable[[], dict[str, Any]], Callable[[], None]]:
    """(get-or-load for index i, extra figures, close) for contender ``name``."""
    make = workload.make
    if name == "spillcache":
        from spillcache import SpillCache

        cache = SpillCache(root / "spill", ram_budget=budget)

        def get(i: int) -> Any:
            sample = cache.get(i)
            if sample is None:
                sample = make(i)
                cache.put(i, sample)
            return sample

        def extra() -> dict[str, Any]:
            cache.flush()
            stats = cache.stats()
            return {"accounted": stats.ram_bytes, "ram_items": stats.ram_items}

        return get, extra, cache.close
    if name == "plain dict":
        store: dict[int, Any] = {}

        def get_dict(i: int) -> Any:
            sample = store.get(i)
            if sample is None:
                sample = store[i] = make(i)
            return sample

        return get_dict, dict, store.clear
    if name == "MONAI CacheDataset":
        from monai.data import CacheDataset

        items = [{"i": i} for i in range(n)]
        cache_num = budget // per_sample_bytes(workload)
        # Built at the first get, after the baseline, so that its cache counts.
        holder: dict[str, Any] = {}

        def get_monai(i: int) -> Any:
            if "ds" not in holder:
                holder["ds"] = CacheDataset(
                    items, monai_transform(make), cache_num=cache_num, progress=False
                )
            return holder["ds"][i]

        return get_monai, lambda: {"cache_num": cache_num}, holder.clear
    if name == "MONAI LMDBDataset":
        from monai.data import LMDBDataset

        lmdb_holder: dict[str, Any] = {}

        def get_lmdb(i: int) -> Any:
            if "ds" not in lmdb_holder:
                lmdb_holder["ds"] = LMDBDataset(
                    [{"i": j} for j in range(n)],
                    monai_transform(make),
                    cache_dir=root / "monai-lmdb",
                    progress=False,
                )
            return lmdb_holder["ds"][i]

        return get_lmdb, dict, lmdb_holder.clear
    if name == "diskcache":
        import diskcache

        dc = diskcache.Cache(str(root / "diskcache"), size_limit=1 << 40, eviction_policy="none")

        def get_dc(i: int) -> Any:
            sample = dc.get(i)
            if sample is None:
                sample = make(i)
                dc[i] = sample
            return sample

        return get_dc, dict, dc.close
    raise ValueError(f"unknown contender {name!r}")


def measure(name: str, workload: Workload, budget: int, root: Path) -> dict[str, Any]:
    """Run the spill workload for contender ``name`` in this process."""
    n = spill_size(workload, budget)
    get, extra, close = _build(name, workload, n, budget, root)
    workload.make(0)
    gc.collect()
    baseline = rss_anon()
    peak = _Peak(every=1 if workload is CUTOUT else 25)
    start = time.perf_counter()
    orders: Iterable[list[int]] = (
        list(range(n)),
        list(range(n)),
        np.random.default_rng(0).permutation(n).tolist(),
    )
    for order in orders:
        for i in order:
            get(i)
            peak.tick()
    figures = extra()
    gc.collect()
    end = rss_anon()
    seconds = time.perf_counter() - start
    live = _trimmed_rss_anon()
    close()
    return {
        "contender": name,
        "workload": workload.name,
        "n": n,
        "budget": budget,
        "data_bytes": n * per_sample_bytes(workload),
        "peak_growth": max(peak.peak, end) - baseline,
        "end_growth": end - baseline,
        "live_growth": None if live is None else live - baseline,
        "seconds": seconds,
        **figures,
    }


def run_memory(
    workload: Workload,
    budget: int,
    root: Path,
    log: Callable[[str], None],
    contenders: Iterable[str] = CONTENDERS,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Measure each contender in a subprocess; return the results and the skip lines."""
    results, skipped = [], []
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    for name in contenders:
        module = {"MONAI CacheDataset": "monai", "MONAI LMDBDataset": "monai"}.get(name, name)
        if module in DISABLED:
            skipped.append(f"{name}: left out (--no-peers)")
            continue
        out = root / f"mem-{workload.name}-{name.replace(' ', '-')}"
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.memory", name, workload.name, str(budget), str(out)],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=env,
            timeout=900,
            check=False,
        )
        lines = proc.stdout.strip().splitlines()
        if proc.returncode == 3:
            skipped.append(lines[-1] if lines else f"{name}: unavailable")
            continue
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"memory run of {name} failed:\n{proc.stderr[-3000:]}")
        result = json.loads(lines[-1])
        log(
            f"  memory {workload.label}, {name}: peak +{result['peak_growth'] / 2**20:.0f} MiB "
            f"for a {budget / 2**20:.0f} MiB budget"
        )
        results.append(result)
    return results, skipped


def main(argv: list[str] | None = None) -> int:
    name, workload_name, budget, root = argv or sys.argv[1:]
    workload = {w.name: w for w in (CUTOUT, SMALL)}[workload_name]
    try:
        result = measure(name, workload, int(budget), Path(root))
    except ImportError as exc:
        print(f"{name}: skipped, {exc} (pip install 'spillcache[bench]')")
        return 3
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
