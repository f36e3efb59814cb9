"""`clear` refuses a store any process holds open; `force` makes them stop (#12 item 3)."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

from spillcache import CachedDataset, SpillCache, clear_cache
from spillcache.errors import StoreError

TIMEOUT = 120.0


def _fill(path: Path, n: int = 20) -> None:
    with SpillCache(path, fingerprint="fp") as cache:
        for i in range(n):
            cache.put(i, {"i": i})


def _holder(path: str, role: str, ready: Any, go: Any, result: Any) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cache = SpillCache(path, fingerprint="fp", ram_budget=0)
        if role == "reader":
            assert cache.get(3) == {"i": 3}
        elif role == "writer":
            cache.put(100, {"i": 100})
            cache.flush()
        ready.set()  # "idle" does nothing at all until then
        assert go.wait(TIMEOUT)
        after = cache.get(3)  # the store was cleared under it: its data is gone
        for i in range(200, 260):
            cache.put(i, {"i": i})
        cache.flush()
        rejected = cache.stats().rejected
        cache.close()
    result.put(
        {
            "after": after,
            "rejected": rejected,
            "warnings": [str(w.message) for w in caught if "cleared" in str(w.message)],
        }
    )


def _cli_clear(path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spillcache.cli", "clear", "--yes", *extra, str(path)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


@pytest.mark.parametrize("role", ["idle", "reader", "writer"])
def test_clear_refuses_a_store_another_process_holds_open(tmp_path: Path, role: str) -> None:
    path = tmp_path / "s"
    _fill(path)
    ctx = multiprocessing.get_context("spawn")
    ready, go, result = ctx.Event(), ctx.Event(), ctx.Queue()
    holder = ctx.Process(target=_holder, args=(str(path), role, ready, go, result))
    holder.start()
    try:
        assert ready.wait(TIMEOUT)
        with pytest.raises(StoreError, match=r"in use by another process.*force=True"):
            clear_cache(path)
        cli = _cli_clear(path)
        assert cli.returncode == 2
        assert "refusing to clear" in cli.stderr and "--force" in cli.stderr, cli.stderr
        assert (path / "data.mdb").is_file()  # nothing deleted
        forced = _cli_clear(path, "--force")
        assert forced.returncode == 0, forced.stderr
        assert not path.exists()
        go.set()
        report = result.get(timeout=TIMEOUT)
        holder.join(TIMEOUT)
        assert holder.exitcode == 0
    finally:
        if holder.is_alive():
            holder.kill()
    assert report["after"] is None
    assert report["rejected"] >= 60
    assert len(report["warnings"]) == 1, report
    assert not path.exists()  # its later puts went nowhere: no store came back


class Source:
    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"i": i, "x": torch.full((8,), float(i))}


def test_a_forked_worker_keeps_the_store_in_use(tmp_path: Path) -> None:
    path = tmp_path / "s"
    ds = CachedDataset(Source(), path, fingerprint="fp")
    loader = DataLoader(
        ds, batch_size=4, num_workers=1, persistent_workers=True, multiprocessing_context="fork"
    )
    assert sorted(int(i) for b in loader for i in b["i"]) == list(range(16))
    ds.close()  # this process lets go: the worker still holds the store
    with pytest.raises(StoreError, match="in use by another process"):
        clear_cache(path)
    assert clear_cache(path, force=True) == [path]
    # The worker goes on serving correct samples, from the source.
    assert sorted(int(i) for b in loader for i in b["i"]) == list(range(16))
    del loader  # the worker exits
    assert not path.exists()


def test_clear_in_the_process_that_holds_it(tmp_path: Path) -> None:
    path = tmp_path / "s"
    _fill(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cache = SpillCache(path, fingerprint="fp", ram_budget=0)
        with pytest.raises(StoreError, match="open in this process"):
            clear_cache(path)
        clear_cache(path, force=True)
        assert cache.get(3) is None
        assert cache.put(5, {"i": 5}) is False
        cache.close()
    assert not path.exists()
    assert sum("stores nothing more" in str(w.message) for w in caught) == 1


def test_clear_of_an_unused_store_still_works(tmp_path: Path) -> None:
    path = tmp_path / "s"
    _fill(path)
    assert clear_cache(path) == [path]
    assert not path.exists()
