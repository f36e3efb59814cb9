"""Crash consistency: ``kill -9`` at any moment leaves every entry absent or exactly right.

The kill loop runs two writer processes at once (each with a loader and a preload thread) and
kills one of them at a random moment, again and again: during opening, puts, commits, map
growth and flushes, while the store is still filling. ``SPILLCACHE_LONG=1`` runs 300 kills
instead of 24; ``SPILLCACHE_SEED`` replays a run (up to the timing of the kills).
"""

from __future__ import annotations

import os
import random
import signal
import time
import warnings
from multiprocessing.process import BaseProcess
from pathlib import Path

import pytest

from reliability import (
    check_store,
    crash_writer,
    fill,
    forkserver,
    make_sample,
    read_report,
    scaled,
    started,
    wait_for,
)
from spillcache import SpillCache, SpillCacheWarning, StoreError
from spillcache.admin import verify
from spillcache.disk import MARKER

KEYS = scaled(2000, 20_000)
KILLS = scaled(24, 300)


def _kill(process: BaseProcess) -> None:
    os.kill(process.pid, signal.SIGKILL)  # type: ignore[arg-type]
    process.join(30)
    assert process.exitcode == -signal.SIGKILL


def test_kill_loop_leaves_every_entry_absent_or_exact(tmp_path: Path) -> None:
    seed = int(os.environ.get("SPILLCACHE_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    path = tmp_path / "store"
    with SpillCache(path, fingerprint="crash"):
        pass  # created up front: concurrent creation has its own test in test_stress.py
    ctx = forkserver()
    runs = 0

    def start(slot: int) -> tuple[BaseProcess, Path]:
        nonlocal runs
        runs += 1
        result = tmp_path / f"run{runs}.json"
        process = ctx.Process(
            target=crash_writer,
            kwargs={
                "path": str(path),
                "seed": rng.randrange(2**32),
                "keys": KEYS,
                "flushed_log": str(tmp_path / f"flushed{slot}"),
                "result": str(result),
            },
            daemon=True,
        )
        process.start()
        return process, result

    def running(process: BaseProcess, result: Path) -> bool:
        assert process.is_alive(), f"seed {seed}: a writer failed: {read_report(result)}"
        return started(result).exists()

    writers = [start(0), start(1)]
    kills = 0
    while kills < KILLS:
        slot = rng.randrange(2)
        process, result = writers[slot]
        wait_for(lambda: running(process, result), "a writer to start")  # noqa: B023
        time.sleep(rng.uniform(0.0, 0.5))
        running(process, result)
        _kill(process)
        kills += 1
        writers[slot] = start(slot)
    for process, result in writers:
        running(process, result)
        _kill(process)
        kills += 1

    report = verify(path)
    assert report.ok, f"seed {seed}: bad keys {report.bad_keys}"
    present = check_store(path, KEYS, fingerprint="crash")
    assert report.entries == len(present)
    flushed = {int(k) for slot in (0, 1) for k in (tmp_path / f"flushed{slot}").read_text().split()}
    assert flushed, "no writer ever flushed: the kills never hit a filling store"
    assert flushed <= present, f"seed {seed}: flushed keys lost: {sorted(flushed - present)[:10]}"

    # The next run resumes: nothing present is thrown away or loaded again.
    with warnings.catch_warnings():
        warnings.simplefilter("error", SpillCacheWarning)
        with SpillCache(path, ram_budget=0, fingerprint="crash", on_mismatch="error") as cache:
            assert len(cache) == len(present)
            for key in set(range(KEYS)) - present:
                assert key not in cache
                cache.put(key, make_sample(key))
            cache.flush()
            assert len(cache) == KEYS
            assert cache.stats().puts == KEYS - len(present)
    assert verify(path).entries == KEYS
    print(f"seed {seed}: {kills} kills, {len(present)}/{KEYS} entries survived, all exact")


# -- what a kill can leave behind while a store is being created --------------------------------


def test_kill_while_writing_the_marker_leaves_a_usable_directory(tmp_path: Path) -> None:
    # A process killed between writing its temporary marker and renaming it, or a second
    # process creating the same store at that moment (DDP ranks starting together), leaves a
    # directory holding only "spillcache.json.<pid>.tmp". Only spillcache writes such a file.
    path = tmp_path / "store"
    path.mkdir()
    (path / f"{MARKER}.999999.tmp").write_text('{"spillcache": 1, "created": 0')
    with SpillCache(path, fingerprint="a") as cache:
        cache.put(1, make_sample(1))
    assert check_store(path, 2, fingerprint="a") == {1}


@pytest.mark.parametrize(
    "files",
    [
        pytest.param(["marker"], id="marker-only"),
        pytest.param(["marker", "lock.mdb"], id="marker-and-lock"),
        pytest.param(["marker", "data.mdb", "lock.mdb"], id="empty-lmdb-files"),
    ],
)
def test_kill_during_creation_leaves_a_usable_store(tmp_path: Path, files: list[str]) -> None:
    path = tmp_path / "store"
    path.mkdir()
    for name in files:
        if name == "marker":
            (path / MARKER).write_text('{"spillcache": 1, "created": 0}')
        else:
            (path / name).touch()  # created by LMDB, killed before it wrote a page
    fill(path, range(3), fingerprint="a")
    assert check_store(path, 3, fingerprint="a") == {0, 1, 2}


def test_lmdb_files_without_a_marker_are_never_adopted(tmp_path: Path) -> None:
    # The marker is written first, so LMDB files without one were not made by spillcache.
    path = tmp_path / "store"
    path.mkdir()
    (path / "data.mdb").touch()
    with pytest.raises(StoreError, match="not a spillcache store"):
        SpillCache(path)
    assert sorted(p.name for p in path.iterdir()) == ["data.mdb"]
