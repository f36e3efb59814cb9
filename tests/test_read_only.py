"""A complete store this user can read but not write (#12 item 5)."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

from spillcache import CachedDataset, SpillCache, cache_info, copy_cache
from spillcache.admin import verify

N = 64


class Source:
    def __init__(self) -> None:
        self.loads = 0

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> dict[str, Any]:
        self.loads += 1
        return {"i": i, "x": torch.full((1024,), float(i))}


def _snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def read_only_store(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A complete store (at ``writable``) and a read-only bind mount of it (``view``)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to bind-mount a read-only view (chmod does not stop root)")
    base, view = tmp_path / "base", tmp_path / "view"
    base.mkdir()
    view.mkdir()
    with CachedDataset(Source(), base / "s", ram_budget=0) as ds:
        for i in range(N):
            ds[i]
    subprocess.run(["mount", "--bind", str(base), str(view)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], check=True)
        with pytest.raises(OSError):
            (view / "probe").write_bytes(b"")  # really read-only
        yield base / "s", view / "s"
    finally:
        if subprocess.run(["umount", str(view)], check=False).returncode:
            subprocess.run(["umount", "-l", str(view)], check=True)  # busy: detach it anyway


def test_info_verify_and_copy_of_a_read_only_store(
    read_only_store: tuple[Path, Path], tmp_path: Path
) -> None:
    writable, store = read_only_store
    before = _snapshot(writable)
    info = cache_info(store)
    assert info.items == N
    report = verify(store)
    assert report.ok and report.entries == N
    cli = subprocess.run(
        [sys.executable, "-m", "spillcache.cli", "info", str(store)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert cli.returncode == 0 and f"items        {N}" in cli.stdout, cli.stderr
    cli = subprocess.run(
        [sys.executable, "-m", "spillcache.cli", "verify", str(store)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert cli.returncode == 0 and f"{N} entries, ok" in cli.stdout, cli.stdout + cli.stderr
    [copied] = copy_cache(store, tmp_path / "copy")
    assert cache_info(copied).items == N and verify(copied).ok
    assert _snapshot(writable) == before


def test_two_epochs_from_a_read_only_store(read_only_store: tuple[Path, Path]) -> None:
    writable, store = read_only_store
    before = _snapshot(writable)
    source = Source()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with CachedDataset(source, store, ram_budget="64KiB") as ds:
            loader = DataLoader(ds, batch_size=8, shuffle=True)
            for _ in range(2):
                seen = sorted(int(i) for batch in loader for i in batch["i"])
                assert seen == list(range(N))
            stats = ds.stats()
            assert ds.cache.put(N + 1, {"i": 0}) in (True, False)  # refused, not raised
    assert source.loads == 2  # the two probes, nothing else
    assert stats.misses == 0 and stats.puts == 0
    assert stats.ram_hits + stats.disk_hits == 2 * N
    assert len(caught) <= 1, [str(w.message) for w in caught]
    assert _snapshot(writable) == before  # zero writes


def test_a_read_only_store_of_other_data_is_refused_clearly(
    read_only_store: tuple[Path, Path],
) -> None:
    _, store = read_only_store
    with pytest.raises(Exception, match="read-only"):
        SpillCache(store, fingerprint="something else")
