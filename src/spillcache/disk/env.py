"""Opening a store's LMDB environment, and telling damaged files from other LMDB errors.

Inside LMDB the named database ``data`` maps pack ids to packs (:mod:`spillcache.disk.packs`),
``index`` and ``keys`` map sample keys to their records (:mod:`spillcache.disk.index`), ``live``
and ``reclaim`` account garbage (:mod:`spillcache.disk.packing`), ``specs`` holds each
structure spec once (:mod:`spillcache.codec.records`), and ``meta`` records the store's
identity (:mod:`spillcache.disk.meta`). The environment runs with
``sync=False``: a committed transaction survives the death of the process (``kill -9``); only
an OS crash or power loss can lose transactions committed since the last ``env.sync(True)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import lmdb

from ..errors import StoreError

__all__ = [
    "DAMAGE",
    "DAMAGE_IN_TXN",
    "DB_NAMES",
    "DamagedStore",
    "Dbs",
    "Opened",
    "damaged",
    "key_bytes",
    "open_env",
    "open_lmdb",
]

_INITIAL_MAP_SIZE = 256 << 20
_MAX_READERS = 1024

# What LMDB raises for damaged files, as opposed to resource or usage errors.
DAMAGE = (lmdb.InvalidError, lmdb.CorruptedError, lmdb.PanicError, lmdb.PageNotFoundError)
# Inside a transaction, a damaged page can also poison the transaction itself.
DAMAGE_IN_TXN = (*DAMAGE, lmdb.BadTxnError)


class DamagedStore(StoreError):
    """The store's LMDB files are damaged (the directory is ours: it has our marker)."""


# The named databases of a store, in the order of Dbs (a store of format 1 had the first two).
DB_NAMES = (b"data", b"meta", b"index", b"keys", b"live", b"reclaim", b"specs")


class Dbs(NamedTuple):
    """The handles of a store's named databases (see the module docstring)."""

    data: lmdb._Database
    meta: lmdb._Database
    chunks: lmdb._Database
    keys: lmdb._Database
    live: lmdb._Database
    reclaim: lmdb._Database
    specs: lmdb._Database


class Opened(NamedTuple):
    """An open environment and the handles of its named databases."""

    env: lmdb.Environment
    dbs: Dbs


def open_lmdb(
    path: Path, map_size: int, *, max_dbs: int, spare_txns: int, **flags: bool
) -> lmdb.Environment:
    """An LMDB environment in the directory ``path``, set up as every spillcache store is.

    No sync at commit (a commit survives the process, not an OS crash); pages written with
    ``pwrite``, not through a writable map (a full file system then fails the write with ENOSPC
    instead of killing the process with SIGBUS); fresh pages not zeroed; 1,024 reader slots.

    Parameters
    ----------
    path : Path
        The environment's directory.
    map_size : int
        The initial size of the map in bytes.
    max_dbs : int
        How many named databases it holds.
    spare_txns : int
        Read transactions kept for reuse.
    **flags : bool
        The other ``lmdb.open`` flags (``readahead``, ``lock``, ``readonly``, ``metasync``).
    """
    return lmdb.open(
        str(path),
        map_size=map_size,
        subdir=True,
        max_dbs=max_dbs,
        max_readers=_MAX_READERS,
        max_spare_txns=spare_txns,
        sync=False,
        meminit=False,
        writemap=False,
        **flags,
    )


def key_bytes(key: int) -> bytes:
    """The LMDB key of ``key``: big-endian, so LMDB's byte order is numeric order."""
    # Sequential fills then append to the B-tree.
    return key.to_bytes(8, "big")


def _how_to_fix(path: Path) -> str:
    return f"clear it with `spillcache clear {path}` or open it with on_mismatch='rebuild'"


def damaged(path: Path, exc: BaseException) -> DamagedStore:
    """The error for the store at ``path`` found damaged by ``exc``."""
    return DamagedStore(f"the store at {str(path)!r} is damaged ({exc}); {_how_to_fix(path)}")


def open_env(path: Path, *, read_only: bool, readahead: bool) -> Opened:
    """Open the environment of the store at ``path``, checked (not truncated, only ours)."""
    data_file = path / "data.mdb"
    size = data_file.stat().st_size if data_file.exists() else 0
    lock_mdb = path / "lock.mdb"
    # LMDB writes its reader table into lock.mdb even to read: a store on a read-only
    # mount is read without it (nobody can write there meanwhile).
    locking = not read_only or (lock_mdb.exists() and os.access(lock_mdb, os.W_OK))
    try:
        env = open_lmdb(
            path,
            max(_INITIAL_MAP_SIZE, 2 * size),
            max_dbs=len(DB_NAMES),
            spare_txns=1,
            readahead=readahead,
            lock=locking,
            readonly=read_only,
        )
    except DAMAGE as exc:
        raise damaged(path, exc) from exc
    except lmdb.Error as exc:
        raise StoreError(f"the store at {str(path)!r} cannot be opened: {exc}") from exc
    try:
        _check_size(env, path, size)
        opened = _open_dbs(env, path, read_only)
        if locking:
            env.reader_check()
    except (*DAMAGE, lmdb.NotFoundError) as exc:
        env.close()
        raise damaged(path, exc) from exc
    except BaseException:
        env.close()
        raise
    return opened


def _check_size(env: lmdb.Environment, path: Path, size: int) -> None:
    """Refuse a truncated data file.

    It opens fine and then kills the process with SIGBUS on the first read of a missing page:
    compare the file with what LMDB believes it holds.
    """
    info, stat = env.info(), env.stat()
    expected = (info["last_pgno"] + 1) * stat["psize"]
    if size and (path / "data.mdb").stat().st_size < expected:
        raise DamagedStore(
            f"the store at {str(path)!r} is truncated ({size} bytes, LMDB expects "
            f"{expected}); {_how_to_fix(path)}"
        )


def _open_dbs(env: lmdb.Environment, path: Path, read_only: bool) -> Opened:
    """The handles of the store's databases; refuses a database with anything else."""
    with env.begin(write=not read_only) as txn:
        names = [k for k, _ in txn.cursor()]
        foreign = [k for k in names if k not in DB_NAMES]
        if foreign:
            raise StoreError(
                f"the LMDB database at {str(path)!r} was not written by spillcache "
                f"(it has {foreign[0]!r}); spillcache will not modify it"
            )
        if not read_only:
            return Opened(env, Dbs(*(env.open_db(n, txn=txn) for n in DB_NAMES)))
    if names and set(DB_NAMES) - set(names):
        raise StoreError(
            f"the store at {str(path)!r} was written by an older spillcache (format "
            f"{_format_of(env)}) and is read-only for this user, so it cannot be rebuilt: "
            "rebuild it with this version where it is writable, or read it with the version "
            "that wrote it"
        )
    # Not in that transaction: handles opened in a read transaction die with it.
    return Opened(env, Dbs(*(env.open_db(n, create=False) for n in DB_NAMES)))


def _format_of(env: lmdb.Environment) -> str:
    meta = env.open_db(b"meta", create=False)
    with env.begin() as txn:
        value = txn.get(b"format_version", db=meta)
    return "unknown" if value is None else bytes(value).decode(errors="replace")
