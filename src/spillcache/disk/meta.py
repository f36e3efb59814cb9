"""The identity a store records in its ``meta`` database: format, fingerprint, generation.

The generation is a token that changes whenever the store is emptied (rebuilt for other data,
or cleared), so that a process that opened an earlier generation can tell its view is stale;
it is checked in every write and read transaction.
"""

from __future__ import annotations

import os
import time
from typing import Any

import lmdb

from ..codec import FORMAT_VERSION
from .env import Dbs
from .packing import entries_count

__all__ = [
    "CLEARED",
    "GENERATION",
    "describe",
    "identity",
    "new_generation",
    "put_meta",
    "recorded",
]

# The meta record naming the store's generation; a cleared store's starts with CLEARED.
GENERATION = b"generation"
CLEARED = b"cleared-"


def new_generation() -> bytes:
    """A fresh generation token."""
    return os.urandom(8).hex().encode()


def identity(fingerprint: str | None) -> str:
    """How the identity of a store of this format for ``fingerprint`` reads in messages."""
    return f"format {FORMAT_VERSION}, fingerprint {fingerprint or ''!r}"


def recorded(
    txn: lmdb.Transaction[Any], meta_db: lmdb._Database
) -> tuple[bytes | None, bytes | None, bytes | None]:
    """The store's recorded format version, fingerprint and generation (None if missing)."""

    def get(name: bytes) -> bytes | None:
        value = txn.get(name, db=meta_db)
        return None if value is None else bytes(value)

    return get(b"format_version"), get(b"fingerprint"), get(GENERATION)


def put_meta(
    txn: lmdb.Transaction[bytes], meta_db: lmdb._Database, fingerprint: str | None
) -> bytes:
    """Record a new store's identity in ``txn``; its generation."""
    generation = new_generation()
    txn.put(b"format_version", str(FORMAT_VERSION).encode(), db=meta_db)
    txn.put(b"fingerprint", (fingerprint or "").encode(), db=meta_db)
    txn.put(b"created", repr(time.time()).encode(), db=meta_db)
    txn.put(GENERATION, generation, db=meta_db)
    return generation


def describe(txn: lmdb.Transaction[memoryview], dbs: Dbs) -> dict[str, object]:
    """Items, format version, fingerprint and creation time, as the store records them."""

    def meta(name: bytes) -> str | None:
        value = txn.get(name, db=dbs.meta)
        return None if value is None else bytes(value).decode()

    created = meta(b"created")
    fmt = meta(b"format_version")
    version = int(fmt) if fmt is not None else None
    # A store of format 1 had one entry per item in ``data``.
    items = entries_count(txn, dbs) if version == FORMAT_VERSION else txn.stat(dbs.data)["entries"]
    return {
        "items": int(items),
        "format_version": version,
        "fingerprint": meta(b"fingerprint"),
        "created": float(created) if created is not None else None,
    }
