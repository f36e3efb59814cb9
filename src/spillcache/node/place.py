"""Where a store's node tier lives: a directory on a memory file system, sized to fit it.

The tier must live in memory, never in the page cache of a file on disk (which the kernel
reclaims first under a job's memory limit), so only a ``tmpfs`` qualifies: ``/dev/shm`` unless
the caller names another mount. Every process that opens the same store on the node must find
the same directory, so it is named by a hash of the store's real path.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from .stamps import STAMPS_BYTES

__all__ = [
    "LOCK_FILE_BYTES",
    "PREFIX",
    "Place",
    "footprint",
    "locate",
    "memory_root",
    "split_at",
    "tier_directory",
]

#: Directory names of node tiers begin with this (reclaim.py finds leftovers by it).
PREFIX = "spillcache-node-"
_MEMORY_FILESYSTEMS = frozenset({"tmpfs"})
_DEFAULT_ROOT = Path("/dev/shm")
# Other users of the memory file system (DataLoader workers hand batches over through
# /dev/shm) keep at least half of what was free when the tier was sized.
_FREE_SHARE = 2
_MIN_BUDGET = 1 << 20
#: Size of LMDB's lock file (its reader table: about 2000 readers), allocated up front.
LOCK_FILE_BYTES = 1 << 17
# LMDB's map holds more than the accounted bytes: branch pages, free pages not yet reusable,
# the two meta pages. The map (and so the data file) may exceed the budget by this share.
_MAP_SLACK_DIV = 4
_MAP_FLOOR = 1 << 20


@dataclass(frozen=True)
class Place:
    """The directory of one store's node tier and the byte sizes of what it holds.

    Attributes
    ----------
    directory : Path
        ``<root>/spillcache-node-<hash of the store's real path>``.
    budget : int
        Bytes the tier's entries may occupy (accounted as in :func:`footprint`).
    map_size : int
        LMDB map size: the most the data file can grow to.
    sketch_bytes : int
        Size of the shared frequency sketch (a power of two).
    """

    directory: Path
    budget: int
    map_size: int
    sketch_bytes: int

    @property
    def total(self) -> int:
        """Most bytes the tier can take on its memory file system."""
        return self.map_size + self.sketch_bytes + LOCK_FILE_BYTES + STAMPS_BYTES


def _filesystem_type(path: Path) -> str:
    """The type of the mounted file system holding ``path`` (matched by device number)."""
    device = os.stat(path).st_dev
    wanted = f"{os.major(device)}:{os.minor(device)}"
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as lines:
            for line in lines:
                left, _, right = line.partition(" - ")
                fields = left.split()
                if len(fields) > 2 and fields[2] == wanted and right:
                    return right.split()[0]
    except OSError:
        pass
    return ""


def memory_root(where: str | os.PathLike[str] | None) -> tuple[Path | None, str]:
    """The memory file system directory to use, or None and the reason why none is usable.

    Parameters
    ----------
    where : path-like or None
        A directory on a ``tmpfs``; None means ``/dev/shm``.
    """
    root = _DEFAULT_ROOT if where is None else Path(where)
    if not root.is_dir() or not os.access(root, os.W_OK | os.X_OK):
        return None, f"{str(root)!r} is not a writable directory"
    fstype = _filesystem_type(root)
    if fstype not in _MEMORY_FILESYSTEMS:
        return None, f"{str(root)!r} is on {fstype or 'an unknown file system'}, not a tmpfs"
    return root, ""


def sketch_size(budget: int) -> int:
    """Bytes of frequency counters for ``budget``: as the process-local tier's cap, a power of 2."""
    wanted = min(16 << 20, (1 << 20) + budget // 50) if budget >= 8 << 20 else 1 << 16
    return 1 << (wanted.bit_length() - 1)


def _sized(directory: Path, budget: int) -> Place:
    map_size = budget + budget // _MAP_SLACK_DIV + _MAP_FLOOR
    return Place(directory, budget, map_size, sketch_size(budget))


def tier_directory(store_path: str | os.PathLike[str], root: Path) -> Path:
    """The directory of ``store_path``'s tier under ``root`` (named by its real path)."""
    real = os.path.realpath(store_path)
    digest = hashlib.sha256(real.encode("utf-8", "surrogateescape")).hexdigest()[:20]
    return root / f"{PREFIX}{digest}"


def locate(store_path: str | os.PathLike[str], root: Path, budget: int) -> Place | None:
    """The place of ``store_path``'s tier under ``root``, shrunk to the space there.

    Parameters
    ----------
    store_path : path-like
        The store's directory; its real path names the tier.
    root : Path
        A memory file system directory (from :func:`memory_root`).
    budget : int
        Bytes asked for.

    Returns
    -------
    Place or None
        None if ``budget`` does not fit in half of the free space and less than 1 MiB does.
    """
    directory = tier_directory(store_path, root)
    usable = _free_bytes(root) // _FREE_SHARE
    place = _sized(directory, budget)
    if place.total <= usable:
        return place
    while place.total > usable and place.budget >= _MIN_BUDGET:
        place = _sized(directory, place.budget * 3 // 4)
    return place if place.budget >= _MIN_BUDGET else None


def _free_bytes(root: Path) -> int:
    st = os.statvfs(root)
    return st.f_bavail * st.f_frsize


#: An overflow value's first page starts with this LMDB page header.
OVERFLOW_HEADER = 16
# A value's tail is stored apart only if it is this small (a leaf node, well within a page).
_TAIL_MAX_DIV = 4
# ... and only if storing the value whole would waste more than 1/8 of its bytes.
_WASTE_DIV = 8


def _inline(nbytes: int, page_size: int) -> bool:
    return nbytes <= page_size // 2 - 26


def split_at(nbytes: int, page_size: int) -> int:
    """Bytes of an ``nbytes`` value stored as its head; the rest goes to a tail row.

    A value just over a whole number of pages (a power-of-two tensor and its header: 16 KiB
    takes 5 pages) would waste most of its last overflow page. Such a value is stored as a head
    that fills its overflow pages exactly and a small tail in a leaf page shared with other
    rows. ``nbytes`` itself means the value is stored whole.
    """
    if _inline(nbytes, page_size):
        return nbytes
    pages = (OVERFLOW_HEADER + nbytes) // page_size
    head = pages * page_size - OVERFLOW_HEADER
    tail = nbytes - head
    whole = (OVERFLOW_HEADER + nbytes + page_size - 1) // page_size * page_size
    if pages and 0 < tail <= page_size // _TAIL_MAX_DIV and (whole - nbytes) * _WASTE_DIV > nbytes:
        return head
    return nbytes


def footprint(nbytes: int, page_size: int) -> int:
    """Bytes an entry of an ``nbytes`` value is accounted at: what it occupies in LMDB.

    A value over about half a page lives on overflow pages of its own; a smaller one (or the
    tail of a split value, see :func:`split_at`) shares leaf pages, counted at 1.5 times its
    node size (B-tree leaves run 2/3 full under random inserts). 128 bytes cover the entry's
    leaf node and its rows in the slot and index tables.
    """
    if _inline(nbytes, page_size):
        return (nbytes + 18) * 3 // 2 + 128
    head = split_at(nbytes, page_size)
    pages = (OVERFLOW_HEADER + head + page_size - 1) // page_size
    tail = nbytes - head
    return pages * page_size + 128 + ((tail + 18) * 3 // 2 if tail else 0)
