"""Preload ramp: ``threads="auto"`` against fixed thread counts on simulated storages.

Run: ``python -m benchmarks.preload [--old OLD_SRC] [--seconds 1 3] [--repeats 5] [--quick]
[--out FILE]`` (about 4 minutes with the defaults; twice that with ``--old``). Prints Markdown
tables (and writes them to ``--out``):

1. Throughput of a preload over jobs of ``--seconds`` (samples loaded / wall time, ramp-up
   included) for ``preload_threads="auto"`` and the fixed counts ``FIXED`` on three simulated
   storages: latency-bound (each load sleeps 20 ms, any number in parallel), IOPS-limited (20 ms
   loads behind a semaphore of 8) and CPU-bound (each load burns 5 ms of CPU time holding the
   GIL). Per storage and job length: auto / each fixed count (the median over rounds of the
   round's ratio: a round runs every setting once, in an order rotated every round), the best
   fixed count (highest median rate), auto / best, auto's peak and final thread counts, and the
   peak against the *fewest* threads that do as well as the best count (median rate within
   ``TIE`` of it): where several counts tie within the noise (a CPU-bound source: any count;
   8 to 64 on the IOPS-limited one) the highest median is chance, and the peak target is
   about threads that bring nothing.
2. The first epoch of a shuffled pass over ``EPOCH_N`` samples from the latency-bound source
   with a preload started just before it (the issue's 200-sample, 20 ms job): seconds per
   setting, auto / the best fixed count's time, auto's peak threads.

With ``--old``, every measurement also runs with the spillcache of another tree (e.g. a worktree
of the commit the change starts from, ``/tmp/base/src``): one child process per tree
(``PYTHONPATH`` set to it) serves the measurements, asked in turn, so both trees share the
machine's load; ratios are within a tree, old and new side by side. ``--quick`` runs short jobs
and one round (for the smoke test). Load averages before and after are printed: CPU-bound
figures suffer from other work on the machine, sleeping ones hardly.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import RandomSampler

from spillcache.dataset import CachedDataset
from spillcache.settings import Threads

REPO = Path(__file__).resolve().parents[1]
FIXED: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
EPOCH_N = 200
EPOCH_FIXED: tuple[int, ...] = (16, 32, 64)
LOAD_SECONDS = 0.02
IOPS = 8
CPU_SECONDS = 0.005
# Fixed counts whose median rate is within this fraction of the best one's tie with it.
TIE = 0.05


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


class Epoch(NamedTuple):
    seconds: float  # the shuffled pass, preload start included
    peak: int  # most load threads at once (0: no preload)


def first_epoch_run(make: Callable[[int], Latency], n: int, threads: Threads | None) -> Epoch:
    """A shuffled pass over a cold cache; ``threads=None``: no preload."""
    with tempfile.TemporaryDirectory() as tmp:
        ds = open_dataset(make(n), Path(tmp) / "s", threads or "auto")
        try:
            sampler = RandomSampler(range(n), generator=torch.Generator().manual_seed(0))
            start = time.perf_counter()
            if threads is not None:
                ds.start_preload(sampler)
            for i in sampler:
                ds[i]
            seconds = time.perf_counter() - start
            preloader = ds.preloader
            return Epoch(seconds, preloader.peak_threads if preloader is not None else 0)
        finally:
            ds.close()


def first_epoch(make: Callable[[int], Latency], n: int, threads: Threads | None) -> float:
    """Seconds of a shuffled pass over a cold cache; ``threads=None``: no preload."""
    return first_epoch_run(make, n, threads).seconds


STORAGE_KEYS: dict[str, str] = {"latency": "latency-bound (20 ms sleep)"}
STORAGE_KEYS.update(iops="IOPS-limited (20 ms, 8 at a time)", cpu="CPU-bound (5 ms of CPU)")


# -- measuring, in this process or in a child with another tree's spillcache --------------------


def measure(request: dict[str, Any]) -> dict[str, Any]:
    """One measurement: ``{"kind": "rate" | "epoch", "storage": key, "threads": ...}``."""
    make = STORAGES[STORAGE_KEYS[request["storage"]]]
    if request["kind"] == "rate":
        return preload_rate(make, request["threads"], request["seconds"])._asdict()
    return first_epoch_run(make, request["n"], request["threads"])._asdict()


class Tree:
    """Where measurements run: this process (``src=None``) or a child importing ``src``."""

    def __init__(self, name: str, src: Path | None) -> None:
        self.name = name
        self._child: subprocess.Popen[str] | None = None
        if src is not None:
            env = dict(os.environ, PYTHONPATH=os.pathsep.join((str(src), str(REPO))))
            args = [sys.executable, "-m", "benchmarks.preload", "--serve"]
            self._child = subprocess.Popen(
                args, env=env, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
            )

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        child = self._child
        if child is None:
            return measure(request)
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write(json.dumps(request) + "\n")
        child.stdin.flush()
        line = child.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.name} child died")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        if self._child is not None:
            assert self._child.stdin is not None
            self._child.stdin.close()
            self._child.wait()


def serve() -> None:
    """Answer one JSON request per line on stdin with one JSON line on stdout."""
    for line in sys.stdin:
        print(json.dumps(measure(json.loads(line))), flush=True)


# -- the sweep -------------------------------------------------------------------------------


@dataclass
class Results:
    """Every measurement of one tree, per round: ``rates[(storage, seconds)][threads]``."""

    rates: dict[tuple[str, float], dict[str, list[Run]]] = field(default_factory=dict)
    epochs: dict[str, list[Epoch]] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    storages: tuple[str, ...]
    seconds: tuple[float, ...]
    fixed: tuple[int, ...]
    repeats: int
    epoch_n: int
    epoch_fixed: tuple[int, ...]


def rotated(items: Sequence[Any], round_: int) -> list[Any]:
    shift = round_ % len(items) if items else 0
    return [*items[shift:], *items[:shift]]


def run_plan(plan: Plan, trees: Sequence[Tree], log: Callable[[str], None]) -> dict[str, Results]:
    """Every setting once per round, in an order rotated every round, the trees in turn."""
    results = {tree.name: Results() for tree in trees}
    settings: list[Threads] = ["auto", *plan.fixed]
    epoch_settings: list[Threads] = ["auto", *plan.epoch_fixed]
    for round_ in range(plan.repeats):
        log(f"round {round_ + 1}/{plan.repeats}, load {os.getloadavg()[0]:.1f}")
        for tree in rotated(trees, round_):
            for storage in plan.storages:
                for seconds in plan.seconds:
                    cell = results[tree.name].rates.setdefault((storage, seconds), {})
                    for t in rotated(settings, round_):
                        request = {"kind": "rate", "storage": storage, "threads": t}
                        answer = tree.ask({**request, "seconds": seconds})
                        cell.setdefault(str(t), []).append(Run(**answer))
            if plan.epoch_n:
                for t in rotated(epoch_settings, round_):
                    request = {"kind": "epoch", "storage": "latency", "threads": t}
                    answer = tree.ask({**request, "n": plan.epoch_n})
                    results[tree.name].epochs.setdefault(str(t), []).append(Epoch(**answer))
    return results


def paired(auto: Sequence[float], other: Sequence[float]) -> float:
    """The median over rounds of the round's auto / other."""
    return statistics.median(a / b for a, b in zip(auto, other, strict=True))


@dataclass(frozen=True)
class Row:
    """One storage and job length of one tree: auto against each fixed count."""

    tree: str
    storage: str
    seconds: float
    rates: dict[str, float]  # median samples/s per setting
    ratios: dict[int, float]  # auto / fixed count
    best: int
    fewest: int  # the fewest threads within TIE of the best count's rate
    peak: int  # auto's most threads, over the rounds
    finals: list[int]

    @property
    def auto_vs_best(self) -> float:
        return self.ratios[self.best]


def rows(results: dict[str, Results], fixed: Sequence[int]) -> list[Row]:
    out = []
    for tree, res in results.items():
        for (storage, seconds), runs in res.rates.items():
            rates = {t: statistics.median(r.rate for r in rs) for t, rs in runs.items()}
            auto = [r.rate for r in runs["auto"]]
            ratios = {c: paired(auto, [r.rate for r in runs[str(c)]]) for c in fixed}
            best = max(fixed, key=lambda c: rates[str(c)])
            fewest = min(c for c in fixed if rates[str(c)] >= (1 - TIE) * rates[str(best)])
            peak = max(r.peak for r in runs["auto"])
            finals = [r.limit for r in runs["auto"]]
            out.append(Row(tree, storage, seconds, rates, ratios, best, fewest, peak, finals))
    return out


def throughput_table(table: Sequence[Row], fixed: Sequence[int]) -> str:
    header = ["storage", "job", "tree", "auto /s", "best count", "auto / best"]
    header += [f"auto / {c}" for c in fixed] + ["auto peak threads", "peak / best"]
    header += [f"fewest within {TIE:.0%}", "peak / fewest", "auto final"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in sorted(table, key=lambda r: (r.storage, r.seconds, r.tree)):
        cells = [STORAGE_KEYS[row.storage], f"{row.seconds:g} s", row.tree]
        cells += [f"{row.rates['auto']:.0f}", f"{row.best} ({row.rates[str(row.best)]:.0f}/s)"]
        cells += [f"**{row.auto_vs_best:.2f}**"] + [f"{row.ratios[c]:.2f}" for c in fixed]
        cells += [str(row.peak), f"{row.peak / row.best:.2f}", str(row.fewest)]
        cells += [f"**{row.peak / row.fewest:.2f}**", "/".join(map(str, row.finals))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def epoch_table(results: dict[str, Results], n: int) -> str:
    header = ["tree", "auto s", "fixed s", "best count", "auto / best (time)", "auto peak threads"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for tree, res in results.items():
        if not res.epochs:
            continue
        seconds = {t: statistics.median(e.seconds for e in es) for t, es in res.epochs.items()}
        fixed = [t for t in seconds if t != "auto"]
        best = min(fixed, key=seconds.__getitem__)
        ratio = paired(
            [e.seconds for e in res.epochs["auto"]], [e.seconds for e in res.epochs[best]]
        )
        cells = [tree, f"{seconds['auto']:.3f}"]
        cells += [", ".join(f"{t}: {seconds[t]:.3f}" for t in fixed), best, f"**{ratio:.2f}**"]
        cells.append(str(max(e.peak for e in res.epochs["auto"])))
        lines.append("| " + " | ".join(cells) + " |")
    return (
        f"First epoch of {n} shuffled samples, latency-bound source (median seconds)\n\n"
        + "\n".join(lines)
    )


def report(results: dict[str, Results], plan: Plan) -> str:
    table = rows(results, plan.fixed)
    parts = [
        f"## Preload throughput: auto / fixed counts (median of {plan.repeats} rounds' ratios)",
        "",
        throughput_table(table, plan.fixed),
    ]
    if plan.epoch_n:
        parts += ["", "## " + epoch_table(results, plan.epoch_n)]
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short jobs, one round (CI)")
    parser.add_argument("--old", type=Path, help="the src directory of another tree, side by side")
    parser.add_argument("--seconds", type=float, nargs="+", help="job lengths (default 1 3)")
    parser.add_argument("--repeats", type=int, help="rounds (default 5)")
    parser.add_argument("--fixed", type=int, nargs="+", default=list(FIXED), help="fixed counts")
    parser.add_argument("--storages", nargs="+", default=list(STORAGE_KEYS), choices=STORAGE_KEYS)
    parser.add_argument("--epoch-n", type=int, default=EPOCH_N, help="0: no first-epoch job")
    parser.add_argument("--out", type=Path, help="also write the tables here")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve()
        return ""
    default_seconds, default_repeats = ((0.3,), 1) if args.quick else ((1.0, 3.0), 5)
    plan = Plan(
        storages=tuple(args.storages),
        seconds=tuple(args.seconds or default_seconds),
        fixed=tuple(args.fixed),
        repeats=args.repeats or default_repeats,
        epoch_n=args.epoch_n,
        epoch_fixed=tuple(c for c in EPOCH_FIXED if c in args.fixed) or tuple(args.fixed[-1:]),
    )
    trees = [Tree("new", None if args.old is None else REPO / "src")]
    if args.old is not None:
        trees.insert(0, Tree("old", args.old))
    start = time.perf_counter()
    loads = [os.getloadavg()]

    def log(line: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f} s] {line}", file=sys.stderr, flush=True)

    try:
        results = run_plan(plan, trees, log)
    finally:
        for tree in trees:
            tree.close()
    loads.append(os.getloadavg())
    text = (
        report(results, plan)
        + "\n"
        + "\n".join(
            f"load average (1/5/15 min) {when}: " + "/".join(f"{x:.1f}" for x in load)
            for when, load in zip(("before", "after"), loads, strict=True)
        )
        + f" ({os.cpu_count()} CPUs, {time.perf_counter() - start:.0f} s)\n"
    )
    print(text)
    if args.out is not None:
        args.out.write_text(text)
    return text


if __name__ == "__main__":
    main()
