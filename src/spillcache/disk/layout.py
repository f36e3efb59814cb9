"""A store's directory: the files it owns, its marker, and the checks before it is made one.

A store directory holds exactly the files the store owns: ``spillcache.json`` (the marker that
tells a store from any other directory, written before anything else), ``spillcache.lock``
(see :mod:`spillcache.disk.lockfile`), LMDB's ``data.mdb`` and ``lock.mdb``, and transient
``spillcache.json.<pid>.tmp`` files while the marker is written.

The marker's number is this directory layout's (``LAYOUT``), not the format of what the
store holds: that is recorded in LMDB, beside the data it describes
(:mod:`spillcache.disk.meta`), and changes when a store is rebuilt, which the marker is not.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from pathlib import Path

from ..errors import StoreError

__all__ = [
    "LAYOUT",
    "LMDB_FILES",
    "LOCK_FILE",
    "MARKER",
    "is_store",
    "not_a_store",
    "owned_files",
    "prepare_directory",
    "read_marker",
    "store_files_size",
]

MARKER = "spillcache.json"
# The directory layout the marker names: the same for stores of format 1 and 2.
LAYOUT = 1
LMDB_FILES = ("data.mdb", "lock.mdb")
# Held (flock, shared) by every process that has the store open; `clear` takes it exclusively.
LOCK_FILE = "spillcache.lock"


def owned_files(path: str | os.PathLike[str]) -> list[Path]:
    """Files in ``path`` that a store owns (existing ones only)."""
    root = Path(path)
    names = [MARKER, *LMDB_FILES, LOCK_FILE]
    found = [root / n for n in names if (root / n).is_file()]
    found += sorted(root.glob(f"{MARKER}.*.tmp"))
    return found


_TMP_MARKER = re.compile(re.escape(MARKER) + r"\.\d+\.tmp")


def _foreign_entries(root: Path) -> list[str]:
    # One listing, classified by name: files appearing meanwhile (another process creating
    # the same store) must not look foreign.
    return sorted(
        e
        for e in os.listdir(root)
        if e not in (MARKER, *LMDB_FILES, LOCK_FILE) and not _TMP_MARKER.fullmatch(e)
    )


def is_store(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a spillcache store directory (our marker, nothing foreign)."""
    root = Path(path)
    if not (root.is_dir() and (root / MARKER).is_file()) or _foreign_entries(root):
        return False
    try:
        read_marker(root)
    except StoreError:  # a file of that name that some other program wrote
        return False
    return True


def not_a_store(path: str | os.PathLike[str]) -> str:
    """Why ``path`` is not a store, as the end of a sentence (``"does not exist"``)."""
    root = Path(path)
    if not root.exists():
        return "does not exist"
    if not root.is_dir():
        return "is a file, not a spillcache store (a store is a directory)"
    if not (root / MARKER).is_file():
        return f"is not a spillcache store: it has no {MARKER} file"
    foreign = _foreign_entries(root)
    if foreign:
        return f"is not a spillcache store: it holds {foreign[0]!r}, which no store has"
    try:
        read_marker(root)
    except StoreError:
        return f"is not a spillcache store: its {MARKER} file is not a spillcache marker"
    return "is a spillcache store"


def read_marker(path: str | os.PathLike[str]) -> dict[str, object]:
    """The marker's content: ``{"spillcache": layout, "created": unix time}``."""
    try:
        data = json.loads((Path(path) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path!s}: unreadable store marker {MARKER} ({exc})") from exc
    if not isinstance(data, dict) or "spillcache" not in data:
        raise StoreError(f"{path!s}: {MARKER} is not a spillcache marker")
    return data


def store_files_size(path: str | os.PathLike[str]) -> int:
    """Bytes on disk of a store's files."""
    return sum(p.stat().st_size for p in owned_files(path))


def prepare_directory(root: Path) -> bool:
    """Make ``root`` a store directory, or refuse without touching anything.

    Returns whether this user may write to it: ``False`` for a complete store it may only read
    (a read-only mount, another user's store).
    """
    if root.exists() and not root.is_dir():
        raise StoreError(f"path={str(root)!r} is a file, not a directory; pass a directory path")
    if root.is_dir():
        foreign = _foreign_entries(root)
        if foreign:
            shown = ", ".join(repr(f) for f in foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise StoreError(
                f"path={str(root)!r} holds files that are not part of a spillcache store "
                f"({shown}); "
                "spillcache creates stores only in a new or empty directory and never modifies "
                "anything else: pass a new or empty directory"
            )
        has_lmdb = any((root / n).exists() for n in LMDB_FILES)
        # Looked at after the LMDB files: a store's marker is written before them and removed
        # after them, so LMDB files seen while no marker exists later are not a store's.
        if (root / MARKER).is_file():
            read_marker(root)
            if _writable(root):
                return True
            if (root / "data.mdb").is_file():
                return False
            require_writable(root)
        if has_lmdb:
            raise StoreError(
                f"path={str(root)!r} holds an LMDB database that is not a spillcache store; "
                "pass a new or empty directory"
            )
    else:
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"path={str(root)!r} cannot be created: {exc}") from exc
    require_writable(root)
    # The marker comes first, written atomically: a directory with LMDB files but no marker is
    # never ours, so a crash here can never make us adopt (or later delete) a foreign database.
    tmp = root / f"{MARKER}.{os.getpid()}.tmp"
    try:
        tmp.write_text(json.dumps({"spillcache": LAYOUT, "created": time.time()}), encoding="utf-8")
        os.replace(tmp, root / MARKER)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise StoreError(f"path={str(root)!r} cannot be made a store: {exc}") from exc
    return True


def _writable(root: Path) -> bool:
    """Whether this user may write the directory and the LMDB files in it."""
    files = [root / n for n in LMDB_FILES if (root / n).exists()]
    return os.access(root, os.W_OK | os.X_OK) and all(os.access(f, os.W_OK) for f in files)


def require_writable(root: Path) -> None:
    if not os.access(root, os.W_OK | os.X_OK):
        raise StoreError(
            f"path={str(root)!r} is not writable by this user; pass a directory you can write to"
        )
