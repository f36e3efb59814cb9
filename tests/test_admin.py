"""cache_info, clear_cache, verify and the command line."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest

from spillcache import SpillCache, StoreError, cache_info, clear_cache, copy_cache
from spillcache.admin import find_stores, verify
from spillcache.cli import main
from test_cache import corrupt_value, snapshot


def make_store(path: Path, n: int = 5, fingerprint: str = "fp") -> Path:
    with SpillCache(path, fingerprint=fingerprint) as cache:
        for i in range(n):
            cache.put(i, {"x": i, "name": f"n{i}"})
    return path


def test_cache_info(tmp_path: Path) -> None:
    before = dt.datetime.now(dt.timezone.utc)
    path = make_store(tmp_path / "s", 7)
    info = cache_info(path)
    assert info.items == 7
    assert info.fingerprint == "fp"
    assert info.format_version == 2
    assert info.disk_bytes == sum(f.stat().st_size for f in path.iterdir())
    assert info.created is not None
    assert before - dt.timedelta(seconds=5) <= info.created <= dt.datetime.now(dt.timezone.utc)


def test_cache_info_of_an_open_store_agrees_with_len(tmp_path: Path) -> None:
    with SpillCache(tmp_path / "s") as cache:
        for i in range(4):
            cache.put(i, {"x": i})
        cache.flush()
        assert cache_info(tmp_path / "s").items == len(cache) == 4


def test_clear_refuses_anything_else_and_deletes_nothing(tmp_path: Path) -> None:
    other = tmp_path / "results"
    other.mkdir()
    (other / "model.pt").write_bytes(b"weights")
    before = snapshot(tmp_path)
    with pytest.raises(StoreError, match=r"model\.pt"):
        clear_cache(other)
    mixed = tmp_path / "mixed"
    make_store(mixed / "a")
    (mixed / "notes.txt").write_text("keep me")
    before = snapshot(tmp_path)
    with pytest.raises(StoreError, match=r"notes\.txt"):
        clear_cache(mixed)
    assert snapshot(tmp_path) == before
    with pytest.raises(StoreError):
        clear_cache(tmp_path / "missing")


def test_clear_a_store_and_a_cache_dir(tmp_path: Path) -> None:
    store = make_store(tmp_path / "one")
    assert clear_cache(store) == [store]
    assert not store.exists()
    cache_dir = tmp_path / "cache_dir"
    make_store(cache_dir / "a")
    make_store(cache_dir / "b")
    assert len(clear_cache(cache_dir)) == 2
    assert not cache_dir.exists()
    assert tmp_path.exists()


def test_clear_refuses_an_open_store(tmp_path: Path) -> None:
    with SpillCache(tmp_path / "s") as cache:
        cache.put(0, {"x": 0})
        with pytest.raises(StoreError, match="open in this process"):
            clear_cache(tmp_path / "s")
    assert (tmp_path / "s").exists()


def test_verify_finds_corrupt_entries(tmp_path: Path) -> None:
    path = make_store(tmp_path / "s", 6)
    assert verify(path).ok
    corrupt_value(path, 2)
    corrupt_value(path, 4, offset=30)
    report = verify(path)
    assert report.entries == 6
    assert report.bad_keys == (2, 4)


def test_find_stores(tmp_path: Path) -> None:
    make_store(tmp_path / "d" / "x")
    make_store(tmp_path / "d" / "y")
    assert [p.name for p in find_stores(tmp_path / "d")] == ["x", "y"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(StoreError, match="empty"):
        find_stores(empty)


def test_cli_info_verify_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = make_store(tmp_path / "s", 3)
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "items        3" in out and "'fp'" in out
    assert main(["info", "--json", str(path)]) == 0
    assert '"items": 3' in capsys.readouterr().out
    assert main(["verify", str(path)]) == 0
    assert "3 entries, ok" in capsys.readouterr().out
    corrupt_value(path, 1)
    assert main(["verify", str(path)]) == 1
    assert "bad keys: 1" in capsys.readouterr().out
    assert main(["clear", "--yes", str(path)]) == 0
    assert not path.exists()
    assert main(["info", str(path)]) == 2
    assert f"{str(path)!r} does not exist" in capsys.readouterr().err


def test_cli_clear_asks_and_refuses_without_a_terminal(tmp_path: Path) -> None:
    path = make_store(tmp_path / "s")
    result = subprocess.run(
        [sys.executable, "-m", "spillcache.cli", "clear", str(path)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "--yes" in result.stderr
    assert path.exists()


def test_cli_demo_runs_small(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--samples", "60", "--sample-kib", "8", "--latency-ms", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:2] == ["run", "epoch"]
    rows = [line.split() for line in lines[2:7]]
    # Run 1: three epochs; run 2 reuses the store; run 3 is a fresh store with a preload.
    assert [(r[0], r[1]) for r in rows] == [
        ("1", "1"),
        ("1", "2"),
        ("1", "3"),
        ("2", "1"),
        ("3", "1"),
    ]
    # Epoch 1 misses all but the two samples that were loaded to fingerprint the data.
    assert rows[0][-1] == f"{58 / 60:.1%}"
    assert rows[1][-1] == "0.0%" and rows[2][-1] == "0.0%"  # then never again
    assert rows[3][-1] == "0.0%" and rows[3][-2] == "100.0%"  # the second run: all from disk
    assert [line.split(":")[0] for line in lines[7:]] == ["warm epochs", "second run", "preload"]


def test_copy_while_in_use_and_reuse_the_copy(tmp_path: Path) -> None:
    src, dst = tmp_path / "scratch" / "s", tmp_path / "shared" / "s"
    with SpillCache(src, fingerprint="fp", ram_budget=0) as cache:
        for i in range(30):
            cache.put(i, {"x": i, "blob": bytes(5000)})
        for i in range(10):  # overwrites leave free pages behind, which the copy compacts away
            cache.put(i, {"x": i, "blob": bytes(5000)})
        (copied,) = copy_cache(src, dst)  # the store is open and has queued writes
        assert copied == dst
        cache.put(99, {"x": 99, "blob": b""})  # after the snapshot: not in the copy
    info = cache_info(dst)
    assert (info.items, info.fingerprint) == (30, "fp")
    assert info.disk_bytes <= cache_info(src).disk_bytes
    assert verify(dst).ok
    with SpillCache(dst, fingerprint="fp", on_mismatch="error") as copy:
        assert copy.get(7) == {"x": 7, "blob": bytes(5000)}
        assert copy.get(99) is None


def test_copy_a_cache_dir_and_refuse_a_full_destination(tmp_path: Path) -> None:
    make_store(tmp_path / "cache" / "a")
    make_store(tmp_path / "cache" / "b", 2)
    assert main(["copy", str(tmp_path / "cache"), str(tmp_path / "out")]) == 0
    assert [cache_info(p).items for p in find_stores(tmp_path / "out")] == [5, 2]
    with pytest.raises(StoreError, match="dst="):
        copy_cache(tmp_path / "cache", tmp_path / "out")


def test_inspection_never_meets_a_fingerprint_mismatch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # #16 made FingerprintMismatch a StoreError. The `except StoreError` of `spillcache verify`
    # (prints DAMAGED), of copy_cache (wraps it) and of clear_cache's retiring (suppresses it)
    # would now take a mismatch too; they never see one because inspection checks no identity,
    # whichever fingerprint the store was built for or is open with in this process.
    closed = make_store(tmp_path / "closed", 3, fingerprint="a")
    with SpillCache(tmp_path / "open", fingerprint="b", on_mismatch="error") as live:
        live.put(0, {"x": 0})
        live.flush()
        for store, fingerprint in ((closed, "a"), (tmp_path / "open", "b")):
            assert cache_info(store).fingerprint == fingerprint
            assert verify(store).ok
            assert main(["verify", str(store)]) == 0
            assert copy_cache(store, tmp_path / f"copy-{fingerprint}")
        assert "DAMAGED" not in capsys.readouterr().out
        assert clear_cache(tmp_path / "open", force=True) == [tmp_path / "open"]
    assert cache_info(tmp_path / "copy-a").items == 3
