"""The settings a disk tier is opened with."""

from __future__ import annotations

from dataclasses import dataclass

from ..settings import ON_MISMATCH, READAHEAD, OnMismatch

__all__ = ["TierOptions"]


@dataclass(frozen=True)
class TierOptions:
    """How to open a store (see :func:`spillcache.disk.opening.open_tier`).

    Attributes
    ----------
    fingerprint : str or None
        Identity of the data. ``None`` accepts whatever the store holds (and records ``""`` in a
        new store).
    on_mismatch : {"rebuild", "error"}
        What to do with a store of another fingerprint or format version, or a damaged one.
    budget : int or None
        Bytes the data file never exceeds: entries that would take it past are refused before
        they are written. ``None``: no cap, but refuse entries that would leave the file system
        with less than max(1 GiB, 5 %) free (at most half of it).
    readahead : bool
        Let the OS read ahead on page faults (good for large values; ``False`` for tiny values in
        a store larger than RAM).
    allow_remote_fs : bool
        Open a store on a network file system (NFS, Lustre, ...) although LMDB is not safe there.
    check_identity : bool
        ``False`` opens the store whatever its fingerprint and format (for inspection tools).
    temporary : bool
        Delete the store directory when the tier closes (in the process that created it).
    """

    fingerprint: str | None
    on_mismatch: OnMismatch = ON_MISMATCH
    budget: int | None = None
    readahead: bool = READAHEAD
    allow_remote_fs: bool = False
    check_identity: bool = True
    temporary: bool = False
