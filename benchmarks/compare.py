"""Old code against new in one run: hit costs and fill rates, interleaved rounds.

Run: ``python -m benchmarks.compare --old OLD_SRC [--new src] [--rounds 7] [--quick]``, where
``OLD_SRC`` is the ``src`` directory of another checkout, e.g. a worktree of the commit a change
starts from (``git worktree add /tmp/old b032dad`` gives ``/tmp/old/src``). Each round runs every
figure once for each tree, in a fresh process whose ``PYTHONPATH`` is that tree, alternating
which goes first; the table shows the medians and new/old. Only the public API is used, so any
two versions compare. Machines drift within minutes: compare the ratios of one run, never
figures across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

# What one child measures: (figure, sample tensor elements, entries). 1 024 float32 = 4 KiB,
# 262 144 = 1 MiB.
FIGURES = (
    ("RAM hit, 4 KiB (µs)", 1024, 2000),
    ("RAM hit, 1 MiB (µs)", 262144, 64),
    ("disk hit, 4 KiB (µs)", 1024, 2000),
    ("disk hit, 1 MiB (µs)", 262144, 64),
    ("fill, 4 KiB (puts/s)", 1024, 4000),
    ("fill, 1 MiB (puts/s)", 262144, 200),
)

_CHILD = r"""
import json, statistics, sys, tempfile, time, warnings
import torch
from spillcache import SpillCache

figure, elements, n, passes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
warnings.simplefilter("ignore")
def sample(i):
    return {"image": torch.full((elements,), float(i)), "meta": {"id": i, "z": 0.5}}
samples = [sample(i) for i in range(n)]
with tempfile.TemporaryDirectory() as tmp:
    if figure.startswith("fill"):
        times = []
        for p in range(passes):
            with SpillCache(f"{tmp}/s{p}", ram_budget=0) as cache:
                start = time.perf_counter()
                for i, s in enumerate(samples):
                    cache.put(i, s)
                cache.flush()
                times.append(time.perf_counter() - start)
        print(json.dumps(n / statistics.median(times)))
    else:
        budget = 4 * n * (elements * 4 + 4096) if figure.startswith("RAM") else 0
        with SpillCache(f"{tmp}/s", ram_budget=budget) as cache:
            for i, s in enumerate(samples):
                cache.put(i, s)
            cache.flush()
            for i in range(n):  # warm: page cache, RAM admission, code paths
                cache.get(i)
            times = []
            for _ in range(passes):
                start = time.perf_counter()
                for i in range(n):
                    cache.get(i)
                times.append(time.perf_counter() - start)
        print(json.dumps(statistics.median(times) / n * 1e6))
"""


def measure(tree: Path, figure: str, elements: int, n: int, passes: int) -> float:
    """One figure measured by a fresh process that imports spillcache from ``tree``."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    args = [sys.executable, "-c", _CHILD, figure, str(elements), str(n), str(passes)]
    out = subprocess.run(args, env=env, check=True, capture_output=True, text=True).stdout
    return float(json.loads(out.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", type=Path, required=True, help="src directory of the old code")
    parser.add_argument("--new", type=Path, default=Path("src"), help="src directory of the new")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds per figure")
    parser.add_argument("--quick", action="store_true", help="small sizes (CI smoke test)")
    args = parser.parse_args()
    trees = {"old": args.old.resolve(), "new": args.new.resolve()}
    for name, tree in trees.items():
        if not (tree / "spillcache" / "__init__.py").is_file():
            parser.error(f"--{name} {str(tree)!r} holds no spillcache package")
    passes = 3 if args.quick else 7
    print("| figure | old | new | new / old |")
    print("|---|---|---|---|")
    for figure, elements, n in FIGURES:
        count = max(4, n // 20) if args.quick else n
        got: dict[str, list[float]] = {"old": [], "new": []}
        for r in range(args.rounds):
            for name in ("old", "new") if r % 2 == 0 else ("new", "old"):
                got[name].append(measure(trees[name], figure, elements, count, passes))
        old, new = statistics.median(got["old"]), statistics.median(got["new"])
        print(f"| {figure} | {old:,.1f} | {new:,.1f} | {new / old:.3f} |", flush=True)


if __name__ == "__main__":
    main()
