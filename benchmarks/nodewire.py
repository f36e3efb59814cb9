"""The node RAM tier wired into SpillCache: warm epochs, hit rates and memory with workers.

Run: ``python -m benchmarks.nodewire [--quick] [--old OLD_SRC]`` (with ``PYTHONPATH`` set to the
``src`` of the tree to measure; ``--old`` runs every rate setting in that tree too, interleaved).
Each setting runs in a fresh process (``--one``), the settings interleaved, so that all share
the machine's load in one run; read the ratios, not the absolute figures.

* ``speed``: a warm epoch of 1 MiB samples, data within the budget, ``num_workers=2``: the node
  tier against ``SPILLCACHE_NODE_DIR=off`` (today's workers: the disk tier through the page
  cache). Target: at least as fast.
* ``rate``: RAM hit rate of a warm epoch, data 3x the budget, after a sequential first pass,
  for 0 and 2 workers, sequential and shuffled (target >= 0.9 x budget/data), and a skewed
  sampler with 2 workers (20 % of the indices draw 80 % of the weight; target >= 1.5 x).
* ``memory``: sum over the main process and its workers of ``Pss_Anon`` (smaps_rollup) plus
  the node tier's bytes on its tmpfs, once, against ``1.25 x ram_budget + 64 MiB`` per process;
  "above idle" subtracts the main process's ``Pss_Anon`` before it opened the cache (torch
  alone takes ~100 MiB of it, shared copy-on-write with forked workers).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, WeightedRandomSampler

from spillcache import SpillCache

MIB = 1 << 20
PREFIX = "spillcache-node-"  # node/place.py's; spelt out so that --old trees import this too


class Items(Dataset[torch.Tensor]):
    """``get_or_load`` of each index: a sample of ``elements`` float32."""

    def __init__(self, cache: SpillCache, n: int, elements: int) -> None:
        self.cache, self.n, self.elements = cache, n, elements

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        sample = self.cache.get_or_load(i, self.load)
        return sample["x"][:1]

    def load(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": torch.full((self.elements,), float(i))}


def pss_anon(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss_Anon:"):
            return int(line.split()[1]) * 1024
    return 0


def tier_bytes() -> int:
    root = Path(os.environ.get("SPILLCACHE_NODE_DIR") or "/dev/shm")
    total = 0
    for directory in root.glob(PREFIX + "*"):
        total += sum(f.stat().st_blocks * 512 for f in directory.iterdir() if f.is_file())
    return total


def one(setting: dict[str, Any]) -> dict[str, Any]:
    """Run one setting in this process (two spawned ranks for ``ddp``); its figures."""
    if setting.get("ddp"):
        from .nodeddp import one_ddp  # only this setting needs it (it imports this module)

        return one_ddp(setting, tier_bytes)
    n, elements, workers = setting["n"], setting["elements"], setting["workers"]
    budget = setting["budget"]
    idle = pss_anon(os.getpid())  # torch and spillcache imported, no cache yet
    with tempfile.TemporaryDirectory(dir=setting["root"]) as store:
        cache = SpillCache(Path(store) / "s", ram_budget=budget)
        data = Items(cache, n, elements)
        order: Sampler[int] | None = None
        if setting["order"] == "skewed":
            hot = max(1, n // 5)
            weights = [0.8 / hot if i < hot else 0.2 / (n - hot) for i in range(n)]
            order = WeightedRandomSampler(weights, n, generator=torch.Generator().manual_seed(1))
        kwargs: dict[str, Any] = {"batch_size": 8, "num_workers": workers}
        if workers:
            kwargs |= {"persistent_workers": True, "multiprocessing_context": "fork"}
        first = DataLoader(data, shuffle=False, **kwargs)  # the sequential first pass
        for _ in first:
            pass
        warm = DataLoader(data, shuffle=setting["order"] == "shuffled", sampler=order, **kwargs)
        results = []
        for _ in range(setting["epochs"]):
            before = cache.stats()
            start = time.perf_counter()
            it = iter(warm)
            count = sum(len(batch) for batch in it)
            seconds = time.perf_counter() - start
            after = cache.stats()
            requests = after.requests - before.requests
            results.append(
                {
                    "samples_s": count / seconds,
                    "ram_rate": (after.ram_hits - before.ram_hits) / max(requests, 1),
                }
            )
        pids = [os.getpid()] + [w.pid for w in getattr(it, "_workers", [])]
        memory = sum(pss_anon(p) for p in pids if p is not None) + tier_bytes()
        del it
        cache.close()
    last = results[-1]
    return {
        **setting,
        "samples_s": last["samples_s"],
        "ram_rate": last["ram_rate"],
        "memory": memory,
        "idle": idle,
        "processes": 1 + workers,
    }


def settings(quick: bool, root: str, small: int | None = None) -> list[dict[str, Any]]:
    """Every setting; ``small``: KiB per sample in the rate settings (default 64, quick 16)."""
    if small is None:
        small = 16 if quick else 64
    rate_n = (192 if quick else 768) * 64 // small
    out = []
    for node in ("on", "off"):
        out.append(
            {"kind": "speed", "node": node, "n": 48 if quick else 96, "elements": MIB // 4,
             "workers": 2, "budget": (64 if quick else 128) * MIB, "order": "shuffled",
             "epochs": 2, "root": root}
        )  # fmt: skip
    data = rate_n * small * 1024
    for workers, order in ((0, "sequential"), (0, "shuffled"), (2, "sequential"),
                           (2, "shuffled"), (4, "sequential"), (4, "shuffled"),
                           (2, "skewed")):  # fmt: skip
        out.append(
            {"kind": "rate", "node": "on", "n": rate_n, "elements": small * 256,
             "workers": workers, "budget": data // 3, "order": order, "epochs": 3, "root": root}
        )  # fmt: skip
    for order in ("sequential", "shuffled"):  # 2 DDP ranks (gloo), no DataLoader workers
        out.append(
            {"kind": "rate", "node": "on", "n": rate_n, "elements": small * 256, "workers": 0,
             "budget": data // 3, "order": order, "epochs": 3, "root": root, "ddp": True}
        )  # fmt: skip
    return out


def child_env(node: str, src: str | None) -> dict[str, str]:
    """The environment of a setting's process: node tiers ``on`` or ``off``; ``src``: a tree."""
    env = dict(os.environ)
    if node == "off":
        env["SPILLCACHE_NODE_DIR"] = "off"
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join((src, os.getcwd()))
    return env


def run_one(setting: dict[str, Any], src: str | None = None) -> dict[str, Any]:
    env = child_env(setting["node"], src)
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.nodewire", "--one", json.dumps(setting)],
        capture_output=True, text=True, env=env, check=True, timeout=1200,
    )  # fmt: skip
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def report(rows: list[dict[str, Any]]) -> str:
    columns = ("setting", "workers", "order", "samples/s", "RAM hit rate", "target")
    head = "| " + " | ".join((*columns, "memory MiB", "above idle", "limit MiB")) + " |"
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        share = 1 / 3
        target = {"rate": 0.9 * share, "speed": 0.0}[row["kind"]]
        if row["order"] == "skewed":
            target = 1.5 * share
        limit = (1.25 * row["budget"] + 64 * MIB * row["processes"]) / MIB
        label = f"{row['kind']} node={row['node']}" + (" 2 DDP ranks" if row.get("ddp") else "")
        if row.get("old"):
            label = "old tree" + (" 2 DDP ranks" if row.get("ddp") else "")
        lines.append(
            f"| {label} | {row['workers']} | {row['order']} | {row['samples_s']:.0f} | "
            f"{row['ram_rate']:.3f} | {'>= ' + format(target, '.3f') if target else '-'} | "
            f"{row['memory'] / MIB:.0f} | {(row['memory'] - row['idle']) / MIB:.0f} | "
            f"{limit:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller data, fewer repeats")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions of speed")
    parser.add_argument("--rates", action="store_true", help="rates and memory only (no timing)")
    parser.add_argument("--small", type=int, help="KiB per sample in the rate settings")
    parser.add_argument("--old", help="src of an old tree: its rate settings beside the new")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(one(json.loads(args.one))))
        return 0
    with tempfile.TemporaryDirectory() as root:
        all_settings = settings(args.quick, root, args.small)
        speed = [s for s in all_settings if s["kind"] == "speed" and not args.rates]
        rows = []
        for s in all_settings:
            if s["kind"] == "rate":
                rows.append(run_one(s))
                if args.old:  # interleaved: both share the machine's load
                    rows.append({**run_one(s, args.old), "old": True})
        timed: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
        for _ in range(1 if args.quick else args.reps):
            for s in speed:  # interleaved: both share the machine's load
                timed[s["node"]].append(run_one(s))
        for node, runs in timed.items():
            if not runs:  # --rates
                continue
            best = dict(runs[0])
            best["samples_s"] = statistics.median(r["samples_s"] for r in runs)
            rows.insert(0 if node == "on" else 1, best)
    print(report(rows))
    if speed:
        on, off = rows[0]["samples_s"], rows[1]["samples_s"]
        print(f"\nwarm epoch, 1 MiB, 2 workers: node tier / page cache = {on / off:.2f}")
    print(os.popen("uptime").read().strip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
