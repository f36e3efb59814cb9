"""Copying a store of format 1 into a new store of this format (``spillcache copy``).

Format 1 kept each sample as one value of ``data`` (8-byte big-endian key -> value). A value's
layout is the same in both formats, so each is queued as it is on a new store, whose writer
re-lays it into a pack; the fingerprint and user metadata come along. A value that does not
decode (damaged) is left out, as a read would have served it as a miss.
"""

from __future__ import annotations

from pathlib import Path

from ..codec import decode
from ..errors import CodecError, StoreError
from .opening import open_tier
from .options import TierOptions
from .tier import DiskTier

__all__ = ["FORMAT_1", "migrate"]

FORMAT_1 = 1
_USER = b"user:"


def migrate(source: DiskTier, target: Path) -> int:
    """Write the entries of ``source``, a store of format 1, into a new store at ``target``.

    Parameters
    ----------
    source : DiskTier
        The open store of format 1 (only read: one snapshot).
    target : pathlib.Path
        A new or empty directory.

    Returns
    -------
    int
        The entries written (damaged ones are left out).

    Raises
    ------
    StoreError
        If the new store refuses entries (a full file system).
    """
    txns = source.txns
    dbs = txns.dbs
    with txns.read() as txn:
        raw = txn.get(b"fingerprint", db=dbs.meta)
        fingerprint = "" if raw is None else bytes(raw).decode()
        copy, _ = open_tier(target, TierOptions(fingerprint, allow_remote_fs=True))
        try:
            written = 0
            for raw_key, value in txn.cursor(db=dbs.data):
                try:
                    decode(value)
                except CodecError:
                    continue
                if not copy.write(int.from_bytes(raw_key, "big"), bytes(value)):
                    raise StoreError(f"the new store at {str(target)!r} refused entries")
                written += 1
            for name, value in txn.cursor(db=dbs.meta):
                if bytes(name).startswith(_USER):
                    copy.set_meta(bytes(name)[len(_USER) :].decode(), bytes(value))
            copy.flush()
        finally:
            copy.release()
    return written
