"""Reaching a key's stored record through LMDB itself, as damage in real life would.

Format 2 keeps records in packs (``spillcache.disk.packs``) found through the index
(``spillcache.disk.index``): these helpers read or replace one key's record, rebuilding its
pack with the other records unchanged, in one write transaction of a raw LMDB environment.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import lmdb

from spillcache.disk.env import DB_NAMES, Dbs
from spillcache.disk.index import SLOT_BITS, SLOT_MASK, lookup
from spillcache.disk.packs import SINGLE, PackBuilder, pack_key, slots_of


def _dbs(env: lmdb.Environment, txn: lmdb.Transaction) -> Dbs:
    return Dbs(*(env.open_db(name, txn=txn) for name in DB_NAMES))


@contextlib.contextmanager
def raw_txn(path: Path) -> Iterator[tuple[lmdb.Transaction, Dbs]]:
    """A write transaction on the store at ``path`` (closed with the spillcache closed)."""
    env = lmdb.open(str(path), max_dbs=len(DB_NAMES))
    try:
        with env.begin(write=True) as txn:
            yield txn, _dbs(env, txn)
    finally:
        env.close()


def used_bytes(path: Path) -> int:
    """Pages in use (last_pgno + 1) times the page size: what the store costs."""
    env = lmdb.open(str(path), max_dbs=len(DB_NAMES), readonly=True, lock=False)
    try:
        return (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    finally:
        env.close()


def stored_record(path: Path, key: int) -> bytes | None:
    """The record (or large value) stored for ``key``, or None."""
    env = lmdb.open(str(path), max_dbs=len(DB_NAMES))
    try:
        with env.begin(write=True) as txn:
            dbs = _dbs(env, txn)
            entry = lookup(txn, dbs.chunks, dbs.keys, key)
            if not entry:
                return None
            raw = bytes(txn.get(pack_key(entry >> SLOT_BITS), db=dbs.data))
            if entry & SLOT_MASK == SINGLE:
                return raw
            _, start, end = slots_of(memoryview(raw))[entry & SLOT_MASK]
            return raw[start:end]
    finally:
        env.close()


def replace_record(path: Path, key: int, how: Callable[[bytes], bytes]) -> None:
    """Replace the record of ``key`` by ``how(record)``, rebuilding its pack around it."""
    env = lmdb.open(str(path), max_dbs=len(DB_NAMES))
    try:
        with env.begin(write=True) as txn:
            dbs = _dbs(env, txn)
            entry = lookup(txn, dbs.chunks, dbs.keys, key)
            assert entry, f"key {key} is not stored"
            pack, slot = entry >> SLOT_BITS, entry & SLOT_MASK
            raw = bytes(txn.get(pack_key(pack), db=dbs.data))
            if slot == SINGLE:  # a large value, alone and headerless
                txn.put(pack_key(pack), how(raw), db=dbs.data)
                return
            builder = PackBuilder()
            for index, (stored, start, end) in enumerate(slots_of(memoryview(raw))):
                record = raw[start:end]
                builder.add_verbatim(stored, how(record) if index == slot else record)
            txn.put(pack_key(pack), bytes(builder.build()), db=dbs.data)
    finally:
        env.close()
