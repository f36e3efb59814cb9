"""The node RAM tier (spillcache.node) against LMDB on local disk in the page cache.

Two measurements, printed as Markdown tables:

* **get**: microseconds to fetch one encoded value of 4 KiB or 1 MiB from the node tier
  (``get``: a private copy; ``view``: in place, for a decoder that copies anyway) and from an
  LMDB environment on local disk whose pages are in the page cache (``txn.get`` plus a copy, as
  the disk tier reads). Median of ``--rounds`` interleaved rounds, each the mean over every key.
* **memory**: two spawned processes each read every value of a filled tier; each reports its
  ``/proc/self/smaps_rollup`` (``Pss``, ``Pss_Anon``, ``Pss_Shmem``). The tier's pages are
  shared memory counted once: the two ``Pss_Shmem`` add up to at most the tier's bytes on its
  memory file system.

Run: ``PYTHONPATH=src python -m benchmarks.node_tier [--quick] [--rounds N]``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import lmdb

from spillcache.node import NodeTier

KIB, MIB = 1 << 10, 1 << 20


def _keys_and_values(size: int, total: int) -> list[tuple[int, bytes]]:
    count = max(8, total // size)
    return [(k, k.to_bytes(8, "little") * (size // 8)) for k in range(count)]


def _time_per_key(get: Any, keys: list[int]) -> float:
    start = time.perf_counter()
    for key in keys:
        get(key)
    return (time.perf_counter() - start) / len(keys) * 1e6


def _disk_env(root: Path, items: list[tuple[int, bytes]]) -> tuple[lmdb.Environment, Any]:
    env = lmdb.open(str(root), map_size=4 << 30, max_dbs=1, sync=False, writemap=False)
    db = env.open_db(b"data")
    with env.begin(write=True) as txn:
        for key, value in items:
            txn.put(key.to_bytes(8, "big"), value, db=db)
    return env, db


def _disk_get(env: lmdb.Environment, db: Any) -> Any:
    def get(key: int) -> bytes | None:
        with env.begin(buffers=True) as txn:
            raw = txn.get(key.to_bytes(8, "big"), db=db)
            return None if raw is None else bytes(raw)

    return get


def _view_get(tier: NodeTier) -> Any:
    def get(key: int) -> int:
        with tier.view(key) as raw:
            return 0 if raw is None else len(raw)

    return get


def measure_get(size: int, total: int, rounds: int, scratch: Path) -> dict[str, float]:
    """Median microseconds per get of a ``size``-byte value, per contender."""
    items = _keys_and_values(size, total)
    keys = [k for k, _ in items]
    tier = NodeTier.open(scratch / f"store-{size}", 3 * len(items) * size + MIB)
    assert tier is not None, "no /dev/shm here"
    for key, value in items:
        tier.record(key)
        assert tier.admit(key, value)
    env, db = _disk_env(scratch / f"disk-{size}", items)
    contenders = {"node get": tier.get, "node view": _view_get(tier), "disk": _disk_get(env, db)}
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for get in contenders.values():
        _time_per_key(get, keys)  # warm: page cache, sketch pages
    for _ in range(rounds):
        for name, get in contenders.items():
            times[name].append(_time_per_key(get, keys))
    tier.close()
    env.close()
    return {name: statistics.median(t) for name, t in times.items()}


def _rollup() -> dict[str, int]:
    fields = {}
    with open("/proc/self/smaps_rollup", encoding="ascii") as lines:
        for line in lines:
            name, _, rest = line.partition(":")
            if name in ("Pss", "Pss_Anon", "Pss_Shmem", "Pss_File", "Rss"):
                fields[name] = int(rest.split()[0]) * KIB
    return fields


def _reader(store: str, budget: int, count: int, ready: Any, go: Any) -> dict[str, int]:
    tier = NodeTier.open(store, budget)
    assert tier is not None
    for key in range(count):
        with tier.view(key, record=False) as raw:
            assert raw is not None
            sum(raw[::4096])  # touch every page
    ready.wait()  # both have read everything: measure both with the pages shared
    fields = _rollup()
    go.wait()
    tier.close()
    return fields


def measure_memory(size: int, total: int, scratch: Path) -> tuple[list[dict[str, int]], int]:
    """``smaps_rollup`` of two processes reading a filled tier, and the tier's tmpfs bytes."""
    items = _keys_and_values(size, total)
    budget = 3 * len(items) * size + MIB
    store = str(scratch / "shared-store")
    tier = NodeTier.open(store, budget)
    assert tier is not None
    for key, value in items:
        assert tier.admit(key, value)
    directory = Path(tier.stats().directory)
    on_shm = sum(p.stat().st_blocks * 512 for p in directory.iterdir())
    spawn = mp.get_context("spawn")
    with spawn.Manager() as manager:
        ready, go = manager.Barrier(2), manager.Barrier(2)
        with spawn.Pool(2) as pool:
            args = [(store, budget, len(items), ready, go)] * 2
            rollups = pool.starmap(_reader, args)
    tier.close()
    return rollups, on_shm


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    total = 4 * MIB if args.quick else 64 * MIB
    with tempfile.TemporaryDirectory(dir="/var/tmp") as scratch:
        print("| value | node get (us) | node view (us) | LMDB on disk, page cache (us) |")
        print("|---|---|---|---|")
        for size, label in ((4 * KIB, "4 KiB"), (MIB, "1 MiB")):
            t = measure_get(size, total, args.rounds, Path(scratch))
            print(f"| {label} | {t['node get']:.2f} | {t['node view']:.2f} | {t['disk']:.2f} |")
        rollups, on_shm = measure_memory(MIB, total, Path(scratch))
        print(f"\ntier on its memory file system: {on_shm / MIB:.1f} MiB\n")
        print("| process | Rss (MiB) | Pss (MiB) | Pss_Anon (MiB) | Pss_Shmem (MiB) |")
        print("|---|---|---|---|---|")
        for i, r in enumerate(rollups):
            cells = " | ".join(f"{r[f] / MIB:.1f}" for f in ("Rss", "Pss", "Pss_Anon", "Pss_Shmem"))
            print(f"| reader {i} | {cells} |")
        shmem = sum(r["Pss_Shmem"] for r in rollups)
        print(
            f"\nsum of Pss_Shmem: {shmem / MIB:.1f} MiB (tier counted once: <= {on_shm / MIB:.1f})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
