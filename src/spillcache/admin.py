"""Looking after stores on disk: describe, verify and clear them."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import os
import shutil
from pathlib import Path

import lmdb

from .codec import decode
from .disk import (
    LOCK_FILE,
    MARKER,
    inspected,
    is_store,
    live_tier,
    not_a_store,
    owned_files,
    store_files_size,
    try_lock_exclusive,
)
from .disk.migrate import FORMAT_1, migrate
from .errors import CodecError, StoreError
from .node.forget import forget
from .nodelink import ENV_DIR

__all__ = [
    "CacheInfo",
    "cache_info",
    "clear_cache",
    "copy_cache",
    "find_stores",
    "verify",
]

logger = logging.getLogger(__name__)


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
    root = Path(path).expanduser()
    if is_store(root):
        return [root]
    if not root.is_dir():
        raise StoreError(f"{str(root)!r} {not_a_store(root)}")
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
    path = Path(path).expanduser()
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
    path = Path(path).expanduser()
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
    A store of an older format (1) is copied into a store of this format: its entries, its
    fingerprint and its metadata, without the damaged entries (``spillcache copy`` migrates
    it, where opening it would rebuild it empty).

    Everything is checked before anything is written, and the source is only read: a copy
    that fails (an unwritable or full destination, a damaged source) leaves the source as it
    was and removes what it created at ``dst``.

    Parameters
    ----------
    src : str or os.PathLike
        A store, or a directory of stores (each is copied to ``dst / name``).
    dst : str or os.PathLike
        A new or empty directory outside ``src`` (``~``, ``..`` and symbolic links are
        resolved to tell).

    Returns
    -------
    list of pathlib.Path
        The stores written.

    Raises
    ------
    StoreError
        If ``src`` holds no stores, ``dst`` exists and is not an empty directory, one of them
        is inside the other, or the copy failed (the message says why).
    """
    source = Path(src).expanduser()
    root = Path(dst).expanduser()
    _require_apart(source, root)
    stores = find_stores(source)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise StoreError(f"dst={str(root)!r} must be a new or empty directory")
    single = source in stores
    created: list[Path] = []  # directories this copy made, outermost first
    written: list[Path] = []
    try:
        for store in stores:
            target = root if single else root / store.name
            _make_directory(target, created)
            written.append(target)
            with inspected(store) as tier:
                if tier.describe()["format_version"] == FORMAT_1:
                    migrate(tier, target)  # into a new store: written as this version writes
                else:
                    # The marker first, as when a store is created: an interrupted copy is
                    # then a damaged store of ours (rebuilt on open), never an unknown LMDB
                    # database.
                    shutil.copyfile(store / MARKER, target / MARKER)
                    tier.copy_to(target)
            logger.info("copied the store at %s to %s", store, target)
    except BaseException as exc:
        _remove_copies(written, created)
        if isinstance(exc, (OSError, StoreError, lmdb.Error)):
            raise StoreError(
                f"copying {str(source)!r} to {str(root)!r} failed ({exc}); the source is "
                f"unchanged and nothing was left at {str(root)!r}"
            ) from exc
        raise
    return written


def _require_apart(source: Path, root: Path) -> None:
    """Refuse a destination inside the source, or a source inside the destination."""
    real_source, real_root = source.resolve(), root.resolve()
    if real_root == real_source or real_source in real_root.parents:
        raise StoreError(
            f"dst={str(root)!r} is inside src={str(source)!r}; a copy inside the store(s) it "
            "copies would change them: pass a destination outside the source"
        )
    if real_root in real_source.parents:
        raise StoreError(
            f"src={str(source)!r} is inside dst={str(root)!r}; the destination must be a new "
            "or empty directory outside the source"
        )


def _make_directory(target: Path, created: list[Path]) -> None:
    """Create ``target`` and missing parents, recording each directory made in ``created``."""
    missing = [p for p in (target, *target.parents) if not p.exists()]
    for directory in reversed(missing):
        directory.mkdir()
        created.append(directory)


def _remove_copies(written: list[Path], created: list[Path]) -> None:
    """Undo a failed copy: the files of each copy, then the directories it created."""
    for target in written:
        for file in reversed(owned_files(target)):
            with contextlib.suppress(OSError):
                file.unlink()
    for directory in reversed(created):
        with contextlib.suppress(OSError):
            directory.rmdir()


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
    path = Path(path).expanduser()
    stores = find_stores(path)
    busy = [store for store in stores if not _unused(store, remove=False)]
    if busy and not force:
        raise StoreError(_in_use_message(busy[0]))
    for store in stores:
        # One store's lock at a time, and none while a busy one is opened to mark it: an open
        # of a store in this process waits for its lock while holding the tier registry.
        forget(store, os.environ.get(ENV_DIR) or None)  # its node RAM tier, if any
        if store in busy or not _unused(store, remove=True):
            if not force:
                raise StoreError(_in_use_message(store))  # opened since the check
            _retire(store)
            _remove_files(store)
        logger.info("deleted the store at %s", store)
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


def _unused(store: Path, *, remove: bool) -> bool:
    """Whether no process holds ``store`` open; if so and ``remove``, delete it meanwhile."""
    try:
        fd = try_lock_exclusive(store)
    except OSError as exc:
        raise StoreError(f"the store at {str(store)!r} cannot be cleared: {exc}") from exc
    if fd is None:
        return False
    try:
        if remove:
            _remove_files(store)
    finally:
        os.close(fd)
    return True


def _retire(store: Path) -> None:
    # Processes holding it open see the mark at their next commit or read and stop using it,
    # rather than writing into deleted files (or into a new store at the same path).
    with contextlib.suppress(StoreError, OSError), inspected(store) as tier:
        tier.retire()


def _remove_files(store: Path) -> None:
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
