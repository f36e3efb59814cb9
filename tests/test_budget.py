"""disk_budget and the free-space floor hold before anything is written (issue 12, item 2).

The check runs inside the write transaction, from LMDB's own idea of the file size, so that
several processes together stay within one budget; an entry that would not fit is refused
and counted, the others of its batch are stored. Tests on a real small file system mount a
tmpfs (root only, as in CI).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import lmdb
import numpy as np
import pytest

from reliability import popen_python, wait_for
from spillcache import SpillCache, SpillCacheWarning
from spillcache.disk import env as env_module
from spillcache.disk import owned_files, writer
from spillcache.disk.growth import Growth

KIB, MIB = 1 << 10, 1 << 20


def sample(key: int, size: int) -> dict[str, object]:
    """``size`` bytes that follow from ``key``."""
    return {"x": np.random.default_rng(key).integers(0, 256, size, dtype=np.uint8), "key": key}


def check(key: int, value: object, size: int) -> None:
    assert isinstance(value, dict), f"key {key}: {value!r}"
    assert value["key"] == key
    np.testing.assert_array_equal(value["x"], sample(key, size)["x"])


def store_bytes(path: Path) -> int:
    """Bytes the store's files take: their size, or their blocks if more."""
    return sum(max(s.st_size, s.st_blocks * 512) for s in (f.stat() for f in owned_files(path)))


def data_bytes(path: Path) -> int:
    return (path / "data.mdb").stat().st_size


def spill_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, SpillCacheWarning)]


def read_back(path: Path, sizes: dict[int, int]) -> set[int]:
    """Keys stored at ``path``; every one must be exactly what was put."""
    present = set()
    with SpillCache(path, ram_budget=0) as cache:
        for key, size in sizes.items():
            value = cache.get(key)
            if value is not None:
                check(key, value, size)
                present.add(key)
        assert cache.stats().corrupt == 0
    return present


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs the tests as root)")
    mount = tmp_path / "fs"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def mixed(count: int, seed: int = 0) -> dict[int, int]:
    """``count`` keys in random order, each with a size from 100 B to 1 MiB."""
    rng = random.Random(seed)
    keys = list(range(count))
    rng.shuffle(keys)
    return {k: rng.choice([100, 4 * KIB, 64 * KIB, 300 * KIB, MIB]) for k in keys}


def test_a_sample_larger_than_the_budget_is_refused_before_it_is_written(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with (
        warnings.catch_warnings(record=True) as caught,
        SpillCache(path, ram_budget=0, disk_budget="1MiB") as cache,
    ):
        warnings.simplefilter("always")
        cache.put(0, sample(0, 8 * MIB))
        cache.flush()
        stats = cache.stats()
    assert (stats.disk_items, stats.rejected, stats.write_errors) == (0, 1, 0)
    assert data_bytes(path) <= MIB
    assert spill_warnings(caught) == [
        f"the store at {str(path)!r} refuses new entries that would take it past its "
        "disk_budget of 1.0 MiB; raise disk_budget (cache_disk_budget in a Hyrax config) to "
        "store more"
    ]


def test_small_samples_fill_the_budget_and_no_further(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with (
        warnings.catch_warnings(record=True),
        SpillCache(path, ram_budget=0, disk_budget="1MiB") as cache,
    ):
        warnings.simplefilter("always")
        for key in range(40):
            cache.put(key, sample(key, 64 * KIB))
        cache.flush()
        stats = cache.stats()
    stored = read_back(path, dict.fromkeys(range(40), 64 * KIB))
    assert data_bytes(path) <= MIB
    assert len(stored) >= 10  # 640 KiB of the 1 MiB hold samples
    assert stats.rejected == 40 - len(stored)


def test_a_batch_partly_fits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer, "_COMMIT_INTERVAL", 60.0)  # one batch, at flush
    monkeypatch.setattr(writer, "BATCH_BYTES", 64 * MIB)
    path = tmp_path / "store"
    sizes = {0: 2 * MIB, 1: 32 * KIB, 2: 32 * KIB, 3: 32 * KIB, 5: 32 * KIB}
    with (
        warnings.catch_warnings(record=True),
        SpillCache(path, ram_budget=0, disk_budget="1MiB") as cache,
    ):
        warnings.simplefilter("always")
        for key, size in sizes.items():
            cache.put(key, sample(key, size))
        cache.flush()
        assert cache.stats().rejected == 1
        cache.put(6, sample(6, 32 * KIB))  # smaller than what was refused: still taken
        cache.flush()
        stats = cache.stats()
    assert read_back(path, sizes | {6: 32 * KIB}) == {1, 2, 3, 5, 6}
    assert (stats.rejected, stats.write_errors) == (1, 0)


def test_a_budget_below_a_small_file_system(
    small_fs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(env_module, "_INITIAL_MAP_SIZE", MIB)  # the map grows during the fill
    budget = 5 * MIB
    path = small_fs / "store"
    sizes = mixed(60)  # ~15 MiB
    largest = 0
    with (
        warnings.catch_warnings(record=True) as caught,
        SpillCache(path, ram_budget=0, disk_budget=budget) as cache,
    ):
        warnings.simplefilter("always")
        for i, (key, size) in enumerate(sizes.items()):
            cache.put(key, sample(key, size))
            if i % 3 == 0:
                cache.flush()
                largest = max(largest, store_bytes(path))
        cache.flush()
        stats = cache.stats()
        env = cache._disk.txns.env
        assert env is not None and env.info()["map_size"] > MIB
    largest = max(largest, store_bytes(path))
    print(f"largest store {largest / MIB:.2f} MiB, budget {budget / MIB:.0f} MiB")
    assert data_bytes(path) <= budget
    assert largest <= budget + MIB
    stored = read_back(path, sizes)
    assert sum(sizes[k] for k in stored) >= budget - 2 * MIB  # it filled up to the budget
    assert stats.rejected == len(sizes) - len(stored)
    assert stats.write_errors == 0
    warned = spill_warnings(caught)
    assert len(warned) == 1 and "disk_budget of 5.0 MiB" in warned[0], warned


def test_no_budget_keeps_the_floor_on_a_small_file_system(small_fs: Path) -> None:
    path = small_fs / "store"
    sizes = mixed(60, seed=1)
    floor = 4 * MIB  # half of the 8 MiB: max(1 GiB, 5 %) would leave no room at all
    least_free = 8 * MIB
    with (
        warnings.catch_warnings(record=True) as caught,
        SpillCache(path, ram_budget=0) as cache,
    ):
        warnings.simplefilter("always")
        for i, (key, size) in enumerate(sizes.items()):
            cache.put(key, sample(key, size))
            if i % 3 == 0:
                cache.flush()
                least_free = min(least_free, _free(small_fs))
        cache.flush()
        stats = cache.stats()
    least_free = min(least_free, _free(small_fs))
    print(f"least free {least_free / MIB:.2f} MiB, floor {floor / MIB:.0f} MiB")
    assert least_free >= floor
    stored = read_back(path, sizes)
    assert sum(sizes[k] for k in stored) >= 8 * MIB - floor - 2 * MIB  # filled to the floor
    assert stats.write_errors == 0
    assert stats.rejected == len(sizes) - len(stored)
    assert spill_warnings(caught) == [
        f"the store at {str(path)!r} refuses new entries that would leave its file system "
        "with less than 4.0 MiB free, the floor kept when no disk_budget is set; free some "
        "space, or set disk_budget (cache_disk_budget in a Hyrax config) to size the store "
        "yourself"
    ]


def _free(root: Path) -> int:
    usage = os.statvfs(root)
    return usage.f_bavail * usage.f_frsize


_WRITER = """
import json, sys, warnings
from pathlib import Path
from test_budget import sample
from reliability import wait_for
from spillcache import SpillCache

path, worker, go = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
warnings.simplefilter("ignore")
with SpillCache(path, ram_budget=0, disk_budget=3 << 20) as cache:
    Path(f"{go}.{worker}").touch()
    wait_for(go.exists, "the go-ahead")
    for key in range(worker, 48, 2):
        cache.put(key, sample(key, 256 << 10))
        cache.flush()
    print(json.dumps({"rejected": cache.stats().rejected, "errors": cache.stats().write_errors}))
"""


def test_two_processes_stay_within_one_budget_together(tmp_path: Path) -> None:
    path = tmp_path / "store"
    SpillCache(path, ram_budget=0).close()
    go = tmp_path / "go"
    writers = [popen_python(_WRITER, str(path), str(w), str(go)) for w in (0, 1)]
    try:
        wait_for(lambda: all(Path(f"{go}.{w}").exists() for w in (0, 1)), "both writers")
        go.touch()
        outs = [w.communicate(timeout=120) for w in writers]
    finally:
        for w in writers:
            if w.poll() is None:
                w.kill()
    assert all(w.returncode == 0 for w in writers), [err for _, err in outs]
    reports = [json.loads(out) for out, _ in outs]
    stored = read_back(path, dict.fromkeys(range(48), 256 * KIB))
    print(f"store {data_bytes(path) / MIB:.2f} MiB of a 3 MiB budget, {len(stored)} entries")
    assert data_bytes(path) <= 3 * MIB
    assert len(stored) >= 8  # 2 of the 3 MiB hold samples
    assert sum(r["rejected"] for r in reports) == 48 - len(stored)
    assert all(r["errors"] == 0 for r in reports)


@pytest.mark.parametrize("order", ["sequential", "random"])
@pytest.mark.parametrize("pinned", [False, True])
def test_the_growth_bound_holds(order: str, pinned: bool) -> None:
    """Commits of many sizes and key orders never grow the file past the bound."""
    rng = random.Random(7)
    sizes = [rng.choice([30, 500, 2022, 2023, 4081, 9000, 70000, 300000]) for _ in range(700)]
    keys = list(range(len(sizes)))
    if order == "random":
        rng.shuffle(keys)
    with tempfile.TemporaryDirectory() as tmp:
        env = lmdb.open(tmp, map_size=1 << 32, max_dbs=2, sync=False)
        try:
            db = env.open_db(b"data")
            reader = env.begin() if pinned else None  # pins every page: none is reused
            for start in range(0, len(keys), 40):
                batch = sorted(keys[start : start + 40] + keys[: start // 8 : 7])  # overwrites
                before = env.info()["last_pgno"]
                with env.begin(write=True) as txn:
                    growth = Growth(txn.stat(db))
                    cursor = txn.cursor(db=db)
                    last = -2
                    for key in batch:
                        new_run = key != last + 1 or cursor.set_key(key.to_bytes(8, "big"))
                        growth.add(sizes[key], new_run=new_run)
                        last = key
                    for key in batch:
                        txn.put(key.to_bytes(8, "big"), b"v" * sizes[key], db=db)
                grown = env.info()["last_pgno"] - before
                assert grown <= growth.pages, (start, grown, growth.pages)
            if reader is not None:
                reader.abort()
        finally:
            env.close()
