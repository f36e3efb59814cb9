"""Which file system holds a store: LMDB stores must live on node-local storage."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import StoreError

__all__ = ["filesystem_type", "require_local"]

# LMDB's locking and memory-mapping are not coherent on these ("Do not use LMDB databases on
# remote filesystems, even between processes on the same host", lmdb.h).
_REMOTE_FILESYSTEMS = frozenset(
    {
        "9p", "afs", "beegfs", "ceph", "cifs", "fuse.gcsfuse", "fuse.glusterfs", "fuse.juicefs",
        "fuse.s3fs", "fuse.sshfs", "glusterfs", "gpfs", "lustre", "nfs", "nfs4", "panfs",
        "smb3", "smbfs",
    }
)  # fmt: skip


def filesystem_type(path: str | os.PathLike[str], mountinfo: str = "/proc/self/mountinfo") -> str:
    """The type of the file system that holds (or would hold) ``path``; ``""`` if unknown."""
    target = Path(os.path.abspath(path))
    while not target.exists() and target != target.parent:
        target = target.parent
    resolved = os.path.realpath(target)
    best, fstype = -1, ""
    try:
        with open(mountinfo, encoding="utf-8") as lines:
            for line in lines:
                left, _, right = line.partition(" - ")
                fields = left.split()
                if len(fields) < 5 or not right:
                    continue
                # Mount points escape blanks as octal (\040).
                point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
                inside = resolved == point or resolved.startswith(point.rstrip("/") + "/")
                if inside and len(point) > best:
                    best, fstype = len(point), right.split()[0]
    except OSError:
        return ""
    return fstype


def require_local(root: Path) -> None:
    """Refuse ``root`` if it is on a network file system (see :data:`_REMOTE_FILESYSTEMS`)."""
    fstype = filesystem_type(root)
    if fstype in _REMOTE_FILESYSTEMS:
        raise StoreError(
            f"path={str(root)!r} is on a {fstype} file system; LMDB stores must live on "
            "node-local storage (its locks and memory maps are not coherent over a network "
            "file system). Use a local directory such as $SLURM_TMPDIR or /tmp, carry the store "
            "with `spillcache copy`, or pass allow_remote_fs=True if you know it is safe"
        )
