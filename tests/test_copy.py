"""``spillcache copy`` / ``copy_cache`` is safe whatever its arguments (issue 12, item 4).

A destination inside the source (or the reverse) is refused before anything is touched, and a
copy that fails leaves the source as it was and removes what it created. The source's data
file and marker are compared byte for byte; ``lock.mdb`` is LMDB's reader table, which every
reader (``spillcache info`` too) writes its slot into, so only its presence is compared.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from reliability import check_store, fill
from spillcache import StoreError
from spillcache.admin import copy_cache, verify
from spillcache.disk import tier as disk_module


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` with the digest of its content (``lock.mdb``: present)."""
    found = {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        if path.is_dir():
            found[name] = "dir"
        elif path.name == "lock.mdb":
            found[name] = "lock"
        else:
            found[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m spillcache.cli ARGS`` in a fresh interpreter."""
    return _in(Path.cwd(), *args)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "S"
    fill(path, range(40), fingerprint="fp")  # ~1 MiB
    return path


@pytest.mark.parametrize(
    "dst",
    ["S/backup", "S", "S/./a/../backup", "link/backup", "~/S/deeper/backup", "S/.."],
    ids=["inside", "itself", "dotted", "symlink", "tilde", "parent"],
)
def test_copy_into_or_around_the_source_is_refused_before_anything(
    tmp_path: Path, store: Path, dst: str
) -> None:
    (tmp_path / "link").symlink_to(store)
    before = snapshot(tmp_path)
    done = _in(tmp_path, "copy", "S", dst)
    assert done.returncode == 2, done
    assert "inside" in done.stderr and "not a spillcache store" not in done.stderr, done.stderr
    assert snapshot(tmp_path) == before
    assert verify(store).ok
    assert check_store(store, 40, fingerprint="fp") == set(range(40))


def _in(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI run in ``cwd`` with ``HOME`` there too."""
    # The spillcache this test imports, also from another working directory.
    env = {**os.environ, "HOME": str(cwd), "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run(
        [sys.executable, "-m", "spillcache.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
        check=False,
    )


def test_a_source_inside_the_destination_is_refused(tmp_path: Path) -> None:
    fill(tmp_path / "cache" / "a", range(3))
    before = snapshot(tmp_path)
    with pytest.raises(StoreError, match=r"src=.* is inside dst="):
        copy_cache(tmp_path / "cache" / "a", tmp_path / "cache")
    done = cli("copy", str(tmp_path / "cache" / "a"), str(tmp_path / "cache" / ".." / "cache"))
    assert done.returncode == 2 and "is inside dst=" in done.stderr, done
    assert snapshot(tmp_path) == before


def test_a_source_that_is_no_store_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    before = snapshot(tmp_path)
    done = cli("copy", str(tmp_path / "notes"), str(tmp_path / "out" / "copy"))
    assert done.returncode == 2 and "not a spillcache store" in done.stderr, done
    assert snapshot(tmp_path) == before


def test_a_copy_that_fails_midway_removes_what_it_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    fill(cache / "a", range(5))
    fill(cache / "b", range(5))
    real = disk_module.DiskTier.copy_to

    def second_fails(self: disk_module.DiskTier, destination: Path) -> None:
        real(self, destination)
        if self.path.name == "b":
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(disk_module.DiskTier, "copy_to", second_fails)
    before = snapshot(tmp_path)
    with pytest.raises(StoreError, match=r"No space left on device.*the source is unchanged"):
        copy_cache(cache, tmp_path / "new" / "copy")
    assert snapshot(tmp_path) == before  # new/, new/copy/, copy/a and copy/b are gone
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(StoreError):
        copy_cache(cache, empty)
    assert list(empty.iterdir()) == []  # an existing destination stays, emptied


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mount tmpfs file systems with the given options; unmount them afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs the tests as root)")
    mounted: list[Path] = []

    def make(options: str) -> Path:
        point = tmp_path / f"mnt{len(mounted)}"
        point.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(point)
        return point

    try:
        yield make
    finally:
        for point in mounted:
            subprocess.run(["umount", "-l", str(point)], check=True)


def test_a_full_destination_leaves_the_source_and_an_empty_destination(
    tmp_path: Path, store: Path, mount: Callable[[str], Path]
) -> None:
    small = mount("size=256k")
    before = snapshot(store)
    done = cli("copy", str(store), str(small / "backup" / "S"))
    assert done.returncode == 2, done
    assert "failed" in done.stderr and "the source is unchanged" in done.stderr, done.stderr
    assert list(small.iterdir()) == []
    with pytest.raises(StoreError, match="failed"):
        copy_cache(store, small)
    assert list(small.iterdir()) == []
    assert snapshot(store) == before
    assert check_store(store, 40, fingerprint="fp") == set(range(40))


def test_an_unwritable_destination_leaves_nothing(
    tmp_path: Path, store: Path, mount: Callable[[str], Path]
) -> None:
    read_only = mount("ro,size=1m")
    before = snapshot(tmp_path)
    done = cli("copy", str(store), str(read_only / "backup"))
    assert done.returncode == 2 and "Read-only file system" in done.stderr, done
    with pytest.raises(StoreError, match="Read-only"):
        copy_cache(store, read_only)
    assert snapshot(tmp_path) == before
