"""Warm epochs under a job memory limit smaller than the data: node tier vs page cache, or formats.

Run as root: ``python -m benchmarks.memlimit [--quick] [--old OLD_SRC] [--formats]
[--sample-kib K] [--shuffle] [--data-mib M] [--limit-mib L]`` (``PYTHONPATH`` set to the ``src``
of the tree to measure). Each setting runs in a fresh process placed in a memory
cgroup of its own (v2 ``memory.max`` where the unified hierarchy has the memory controller,
else v1 ``memory.limit_in_bytes``), which charges anonymous memory, the page cache of the store
and the node tier's tmpfs pages alike, as SLURM and container limits do. The store is on the
local disk. A main process and ``--workers`` persistent DataLoader workers (fork) read a
sequential first pass, then sequential warm epochs:

* ``node=off``: the workers read the store through the page cache only (as before the node
  tier; ``--old`` runs the old tree this way too), which the limit squeezes;
* ``node=on``: the node tier holds ``--budget`` of the data in shared memory.

With ``--formats`` (and ``--old``), the page cache alone serves both trees, with no RAM tier
(``ram_budget=0``): how many samples of the store the limit keeps cached, which is what the
store's bytes per sample decide (e.g. an old tree of store format 1 against format 2, with
``--sample-kib 4``). ``--shuffle``: warm epochs in a new random order each (DataLoader
``shuffle=True``), else sequential.

Reported per setting (median of the warm epochs): samples/s, the RAM (node) tier's hit rate,
and the share of the epoch's bytes that had to come from the disk (``read_bytes`` of
``/proc/PID/io``, summed over the processes): a page-cache miss rate, 1.0 = every byte read
(more than 1.0: read-ahead and packs bring in bytes of other samples too), and the store's size.
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

from torch.utils.data import DataLoader

from spillcache import SpillCache

from .nodewire import Items, child_env

MIB = 1 << 20
_V2 = Path("/sys/fs/cgroup")
_V1 = Path("/sys/fs/cgroup/memory")


def read_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    return 0


def one(setting: dict[str, Any]) -> dict[str, Any]:
    """Run one setting in this process (already in its cgroup); its figures."""
    n, elements = setting["n"], setting["elements"]
    with tempfile.TemporaryDirectory(dir=setting["root"]) as store:
        cache = SpillCache(Path(store) / "s", ram_budget=setting["budget"])
        data = Items(cache, n, elements)
        loader = DataLoader(
            data, batch_size=8, num_workers=setting["workers"], persistent_workers=True,
            multiprocessing_context="fork", shuffle=setting.get("shuffle", False),
        )  # fmt: skip
        for _ in loader:  # the first pass fills the store (and the node tier)
            pass
        epochs = []
        for _ in range(setting["epochs"]):
            before = cache.stats()
            it = iter(loader)
            pids = [os.getpid()] + [w.pid for w in getattr(it, "_workers", [])]
            read = sum(read_bytes(p) for p in pids if p is not None)
            start = time.perf_counter()
            count = sum(len(batch) for batch in it)
            seconds = time.perf_counter() - start
            read = sum(read_bytes(p) for p in pids if p is not None) - read
            after = cache.stats()
            requests = max(after.requests - before.requests, 1)
            epochs.append(
                {
                    "samples_s": count / seconds,
                    "ram_rate": (after.ram_hits - before.ram_hits) / requests,
                    "disk_share": read / (count * elements * 4),
                }
            )
            del it
        cache.close()
        store_mib = (Path(store) / "s" / "data.mdb").stat().st_blocks * 512 / MIB
    return {
        **setting,
        **{k: statistics.median(e[k] for e in epochs) for k in epochs[0]},
        "store_mib": store_mib,
    }


def make_cgroup(limit: int) -> tuple[Path, str]:
    """A memory cgroup limited to ``limit`` bytes, under this process's own; and its kind."""
    controllers = _V2 / "cgroup.controllers"
    if controllers.exists() and "memory" in controllers.read_text().split():
        mine = Path(Path("/proc/self/cgroup").read_text().split("::", 1)[1].strip())
        group = _V2 / mine.relative_to("/") / f"spillcache-bench-{os.getpid()}"
        group.mkdir()
        (group / "memory.max").write_text(str(limit))
        (group / "memory.swap.max").write_text("0")
        return group, "v2 memory.max"
    mine_v1 = next(
        line.split(":", 2)[2]
        for line in Path("/proc/self/cgroup").read_text().splitlines()
        if line.split(":")[1] == "memory"
    )
    group = _V1 / mine_v1.lstrip("/") / f"spillcache-bench-{os.getpid()}"
    group.mkdir()
    (group / "memory.limit_in_bytes").write_text(str(limit))
    return group, "v1 memory.limit_in_bytes"


def run_one(setting: dict[str, Any], group: Path, src: str | None) -> dict[str, Any]:
    env = child_env(setting["node"], src)

    def enter() -> None:  # in the child, before exec: it and its workers are charged there
        (group / "cgroup.procs").write_text(str(os.getpid()))

    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.memlimit", "--one", json.dumps(setting)],
        capture_output=True, text=True, env=env, check=False, timeout=3600, preexec_fn=enter,
    )  # fmt: skip
    if done.returncode:
        raise RuntimeError(f"setting {setting} failed ({done.returncode}): {done.stderr[-2000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def report(rows: list[dict[str, Any]], limit: int, kind: str) -> str:
    row0 = rows[0]
    data = row0["n"] * row0["elements"] * 4
    lines = [
        f"limit {limit // MIB} MiB ({kind}); data {data // MIB} MiB on local disk; "
        f"budget {row0['budget'] // MIB} MiB (budget/data {row0['budget'] / data:.3f}); "
        f"{row0['workers']} workers; {row0['elements'] * 4 // 1024} KiB samples; "
        f"{'shuffled' if row0.get('shuffle') else 'sequential'} warm epochs "
        f"(median of {row0['epochs']})",
        "",
        "| setting | store MiB | samples/s | RAM hit rate | bytes read from disk / epoch bytes |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['label']} | {row['store_mib']:.0f} | {row['samples_s']:.0f} | "
            f"{row['ram_rate']:.3f} | {row['disk_share']:.3f} |"
        )
    return "\n".join(lines)


def settings(
    args: argparse.Namespace,
) -> tuple[int, list[tuple[str, str, str | None]], dict[str, Any]]:
    """The limit, the rows (label, node, tree) and the settings every row shares."""
    data = (args.data_mib or (512 if args.quick else 1536)) * MIB
    # Half the data by default, and room for three processes' torch.
    limit = args.limit_mib * MIB if args.limit_mib else data // 2 + 256 * MIB
    elements = args.sample_kib * 256
    base = {
        "n": data // (elements * 4), "elements": elements, "workers": args.workers,
        "budget": 0 if args.formats else data // 4, "epochs": 3, "shuffle": args.shuffle,
    }  # fmt: skip
    if args.formats:
        if not args.old:
            raise SystemExit("--formats compares two trees: give --old OLD_SRC")
        rows = [("this tree (page cache only)", "off", None),
                ("old tree (page cache only)", "off", args.old)]  # fmt: skip
    else:
        rows = [("node=off (page cache only)", "off", None), ("node=on", "on", None)]
        if args.old:
            rows.append(("old tree (page cache only)", "off", args.old))
    return limit, rows, base


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller data and limit")
    parser.add_argument("--old", help="src of an old tree, run page-cache only as a third row")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--formats", action="store_true", help="this tree vs --old, page cache")
    parser.add_argument("--sample-kib", type=int, default=256, help="tensor KiB per sample")
    parser.add_argument("--shuffle", action="store_true", help="shuffled warm epochs")
    parser.add_argument("--data-mib", type=int, help="tensor MiB of the data set")
    parser.add_argument("--limit-mib", type=int, help="the memory limit (default: data / 2 + 256)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(one(json.loads(args.one))))
        return 0
    limit, labelled, base = settings(args)
    group, kind = make_cgroup(limit)
    rows = []
    try:
        with tempfile.TemporaryDirectory(dir=os.getcwd()) as root:  # on the local disk
            for label, node, src in labelled:
                setting = {**base, "node": node, "root": root, "label": label}
                rows.append(run_one(setting, group, src))
    finally:
        group.rmdir()
    print(report(rows, limit, kind))
    print(os.popen("uptime").read().strip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
