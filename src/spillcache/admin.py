"""Looking after stores on disk: describe, verify and clear them."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import shutil
from pathlib import Path

from .codec import decode
from .disk import (
    LOCK_FILE,
    MARKER,
    inspected,
    is_store,
    live_tier,
    owned_files,
    store_files_size,
    try_lock_exclusive,
)
from .errors import CodecError, StoreError

__all__ = [
    "CacheInfo",
    "VerifyReport",
    "cache_info",
    "clear_cache",
    "copy_cache",
    "find_stores",
    "verify",
]


@dataclasses.dataclass(frozen=True)
class CacheInfo:
    """What a store holds, read without loading any sample.

    Attributes
    ----------
    items : int
        Committed entries.
    disk_bytes : int
        Size of the store's files on disk.
    fingerprint : str or None
        The data identity recorded in the store.
    format_version : int or None
        Version of the stored format.
    created : datetime.datetime or None
        When the store was created or last rebuilt (UTC).
    path : pathlib.Path
        The store directory.
    """

    items: int
    disk_bytes: int
    fingerprint: str | None
    format_version: int | None
    created: dt.datetime | None
    path: Path


@dataclasses.dataclass(frozen=True)
class VerifyReport:
    """Outcome of :func:`verify`: how many entries were read and which ones are bad."""

    path: Path
    entries: int
    bad_keys: tuple[int, ...]

    @property
    def ok(self) -> bool:
        """Whether every entry decoded and passed its checksum."""
        return not self.bad_keys


def find_stores(path: str | os.PathLike[str]) -> list[Path]:
    """The stores at ``path``: the store itself, or every store inside a cache directory.

    A cache directory (like Hyrax's ``cache_dir``) is a directory whose entries are all stores.

    Raises
    ------
    StoreError
        If ``path`` is neither; the message names what is in the way.
    """
    root = Path(path)
    if is_store(root):
        return [root]
    if not root.is_dir():
        raise StoreError(f"{str(root)!r} is not a spillcache store or a directory of stores")
    entries = sorted(root.iterdir())
    others = [e.name for e in entries if not is_store(e)]
    if not entries or others:
        detail = f"it holds {others[0]!r}, which is not a store" if others else "it is empty"
        raise StoreError(
            f"{str(root)!r} is not a spillcache store or a directory of stores ({detail}); "
            f"a store is a directory with a {MARKER} file"
        )
    return entries


def cache_info(path: str | os.PathLike[str]) -> CacheInfo:
    """Describe the store at ``path`` without loading samples.

    Parameters
    ----------
    path : str or os.PathLike
        A store directory.

    Raises
    ------
    StoreError
        If ``path`` is not a store (or is damaged).
    """
    with inspected(path) as tier:
        meta = tier.describe()
    created = meta["created"]
    fmt = meta["format_version"]
    fingerprint = meta["fingerprint"]
    return CacheInfo(
        items=int(meta["items"]),  # type: ignore[call-overload]
        disk_bytes=store_files_size(path),
        fingerprint=fingerprint if isinstance(fingerprint, str) else None,
        format_version=fmt if isinstance(fmt, int) else None,
        created=(
            dt.datetime.fromtimestamp(created, tz=dt.timezone.utc)
            if isinstance(created, float)
            else None
        ),
        path=Path(path),
    )


def verify(path: str | os.PathLike[str]) -> VerifyReport:
    """Decode every entry of the store at ``path`` and check its checksum.

    Parameters
    ----------
    path : str or os.PathLike
        A store directory.
    """
    bad: list[int] = []

    def check(key: int, value: memoryview) -> None:
        try:
            decode(value)
        except CodecError:
            bad.append(key)

    with inspected(path) as tier:
        tier.describe()  # the meta records too: a store that cannot be opened is not ok
        entries = tier.scan(check)
    return VerifyReport(Path(path), entries, tuple(bad))


def copy_cache(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> list[Path]:
    """Write compacted, consistent copies of the store(s) at ``src`` to ``dst``.

    Safe while the store is in use (a snapshot of what is committed). A copy is a store of its
    own, reused as is where it is opened (same fingerprint, same entries): copy a store from
    node-local scratch to shared storage at the end of a job, and back at the start of the next.

    Parameters
    ----------
    src : str or os.PathLike
        A store, or a directory of stores (each is copied to ``dst / name``).
    dst : str or os.PathLike
        A new or empty directory.

    Returns
    -------
    list of pathlib.Path
        The stores written.

    Raises
    ------
    StoreError
        If ``src`` holds no stores, or ``dst`` exists and is not an empty directory.
    """
    stores = find_stores(src)
    root = Path(dst)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise StoreError(f"dst={str(root)!r} must be a new or empty directory")
    single = Path(src) in stores
    written = []
    for store in stores:
        target = root if single else root / store.name
        target.mkdir(parents=True, exist_ok=True)
        # The marker first, as when a store is created: an interrupted copy is then a damaged
        # store of ours (rebuilt on open), never an unknown LMDB database.
        shutil.copyfile(store / MARKER, target / MARKER)
        with inspected(store) as tier:
            tier.copy_to(target)
        written.append(target)
    return written


def clear_cache(path: str | os.PathLike[str], *, force: bool = False) -> list[Path]:
    """Empty and delete the store at ``path``, or every store in a cache directory.

    Deletes only the files a store owns, then the directory if that left it empty. Anything
    that is not a spillcache store is refused before anything is deleted, and so is a store
    in use: one that any process holds open (training jobs, their DataLoader workers, idle
    processes, ``info``/``verify``/``copy`` in progress), found by the lock every open store
    holds.

    Parameters
    ----------
    path : str or os.PathLike
        A store, or a directory whose entries are all stores.
    force : bool
        Clear stores in use too. Each process using one stops writing to it at its next
        commit (warning once) and loads what it misses from its source.

    Returns
    -------
    list of pathlib.Path
        The stores removed.

    Raises
    ------
    StoreError
        If ``path`` is not a store or a directory of stores, or (without ``force``) a store
        is in use; nothing is deleted then.
    """
    stores = find_stores(path)
    held: list[int] = []
    try:
        busy = []
        for store in stores:
            try:
                fd = try_lock_exclusive(store)
            except OSError as exc:
                raise StoreError(f"the store at {str(store)!r} cannot be cleared: {exc}") from exc
            if fd is None:
                busy.append(store)
            else:
                held.append(fd)
        if busy and not force:
            raise StoreError(_in_use_message(busy[0]))
        for store in stores:
            _remove_store(store, in_use=store in busy)
    finally:
        for fd in held:
            os.close(fd)
    root = Path(path)
    if root not in stores:
        with contextlib.suppress(OSError):
            root.rmdir()  # only succeeds if nothing else was in it
    return stores


def _in_use_message(store: Path) -> str:
    if live_tier(store) is not None:
        who = "open in this process (close the cache objects using it first)"
    else:
        who = (
            "in use by another process (a training job or one of its DataLoader workers, "
            "`spillcache info`/`verify`/`copy`, or any process that opened it and still runs; "
            "stop them first)"
        )
    return (
        f"refusing to clear the store at {str(store)!r}: it is {who}. To clear it anyway, pass "
        "force=True (`spillcache clear --force`): the processes using it then stop writing to "
        "it and load what they miss from their sources"
    )


def _remove_store(store: Path, *, in_use: bool) -> None:
    if in_use:
        # Processes holding it open see the mark at their next commit or read and stop using
        # it, rather than writing into deleted files (or a new store at the same path).
        with contextlib.suppress(StoreError, OSError), inspected(store) as tier:
            tier.retire()
    # The marker after the LMDB files (LMDB files without a marker are never taken for a store,
    # so a store being opened meanwhile is refused rather than adopted half-deleted), the lock
    # file last: an opener waiting for it finds the store gone and makes a new one.
    files = owned_files(store)
    last = [f for f in files if f.name in (MARKER, LOCK_FILE)]
    for file in [f for f in files if f not in last] + sorted(last, key=lambda f: f.name != MARKER):
        with contextlib.suppress(FileNotFoundError):
            file.unlink()
    with contextlib.suppress(OSError):
        store.rmdir()
