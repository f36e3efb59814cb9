"""Scale: how fill, random disk reads, open and ``len()`` behave as a store grows.

Run: ``python -m benchmarks.scale [--entries 20000 1000000] [--quick] [--dir DIR] [--out FILE]``.
For each entry count, a fresh ``SpillCache(ram_budget=0)`` gets that many 4 KiB samples
(``{"image": float32 tensor, "meta": {"id": int, "z": float}}``) put in key order, then flushed:
the fill rate over all puts, and over the last WINDOW puts (the rate at that size); the smallest
store is filled once more at the end and its two rates averaged (the machine drifts meanwhile).
Then all stores are opened at once (``ram_budget=0``) and read at random, interleaved: each pass
reads READS uniformly drawn keys (fresh ones each pass) from every store in turn, after one
untimed pass; the ratio is the median over passes of a store's rate over the smallest store's
rate in the same pass. *Same keys again*: each pass rereads the warming pass's keys (their pages
already mapped and cached), which leaves out the first touch of a page of the memory map. The
same is done straight from LMDB (``txn.get`` into a buffer of the pack holding each key: no
index, no decode, no copy) to tell LMDB's share from spillcache's. Open is the time of
``SpillCache(path)`` on the filled store, ``len()`` of one call (medians of OPENS). The
B-tree's depth and branch pages come from the data db's ``txn.stat``.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
import torch

from spillcache import SpillCache

ELEMENTS = 1024  # float32: 4 KiB tensors
WINDOW = 20_000
READS = 20_000
PASSES = 3
OPENS = 5


def pack_of(packs: int, n: int) -> Callable[[int], bytes]:
    """The LMDB key of the pack that holds key ``k`` of a key-order fill of ``n`` in ``packs``."""
    return lambda k: (1 + k * packs // n).to_bytes(8, "big")


def sample(i: int) -> dict[str, Any]:
    return {"image": torch.full((ELEMENTS,), float(i)), "meta": {"id": i, "z": 0.5}}


def timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


@dataclass(frozen=True)
class Scale:
    """What one store of ``n`` entries measured; ``*_ratio``: / the smallest store's."""

    n: int
    fill: float  # puts/s over the whole fill, flush included
    fill_last: float  # puts/s over the last WINDOW puts, flush included
    reads: float  # random disk-tier gets/s (median of the passes)
    reads_ratio: float  # median over passes of this store's rate / the smallest's, same pass
    again: float  # random disk-tier gets/s, each pass reading the keys of the warming pass
    again_ratio: float
    raw_reads: float  # random raw LMDB gets/s of the packs holding the same keys
    raw_ratio: float
    raw_again: float
    raw_again_ratio: float
    open_ms: float
    len_ms: float
    depth: int
    branch_pages: int
    store_gib: float


def fill(path: Path, n: int, window: int) -> tuple[float, float]:
    """Puts/s of the whole fill and of its last ``window`` puts (both to the end of the flush)."""
    warnings.simplefilter("ignore")
    with SpillCache(path, ram_budget=0) as cache:
        start = last = time.perf_counter()
        for i in range(n):
            if i == n - window:
                last = time.perf_counter()
            cache.put(i, sample(i))
        cache.flush()
        end = time.perf_counter()
    return n / (end - start), window / (end - last)


def read_all(get: Callable[[Any], object], keys: list[Any]) -> None:
    for k in keys:
        get(k)


def interleaved(
    gets: list[Callable[[Any], object]],
    sizes: list[int],
    counts: tuple[int, int],
    keys_of: list[Callable[[int], Any]],
    *,
    again: bool,
) -> list[list[float]]:
    """Gets/s per pass of each ``gets[j]`` over ``reads`` random keys below ``sizes[j]``.

    ``counts``: (reads, passes); ``keys_of[j]``: what ``gets[j]`` is given for key ``k``.

    Every pass reads each store once, in an order rotated per pass, with fresh keys (``again``:
    the keys of the first pass); the first pass warms and is dropped.
    """
    reads, passes = counts
    rng = np.random.default_rng(1)
    rates: list[list[float]] = [[] for _ in gets]
    drawn = [
        [f(k) for k in rng.integers(0, n, reads).tolist()]
        for n, f in zip(sizes, keys_of, strict=True)
    ]
    for p in range(passes + 1):
        order = list(range(len(gets)))
        order = order[p % len(order) :] + order[: p % len(order)]
        for j in order:
            if p and not again:
                drawn[j] = [keys_of[j](k) for k in rng.integers(0, sizes[j], reads).tolist()]
            keys = drawn[j]
            seconds = timed(partial(read_all, gets[j], keys))
            if p:
                rates[j].append(reads / seconds)
    return rates


def paired(rates: list[list[float]]) -> list[tuple[float, float]]:
    """(median rate, median over passes of rate / the first store's rate) per store."""
    return [
        (statistics.median(r), statistics.median(x / b for x, b in zip(r, rates[0], strict=True)))
        for r in rates
    ]


def cache_reads(paths: list[Path], sizes: list[int], reads: int, passes: int) -> list[Any]:
    with contextlib.ExitStack() as stack:
        caches = [stack.enter_context(SpillCache(p, ram_budget=0)) for p in paths]
        gets = [c.get for c in caches]
        ints = [int] * len(gets)
        fresh = paired(interleaved(gets, sizes, (reads, passes), ints, again=False))
        again = paired(interleaved(gets, sizes, (reads, passes), ints, again=True))
    return [(*f, *a) for f, a in zip(fresh, again, strict=True)]


def raw_reads(paths: list[Path], sizes: list[int], reads: int, passes: int) -> list[Any]:
    """Reads straight from LMDB of the packs holding the same keys (a get into a buffer: no
    index, no slot, no decode); then each data db's (depth, branch pages)."""
    envs = [lmdb.open(str(p), readonly=True, lock=False, max_dbs=2, subdir=True) for p in paths]
    try:
        dbs = [env.open_db(b"data", create=False) for env in envs]
        txns = [env.begin(db=db, buffers=True) for env, db in zip(envs, dbs, strict=True)]
        gets = [t.get for t in txns]
        stats = [t.stat(db) for t, db in zip(txns, dbs, strict=True)]
        keys = [pack_of(st["entries"], n) for st, n in zip(stats, sizes, strict=True)]
        fresh = paired(interleaved(gets, sizes, (reads, passes), keys, again=False))
        again = paired(interleaved(gets, sizes, (reads, passes), keys, again=True))
        got = [(*f, *a) for f, a in zip(fresh, again, strict=True)]
        for txn in txns:
            txn.abort()
    finally:
        for env in envs:
            env.close()
    return [(*g, s["depth"], s["branch_pages"]) for g, s in zip(got, stats, strict=True)]


def open_and_len(path: Path, opens: int) -> tuple[float, float]:
    """Milliseconds of opening the store and of one ``len()``, medians of ``opens``."""
    open_s, len_s = [], []
    for _ in range(opens):
        start = time.perf_counter()
        cache = SpillCache(path, ram_budget=0)
        open_s.append(time.perf_counter() - start)
        len_s.append(timed(partial(len, cache)))
        cache.close()
    return statistics.median(open_s) * 1e3, statistics.median(len_s) * 1e3


def fills(tmp: Path, sizes: list[int], window: int) -> list[tuple[float, float]]:
    """Fill rates per store; the smallest is filled again last, and its rates averaged."""
    rates = [fill(tmp / f"s{n}", n, min(n, window)) for n in sizes]
    again = fill(tmp / "again", sizes[0], min(sizes[0], window))
    shutil.rmtree(tmp / "again")
    rates[0] = ((rates[0][0] + again[0]) / 2, (rates[0][1] + again[1]) / 2)
    return rates


def measure(tmp: Path, sizes: list[int], quick: bool) -> list[Scale]:
    """Every figure of stores of ``sizes`` entries, all on disk at once."""
    reads, passes = (min(sizes[0], 500), 2) if quick else (READS, PASSES)
    filled = fills(tmp, sizes, sizes[0] // 2 if quick else WINDOW)
    paths = [tmp / f"s{n}" for n in sizes]
    ours = cache_reads(paths, sizes, reads, passes)
    raw = raw_reads(paths, sizes, reads, passes)
    rows = []
    for j, n in enumerate(sizes):
        open_ms, len_ms = open_and_len(paths[j], 2 if quick else OPENS)
        gib = (paths[j] / "data.mdb").stat().st_blocks * 512 / 2**30
        rows.append(Scale(n, *filled[j], *ours[j], *raw[j][:4], open_ms, len_ms, *raw[j][4:], gib))
    return rows


def report(rows: list[Scale]) -> str:
    base = rows[0]
    lines = [
        f"### 4 KiB samples: fill and random disk-tier reads vs entries (ratios: / {base.n:,})",
        "",
        "| entries | store GiB | B-tree depth | branch pages | fill puts/s | ratio | "
        f"fill, last {WINDOW:,} puts/s | ratio | random gets/s | ratio | same keys again | ratio | "
        "raw LMDB gets/s | ratio | same keys again | ratio | open ms | len() ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.n:,} | {r.store_gib:.2f} | {r.depth} | {r.branch_pages:,} | {r.fill:,.0f} | "
            f"{r.fill / base.fill:.2f} | {r.fill_last:,.0f} | {r.fill_last / base.fill_last:.2f} "
            f"| {r.reads:,.0f} | {r.reads_ratio:.2f} | {r.again:,.0f} | {r.again_ratio:.2f} | "
            f"{r.raw_reads:,.0f} | {r.raw_ratio:.2f} | {r.raw_again:,.0f} | "
            f"{r.raw_again_ratio:.2f} | {r.open_ms:.2f} | {r.len_ms:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, nargs="+", default=[20_000, 200_000])
    parser.add_argument("--quick", action="store_true", help="small reads and passes")
    parser.add_argument("--dir", type=Path, help="where the stores go (default: a temp dir)")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        rows = measure(Path(tmp), sorted(args.entries), args.quick)
    text = report(rows)
    print(text)
    if args.out:
        args.out.write_text(text)
    return text


if __name__ == "__main__":
    main()
