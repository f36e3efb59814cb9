"""Space: store bytes against tensor bytes, with the LMDB page statistics that explain them.

Run: ``python -m benchmarks.space [--quick] [--out FILE]``. For each tensor size, a fresh
``SpillCache(ram_budget=0)`` gets samples ``{"image": float32 tensor, "meta": {"id": int, "z":
float}}`` put in key order and in shuffled order, and is closed; then its ``data.mdb`` is opened
read-only with ``lmdb`` and measured: pages in use (``last_pgno + 1``) times the page size against
the tensor bytes, and the data db's branch, leaf and overflow pages (``txn.stat``), how full its
leaves are, and the pages neither db holds (free pages, meta pages). The same stored values are
then written into raw LMDB stores laid out four ways, to show what a layout would save:
``put`` in the same order (spillcache's layout without spillcache), ``put(append=True)`` in key
order (MDB_APPEND: leaves filled to the brim), packs (values in arrival order concatenated into
one LMDB value of at least PACK_BYTES, appended by pack id, with an index db ``key -> (pack,
offset, length)`` put in arrival order), and packs of at least BIG_PACK_BYTES with a dense
index (DENSE_BYTES per key in chunks of DENSE_SLOTS consecutive keys, rewritten per commit).
The *workers* rows fill the store as training does: WORKERS forked DataLoader workers call
``get_or_load`` for every key (in key or shuffled order), and each commits every sample it
loads before handing it out (with ``--old``, the old code too).
"""

from __future__ import annotations

import argparse
import os
import struct
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
import torch

import spillcache
from spillcache import SpillCache
from spillcache.codec import encode, relaid

SIZES = (512, 1024, 2048, 3072, 4096, 6144, 16384, 65536, 262144)  # tensor bytes per sample
QUICK_SIZES = (512, 4096)
STORE_BYTES = 32 << 20  # tensor bytes per store: enough pages for stable ratios
PACK_BYTES = 64 << 10
BIG_PACK_BYTES = 1 << 20
DENSE_SLOTS = 500  # keys per chunk of the dense index: 4,000 B, one overflow page
DENSE_BYTES = 8  # index bytes per key: pack id and offset (the length lives in the pack)
PAGE_HEADER = 16  # LMDB's page header
NODE_HEADER = 8  # LMDB's node header: before the key on a leaf
INDEX = struct.Struct(">IIL")  # pack id, offset, length of one sample in its pack
TXN_ENTRIES = 1000  # entries per write transaction of the raw stores
WORKERS = 2  # DataLoader workers of the workers rows


def sample(i: int, nbytes: int) -> dict[str, Any]:
    """The issue's sample: a float32 tensor of ``nbytes`` and a small dict of numbers."""
    return {"image": torch.full((nbytes // 4,), float(i)), "meta": {"id": i, "z": 0.5}}


def entries(nbytes: int, quick: bool) -> int:
    """Samples per store of ``nbytes`` tensors."""
    return 64 if quick else max(256, min(65536, STORE_BYTES // nbytes))


def order(n: int, shuffled: bool) -> list[int]:
    return np.random.default_rng(0).permutation(n).tolist() if shuffled else list(range(n))


@dataclass(frozen=True)
class Pages:
    """Where a store's pages go: ``used`` = last_pgno + 1; the rest are the data db's."""

    psize: int
    used: int
    branch: int
    leaf: int
    overflow: int
    entries: int
    leaf_fill: float  # bytes of leaf nodes / bytes of leaf pages

    @property
    def other(self) -> int:
        """Pages of no data db: free pages, the meta pages, other dbs (meta, index)."""
        return self.used - self.branch - self.leaf - self.overflow


def node_bytes(key: int, value: int, nodemax: int) -> int:
    """Bytes a leaf gives one entry: its slot, node header, key and value (or overflow pgno)."""
    body = NODE_HEADER + key + (value if NODE_HEADER + key + value <= nodemax else 8)
    return 2 + body + body % 2


def measure(path: Path, db: bytes) -> Pages:
    """The page statistics of the store at ``path`` (read-only, no lock) and its db ``db``."""
    env = lmdb.open(str(path), readonly=True, lock=False, max_dbs=8, subdir=True)
    try:
        info, psize = env.info(), env.stat()["psize"]
        handle = env.open_db(db, create=False)
        # LMDB keeps a value inline while its node fits half a page's room (4 KiB pages: 2038 B).
        nodemax = ((psize - PAGE_HEADER) // 2 & ~1) - 2
        with env.begin(buffers=True) as txn:
            stat = txn.stat(handle)
            nodes = sum(node_bytes(len(k), len(v), nodemax) for k, v in txn.cursor(handle))
    finally:
        env.close()
    leaf_room = max(1, stat["leaf_pages"]) * (psize - PAGE_HEADER)
    return Pages(
        psize,
        info["last_pgno"] + 1,
        stat["branch_pages"],
        stat["leaf_pages"],
        stat["overflow_pages"],
        stat["entries"],
        nodes / leaf_room,
    )


def fill(path: Path, nbytes: int, keys: list[int]) -> None:
    warnings.simplefilter("ignore")
    with SpillCache(path, ram_budget=0) as cache:
        for i in keys:
            cache.put(i, sample(i, nbytes))
        cache.flush()


def stored(nbytes: int, n: int) -> list[tuple[bytes, bytes]]:
    """Every (key, value) a store of format 1 held, in key order: the samples' values."""
    return [(i.to_bytes(8, "big"), encode(sample(i, nbytes))) for i in range(n)]


_OLD_FILL = """
import sys, warnings
import numpy as np, torch
from spillcache import SpillCache
path, nbytes, n, shuffled = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
keys = np.random.default_rng(0).permutation(n).tolist() if shuffled else list(range(n))
warnings.simplefilter("ignore")
with SpillCache(path, ram_budget=0) as cache:
    for i in keys:
        cache.put(i, {"image": torch.full((nbytes // 4,), float(i)), "meta": {"id": i, "z": 0.5}})
    cache.flush()
"""


def fill_old(path: Path, nbytes: int, n: int, shuffled: bool, src: str) -> None:
    """The same store written by the spillcache in ``src`` (e.g. a worktree of main)."""
    env = {**os.environ, "PYTHONPATH": src}
    args = [str(path), str(nbytes), str(n), "1" if shuffled else "0"]
    subprocess.run([sys.executable, "-c", _OLD_FILL, *args], env=env, check=True)


_WORKERS_FILL = """
import os, sys, warnings
import numpy as np, torch
from torch.utils.data import DataLoader, Dataset
from spillcache import SpillCache
path, nbytes, n, shuffled = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
keys = np.random.default_rng(0).permutation(n).tolist() if shuffled else list(range(n))
def load(k):
    return {"image": torch.full((nbytes // 4,), float(k)), "meta": {"id": k, "z": 0.5}}
class Samples(Dataset):
    def __init__(self, cache):
        self.cache = cache
    def __len__(self):
        return n
    def __getitem__(self, i):
        return self.cache.get_or_load(keys[i], load)["meta"]["id"]
warnings.simplefilter("ignore")
os.environ["SPILLCACHE_NODE_DIR"] = "off"
with SpillCache(path, ram_budget=0) as cache:
    loader = DataLoader(Samples(cache), batch_size=8, num_workers=WORKERS,
                        multiprocessing_context="fork")
    assert sum(len(batch) for batch in loader) == n
"""


def fill_workers(path: Path, nbytes: int, n: int, shuffled: bool, src: str | None) -> None:
    """The store as DataLoader workers fill it: each commits every sample it loads (forked)."""
    here = str(Path(spillcache.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": src or here}
    args = [str(path), str(nbytes), str(n), "1" if shuffled else "0"]
    script = _WORKERS_FILL.replace("WORKERS", str(WORKERS))
    subprocess.run([sys.executable, "-c", script, *args], env=env, check=True)


def chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def raw(path: Path, items: Iterable[tuple[bytes, bytes]], *, append: bool) -> Pages:
    """A raw LMDB store of ``items`` put in their order (``append``: MDB_APPEND)."""
    env = lmdb.open(str(path), map_size=1 << 34, max_dbs=4, sync=False, subdir=True)
    db = env.open_db(b"data")
    for batch in chunks(list(items), TXN_ENTRIES):
        with env.begin(write=True, db=db) as txn:
            for key, value in batch:
                txn.put(key, value, append=append)
    env.close()
    return measure(path, b"data")


def packs(
    values: list[tuple[bytes, bytes]], pack_bytes: int
) -> Iterator[tuple[bytes, bytes, list[tuple[bytes, bytes]]]]:
    """(pack id, pack, [(key, index value)]) of consecutive ``values`` packed to ``pack_bytes``."""
    pack: list[tuple[bytes, bytes]] = []
    for number, (key, value) in enumerate(values):
        pack.append((key, value))
        if sum(len(v) for _, v in pack) >= pack_bytes or number == len(values) - 1:
            offsets = np.cumsum([0] + [len(v) for _, v in pack]).tolist()
            index = [
                (k, INDEX.pack(number, o, len(v)))
                for o, (k, v) in zip(offsets[:-1], pack, strict=True)
            ]
            yield number.to_bytes(8, "big"), b"".join(v for _, v in pack), index
            pack = []


def dense_put(txn: lmdb.Transaction, db: Any, slots: list[tuple[bytes, bytes]]) -> None:
    """Index entries into chunks of DENSE_SLOTS keys, DENSE_BYTES each (read, modify, write)."""
    by_chunk: dict[int, list[tuple[int, bytes]]] = {}
    for key, slot in slots:
        k = int.from_bytes(key, "big")
        by_chunk.setdefault(k // DENSE_SLOTS, []).append((k % DENSE_SLOTS, slot[:DENSE_BYTES]))
    for chunk, entries in sorted(by_chunk.items()):
        ckey = chunk.to_bytes(8, "big")
        value = bytearray(txn.get(ckey, db=db) or bytes(DENSE_SLOTS * DENSE_BYTES))
        for pos, slot in entries:
            value[pos * DENSE_BYTES : (pos + 1) * DENSE_BYTES] = slot
        txn.put(ckey, bytes(value), db=db)


def packed(
    path: Path, values: list[tuple[bytes, bytes]], pack_bytes: int, *, in_order: bool, dense: bool
) -> Pages:
    """Packs appended by id, and an index db put in arrival order (appended when in order).

    ``dense``: the index holds DENSE_BYTES per key, in chunks of DENSE_SLOTS consecutive keys
    (one LMDB value each), instead of one LMDB entry per key.
    """
    env = lmdb.open(str(path), map_size=1 << 34, max_dbs=4, sync=False, subdir=True)
    data, index = env.open_db(b"data"), env.open_db(b"index")
    for group in chunks(list(packs(values, pack_bytes)), max(1, (4 << 20) // pack_bytes)):
        with env.begin(write=True) as txn:
            for pid, pack, _ in group:
                txn.put(pid, pack, db=data, append=True)
            slots = [slot for _, _, pack_slots in group for slot in pack_slots]
            if dense:
                dense_put(txn, index, slots)
            else:
                for key, slot in slots:
                    txn.put(key, slot, db=index, append=in_order)
    env.close()
    return measure(path, b"data")


@dataclass(frozen=True)
class Row:
    """One tensor size and insertion order, and what each layout's store costs."""

    nbytes: int
    n: int
    shuffled: bool
    value_bytes: float  # mean stored value per sample
    layouts: dict[str, Pages]

    def ratio(self, layout: str) -> float:
        """Store bytes (pages in use) / tensor bytes."""
        pages = self.layouts[layout]
        return pages.used * pages.psize / (self.n * self.nbytes)


LAYOUTS = {
    "old": "spillcache, old code (--old)",
    "old_workers": f"spillcache, old code (--old), {WORKERS} DataLoader workers",
    "spillcache": "spillcache",
    "workers": f"spillcache, {WORKERS} DataLoader workers (get_or_load)",
    "raw": "raw LMDB put, same order",
    "append": "raw LMDB put(append=True), key order",
    "packed": f"packs of >= {PACK_BYTES >> 10} KiB + index",
    "dense": f"packs of >= {BIG_PACK_BYTES >> 20} MiB + dense index ({DENSE_BYTES} B/key)",
}


def measure_size(tmp: Path, nbytes: int, n: int, shuffled: bool, old: str | None) -> Row:
    """A spillcache store of ``n`` samples of ``nbytes`` and the raw layouts of its values."""
    keys = order(n, shuffled)
    fill(tmp / "store", nbytes, keys)
    items = stored(nbytes, n)  # key order
    arrival = [items[k] for k in keys]
    layouts = {}
    if old is not None:
        fill_old(tmp / "old", nbytes, n, shuffled, old)
        layouts["old"] = measure(tmp / "old", b"data")
        fill_workers(tmp / "old_workers", nbytes, n, shuffled, old)
        layouts["old_workers"] = measure(tmp / "old_workers", b"data")
    fill_workers(tmp / "workers", nbytes, n, shuffled, None)
    layouts |= {
        "spillcache": measure(tmp / "store", b"data"),
        "workers": measure(tmp / "workers", b"data"),
        "raw": raw(tmp / "raw", arrival, append=False),
        "append": raw(tmp / "append", items, append=True),
        "packed": packed(tmp / "packed", arrival, PACK_BYTES, in_order=not shuffled, dense=False),
        "dense": packed(tmp / "dense", arrival, BIG_PACK_BYTES, in_order=not shuffled, dense=True),
    }
    return Row(nbytes, n, shuffled, sum(len(v) for _, v in items) / n, layouts)


def run(sizes: Iterable[int], quick: bool, old: str | None = None) -> list[Row]:
    rows = []
    for nbytes in sizes:
        for shuffled in (False, True):
            with tempfile.TemporaryDirectory() as tmp:
                n = entries(nbytes, quick)
                rows.append(measure_size(Path(tmp), nbytes, n, shuffled, old))
    return rows


def size_label(nbytes: int) -> str:
    return f"{nbytes} B" if nbytes < 1024 else f"{nbytes / 1024:g} KiB"


def ratio_table(rows: list[Row]) -> list[str]:
    """Store / tensor bytes per size (columns), one line per order and layout."""
    sizes = sorted({r.nbytes for r in rows})
    lines = [
        "| layout | order | " + " | ".join(size_label(s) for s in sizes) + " |",
        "|---|---|" + "---|" * len(sizes),
    ]
    by = {(r.nbytes, r.shuffled): r for r in rows}
    values = " | ".join(f"{by[s, False].value_bytes / s:.3f}" for s in sizes)
    lines.append(f"| value (format 1 entry) / tensor bytes | - | {values} |")
    packed = " | ".join(f"{relaid(encode(sample(0, s))).size / s:.3f}" for s in sizes)
    lines.append(f"| record (format 2, in a pack) / tensor bytes | - | {packed} |")
    for layout, label in LAYOUTS.items():
        if layout not in rows[0].layouts:
            continue
        for shuffled in (False, True):
            if layout == "append" and shuffled:
                continue  # MDB_APPEND takes keys in order only
            cells = " | ".join(f"{by[s, shuffled].ratio(layout):.2f}" for s in sizes)
            lines.append(f"| {label} | {'shuffled' if shuffled else 'key'} | {cells} |")
    return lines


def pages_table(rows: list[Row], layout: str) -> list[str]:
    """The page statistics behind one layout's ratios."""
    lines = [
        "| tensor | order | entries | value B | pages used | branch | leaf | overflow | "
        "overflow / entry | entries / leaf | leaf fill | other pages | store / tensor |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p = r.layouts[layout]
        lines.append(
            f"| {size_label(r.nbytes)} | {'shuffled' if r.shuffled else 'key'} | {p.entries} | "
            f"{r.value_bytes:.0f} | {p.used} | {p.branch} | {p.leaf} | {p.overflow} | "
            f"{p.overflow / max(1, p.entries):.2f} | {p.entries / max(1, p.leaf):.1f} | "
            f"{p.leaf_fill:.0%} | {p.other} | {r.ratio(layout):.2f} |"
        )
    return lines


def report(rows: list[Row]) -> str:
    psize = rows[0].layouts["spillcache"].psize
    parts = [
        f"### Store bytes / tensor bytes (pages in use x {psize} B page)",
        "",
        *ratio_table(rows),
        "",
        "### LMDB pages of spillcache's data db (format 2: the packs; the index, specs and "
        "accounting are in *other pages*)",
        "",
        *pages_table(rows, "spillcache"),
        "",
        f"### LMDB pages of the pack db (packs of >= {PACK_BYTES >> 10} KiB; the index db "
        "is in *other pages*)",
        "",
        *pages_table(rows, "packed"),
        "",
        f"### LMDB pages of the pack db (packs of >= {BIG_PACK_BYTES >> 20} MiB; the dense index "
        "is in *other pages*)",
        "",
        *pages_table(rows, "dense"),
    ]
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="two sizes, tiny stores")
    parser.add_argument("--out", type=Path, help="also write the tables to this file")
    parser.add_argument(
        "--old", metavar="SRC", help="also fill each store with the spillcache in SRC (its src/)"
    )
    args = parser.parse_args(argv)
    text = report(run(QUICK_SIZES if args.quick else SIZES, args.quick, args.old))
    print(text)
    if args.out:
        args.out.write_text(text)
    return text


if __name__ == "__main__":
    main()
