"""The caches compared, behind one interface: fill once, then ``get(i)`` in warm epochs.

Optional peers (MONAI, diskcache) raise :class:`Unavailable` when their package is missing, so
the suite skips them with a clear line instead of failing.
"""

from __future__ import annotations

import importlib
import os
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
import torch

from spillcache import SpillCache
from spillcache.budget import memory_limit

from .workloads import (
    Sample,
    Workload,
    monai_identity_random,
    monai_transform,
    numpy_tree_copy,
    tree_clone,
)

# Kinds, used to group rows and to pick the pairs that targets compare.
FLOOR, OURS, PEER, BASE = "floor", "spillcache", "peer", "baseline"


class Unavailable(Exception):
    """A contender that cannot run here (an optional package is missing)."""


class Contender:
    """A cache under test. ``fill`` stores the samples; ``get(i)`` returns sample ``i``."""

    name = ""
    kind = BASE

    def fill(self, samples: list[Sample], root: Path) -> None:
        raise NotImplementedError

    def get(self, i: int) -> Any:
        raise NotImplementedError

    def disk_bytes(self) -> int | None:
        """Bytes this contender keeps on disk (None: it keeps nothing there)."""
        return None

    def close(self) -> None:
        """Release what the contender holds."""


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class NoCache(Contender):
    name = "no cache (regenerate)"
    kind = BASE

    def __init__(self, workload: Workload) -> None:
        self.make = workload.make

    def fill(self, samples: list[Sample], root: Path) -> None:
        pass

    def get(self, i: int) -> Any:
        return self.make(i)


class PlainDict(Contender):
    name = "plain dict, no copy (Hyrax today)"
    kind = BASE

    def fill(self, samples: list[Sample], root: Path) -> None:
        self.d = dict(enumerate(samples))

    def get(self, i: int) -> Any:
        return self.d[i]


class DictClone(Contender):
    name = "dict + one clone() per tensor"
    kind = FLOOR

    def fill(self, samples: list[Sample], root: Path) -> None:
        self.d = dict(enumerate(samples))

    def get(self, i: int) -> Any:
        return tree_clone(self.d[i])


class DictNumpyCopy(Contender):
    name = "dict + one numpy copy per tensor"
    kind = FLOOR

    def fill(self, samples: list[Sample], root: Path) -> None:
        self.d = dict(enumerate(samples))

    def get(self, i: int) -> Any:
        return numpy_tree_copy(self.d[i])


class Memcpy(Contender):
    name = "numpy memcpy of the tensor bytes"
    kind = FLOOR

    def fill(self, samples: list[Sample], root: Path) -> None:
        self.arrays = [(s["image"]["flux"].numpy(), s["image"]["mask"].numpy()) for s in samples]

    def get(self, i: int) -> Any:
        flux, mask = self.arrays[i]
        return flux.copy(), mask.copy()


# label, redshift, then the 12-character object id; the tensors start at offset 64.
_HEAD = struct.Struct("<qd12s")
_DATA = 64


class RawLmdb(Contender):
    """One LMDB value per sample laid out for this schema; a read copies each tensor once.

    The lower bound of any LMDB-backed cache returning the same sample: one read transaction
    per sample (as a per-sample ``get`` must), no header, no checksum, no validation.
    """

    name = "raw LMDB, one copy per tensor"
    kind = FLOOR

    def __init__(self, workload: Workload) -> None:
        self.image_shape = workload.image_shape
        self.mask_shape = workload.mask_shape
        self.image_bytes = 4 * int(np.prod(workload.image_shape))

    def fill(self, samples: list[Sample], root: Path) -> None:
        self.path = root / "raw-lmdb"
        total = len(samples) * (_DATA + self.image_bytes + int(np.prod(self.mask_shape)))
        self.env = lmdb.open(
            str(self.path),
            map_size=max(1 << 28, 2 * total),
            max_readers=1024,
            sync=False,
            meminit=False,
            max_spare_txns=1,
        )
        with self.env.begin(write=True) as txn:
            for i, s in enumerate(samples):
                head = _HEAD.pack(s["label"], s["redshift"], s["object_id"].encode())
                value = b"".join(
                    (
                        head.ljust(_DATA, b"\0"),
                        s["image"]["flux"].numpy().tobytes(),
                        s["image"]["mask"].numpy().tobytes(),
                    )
                )
                txn.put(i.to_bytes(8, "big"), value)
        self.env.sync(True)

    def get(self, i: int) -> Any:
        with self.env.begin(buffers=True) as txn:
            buf = txn.get(i.to_bytes(8, "big"))
            label, redshift, oid = _HEAD.unpack_from(buf)
            flux = np.ndarray(self.image_shape, np.float32, buf, _DATA).copy()
            mask = np.ndarray(self.mask_shape, np.bool_, buf, _DATA + self.image_bytes).copy()
        return {
            "image": {"flux": torch.from_numpy(flux), "mask": torch.from_numpy(mask)},
            "object_id": oid.decode(),
            "label": label,
            "redshift": redshift,
        }

    def disk_bytes(self) -> int | None:
        return _dir_bytes(self.path)

    def close(self) -> None:
        self.env.close()


class Spill(Contender):
    """spillcache with a RAM tier holding everything (``ram=True``) or none of it (disk tier)."""

    kind = OURS

    def __init__(self, *, ram: bool, copy: bool = True) -> None:
        self.ram = ram
        self.copy = copy
        if not ram:
            self.name = "spillcache disk tier"
        else:
            self.name = "spillcache RAM tier" + ("" if copy else ", copy=False")

    def fill(self, samples: list[Sample], root: Path) -> None:
        self.path = root / f"spill-{'ram' if self.ram else 'disk'}-{int(self.copy)}"
        # All of memory: "everything fits" without a budget above the limit (which warns).
        budget = memory_limit() if self.ram else 0
        self.cache = SpillCache(self.path, ram_budget=budget, copy=self.copy)
        for i, s in enumerate(samples):
            self.cache.put(i, s)
        self.cache.flush()

    def get(self, i: int) -> Any:
        return self.cache.get(i)

    def disk_bytes(self) -> int | None:
        return self.cache.stats().disk_bytes

    def close(self) -> None:
        self.cache.close()


# Optional packages the run was told to treat as missing (``--no-peers``).
DISABLED: set[str] = set()


def require(module: str) -> None:
    """Import an optional package, or raise :class:`Unavailable` saying how to get it."""
    if module.partition(".")[0] in DISABLED:
        raise Unavailable(f"{module} left out (--no-peers)")
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise Unavailable(
            f"{module} is not installed ({exc}); pip install 'spillcache[bench]'"
        ) from exc


class MonaiCache(Contender):
    """MONAI ``CacheDataset``: samples in a list, filled in the constructor.

    Without a random transform after the cache it returns the cached objects themselves (no
    copy, like a plain dict); with one (``copy=True``, the usual training set-up) it
    deep-copies each sample first.
    """

    kind = PEER

    def __init__(self, workload: Workload, *, copy: bool) -> None:
        self.copy = copy
        suffix = "deepcopy (with a random transform)" if copy else "shared objects"
        self.name = f"MONAI CacheDataset, {suffix}"
        require("monai.data")

    def fill(self, samples: list[Sample], root: Path) -> None:
        from monai.data import CacheDataset

        steps = [monai_transform(samples.__getitem__)]
        if self.copy:
            steps.append(monai_identity_random())
        self.ds = CacheDataset(
            [{"i": i} for i in range(len(samples))], steps, progress=False, num_workers=0
        )

    def get(self, i: int) -> Any:
        return self.ds[i]


class MonaiPersistent(Contender):
    """MONAI ``PersistentDataset``: one ``torch.save`` file per sample, written on first use."""

    name = "MONAI PersistentDataset"
    kind = PEER

    def __init__(self) -> None:
        require("monai.data")

    def fill(self, samples: list[Sample], root: Path) -> None:
        from monai.data import PersistentDataset

        self.path = root / "monai-persistent"
        self.ds = PersistentDataset(
            [{"i": i} for i in range(len(samples))],
            monai_transform(samples.__getitem__),
            cache_dir=self.path,
        )
        for i in range(len(samples)):
            self.ds[i]

    def get(self, i: int) -> Any:
        return self.ds[i]

    def disk_bytes(self) -> int | None:
        return _dir_bytes(self.path)


class MonaiLmdb(Contender):
    """MONAI ``LMDBDataset``: ``torch.save`` values in LMDB, filled in the constructor."""

    name = "MONAI LMDBDataset"
    kind = PEER

    def __init__(self) -> None:
        require("monai.data")

    def fill(self, samples: list[Sample], root: Path) -> None:
        from monai.data import LMDBDataset

        self.path = root / "monai-lmdb"
        self.ds = LMDBDataset(
            [{"i": i} for i in range(len(samples))],
            monai_transform(samples.__getitem__),
            cache_dir=self.path,
            progress=False,
        )

    def get(self, i: int) -> Any:
        return self.ds[i]

    def disk_bytes(self) -> int | None:
        return _dir_bytes(self.path)

    def close(self) -> None:
        self.ds.close()


class DiskCache(Contender):
    """``diskcache.Cache``: SQLite index, pickled values (large ones in files)."""

    name = "diskcache"
    kind = PEER

    def __init__(self) -> None:
        require("diskcache")

    def fill(self, samples: list[Sample], root: Path) -> None:
        import diskcache

        self.path = root / "diskcache"
        # No eviction: the data set must stay whole, as in the other persistent caches.
        self.cache = diskcache.Cache(str(self.path), size_limit=1 << 40, eviction_policy="none")
        for i, s in enumerate(samples):
            self.cache[i] = s

    def get(self, i: int) -> Any:
        return self.cache[i]

    def disk_bytes(self) -> int | None:
        return _dir_bytes(self.path)

    def close(self) -> None:
        self.cache.close()


def all_contenders(workload: Workload) -> list[Callable[[], Contender]]:
    """Factories of every contender, in table order (a factory may raise Unavailable)."""
    return [
        lambda: NoCache(workload),
        PlainDict,
        DictClone,
        DictNumpyCopy,
        Memcpy,
        lambda: RawLmdb(workload),
        lambda: Spill(ram=True, copy=False),
        lambda: Spill(ram=True),
        lambda: Spill(ram=False),
        lambda: MonaiCache(workload, copy=False),
        lambda: MonaiCache(workload, copy=True),
        MonaiPersistent,
        MonaiLmdb,
        DiskCache,
    ]


def timed_fill(contender: Contender, samples: list[Sample], root: Path) -> float:
    """Seconds to fill ``contender`` (for persistent ones, until the data is on disk)."""
    os.makedirs(root, exist_ok=True)
    start = time.perf_counter()
    contender.fill(samples, root)
    return time.perf_counter() - start
