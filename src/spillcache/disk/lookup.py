"""Finding a key's record in a read transaction, and decoding it with the store's specs.

The record is a view of LMDB's map, valid only in its transaction: the decoder copies what it
keeps, as it did from a whole value. A record names its structure spec by id; a spec this
process has not seen yet is read from the ``specs`` database and learnt once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import lmdb

from ..codec import UnknownSpec, learn
from ..errors import CodecError
from .env import Dbs
from .index import lookup
from .packs import pack_key, record_of

__all__ = ["decoded", "find"]

T = TypeVar("T")


def find(txn: lmdb.Transaction[Any], dbs: Dbs, key: int) -> memoryview | None:
    """The record of ``key`` (None if not stored); CodecError if the index or pack is damaged."""
    entry = lookup(txn, dbs.chunks, dbs.keys, key)
    if not entry:
        return None
    pack = entry >> 16
    raw = txn.get(pack_key(pack), db=dbs.data)
    if raw is None:
        raise CodecError(f"the index points key {key} at pack {pack}, which is missing")
    return record_of(raw, pack, entry & 0xFFFF, key)


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
