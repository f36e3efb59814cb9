"""Corruption: damaged values are detected on read, damaged files at open, never served.

Codec-level fuzzing (random and mutated encodings) lives in test_codec.py; here the damage is
done where it happens in real life: to values inside a store, and to the store's files.
"""

from __future__ import annotations

import os
import pickle
import random
import struct
import warnings
from collections.abc import Callable
from pathlib import Path

import lmdb
import numpy as np
import pytest
import torch
import xxhash

from packed import replace_record, stored_record
from reliability import (
    check_sample,
    fill,
    in_child,
    make_sample,
    probe_store,
    store_with,
    write_tree,
)
from spillcache import CachedDataset, SpillCache, SpillCacheWarning, StoreError
from spillcache.admin import verify
from spillcache.codec import encode
from spillcache.disk import MARKER

PAGE = 4096
_P_FLAGS = 10  # offset of the 16-bit page flags in an LMDB page header


class _Payload:
    """Unpickling this runs code: it creates the directory ``target``."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str]]:
        return os.makedirs, (str(self.target),)


def _torch_save(value: bytes) -> bytes:
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"spillcache-t{os.getpid()}.pt"
    torch.save({"x": torch.zeros(len(value) // 8)}, path)
    try:
        return path.read_bytes()
    finally:
        path.unlink()


def _flip(offset: int) -> Callable[[bytes], bytes]:
    def flip(value: bytes) -> bytes:
        raw = bytearray(value)
        raw[offset] ^= 0x01
        return bytes(raw)

    return flip


def _damages(sentinel: Path) -> dict[str, Callable[[bytes], bytes]]:
    """Ways a stored value can go bad, by name."""
    return {
        "pickle-payload": lambda _v: pickle.dumps(_Payload(sentinel)),
        "torch-save": _torch_save,
        "random-bytes": lambda v: random.Random(len(v)).randbytes(len(v)),
        "zeroed": lambda v: bytes(len(v)),
        "empty": lambda _v: b"",
        "truncated-half": lambda v: v[: len(v) // 2],
        "truncated-by-one": lambda v: v[:-1],
        "extended": lambda v: v + b"\0",
        "bit-flip-magic": _flip(0),
        "bit-flip-header": _flip(6),
        "bit-flip-middle": lambda v: _flip(len(v) // 2)(v),
        "bit-flip-checksum": _flip(-1),
    }


DAMAGES = sorted(_damages(Path()))


def damage_value(path: Path, key: int, how: Callable[[bytes], bytes]) -> None:
    """Replace the stored record of ``key`` by ``how(record)``, through LMDB itself."""
    replace_record(path, key, how)


def corrupt_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [
        str(w.message)
        for w in caught
        if issubclass(w.category, SpillCacheWarning) and "corrupt" in str(w.message)
    ]


# -- damaged values ------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_value_is_a_counted_miss_warned_once_and_refilled(
    tmp_path: Path, damage: str
) -> None:
    path = tmp_path / "store"
    fill(path, range(10))  # keys 0..9: values inline in B-tree leaves and on overflow pages
    sentinel = tmp_path / "code-was-executed"
    bad = {2, 4}  # a small (inline) and a large (overflow page) value
    for key in bad:
        damage_value(path, key, _damages(sentinel)[damage])
    with SpillCache(path, ram_budget="1MiB") as cache:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(2):
                for key in range(10):
                    value = cache.get(key)
                    if key in bad:
                        assert value is None
                    else:
                        check_sample(key, value)
        assert len(corrupt_warnings(caught)) == 1
        assert cache.stats().corrupt == 2 * len(bad)
        for key in bad:
            cache.put(key, make_sample(key))
        cache.flush()
    assert not sentinel.exists(), "decoding a stored value executed code"
    assert verify(path).ok
    with SpillCache(path, ram_budget=0) as cache:
        for key in range(10):
            check_sample(key, cache.get(key))
        assert cache.stats().corrupt == 0


def test_every_damage_at_once_through_a_dataset(tmp_path: Path) -> None:
    # CachedDataset turns a corrupt entry into a load from the source and a put: training sees
    # exact samples throughout, and the next run reads every entry back from the store.
    class Source(torch.utils.data.Dataset[dict[str, object]]):
        def __len__(self) -> int:
            return len(DAMAGES) + 3

        def __getitem__(self, i: int) -> dict[str, object]:
            return make_sample(i)

    path = tmp_path / "store"
    with CachedDataset(Source(), path, fingerprint="fp") as ds:
        for i in range(len(ds)):
            ds[i]
    for key, damage in enumerate(DAMAGES):
        damage_value(path, key, _damages(tmp_path / "code-was-executed")[damage])
    assert set(verify(path).bad_keys) == set(range(len(DAMAGES)))
    with (
        warnings.catch_warnings(record=True) as caught,
        CachedDataset(Source(), path, fingerprint="fp", ram_budget=0) as ds,
    ):
        warnings.simplefilter("always")
        for i in range(len(ds)):
            check_sample(i, ds[i])
        stats = ds.cache.stats()
        # Each damaged entry is one request: one corrupt miss, one load, one put.
        assert (stats.corrupt, stats.misses, stats.puts) == (len(DAMAGES),) * 3
        assert stats.disk_hits == 3
    assert len(corrupt_warnings(caught)) == 1
    assert verify(path).ok
    assert not (tmp_path / "code-was-executed").exists()


def test_bit_rot_in_the_data_file_is_detected(tmp_path: Path) -> None:
    # Damage the bytes on disk, behind LMDB's back, as a failing disk or a stray write would.
    path = tmp_path / "store"
    fill(path, range(10))
    data = path / "data.mdb"
    raw = bytearray(data.read_bytes())
    for key in (2, 4):  # a value inside a leaf page and one on overflow pages
        value = stored_record(path, key)  # the bytes the store holds for the sample
        assert value is not None
        # Every copy: LMDB does not clear page buffers, so stale copies may exist elsewhere.
        at = raw.find(value)
        assert at > 0
        while at >= 0:
            raw[at + len(value) // 2] ^= 0x80  # in the element bytes: only a checksum sees it
            at = raw.find(value, at + 1)
    data.write_bytes(bytes(raw))
    with pytest.warns(SpillCacheWarning, match="corrupt"), SpillCache(path, ram_budget=0) as c:
        assert [c.get(k) is None for k in range(10)] == [k in (2, 4) for k in range(10)]
        assert c.stats().corrupt == 2
    assert verify(path).bad_keys == (2, 4)


# -- damaged files -------------------------------------------------------------------------------


def _db_root(data: bytes, name: bytes) -> int:
    """Page number of the root of the named database ``name``, read from LMDB's structures.

    The newer of the two meta pages (header 16 bytes, then MDB_meta) gives the main database's
    root (mm_dbs[1].md_root at 128, mm_txnid at 144); that root is a leaf whose nodes (u16
    offsets from byte 16; node: u16 size lo, hi, flags, key size, key, data) map each name to
    its MDB_db record, whose md_root is at byte 40. Searching pages for bytes would be wrong:
    LMDB does not clear page buffers, so stale bytes turn up in unrelated pages.
    """
    meta = max(
        (data[p * PAGE : (p + 1) * PAGE] for p in (0, 1)),
        key=lambda m: struct.unpack_from("<Q", m, 144)[0],
    )
    (main,) = struct.unpack_from("<Q", meta, 128)
    page = data[main * PAGE : (main + 1) * PAGE]
    (lower,) = struct.unpack_from("<H", page, 12)
    for slot in range(16, lower, 2):
        (node,) = struct.unpack_from("<H", page, slot)
        (ksize,) = struct.unpack_from("<H", page, node + 6)
        if page[node + 8 : node + 8 + ksize] == name:
            return int(struct.unpack_from("<Q", page, node + 8 + ksize + 40)[0])
    raise AssertionError(f"no database {name!r} in the main database")


def _damage_root(data: Path, name: bytes) -> None:
    """Scramble the page flags of the root page of database ``name``: LMDB notices this."""
    raw = bytearray(data.read_bytes())
    raw[_db_root(bytes(raw), name) * PAGE + _P_FLAGS] ^= 0xFF
    data.write_bytes(bytes(raw))


def _truncate_to(size: Callable[[int], int]) -> Callable[[Path], None]:
    def truncate(data: Path) -> None:
        os.truncate(data, size(data.stat().st_size))

    return truncate


FILE_DAMAGES: dict[str, Callable[[Path], object]] = {
    "garbage": lambda d: d.write_bytes(random.Random(0).randbytes(d.stat().st_size)),
    "not-lmdb": lambda d: d.write_text("these are not the pages you are looking for\n" * 100),
    "meta-pages-zeroed": lambda d: d.write_bytes(bytes(2 * PAGE) + d.read_bytes()[2 * PAGE :]),
    "truncated-to-half": _truncate_to(lambda n: n // 2),
    "truncated-by-a-page": _truncate_to(lambda n: n - PAGE),
    "truncated-by-a-byte": _truncate_to(lambda n: n - 1),
    "truncated-to-100-bytes": _truncate_to(lambda _n: 100),
    "meta-db-page-damaged": lambda d: _damage_root(d, b"meta"),
}


def _damaged_store(tmp_path: Path, damage: str) -> Path:
    path = tmp_path / "store"
    fill(path, range(40))  # ~1 MiB: a truncation cuts into pages LMDB will read
    FILE_DAMAGES[damage](path / "data.mdb")
    return path


@pytest.mark.parametrize("damage", sorted(FILE_DAMAGES))
def test_damaged_file_is_a_clear_error_never_a_crash(tmp_path: Path, damage: str) -> None:
    # In a child process: without the checks, a truncated file kills its reader with SIGBUS.
    path = _damaged_store(tmp_path, damage)
    report = in_child(probe_store, path=str(path), on_mismatch="error", keys=40)
    assert report.get("raised") == "spillcache.errors.StoreError" or report.get(
        "raised", ""
    ).endswith("disk.env.DamagedStore"), report
    assert f"spillcache clear {path}" in report["message"]
    assert "on_mismatch='rebuild'" in report["message"]
    with pytest.raises(StoreError, match=r"damaged|truncated"):
        verify(path)


@pytest.mark.parametrize("damage", sorted(FILE_DAMAGES))
def test_damaged_store_is_rebuilt_under_rebuild(tmp_path: Path, damage: str) -> None:
    path = _damaged_store(tmp_path, damage)
    report = in_child(probe_store, path=str(path), on_mismatch="rebuild", keys=40)
    assert "raised" not in report, report
    assert report["values"] == ["absent"] * 40
    assert [w for w in report["warnings"] if "rebuilding" in w], report["warnings"]
    fill(path, range(5))
    assert verify(path).entries == 5


def test_damaged_data_page_is_a_clear_error(tmp_path: Path) -> None:
    # A B-tree page LMDB recognizes as damaged (LMDB has no page checksums: it notices only
    # inconsistencies) must not surface as an lmdb exception from get() or verify().
    path = tmp_path / "store"
    fill(path, range(5))
    _damage_root(path / "data.mdb", b"data")
    report = in_child(probe_store, path=str(path), on_mismatch="error", keys=5)
    assert report.get("raised", "").startswith("spillcache."), report
    assert "spillcache clear" in report["message"]
    with pytest.raises(StoreError, match="spillcache clear"):
        verify(path)


# -- foreign files -------------------------------------------------------------------------------


def _foreign_lmdb(path: Path) -> None:
    env = lmdb.open(str(path), max_dbs=4)
    with env.begin(write=True) as txn:
        txn.put(b"model", b"weights", db=env.open_db(b"checkpoints", txn=txn))
    env.close()


def _foreign_lmdb_with_a_marker(path: Path) -> None:
    _foreign_lmdb(path)
    write_tree(path, {MARKER: b'{"spillcache": 1, "created": 0}'})


FOREIGN: dict[str, Callable[[Path], object]] = {
    "lmdb-without-marker": _foreign_lmdb,
    "lmdb-with-a-marker": _foreign_lmdb_with_a_marker,
    "data-file-without-marker": lambda p: write_tree(p, {"data.mdb": b"x" * 9000}),
    "a-store-with-an-extra-file": store_with({"notes.txt": b"mine"}),
    "marker-that-is-not-ours": lambda p: write_tree(p, {MARKER: b'{"x": 1}'}),
}


def _snapshot(root: Path) -> dict[str, bytes]:
    # lock.mdb holds LMDB's reader table, which any reader may rewrite; everything else counts.
    return {
        str(f.relative_to(root)): f.read_bytes()
        for f in sorted(root.rglob("*"))
        if f.is_file() and f.name != "lock.mdb"
    }


@pytest.mark.parametrize("foreign", sorted(FOREIGN))
def test_foreign_files_are_refused_and_never_modified(tmp_path: Path, foreign: str) -> None:
    path = tmp_path / "store"
    FOREIGN[foreign](path)
    before = _snapshot(tmp_path)
    for on_mismatch in ("error", "rebuild"):
        with pytest.raises(StoreError, match="not"):
            SpillCache(path, on_mismatch=on_mismatch)
    assert _snapshot(tmp_path) == before


def test_hostile_header_with_a_valid_checksum_is_refused(tmp_path: Path) -> None:
    # Someone who can write to the cache directory can also recompute the (unkeyed) checksum:
    # a value claiming a 2**40-element array must be refused from its size, not by trying.
    value = bytearray(encode({"x": np.zeros(4, dtype=np.float64)}))
    (spec_len,) = struct.unpack_from("<I", value, 8)
    table = 12 + spec_len
    assert struct.unpack_from("<Q", value, table) == (4,)
    struct.pack_into("<Q", value, table, 1 << 40)
    struct.pack_into("<Q", value, len(value) - 8, xxhash.xxh3_64_intdigest(bytes(value[:-8])))
    path = tmp_path / "store"
    fill(path, range(3))
    damage_value(path, 1, lambda _v: bytes(value))
    with pytest.warns(SpillCacheWarning, match="corrupt"), SpillCache(path, ram_budget=0) as c:
        assert c.get(1) is None
        check_sample(0, c.get(0))
        assert c.stats().corrupt == 1
