"""First epochs: what filling the cache adds, what each peer costs, and preload vs threads.

1. Put path: a first epoch over a source costing 2 ms per 1 MiB sample, through
   ``CachedDataset`` (get, load on a miss, put) and through a bare ``SpillCache`` get/put
   loop, against the same epoch without a cache; interleaved rounds, fresh store each time.
   The epoch ends with its last sample: writes are committed in the background meanwhile,
   and the final flush (which syncs the store to disk) is not part of it. The RAM budget is a
   third of the data (so puts also spill). The floor is the least a two-tier cache does with
   that budget: keep one private copy (one ``clone()`` per tensor) of each sample while the
   copies fit the budget, and hand every sample to a thread that appends its tensor bytes to
   a fresh file (no encoding, no index), with as much queued as spillcache may queue.
2. First-epoch seconds of every contender on the same source (one round: a secondary figure).
3. Preload: first-epoch seconds of a shuffled pass vs preload threads, for a latency-bound
   source (20 ms sleep) and a CPU-bound one (5 ms of CPU), via ``benchmarks.preload``.
"""

from __future__ import annotations

import queue
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from spillcache import CachedDataset, SpillCache, disk

from .contenders import Unavailable, require
from .warm import accounted_bytes
from .workloads import Sample, TimedSource, Workload, monai_transform, tensors, tree_clone

SOURCE_SECONDS = 0.002
_QUEUED_BYTES = disk._MAX_QUEUED_BYTES


@dataclass
class PutPath:
    n: int
    dataset_ratios: list[float] = field(default_factory=list)  # epoch time / no-cache time
    cache_ratios: list[float] = field(default_factory=list)
    floor_ratios: list[float] = field(default_factory=list)

    @property
    def dataset_overhead(self) -> float:
        return statistics.median(self.dataset_ratios) - 1

    @property
    def cache_overhead(self) -> float:
        return statistics.median(self.cache_ratios) - 1

    @property
    def floor_overhead(self) -> float:
        return statistics.median(self.floor_ratios) - 1


def _timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def _epoch_dataset(ds: CachedDataset, order: list[int]) -> None:
    for i in order:
        ds[i]


def _epoch_cache(cache: SpillCache, source: TimedSource, order: list[int]) -> None:
    for i in order:
        if cache.get(i) is None:
            cache.put(i, source[i])


def _epoch_source(source: TimedSource, order: list[int]) -> None:
    for i in order:
        source[i]


class _FileFloor:
    """The put-path floor: copies while they fit ``budget``, and a thread appending to a file."""

    def __init__(self, path: Path, budget: int, queued_bytes: int, sample_bytes: int) -> None:
        self._queue: queue.Queue[Sample | None] = queue.Queue(max(1, queued_bytes // sample_bytes))
        self._copies: dict[int, Sample] = {}
        self._room = budget
        self._thread = threading.Thread(target=self._drain, args=(path,))
        self._thread.start()

    def _drain(self, path: Path) -> None:
        with open(path, "wb", buffering=0) as out:
            while (sample := self._queue.get()) is not None:
                for t in tensors(sample):
                    out.write(t.numpy().data)  # one copy, by the kernel into the page cache

    def epoch(self, source: TimedSource, order: list[int]) -> None:
        for i in order:
            sample = source[i]
            if self._room > 0:
                self._copies[i] = tree_clone(sample)
                self._room -= accounted_bytes([sample])
            self._queue.put(sample)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()


def run_put_path(workload: Workload, rounds: int, log: Callable[[str], None]) -> PutPath:
    source = TimedSource(workload, SOURCE_SECONDS)
    n = workload.n
    budget = accounted_bytes([source[i] for i in range(min(n, 8))]) * n // min(n, 8) // 3
    result = PutPath(n)
    for r in range(rounds):
        order = np.random.default_rng(r).permutation(n).tolist()
        with tempfile.TemporaryDirectory() as tmp:
            ds = CachedDataset(
                source, Path(tmp) / "ds", ram_budget=budget, fingerprint="bench", probes=0
            )
            cache = SpillCache(Path(tmp) / "cache", ram_budget=budget)
            floor = _FileFloor(Path(tmp) / "floor", budget, _QUEUED_BYTES, workload.payload_bytes)
            runs = {
                "dataset": partial(_epoch_dataset, ds, order),
                "cache": partial(_epoch_cache, cache, source, order),
                "floor": partial(floor.epoch, source, order),
                "none": partial(_epoch_source, source, order),
            }
            names = list(runs)
            shift = r % len(names)
            times = {name: _timed(runs[name]) for name in names[shift:] + names[:shift]}
            ds.close()
            cache.close()
            floor.close()
        result.dataset_ratios.append(times["dataset"] / times["none"])
        result.cache_ratios.append(times["cache"] / times["none"])
        result.floor_ratios.append(times["floor"] / times["none"])
    log(
        f"  put path: {result.dataset_overhead:+.1%} (CachedDataset), "
        f"{result.cache_overhead:+.1%} (SpillCache), {result.floor_overhead:+.1%} (file floor) "
        f"on a {SOURCE_SECONDS * 1e3:.0f} ms source"
    )
    return result


def _monai_first_epoch(kind: str, source: TimedSource, root: Path, order: list[int]) -> None:
    import monai.data

    items = [{"i": i} for i in range(len(source))]
    transform = monai_transform(source.__getitem__)
    if kind == "MONAI CacheDataset":
        ds: Any = monai.data.CacheDataset(items, transform, progress=False, num_workers=0)
    elif kind == "MONAI PersistentDataset":
        ds = monai.data.PersistentDataset(items, transform, cache_dir=root / "persistent")
    else:
        ds = monai.data.LMDBDataset(items, transform, cache_dir=root / "lmdb", progress=False)
    for i in order:
        ds[i]


def _diskcache_first_epoch(source: TimedSource, root: Path, order: list[int]) -> None:
    import diskcache

    with diskcache.Cache(str(root / "dc"), size_limit=1 << 40, eviction_policy="none") as dc:
        for i in order:
            if dc.get(i) is None:
                dc[i] = source[i]


def run_first_epochs(
    workload: Workload, log: Callable[[str], None]
) -> tuple[dict[str, float], list[str]]:
    """Seconds of one cold shuffled epoch per contender (the store's creation included)."""
    source = TimedSource(workload, SOURCE_SECONDS)
    order = np.random.default_rng(0).permutation(workload.n).tolist()
    budget = accounted_bytes([source[i] for i in range(min(workload.n, 8))]) * workload.n

    def spill(root: Path) -> None:
        with CachedDataset(
            source, root / "ds", ram_budget=budget, fingerprint="bench", probes=0
        ) as ds:
            for i in order:
                ds[i]

    def plain(root: Path) -> None:
        for i in order:
            source[i]

    runs: dict[str, Callable[[Path], None]] = {"no cache": plain, "spillcache": spill}
    skipped = []
    for kind in ("MONAI CacheDataset", "MONAI PersistentDataset", "MONAI LMDBDataset"):
        try:
            require("monai.data")
        except Unavailable as exc:
            skipped.append(f"{kind}: {exc}")
            continue
        runs[kind] = lambda root, kind=kind: _monai_first_epoch(kind, source, root, order)
    try:
        require("diskcache")
        runs["diskcache"] = lambda root: _diskcache_first_epoch(source, root, order)
    except Unavailable as exc:
        skipped.append(f"diskcache: {exc}")
    seconds = {}
    for name, run in runs.items():
        with tempfile.TemporaryDirectory() as tmp:
            seconds[name] = _timed(lambda run=run, tmp=tmp: run(Path(tmp)))
        log(f"  first epoch, {name}: {seconds[name]:.2f} s")
    return seconds, skipped


def run_preload(
    n: int, threads: Sequence[int | str | None], log: Callable[[str], None]
) -> dict[str, dict[str, float]]:
    """First-epoch seconds vs preload threads (None: no preload), per source kind."""
    from . import preload

    out: dict[str, dict[str, float]] = {}
    for name, make in (
        ("latency-bound (20 ms sleep)", preload.Latency),
        ("CPU-bound (5 ms of CPU)", preload.Cpu),
    ):
        out[name] = {}
        for t in threads:
            out[name][str(t) if t is not None else "none"] = preload.first_epoch(make, n, t)
        log(f"  preload, {name}: {out[name]}")
    return out
