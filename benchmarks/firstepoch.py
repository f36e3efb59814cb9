"""First epochs: what filling the cache adds, what each peer costs, and preload vs threads.

1. Put path: a first epoch over a source costing 2 ms per 1 MiB sample, through
   ``CachedDataset`` (get, load on a miss, put; with ``copy=True`` and ``copy=False``) and
   through a bare ``SpillCache`` get/put loop, against the same epoch without a cache;
   interleaved rounds, fresh store each time. The epoch ends with its last sample: writes are
   committed in the background meanwhile, and the final flush (which syncs the store to disk)
   is not part of it. The RAM budget is a third of the data (so puts also spill). The floor is
   the least a two-tier cache does with that budget: keep one private copy (one ``clone()``
   per tensor) of each sample while the copies fit the budget, and hand every sample to a
   thread that appends its tensor bytes to a fresh file (no encoding, no index), with as much
   queued as spillcache may queue. The snapshot floor also copies each sample the RAM copies
   do not cover into a recycled buffer before handing it over: the least a ``put`` does
   after which the caller may change the sample (``copy=True``).
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
import torch

from spillcache import CachedDataset, SpillCache
from spillcache.disk.writer import MAX_QUEUED_BYTES

from .contenders import Unavailable, require
from .warm import accounted_bytes
from .workloads import Sample, TimedSource, Workload, monai_transform, tensors, tree_clone

SOURCE_SECONDS = 0.002
_QUEUED_BYTES = MAX_QUEUED_BYTES


# What the put path times, by key in its results: how each epoch runs.
PUT_PATH_RUNS: dict[str, str] = {
    "dataset": "CachedDataset",
    "dataset_nocopy": "CachedDataset, copy=False",
    "cache": "bare SpillCache get/put loop",
    "snapshot_floor": "snapshot floor",
    "floor": "floor",
}


@dataclass
class PutPath:
    n: int
    # Per run of PUT_PATH_RUNS: epoch time / no-cache time, one per round.
    ratios: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in PUT_PATH_RUNS})

    def overhead(self, run: str) -> float:
        return statistics.median(self.ratios[run]) - 1


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
    """The put-path floor: copies while they fit ``budget``, and a thread appending to a file.

    ``snapshot``: every sample handed to the thread is a copy (a kept one, or one into a
    recycled buffer), so the caller may change the sample at once.
    """

    def __init__(
        self, path: Path, budget: int, queued_bytes: int, sample_bytes: int, *, snapshot: bool
    ) -> None:
        slots = max(1, queued_bytes // sample_bytes)
        self._queue: queue.Queue[Sample | None] = queue.Queue(slots)
        # One buffer per queue slot, plus the one being written and the one being filled.
        self._ring = (
            [np.empty(sample_bytes, np.uint8) for _ in range(slots + 2)] if snapshot else []
        )
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
        for n, i in enumerate(order):
            sample = source[i]
            if self._room > 0:
                sample = self._copies[i] = tree_clone(sample)
                self._room -= accounted_bytes([sample])
            elif self._ring:
                sample = self._snapshot(sample, self._ring[n % len(self._ring)])
            self._queue.put(sample)

    @staticmethod
    def _snapshot(sample: Sample, buffer: np.ndarray) -> Sample:
        """The tensors of ``sample`` copied into ``buffer``, as a flat dict of tensors."""
        copies = {}
        pos = 0
        for n, t in enumerate(tensors(sample)):
            flat = t.numpy().reshape(-1).view(np.uint8)
            buffer[pos : pos + flat.size] = flat
            copies[str(n)] = torch.from_numpy(buffer[pos : pos + flat.size])
            pos += flat.size
        return copies

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
            nocopy = CachedDataset(
                source,
                Path(tmp) / "nocopy",
                ram_budget=budget,
                fingerprint="bench",
                probes=0,
                copy=False,
            )
            cache = SpillCache(Path(tmp) / "cache", ram_budget=budget)
            floors = {
                name: _FileFloor(
                    Path(tmp) / name,
                    budget,
                    _QUEUED_BYTES,
                    workload.payload_bytes,
                    snapshot=name == "snapshot_floor",
                )
                for name in ("snapshot_floor", "floor")
            }
            runs = {
                "dataset": partial(_epoch_dataset, ds, order),
                "dataset_nocopy": partial(_epoch_dataset, nocopy, order),
                "cache": partial(_epoch_cache, cache, source, order),
                **{name: partial(floor.epoch, source, order) for name, floor in floors.items()},
                "none": partial(_epoch_source, source, order),
            }
            names = list(runs)
            shift = r % len(names)
            times = {name: _timed(runs[name]) for name in names[shift:] + names[:shift]}
            for closing in (ds, nocopy, cache, *floors.values()):
                closing.close()
        for name, ratios in result.ratios.items():
            ratios.append(times[name] / times["none"])
    log(
        "  put path: "
        + ", ".join(f"{result.overhead(k):+.1%} ({label})" for k, label in PUT_PATH_RUNS.items())
        + f" on a {SOURCE_SECONDS * 1e3:.0f} ms source"
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
