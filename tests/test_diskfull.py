"""Disk full and map full: training goes on from the source, the store stays valid.

Three ways to run out of space: a ``disk_budget`` smaller than the data, a real file system
that fills up (an 8 MiB tmpfs when this process may mount one, else a file size limit, which
makes the kernel fail writes the same way), and a simulated ENOSPC at commit time. The LMDB map
grows by itself, also under a reader in another process.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb
import pytest

from reliability import (
    SlowSource,
    check_sample,
    check_store,
    fill,
    forkserver,
    full_disk_trainer,
    in_child,
    late_reader,
    make_sample,
    probe_store,
    read_report,
    started,
    wait_for,
)
from spillcache import CachedDataset, SpillCache, SpillCacheWarning
from spillcache.admin import verify
from spillcache.disk import env as env_module
from spillcache.disk import fill as fill_module


def spill_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, SpillCacheWarning)]


def test_disk_budget_smaller_than_the_data(tmp_path: Path) -> None:
    source = SlowSource(60)  # ~60 x 26 KiB on average, 1.5 MiB
    budget = 512 << 10
    path = tmp_path / "store"
    with (
        warnings.catch_warnings(record=True) as caught,
        CachedDataset(source, path, ram_budget=0, disk_budget=budget, fingerprint="fp") as ds,
    ):
        warnings.simplefilter("always")
        for _epoch in range(2):
            for i in range(len(ds)):
                check_sample(i, ds[i], 0)
                ds.cache.flush()  # a commit per sample, a check per 1/16 of the budget
        stats = ds.cache.stats()
    stored = check_store(path, 60, fingerprint="fp")
    assert 0 < len(stored) < 60
    assert stats.rejected > 0
    assert source.loads == 60 + (60 - len(stored))  # epoch 2 loads only what was refused
    largest = max(len(make_sample(k, 0)["image"]["flux"].numpy().tobytes()) for k in range(5))
    assert (path / "data.mdb").stat().st_size <= budget + 2 * largest + 64 * 1024
    assert [w for w in spill_warnings(caught) if "disk_budget" in w] == spill_warnings(caught)
    assert len(spill_warnings(caught)) == 1
    assert verify(path).ok


class _FullDiskTxn:
    """A write transaction whose commit fails as on a full disk while ``full`` is set."""

    def __init__(self, txn: lmdb.Transaction, full: threading.Event) -> None:
        self.txn = txn
        self._full = full
        self._wrote = False

    def put(self, *args: Any, **kwargs: Any) -> bool:
        self._wrote = True
        return bool(self.txn.put(*args, **kwargs))

    def drop(self, *args: Any, **kwargs: Any) -> None:
        self._wrote = True
        self.txn.drop(*args, **kwargs)

    def commit(self) -> None:
        if self._wrote and self._full.is_set():
            # What LMDB does when its pwrite fails: the transaction is gone, the store unchanged.
            self.txn.abort()
            raise lmdb.Error("mdb_txn_commit: No space left on device")
        self.txn.commit()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.txn, name)

    def __enter__(self) -> _FullDiskTxn:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_rest: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.txn.abort()


class _FullDiskEnv:
    """An LMDB environment whose write transactions are :class:`_FullDiskTxn`."""

    def __init__(self, env: lmdb.Environment, full: threading.Event) -> None:
        self.env = env
        self._full = full

    def begin(self, *, write: bool = False, **kwargs: Any) -> object:
        txn = self.env.begin(write=write, **kwargs)
        return _FullDiskTxn(txn, self._full) if write else txn

    def open_db(
        self, key: bytes, txn: lmdb.Transaction | _FullDiskTxn | None = None, **kwargs: Any
    ) -> object:
        real = txn.txn if isinstance(txn, _FullDiskTxn) else txn
        return self.env.open_db(key, txn=real, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.env, name)


@contextlib.contextmanager
def _failing_commits(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """While the event is set, every commit that writes fails (ENOSPC) and is rolled back."""
    full = threading.Event()
    real_open = lmdb.open
    monkeypatch.setattr(lmdb, "open", lambda *a, **k: _FullDiskEnv(real_open(*a, **k), full))
    # Look at the file system again at every put, so that "space frees up" takes effect at once.
    monkeypatch.setattr(fill_module, "_FILL_RECHECK_SECONDS", 0.0)
    yield full


def test_enospc_at_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = SlowSource(30)
    path = tmp_path / "store"
    with (
        _failing_commits(monkeypatch) as full,
        warnings.catch_warnings(record=True) as caught,
        CachedDataset(source, path, ram_budget=0, fingerprint="fp") as ds,
    ):
        warnings.simplefilter("always")
        for i in range(30):
            if i == 10:
                full.set()
            if i == 20:
                full.clear()  # space freed up
            check_sample(i, ds[i], 0)
            ds.cache.flush()
        stats = ds.cache.stats()
        for i in range(30):  # training goes on: lost entries come from the source again
            check_sample(i, ds[i], 0)
    assert stats.write_errors + stats.rejected == 10
    assert stats.write_errors >= 1
    assert len(spill_warnings(caught)) == 1
    assert "No space left on device" in spill_warnings(caught)[0]
    assert verify(path).ok
    assert check_store(path, 30, fingerprint="fp") == set(range(30))  # epoch 2 refilled them


def test_enospc_keeps_what_was_committed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "store"
    fill(path, range(10), fingerprint="fp")
    with _failing_commits(monkeypatch) as full, SpillCache(path, fingerprint="fp") as cache:
        full.set()
        with pytest.warns(SpillCacheWarning, match="No space left"):
            for key in range(10, 20):
                cache.put(key, make_sample(key))
            cache.flush()
        assert cache.stats().write_errors >= 1
    assert check_store(path, 20, fingerprint="fp") == set(range(10))


class _FailingSyncEnv:
    """An LMDB environment whose fsync fails, as on a disk that reports an I/O error."""

    def __init__(self, env: lmdb.Environment) -> None:
        self.env = env
        self.closed = False

    def sync(self, force: bool = False) -> None:
        raise lmdb.Error("mdb_env_sync: Input/output error")

    def close(self) -> None:
        self.closed = True
        self.env.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.env, name)


def test_failed_sync_warns_once_and_still_closes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    envs: list[_FailingSyncEnv] = []
    real_open = lmdb.open
    monkeypatch.setattr(
        lmdb, "open", lambda *a, **k: envs.append(_FailingSyncEnv(real_open(*a, **k))) or envs[-1]
    )
    path = tmp_path / "store"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cache = SpillCache(path, fingerprint="fp")
        for key in range(5):
            cache.put(key, make_sample(key))
        cache.flush()  # training goes on
        cache.put(5, make_sample(5))
        cache.close()
    warned = spill_warnings(caught)
    assert len(warned) == 1
    assert "Input/output error" in warned[0]
    assert cache.closed
    assert envs and all(env.closed for env in envs)  # no environment is left open
    monkeypatch.undo()
    assert check_store(path, 6, fingerprint="fp") == set(range(6))  # the commits are all there


@contextlib.contextmanager
def _small_filesystem(root: Path) -> Iterator[tuple[Path, int | None]]:
    """An 8 MiB tmpfs if this process may mount one, else a 6 MiB file size limit."""
    mount = root / "tmpfs"
    mount.mkdir()
    command = ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)]
    try:
        mounted = subprocess.run(command, capture_output=True, check=False).returncode == 0
    except FileNotFoundError:
        mounted = False
    print(f"full file system: {'8 MiB tmpfs' if mounted else 'RLIMIT_FSIZE of 6 MiB'}")
    try:
        yield (mount, None) if mounted else (root, 6 << 20)
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(mount)], check=True)


def test_full_file_system(tmp_path: Path) -> None:
    with _small_filesystem(tmp_path) as (root, file_size_limit):
        path = root / "store"
        report = in_child(
            full_disk_trainer, path=str(path), samples=400, file_size_limit=file_size_limit
        )
        assert not report["errors"], report["errors"]
        assert report["wrong"] == []
        if file_size_limit is None:  # a file system that fills: refused before it is full
            assert report["write_errors"] == 0
            assert report["rejected"] > 0
            warned = report["warnings"][0]
            assert "free on its file system, although its disk_budget of 1.0 TiB" in warned
        else:  # a file size limit, which statvfs does not show: the writes fail
            assert report["write_errors"] > 0
        assert len(report["warnings"]) == 1, report["warnings"]
        assert "SpillCacheWarning" in report["warnings"][0]
        assert verify(path).ok
        stored = check_store(path, 400, fingerprint="fp")
        assert 0 < len(stored) < 400
        # Epoch 2 loads what epoch 1 could not store; smaller samples may fit then. Should
        # this fail, the figures say which part of the reckoning broke.
        figures = {k: report[k] for k in ("loads_first", "stored_first_keys", "corrupt")}
        assert report["reloaded"] == [], (report["reloaded"], figures)
        assert report["loads_first"] == 400, figures
        assert report["stored_first_keys"] == report["stored_after_first"], figures
        assert report["loads"] == 400 + (400 - report["stored_after_first"]), figures
        assert len(stored) >= report["stored_after_first"]


def test_creating_a_store_on_a_full_disk_is_a_clear_error(tmp_path: Path) -> None:
    # Every write of the child fails, the store marker's first.
    path = tmp_path / "store"
    report = in_child(probe_store, path=str(path), on_mismatch="rebuild", keys=1, file_size_limit=0)
    assert report.get("raised") == "spillcache.errors.StoreError", report
    assert str(path) in report["message"]


def test_a_store_can_be_created_once_space_is_back(tmp_path: Path) -> None:
    path = tmp_path / "store"
    in_child(probe_store, path=str(path), on_mismatch="rebuild", keys=1, file_size_limit=0)
    fill(path, range(3))
    assert check_store(path, 3) == {0, 1, 2}


def test_map_growth_is_seen_by_a_reader_in_another_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(env_module, "_INITIAL_MAP_SIZE", 1 << 20)
    path = tmp_path / "store"
    fill(path, range(1))
    result = tmp_path / "reader.json"
    ready, go = tmp_path / "ready", tmp_path / "go"
    reader = forkserver().Process(
        target=late_reader,
        kwargs={"path": str(path), "keys": 300, "ready": str(ready), "go": str(go)}
        | {"result": str(result)},
    )
    reader.start()
    try:
        wait_for(lambda: ready.exists() or not reader.is_alive(), "the reader")
        assert started(result).exists() and reader.is_alive(), read_report(result)
        with SpillCache(path, ram_budget=0) as cache:
            before = lmdb_map_size(cache)
            for key in range(1, 300):  # ~8 MiB through a 1 MiB map
                cache.put(key, make_sample(key))
            cache.flush()
            assert lmdb_map_size(cache) > before
            assert cache.stats().write_errors == 0
        go.touch()
        reader.join(60)
        assert reader.exitcode == 0
    finally:
        if reader.is_alive():
            reader.kill()
    report = read_report(result)
    assert report["errors"] == []
    assert report["before"] is None
    assert report["wrong"] == []


def lmdb_map_size(cache: SpillCache) -> int:
    env = cache._disk.txns.env
    assert env is not None
    return int(env.info()["map_size"])
