"""Finding a key's record in a read transaction, and decoding it with the store's specs.

The record is a view of LMDB's map, valid only in its transaction: the decoder copies what it
keeps, as it did from a whole value. A record names its structure spec by id; a spec this
process has not seen yet is read from the ``specs`` database and learnt once.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import lmdb

from ..codec import UnknownSpec, learn
from ..errors import CodecError
from .env import Dbs
from .index import (
    CHUNK_BYTES,
    CHUNK_KEYS,
    CHUNK_SIZE,
    CHUNKS_KEPT,
    ENTRY_MASK,
    ENTRY_SIZE,
    HASH,
    SLOT_BITS,
    SLOT_MASK,
    UNPACK,
    CheckedChunks,
    lookup,
    sparse_lookup,
)
from .packs import HEAD, HEAD_SIZE, MAGIC, SINGLE, SLOT_SIZE, SLOT_WITH_START, record_of

__all__ = ["decoded", "find", "find_in"]

T = TypeVar("T")


def find(
    txn: lmdb.Transaction[Any], dbs: Dbs, key: int, checked: CheckedChunks
) -> memoryview | None:
    """The record of ``key`` (None if not stored); CodecError if the index or pack is damaged.

    ``checked``: what was checked in the store's latest snapshot (chunks found intact are
    not hashed again). See :func:`find_in`.
    """
    return find_in(txn, dbs, key, checked.seen(txn.id()))


def find_in(
    txn: lmdb.Transaction[Any], dbs: Dbs, key: int, intact: dict[int, bytes | None]
) -> memoryview | None:
    """:func:`find`, given the chunks found intact in ``txn``'s snapshot (it adds to them).

    Every disk hit comes through here: :func:`~.index.lookup` and :func:`~.packs.record_of`
    are inlined for a key in a chunk and a slot of a pack (their four calls were a tenth of a
    4 KiB sample's hit); a key indexed alone, a large value and damage go through them.
    A chunk is hashed once per snapshot (the 4,068-byte hash was 1/25 of a 4 KiB sample's
    hit), and a kept chunk's entries are read from their copy (``intact``), not got again.
    The databases are passed positionally: keywords cost py-lmdb a parse per get.
    """
    entries: bytes | memoryview | None = intact.get(key // CHUNK_KEYS)
    if entries is None:
        entries = _chunk(txn, dbs, key, intact)
    entry = 0 if entries is None else UNPACK(entries, key % CHUNK_KEYS * ENTRY_SIZE)[0] & ENTRY_MASK
    if not entry:
        entry = sparse_lookup(txn, dbs.keys, key)
        if not entry:
            return None
    pack, slot = entry >> SLOT_BITS, entry & SLOT_MASK
    packed: memoryview | None = txn.get(pack.to_bytes(8, "big"), None, dbs.data)
    if packed is None:
        raise CodecError(f"the index points key {key} at pack {pack}, which is missing")
    if slot == SINGLE:
        return packed
    try:
        magic, count = HEAD.unpack_from(packed)
        # The previous slot's end (for slot 0: the count), the slot's key and end: one unpack.
        before, stored, end = SLOT_WITH_START.unpack_from(packed, SLOT_SIZE * slot + 4)
    except struct.error:  # a pack too short for its header or this slot
        _refused(packed, pack, slot, key)
    start = (HEAD_SIZE + SLOT_SIZE * count if slot == 0 else before) + 7 & -8
    if magic != MAGIC or slot >= count or stored != key or not start <= end <= len(packed):
        _refused(packed, pack, slot, key)
    return packed[start:end]


def _chunk(
    txn: lmdb.Transaction[Any], dbs: Dbs, key: int, intact: dict[int, bytes | None]
) -> bytes | memoryview | None:
    """The entries of the chunk of ``key``, checked once per snapshot (CodecError if damaged).

    None if there is no such chunk. A copy is kept in ``intact`` while fewer than
    :data:`~.index.CHUNKS_KEPT` are; else the entries in the map (valid in ``txn`` only).
    """
    chunk = key // CHUNK_KEYS
    raw: memoryview | None = txn.get(chunk.to_bytes(8, "big"), None, dbs.chunks)
    if raw is None:
        return None
    if chunk not in intact:
        if len(raw) != CHUNK_SIZE or HASH(raw[:CHUNK_BYTES], chunk) != UNPACK(raw, CHUNK_BYTES)[0]:
            lookup(txn, dbs.chunks, dbs.keys, key)  # raises CodecError
        kept = bytes(raw) if len(intact) < CHUNKS_KEPT else None  # whole: see UNPACK
        intact[chunk] = kept
        if kept is not None:
            return kept
    return raw


def _refused(raw: memoryview, pack: int, slot: int, key: int) -> NoReturn:
    """Raise the CodecError :func:`~.packs.record_of` gives for a slot :func:`find` refused."""
    record_of(raw, pack, slot, key)
    raise CodecError(f"pack {pack} holding key {key} is damaged (slot {slot})")


def decoded(
    txn: lmdb.Transaction[Any],
    dbs: Dbs,
    record: memoryview,
    decode: Callable[[memoryview | bytes], T],
) -> T:
    """``decode(record)``, once the record's spec is learnt from the store if need be."""
    try:
        return decode(record)
    except UnknownSpec as exc:
        learn_spec(txn, dbs, exc.spec)
    return decode(record)


def learn_spec(txn: lmdb.Transaction[Any], dbs: Dbs, spec: int) -> None:
    """Make the spec ``spec`` of this store known to the decoder."""
    raw = txn.get(spec.to_bytes(8, "big"), db=dbs.specs)
    if raw is None:
        raise CodecError(f"structure spec {spec:#018x} is missing from the store")
    learn(bytes(raw), spec)
