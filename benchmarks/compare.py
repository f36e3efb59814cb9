"""Old code against new in one run: hit costs, put rates and first-epoch overhead, interleaved.

Run: ``python -m benchmarks.compare --old OLD_SRC [--new src] [--rounds 5] [--passes 7] [--stat
paired|median|best] [--cpus 1] [--only LABEL_START] [--json FILE] [--quick]`` (or ``--replay FILE``
to tabulate a ``--json`` file again, e.g. with another ``--stat``), where ``OLD_SRC`` is the ``src``
directory of another checkout, e.g. a worktree of the commit a change starts from (``git worktree
add /tmp/old b032dad`` gives ``/tmp/old/src``). Each round starts, per figure, one fresh process per
tree (``benchmarks/compare_child.py`` with ``PYTHONPATH`` set to that tree); both set the figure up,
then are asked for one timed pass in turn, alternating which goes first, so that the two trees share
the machine's load pass by pass. A round's new / old is the median of its passes' ratios (``--stat
paired``, the default), or the ratio of the two processes' medians (``median``) or best passes
(``best``: least time, most puts/s). Rounds alternate which tree starts first. The Markdown table
shows, per figure, the median over the rounds of each tree's figure, of new / old, the range of the
rounds' ratios (with identical trees: the noise) and whether new is worse than old by more than
``--limit`` (3 %). Only the public API is used, so any two versions compare. Machines drift within
minutes: compare the ratios of one run, never figures across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

CHILD = Path(__file__).resolve().with_name("compare_child.py")
KIB4, MIB1 = 1024, 262144  # float32 elements of a 4 KiB and a 1 MiB tensor
# Entries per figure: a timed pass of hits takes 20-60 ms when the machine is idle, long
# enough that one scheduling hiccup does not decide it.


@dataclass(frozen=True)
class Figure:
    """One row: what the child measures (``kind``), on samples of ``elements`` float32."""

    label: str
    kind: str
    elements: int
    n: int
    higher_is_better: bool = False


FIGURES = (
    Figure("RAM hit, 4 KiB (µs)", "ram", KIB4, 4000),
    Figure("RAM hit, 1 MiB (µs)", "ram", MIB1, 256),
    Figure("disk hit, 4 KiB (µs)", "disk", KIB4, 4000),
    Figure("disk hit, 1 MiB (µs)", "disk", MIB1, 256),
    Figure("disk hit admitted to RAM, 4 KiB (µs)", "admit", KIB4, 4000),
    Figure("disk hit admitted to RAM, 1 MiB (µs)", "admit", MIB1, 256),
    Figure("put, 4 KiB (puts/s)", "fill", KIB4, 4000, higher_is_better=True),
    Figure("put, 1 MiB (puts/s)", "fill", MIB1, 200, higher_is_better=True),
    Figure("CachedDataset ds[i] RAM hit, 4 KiB (µs)", "item", KIB4, 4000),
    Figure("CachedDataset __getitems__ RAM hit, 4 KiB (µs/sample)", "batch", KIB4, 4000),
    Figure("first epoch cached / uncached, copy=True, 1 MiB, 2 ms source", "epoch_copy", MIB1, 100),
    Figure(
        "first epoch cached / uncached, copy=False, 1 MiB, 2 ms source", "epoch_nocopy", MIB1, 100
    ),
)


@dataclass(frozen=True)
class Settings:
    """How every round runs: timed passes per process, their summary, CPU pinning."""

    passes: int
    stat: str
    cpus: str | None
    quick: bool


Passes = dict[str, list[float]]  # tree name -> the value of each timed pass of one round


def start(tree: Path, figure: Figure, settings: Settings) -> subprocess.Popen[str]:
    """A child measuring ``figure`` with the spillcache of ``tree``, waiting for requests."""
    n = max(8, figure.n // 20) if settings.quick else figure.n
    args = [sys.executable, str(CHILD), figure.kind, str(figure.elements), str(n)]
    if settings.cpus:
        args = ["taskset", "-c", settings.cpus, *args]
    env = dict(os.environ, PYTHONPATH=str(tree))
    return subprocess.Popen(args, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def ask(child: subprocess.Popen[str]) -> float:
    """One pass of ``child``: its value."""
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write("pass\n")
    child.stdin.flush()
    line = child.stdout.readline()
    if not line:
        raise RuntimeError(f"the child {child.args} died (exit code {child.wait()})")
    return float(json.loads(line))


def measure(trees: dict[str, Path], figure: Figure, settings: Settings, first: str) -> Passes:
    """One round: a fresh child per tree, asked for passes in turn, ``first`` beginning."""
    names = [first, *(name for name in trees if name != first)]
    children = {name: start(trees[name], figure, settings) for name in names}
    got: Passes = {name: [] for name in names}
    try:
        for name in names:
            ask(children[name])  # sets up and warms: not counted
        for p in range(settings.passes):
            for name in names if p % 2 == 0 else names[::-1]:
                got[name].append(ask(children[name]))
    finally:
        for child in children.values():
            assert child.stdin is not None
            child.stdin.close()
            child.wait()
    return got


def summary(figure: Figure, passes: list[float], stat: str) -> float:
    """What one process measured: the median of its passes, or the best one."""
    if stat == "best":
        return max(passes) if figure.higher_is_better else min(passes)
    return statistics.median(passes)


def ratio(figure: Figure, got: Passes, stat: str) -> float:
    """new / old of one round: of the summaries, or (``paired``) the median of the passes'."""
    if stat == "paired":
        return statistics.median(n / o for n, o in zip(got["new"], got["old"], strict=True))
    return summary(figure, got["new"], stat) / summary(figure, got["old"], stat)


def verdict(figure: Figure, ratio: float, limit: float) -> str:
    """``ok``, or how much worse new is than old when past ``limit``."""
    worse = 1 / ratio - 1 if figure.higher_is_better else ratio - 1
    return f"**worse {worse:.1%}**" if worse > limit else "ok"


def row(figure: Figure, rounds: list[Passes], stat: str, limit: float) -> str:
    """The Markdown row of one figure from the passes of every round."""
    old = statistics.median(summary(figure, r["old"], stat) for r in rounds)
    new = statistics.median(summary(figure, r["new"], stat) for r in rounds)
    ratios = [ratio(figure, r, stat) for r in rounds]
    mid = statistics.median(ratios)
    digits = 3 if old < 10 else 1
    return (
        f"| {figure.label} | {old:,.{digits}f} | {new:,.{digits}f} | {mid:.3f} | "
        f"{min(ratios):.3f}-{max(ratios):.3f} | {verdict(figure, mid, limit)} |"
    )


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", type=Path, help="src directory of the old code (required)")
    parser.add_argument("--new", type=Path, default=Path("src"), help="src directory of the new")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per figure")
    parser.add_argument("--passes", type=int, default=7, help="timed passes per process")
    parser.add_argument("--stat", choices=("paired", "median", "best"), default="paired")
    parser.add_argument("--cpus", help="pin every child to these CPUs (taskset -c), e.g. 1")
    parser.add_argument("--only", action="append", help="figures whose label starts so")
    parser.add_argument("--limit", type=float, default=0.03, help="worse by more fails")
    parser.add_argument("--json", type=Path, help="also write every measured value here")
    parser.add_argument("--replay", type=Path, help="tabulate a --json file, measure nothing")
    parser.add_argument("--quick", action="store_true", help="small sizes (CI smoke test)")
    args = parser.parse_args(argv)
    if args.replay:
        return args
    if args.old is None:
        parser.error("--old is required (unless --replay)")
    for name in ("old", "new"):
        tree = getattr(args, name).resolve()
        if not (tree / "spillcache" / "__init__.py").is_file():
            parser.error(f"--{name} {str(tree)!r} holds no spillcache package")
        setattr(args, name, tree)
    return args


HEADER = "| figure | old | new | new / old | per-round range | verdict |\n|---|---|---|---|---|---|"


def replay(args: argparse.Namespace) -> None:
    """The table of a ``--json`` file, with this run's ``--stat`` and ``--limit``."""
    stored = json.loads(args.replay.read_text())
    print(f"{args.replay}: {stored['settings']}, tabulated with --stat {args.stat}\n")
    print(HEADER)
    by_label = {f.label: f for f in FIGURES}
    for label, rounds in stored["values"].items():
        print(row(by_label[label], rounds, args.stat, args.limit))


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.replay:
        replay(args)
        return
    trees = {"old": args.old, "new": args.new}
    settings = Settings(3 if args.quick else args.passes, args.stat, args.cpus, args.quick)
    figures = [f for f in FIGURES if not args.only or f.label.startswith(tuple(args.only))]
    start = time.monotonic()
    print(f"old = {args.old}, new = {args.new}; {args.rounds} rounds, {settings}\n")
    print(HEADER)
    raw: dict[str, list[Passes]] = {}
    for figure in figures:
        rounds = [
            measure(trees, figure, settings, "old" if r % 2 == 0 else "new")
            for r in range(args.rounds)
        ]
        raw[figure.label] = rounds
        print(row(figure, rounds, settings.stat, args.limit), flush=True)
        if args.json:  # after each figure: a long run stopped early keeps what it measured
            args.json.write_text(json.dumps({"settings": vars(settings), "values": raw}))
    print(f"\n{time.monotonic() - start:.0f} s")


if __name__ == "__main__":
    main()
