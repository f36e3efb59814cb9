"""SpillCache end to end: tiers, keys, persistence, fingerprints, budgets, faults."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
import pytest
import torch

from helpers import assert_sample_equal, spy
from packed import replace_record
from spillcache import (
    FingerprintMismatch,
    SpillCache,
    SpillCacheWarning,
    StoreError,
    cache_info,
)
from spillcache.codec import Encoding, Unsealed
from spillcache.disk import Value, buffers, commits, live_tier, writer
from spillcache.disk import env as env_module
from spillcache.disk import tier as disk_module
from spillcache.footprint import ENTRY_OVERHEAD, sample_nbytes


def sample(i: int, side: int = 8) -> dict[str, object]:
    rng = np.random.default_rng(i)
    return {
        "image": {"flux": torch.from_numpy(rng.standard_normal((2, side, side), dtype=np.float32))},
        "mask": rng.random((side, side)) > 0.5,
        "object_id": f"obj-{i}",
        "label": i % 7,
        "weight": float(i) / 3,
    }


def run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_put_get_round_trip_and_stats(tmp_path: Path) -> None:
    with SpillCache(tmp_path / "s", ram_budget="10MiB") as cache:
        assert cache.get(1) is None
        for i in range(5):
            cache.put(i, sample(i))
        for i in range(5):
            assert_sample_equal(cache.get(i), sample(i))
        stats = cache.stats()
        assert (stats.puts, stats.ram_hits, stats.disk_hits, stats.misses) == (5, 5, 0, 1)
        assert stats.ram_items == 5
        assert 0 < stats.ram_bytes <= cache.ram_budget
        assert len(cache) == 5
        assert 3 in cache
        assert 9 not in cache


def test_put_overwrites(tmp_path: Path) -> None:
    with SpillCache(tmp_path / "s", ram_budget=0) as cache:
        cache.put(3, {"v": 1})
        cache.put(3, {"v": 2})
        cache.flush()
        assert cache.get(3) == {"v": 2}
        assert len(cache) == 1


def test_metadata_is_committed_after_the_writes_queued_before_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another process (a DDP rank checking a data set's probe digests) must never see a
    # record without the entries put before it: they would be loaded once more.
    monkeypatch.setattr(writer, "_COMMIT_INTERVAL", 600.0)  # no commit by the clock
    with SpillCache(tmp_path / "s", ram_budget=0) as cache:
        cache.put(7, {"v": 7})
        assert 7 in cache._disk.writes.queue  # small: waits for more, up to the commit interval
        cache.set_meta("probes", b"{}")
        assert not cache._disk.writes.queue and not cache._disk.writes.inflight
        assert cache.get(7) == {"v": 7}  # from the store: nothing is queued any more
        assert cache.get_meta("probes") == b"{}"


def test_a_full_ram_tier_measures_only_disk_hits_it_may_take(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spillcache.cache import reads

    one = sample_nbytes({"v": np.full(100, 0.0)}) + ENTRY_OVERHEAD
    # A disk hit is measured by the decode that sizes it (decode_sized), not by a walk.
    measured = spy(monkeypatch, reads, "decode_sized")
    with SpillCache(tmp_path / "s", ram_budget=3 * one) as cache:
        for i in (0, 1, 2, 10):
            cache.put(i, {"v": np.full(100, float(i))})
        cache.flush()
        measured.clear()
        # Key 10 is on disk only, the tier is full and 10 is cold: served, not measured.
        for _ in range(2):
            np.testing.assert_array_equal(cache.get(10)["v"], np.full(100, 10.0))
        assert measured == []
        assert cache.stats().ram_items == 3
        # Asked for often enough to beat the residents (never asked for): measured, taken.
        cache.get(10)
        assert len(measured) == 1
        assert 10 in cache._ram
        np.testing.assert_array_equal(cache.get(10)["v"], np.full(100, 10.0))


@pytest.mark.parametrize("copy", [True, False])
def test_put_declined_by_a_full_ram_tier_measures_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, copy: bool
) -> None:
    from spillcache.cache import puts

    one = sample_nbytes({"v": np.full(100, 0.0)}) + ENTRY_OVERHEAD
    measured = spy(monkeypatch, puts, "sample_nbytes")
    with SpillCache(tmp_path / "s", ram_budget=3 * one, copy=copy) as cache:
        for i in range(3):
            cache.put(i, {"v": np.full(100, float(i))})
        assert (cache.stats().ram_items, len(measured)) == (3, 3)
        cache.put(10, {"v": np.full(100, 10.0)})  # full, and key 10 is cold
        assert len(measured) == 3
        assert 10 not in cache._ram


def test_put_declined_by_ram_copies_nothing_and_drops_the_old_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spillcache.codec import snapshots

    copies = spy(monkeypatch, snapshots, "clone")
    one = sample_nbytes({"v": np.full(100, 0.0)}) + ENTRY_OVERHEAD
    with SpillCache(tmp_path / "s", ram_budget=3 * one) as cache:
        for i in range(3):
            cache.put(i, {"v": np.full(100, float(i))})
        assert (cache.stats().ram_items, len(copies)) == (3, 3)
        cache.put(10, {"v": np.full(100, 10.0)})  # full, and key 10 is cold: no copy made
        assert len(copies) == 3
        # A bigger value for a resident key that preload may not evict for: the old value
        # leaves RAM, so the new one is served (from disk), never the stale one.
        assert cache.put(1, {"v": np.full(200, -1.0)}, evict=False) is True
        assert len(copies) == 3
        assert cache.stats().ram_items == 2
        np.testing.assert_array_equal(cache.get(1)["v"], np.full(200, -1.0))
        np.testing.assert_array_equal(cache.get(10)["v"], np.full(100, 10.0))


def test_views_into_a_big_array_are_kept_at_the_size_of_their_copy(tmp_path: Path) -> None:
    rows = np.arange(100 * 25_000, dtype=np.float32).reshape(100, 25_000)  # 10 MB, 100 KB a row
    with SpillCache(tmp_path / "s", ram_budget="5MiB") as cache:
        for i in range(10):
            assert cache.put(i, {"x": rows[i]}) is True  # a view keeping all 10 MB alive
        stats = cache.stats()
        # The RAM tier holds compact copies: 10 of ~100 KB fit, not one of 10 MB.
        assert stats.ram_items == 10
        assert 10 * 100_000 < stats.ram_bytes < 10 * 110_000
        for i in range(10):
            np.testing.assert_array_equal(cache.get(i)["x"], rows[i])
        assert cache.stats().ram_hits == 10
    with SpillCache(tmp_path / "t", ram_budget="5MiB", copy=False) as cache:
        cache.put(0, {"x": rows[0]})  # kept as is, the view would keep 10 MB alive: refused
        assert cache.stats().ram_items == 0


def _big(i: int) -> dict[str, object]:
    return {"x": np.full(65536, float(i), dtype=np.float32), "i": i}  # 256 KiB


def test_stale_readers_are_cleared_after_commits_of_4_mib_or_a_quarter_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks = spy(monkeypatch, commits.Committer, "clear_stale_readers")
    with SpillCache(tmp_path / "s", ram_budget=0) as cache:
        cache.flush()
        checks.clear()
        start = time.monotonic()
        for i in range(64):  # 16 MiB in 64 commits
            cache.put(i, _big(i))
            cache.flush()
        elapsed = time.monotonic() - start
        assert 1 <= len(checks) <= 16 // 4 + elapsed / 0.25 + 2
        assert cache.stats().disk_items == 64


def test_large_values_are_encoded_into_recycled_buffers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = _big
    monkeypatch.setattr(writer, "_WRITER_IDLE_EXIT", 600.0)  # keep the spare buffers
    with SpillCache(tmp_path / "s", ram_budget=0) as cache:
        cache.put(0, big(0))
        early = cache.get(0)  # most likely still queued: decoded from a copy of its buffer
        for i in range(1, 60):  # 15 MiB through an 8 MiB queue: buffers go round
            cache.put(i, big(i))
        cache.flush()
        disk = cache._disk
        spare = list(disk.pool.spare)
        assert spare  # committed values gave their buffers back...
        size = len(spare[0])
        assert any(disk.buffer(size) is b for b in spare)  # ...and they are handed out again
        for i in range(60):  # no value was overwritten by a later one in its recycled buffer
            got = cache.get(i)
            assert got["i"] == i
            np.testing.assert_array_equal(got["x"], big(i)["x"])
        np.testing.assert_array_equal(early["x"], big(0)["x"])
        assert cache.stats().disk_items == 60
        assert disk.pool.spare_bytes <= disk.pool.limit


def _held_commits(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Make the writer wait before each commit until the returned event is set."""
    release = threading.Event()
    commit = disk_module.DiskTier.store_batch

    def held(self: disk_module.DiskTier, batch: dict[int, Value], *args: Any) -> None:
        release.wait(60)
        commit(self, batch, *args)

    monkeypatch.setattr(disk_module.DiskTier, "store_batch", held)
    return release


def test_large_values_are_sealed_by_the_writer_and_readable_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = _held_commits(monkeypatch)
    with SpillCache(tmp_path / "s", ram_budget=0) as cache:
        cache.put(0, _big(0))
        got = cache.get(0)  # queued or in flight: the writer has not sealed it yet
        release.set()
        assert cache.stats().corrupt == 0
        np.testing.assert_array_equal(got["x"], _big(0)["x"])
    with SpillCache(tmp_path / "s", ram_budget=0) as cache:
        np.testing.assert_array_equal(cache.get(0)["x"], _big(0)["x"])  # stored sealed
        assert cache.stats().corrupt == 0


def test_large_samples_in_ram_share_the_written_value_and_survive_recycling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer, "_WRITER_IDLE_EXIT", 600.0)  # keep the spare buffers
    budget = 4 * 280_000  # four 256 KiB samples, not five
    with SpillCache(tmp_path / "s", ram_budget=budget) as cache:
        for i in range(4):
            assert cache.put(i, _big(i))
        assert cache.stats().ram_items == 4
        kept = cache._ram.get(0)
        assert not kept["x"].flags.owndata  # a view of the value written to disk
        for i in range(100, 160):  # 15 MiB through recycled buffers; RAM is full
            cache.put(i, _big(i), evict=False)
        cache.flush()
        assert cache.stats().ram_items == 4
        assert buffers.Kept not in {type(b) for b in cache._disk.pool.spare}
        for i in range(4):  # no later value was encoded over a kept one
            got = cache.get(i)
            np.testing.assert_array_equal(got["x"], _big(i)["x"])
            assert got["x"].flags.owndata  # the caller's own copy
        assert cache.stats().ram_hits == 4


def test_the_writer_prepares_buffers_for_samples_the_ram_tier_keeps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer, "_WRITER_IDLE_EXIT", 600.0)
    with SpillCache(tmp_path / "s", ram_budget=10 * 280_000) as cache:
        cache.put(0, _big(0))
        cache.flush()
        disk = cache._disk
        size = disk.pool.keep_size
        assert size == len(cache._ram.get(0)["x"].base)  # the size of the value kept

        def ready() -> int:
            with disk.pool.lock:
                return sum(len(b) for b in disk.pool.spare if buffers.fits(b, size, keep=True))

        deadline = time.monotonic() + 60
        while ready() < buffers.STOCK_BYTES and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ready() >= buffers.STOCK_BYTES
        stock = {id(b) for b in disk.pool.spare}
        cache.put(1, _big(1))  # encoded into one of them
        assert id(cache._ram.get(1)["x"].base) in stock
        assert disk.pool.spare_bytes <= disk.pool.limit
        np.testing.assert_array_equal(cache.get(1)["x"], _big(1)["x"])


def test_a_kept_buffer_fits_its_value_exactly(tmp_path: Path) -> None:
    # The RAM tier charges a kept sample its tensors' bytes: slack would go unaccounted.
    with SpillCache(tmp_path / "s", ram_budget=0) as cache:
        disk = cache._disk
        size = 1 << 17
        larger = np.empty(size + 64, np.uint8)
        with disk.pool.lock:
            disk.pool.spare.append(larger)
            disk.pool.spare_bytes += len(larger)
        kept = disk.buffer(size, keep=True)
        assert kept is not None and len(kept) == size and kept.base is not larger
        assert disk.buffer(size) is larger  # good enough for a value written and recycled


def test_a_writer_that_fell_behind_commits_in_small_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Large commits make glibc return LMDB's page buffers to the kernel, and a writer behind
    # would only fall further behind: whatever is queued, batches stay near BATCH_BYTES.
    release = threading.Event()
    batches: list[int] = []
    commit = disk_module.DiskTier.store_batch

    def held(self: disk_module.DiskTier, batch: dict[int, Value], *args: Any) -> None:
        release.wait(60)
        batches.append(sum(len(v) for v in batch.values()))
        commit(self, batch, *args)

    monkeypatch.setattr(disk_module.DiskTier, "store_batch", held)
    with SpillCache(tmp_path / "s", ram_budget=0) as cache:
        for i in range(24):  # 6 MiB, queued behind the held commit
            cache.put(i, _big(i))
        release.set()
        cache.flush()
        assert sum(len(b) for b in [cache._disk.writes.queue, cache._disk.writes.inflight]) == 0
        assert len(batches) >= 6
        assert max(batches) <= writer.BATCH_BYTES + len(Encoding(_big(0)).to_bytes())
        for i in range(24):
            np.testing.assert_array_equal(cache.get(i)["x"], _big(i)["x"])


def test_an_idle_store_keeps_no_spare_buffers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer, "_WRITER_IDLE_EXIT", 0.05)
    with SpillCache(tmp_path / "s", ram_budget=0) as cache:
        for i in range(8):
            cache.put(i, _big(i))
        cache.flush()
        disk = cache._disk
        deadline = time.monotonic() + 60
        while disk.writes.writer is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert disk.writes.writer is None  # the writer went idle and exited...
        assert (disk.pool.spare, disk.pool.spare_bytes) == ([], 0)  # ...dropping the spare buffers
        np.testing.assert_array_equal(cache.get(7)["x"], _big(7)["x"])


def test_disk_tier_serves_when_ram_is_off(tmp_path: Path) -> None:
    with SpillCache(tmp_path / "s", ram_budget=0) as cache:
        cache.put(0, sample(0))
        assert_sample_equal(cache.get(0), sample(0))  # from the write queue
        cache.flush()
        assert_sample_equal(cache.get(0), sample(0))  # from LMDB
        stats = cache.stats()
        assert stats.ram_items == 0
        assert stats.disk_hits == 2
        assert stats.disk_items == 1


@pytest.mark.parametrize("ram_budget", ["10MiB", 0])
def test_returned_samples_are_private_copies(tmp_path: Path, ram_budget: str | int) -> None:
    with SpillCache(tmp_path / "s", ram_budget=ram_budget) as cache:
        original = sample(1)
        cache.put(1, original)
        original["image"]["flux"].fill_(7.0)  # type: ignore[index]
        first = cache.get(1)
        first["image"]["flux"].zero_()
        first["mask"][:] = False
        assert_sample_equal(cache.get(1), sample(1))


def test_copy_false_returns_the_cached_objects(tmp_path: Path) -> None:
    with SpillCache(tmp_path / "s", ram_budget="1MiB", copy=False) as cache:
        cache.put(1, sample(1))
        assert cache.get(1) is cache.get(1)


@pytest.mark.parametrize("copy", [True, False])
def test_copy_false_leaves_large_copies_to_the_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, copy: bool
) -> None:
    copied_in: list[str] = []
    into = Encoding.into

    def recording(self: Encoding, buffer: object) -> memoryview:
        copied_in.append(threading.current_thread().name)
        return into(self, buffer)  # type: ignore[arg-type]

    monkeypatch.setattr(Encoding, "into", recording)
    monkeypatch.setattr(writer, "_WRITER_IDLE_EXIT", 600.0)  # keep the spare buffers
    release = _held_commits(monkeypatch)
    with SpillCache(tmp_path / "s", ram_budget=0, copy=copy) as cache:
        cache.put(0, _big(0))
        cache.put(1, {"small": np.arange(10)})
        disk = cache._disk
        with disk.writes.lock:  # queued, or taken by the writer, which waits before committing
            queued = {**disk.writes.inflight, **disk.writes.queue}
        # A small value is encoded by the caller either way.
        assert type(queued[1]) is bytes
        assert type(queued[0]) is (Unsealed if copy else Encoding)
        assert copied_in == (["MainThread"] if copy else [])
        np.testing.assert_array_equal(cache.get(0)["x"], _big(0)["x"])  # from the queue
        release.set()
        cache.flush()
        assert len(copied_in) == 1
        assert copied_in[0].startswith("MainThread" if copy else "spillcache-writer")
        assert disk.pool.spare  # the writer's buffer went back for reuse
    with SpillCache(tmp_path / "s", copy=copy) as cache:
        np.testing.assert_array_equal(cache.get(0)["x"], _big(0)["x"])  # from LMDB
        np.testing.assert_array_equal(cache.get(1)["small"], np.arange(10))


def test_copy_false_writer_out_of_memory_loses_the_batch_not_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_memory(self: Encoding, buffer: object) -> memoryview:
        raise MemoryError("no room for the copy")

    monkeypatch.setattr(Encoding, "into", no_memory)
    with SpillCache(tmp_path / "s", ram_budget=0, copy=False) as cache:
        with pytest.warns(SpillCacheWarning, match="no room for the copy"):
            cache.put(0, _big(0))
            cache.flush()
        assert cache.stats().write_errors == 1
        assert cache.get(0) is None
        assert cache.stats().misses == 1


@pytest.mark.parametrize("key", [np.int64(5), np.uint8(5), torch.tensor(5), 5])
def test_integral_keys_are_equivalent(tmp_path: Path, key: object) -> None:
    with SpillCache(tmp_path / "s") as cache:
        cache.put(key, {"x": 1})
        assert cache.get(5) == {"x": 1}
        assert key in cache


@pytest.mark.parametrize(
    ("key", "error", "text"),
    [
        (1.0, TypeError, "float"),
        ("1", TypeError, "str"),
        (True, TypeError, "bool"),
        (torch.tensor([1]), TypeError, "Tensor"),
        (torch.tensor(1.0), TypeError, "Tensor"),
        (-1, ValueError, "-1"),
        (2**64, ValueError, r"2\*\*64"),
    ],
)
def test_bad_keys(tmp_path: Path, key: object, error: type[Exception], text: str) -> None:
    with SpillCache(tmp_path / "s") as cache:
        with pytest.raises(error, match=text):
            cache.put(key, {"x": 1})
        with pytest.raises(error, match=text):
            cache.get(key)


def test_unsupported_sample_names_the_path(tmp_path: Path) -> None:
    with SpillCache(tmp_path / "s") as cache:
        with pytest.raises(TypeError, match=r"\[.meta.\]\[2\]"):
            cache.put(0, {"meta": [1, 2, object()]})
        with pytest.raises(TypeError, match="None"):
            cache.put(0, None)
        assert len(cache) == 0


@pytest.mark.parametrize(
    ("kwargs", "name", "error"),
    [
        ({"ram_budget": "lots"}, "ram_budget", ValueError),
        ({"ram_budget": "-1GiB"}, "ram_budget", ValueError),
        ({"ram_budget": 1.5}, "ram_budget", TypeError),  # a wrong type (#14: was ValueError)
        ({"disk_budget": "lots"}, "disk_budget", ValueError),
        ({"on_mismatch": "ignore"}, "on_mismatch", ValueError),
    ],
)
def test_bad_arguments_name_the_argument(
    tmp_path: Path, kwargs: dict[str, object], name: str, error: type[Exception]
) -> None:
    with pytest.raises(error, match=name):
        SpillCache(tmp_path / "s", **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "s").exists()


def test_percent_budgets(tmp_path: Path) -> None:
    with SpillCache(tmp_path / "s", ram_budget="1%", disk_budget="1%") as cache:
        assert cache.ram_budget > 0
        assert cache.disk_budget is not None and cache.disk_budget > 0


def test_temporary_store_is_deleted_at_close() -> None:
    cache = SpillCache(None)
    cache.put(0, {"x": 1})
    path = cache.path
    assert path.is_dir()
    cache.close()
    assert not path.exists()
    cache.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        cache.put(0, {"x": 1})
    with pytest.raises(ValueError, match="closed"):
        cache.get(0)


def test_unreferenced_cache_releases_its_store(tmp_path: Path) -> None:
    cache = SpillCache(tmp_path / "s")
    cache.put(0, {"x": 1})
    del cache
    assert live_tier(tmp_path / "s") is None
    # The store was committed and can be opened again in this process.
    with SpillCache(tmp_path / "s") as again:
        assert again.get(0) == {"x": 1}


# -- directories that are not stores -------------------------------------------------------------


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_non_store_directory_is_refused_and_untouched(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    (root / "catalog.fits").write_bytes(b"precious")
    before = snapshot(root)
    with pytest.raises(StoreError, match=r"catalog\.fits"):
        SpillCache(root)
    assert snapshot(root) == before


def test_foreign_lmdb_is_refused_and_untouched(tmp_path: Path) -> None:
    root = tmp_path / "other"
    env = lmdb.open(str(root))
    with env.begin(write=True) as txn:
        txn.put(b"k", b"v")
    env.close()
    before = snapshot(root)
    with pytest.raises(StoreError, match="not a spillcache store"):
        SpillCache(root)
    assert snapshot(root) == before


def test_file_path_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(StoreError, match="is a file"):
        SpillCache(target)
    assert target.read_text() == "x"


def test_unwritable_directory_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Permission bits do not stop root (CI runs as root): ask the same question os.access answers.
    monkeypatch.setattr(os, "access", lambda *_args, **_kw: False)
    with pytest.raises(StoreError, match="not writable"):
        SpillCache(tmp_path / "ro")


# -- persistence and fingerprints ----------------------------------------------------------------


def test_second_process_reads_every_entry_from_disk(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with SpillCache(path, fingerprint="v1") as cache:
        for i in range(50):
            cache.put(i, sample(i))
    result = run_python(
        """
        import sys
        from helpers import assert_sample_equal
        from test_cache import sample
        from spillcache import SpillCache
        with SpillCache(sys.argv[1], fingerprint="v1") as cache:
            assert len(cache) == 50
            for i in range(50):
                got = cache.get(i)
                assert got is not None, i
                assert_sample_equal(got, sample(i))
            s = cache.stats()
            print(s.disk_hits, s.misses)
        """,
        str(path),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["50", "0"]
    info = cache_info(path)
    assert info.items == 50
    assert info.fingerprint == "v1"


def test_writes_are_committed_without_flush(tmp_path: Path) -> None:
    # The writer commits at most writer._COMMIT_INTERVAL after a put: another process sees the entry
    # while this one keeps the cache open and never flushes.
    path = tmp_path / "s"
    with SpillCache(path) as cache:
        cache.put(7, {"x": 7})
        result = run_python(
            """
            import sys, time
            import lmdb
            from spillcache.disk.env import DB_NAMES, Dbs
            from spillcache.disk.index import CheckedChunks
            from spillcache.disk.lookup import find
            env = lmdb.open(sys.argv[1], max_dbs=len(DB_NAMES), readonly=True, lock=True)
            dbs = Dbs(*(env.open_db(n, create=False) for n in DB_NAMES))
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                with env.begin() as txn:
                    if find(txn, dbs, 7, CheckedChunks()) is not None:
                        print("seen")
                        break
                time.sleep(0.05)
            """,
            str(path),
        )
    assert result.stdout.strip() == "seen", result.stderr


def test_fingerprint_mismatch_rebuilds_and_warns(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with SpillCache(path, fingerprint="a") as cache:
        cache.put(1, {"x": 1})
    with pytest.warns(SpillCacheWarning, match="emptying"), SpillCache(path, fingerprint="b") as c:
        assert len(c) == 0
        assert c.get(1) is None
    assert cache_info(path).fingerprint == "b"


def test_fingerprint_mismatch_error_names_both(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with SpillCache(path, fingerprint="alpha") as cache:
        cache.put(1, {"x": 1})
    with pytest.raises(FingerprintMismatch, match="alpha") as info:
        SpillCache(path, fingerprint="beta", on_mismatch="error")
    assert "alpha" in info.value.stored
    assert "beta" in info.value.expected
    with SpillCache(path, fingerprint="alpha") as cache:
        assert cache.get(1) == {"x": 1}


def test_no_fingerprint_accepts_the_stored_one(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with SpillCache(path, fingerprint="a") as cache:
        cache.put(1, {"x": 1})
    with SpillCache(path, on_mismatch="error") as cache:
        assert cache.get(1) == {"x": 1}


def test_other_format_version_is_a_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with SpillCache(path, fingerprint="a") as cache:
        cache.put(1, {"x": 1})
    env = lmdb.open(str(path), max_dbs=2)
    with env.begin(write=True) as txn:
        txn.put(b"format_version", b"999", db=env.open_db(b"meta", txn=txn))
    env.close()
    with pytest.raises(FingerprintMismatch, match="format 999"):
        SpillCache(path, fingerprint="a", on_mismatch="error")


# -- faults --------------------------------------------------------------------------------------


def corrupt_value(path: Path, key: int, offset: int = -1) -> None:
    def flip(record: bytes) -> bytes:
        raw = bytearray(record)
        raw[offset] ^= 0x10
        return bytes(raw)

    replace_record(path, key, flip)


def test_corrupt_entry_is_a_counted_miss_and_refilled(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with SpillCache(path, ram_budget=0) as cache:
        for i in range(3):
            cache.put(i, sample(i))
    corrupt_value(path, 0)
    corrupt_value(path, 1, offset=40)
    with SpillCache(path, ram_budget=0) as cache:
        with pytest.warns(SpillCacheWarning, match="corrupt") as caught:
            assert cache.get(0) is None
            assert cache.get(1) is None
        assert len([w for w in caught if "corrupt" in str(w.message)]) == 1
        assert_sample_equal(cache.get(2), sample(2))
        stats = cache.stats()
        assert (stats.corrupt, stats.misses, stats.disk_hits) == (2, 2, 1)
        cache.put(0, sample(0))
        cache.flush()
        assert_sample_equal(cache.get(0), sample(0))


def test_disk_budget_refuses_new_entries_and_training_goes_on(tmp_path: Path) -> None:
    item = {"x": np.zeros(64 * 1024, dtype=np.uint8)}
    with SpillCache(tmp_path / "s", ram_budget="1MiB", disk_budget="1MiB") as cache:
        with pytest.warns(SpillCacheWarning, match="disk_budget"):
            for i in range(64):
                cache.put(i, item)
                cache.flush()
        stats = cache.stats()
        assert stats.rejected > 0
        assert stats.puts == 64
        assert stats.disk_items + stats.rejected == 64
        assert stats.disk_bytes <= 1.5 * 2**20
        for i in range(64):
            got = cache.get(i)
            assert got is None or np.array_equal(got["x"], item["x"])


def test_map_grows_by_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(env_module, "_INITIAL_MAP_SIZE", 1 << 20)
    blob = {"x": np.arange(256 * 1024, dtype=np.uint8)}
    with SpillCache(tmp_path / "s", ram_budget=0) as cache:
        for i in range(40):  # 10 MiB through a 1 MiB initial map
            cache.put(i, blob)
        cache.flush()
        assert len(cache) == 40
        assert cache.stats().write_errors == 0
        assert all(np.array_equal(cache.get(i)["x"], blob["x"]) for i in range(40))


def test_damaged_store_gives_a_clear_error_or_is_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with SpillCache(path) as cache:
        for i in range(20):
            cache.put(i, {"x": np.zeros(10_000)})
    data = path / "data.mdb"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])  # truncated
    with pytest.raises(StoreError, match="spillcache clear"):
        SpillCache(path, on_mismatch="error")
    with pytest.warns(SpillCacheWarning, match="rebuilding"), SpillCache(path) as cache:
        assert len(cache) == 0
        cache.put(1, {"x": 1})
        assert cache.get(1) == {"x": 1}


# -- threads, fork and spawn ---------------------------------------------------------------------


def test_threads_share_a_cache(tmp_path: Path) -> None:
    errors: list[BaseException] = []
    with SpillCache(tmp_path / "s", ram_budget="200KiB") as cache:

        def work(offset: int) -> None:
            try:
                for i in range(offset, 400, 4):
                    cache.put(i, sample(i))
                for i in range(offset, 400, 4):
                    got = cache.get(i)
                    assert got is not None
                    assert_sample_equal(got, sample(i))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert len(cache) == 400
        assert cache.stats().ram_bytes <= cache.ram_budget


def test_a_failing_ram_lookup_leaves_the_lock_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with SpillCache(tmp_path / "s", ram_budget="1MiB") as cache:
        cache.put(1, sample(1))

        def broken(key: int) -> Any:
            raise MemoryError

        monkeypatch.setattr(cache._ram, "lookup", broken)
        with pytest.raises(MemoryError):
            cache.get(1)
        monkeypatch.undo()
        held = cache._lock.locked()
        if held:
            cache._lock.release()  # or close() would wait for it forever
        assert not held
        assert_sample_equal(cache.get(1), sample(1))


def _child_reads_and_writes(cache: SpillCache, known: int, queue: object) -> None:
    try:
        ok = all(
            cache.get(i) is not None and np.array_equal(cache.get(i)["v"], np.full(100, i))
            for i in range(known)
        )
        for i in range(10_000, 10_050):
            cache.put(i, {"v": np.full(100, i)})
        cache.flush()
        queue.put(ok)  # type: ignore[attr-defined]
    except BaseException as exc:
        queue.put(repr(exc))  # type: ignore[attr-defined]


def test_fork_while_a_thread_writes(tmp_path: Path) -> None:
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    path = tmp_path / "s"
    cache = SpillCache(path, ram_budget="64KiB")
    for i in range(200):
        cache.put(i, {"v": np.full(100, i)})
    cache.flush()
    stop = threading.Event()
    written = [200]

    def writer() -> None:
        i = 200
        while not stop.is_set() and i < 5000:
            cache.put(i, {"v": np.full(100, i)})
            written[0] = i = i + 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        results = []
        for _ in range(3):
            queue = ctx.Queue()
            child = ctx.Process(target=_child_reads_and_writes, args=(cache, 200, queue))
            child.start()
            results.append(queue.get(timeout=60))
            child.join(60)
            assert child.exitcode == 0
        assert results == [True, True, True]
    finally:
        stop.set()
        thread.join()
    cache.close()
    with SpillCache(path) as again:
        for i in [*range(written[0]), *range(10_000, 10_050)]:
            got = again.get(i)
            assert got is not None, i
            assert np.array_equal(got["v"], np.full(100, i))


def _spawned_reader(cache: SpillCache, queue: object) -> None:
    got = cache.get(3)
    queue.put(None if got is None else int(got["v"][0]))  # type: ignore[attr-defined]
    cache.put(4, {"v": np.full(3, 4)})
    cache.close()


def test_spawned_process_gets_a_pickled_cache(tmp_path: Path) -> None:
    import multiprocessing as mp

    with SpillCache(tmp_path / "s") as cache:
        cache.put(3, {"v": np.full(3, 3)})
        cache.flush()
        state = pickle.dumps(cache)
        assert b"Environment" not in state
        assert len(state) < 2000
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        child = ctx.Process(target=_spawned_reader, args=(cache, queue))
        child.start()
        assert queue.get(timeout=120) == 3
        child.join(120)
        assert child.exitcode == 0
        assert cache.get(4)["v"].tolist() == [4, 4, 4]


@pytest.mark.parametrize("name", ["copy", "readahead", "allow_remote_fs"])
def test_flags_must_be_booleans(tmp_path: Path, name: str) -> None:
    with pytest.raises(TypeError, match=name):
        SpillCache(tmp_path / "s", **{name: "false"})  # type: ignore[arg-type]


def test_ram_hits_copy_with_the_replicator_generated_for_their_structure(tmp_path: Path) -> None:
    from spillcache.codec.copying import replicate

    with SpillCache(tmp_path / "s", ram_budget="1MiB") as cache:
        for i in range(3):
            cache.put(i, {"x": torch.full((4,), float(i)), "meta": {"id": i}})
        resident, copier = cache._ram.lookup(2)
        assert copier is not None and copier is not replicate  # generated at the second plan use
        got = cache.get(2)
        assert got["meta"] == {"id": 2} and torch.equal(got["x"], torch.full((4,), 2.0))
        assert got["x"].data_ptr() != resident["x"].data_ptr()  # a copy, not the resident
        got["x"] += 1
        assert torch.equal(cache.get(2)["x"], torch.full((4,), 2.0))


def test_a_read_of_a_queued_value_copies_it_before_the_writer_recycles_its_buffer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spillcache.codec.encoding import Unsealed

    real = Unsealed.snapshot
    copied: list[int] = []

    def slow_snapshot(self: Unsealed) -> memoryview:
        # Let the writer commit and recycle the buffer meanwhile, if the read lets it.
        flusher = threading.Thread(target=cache.flush)
        flusher.start()
        flusher.join(0.3)
        copied.append(len(self))
        return real(self)

    monkeypatch.setattr(Unsealed, "snapshot", slow_snapshot)
    with SpillCache(tmp_path / "s", ram_budget=0) as cache:
        for i in range(20):  # until a read finds its value still queued
            cache.put(i, {"x": np.full(32_768, i, np.float32)})  # 128 KiB: a pooled buffer
            got = cache.get(i)
            assert got is not None and np.array_equal(got["x"], np.full(32_768, i, np.float32))
            if copied:
                break
        assert copied, "no read found its value queued"
        cache.flush()
        assert all(cache.get(j)["x"][0] == j for j in range(i + 1))
