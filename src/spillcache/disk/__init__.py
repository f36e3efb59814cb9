"""The disk tier: one LMDB store in a directory, shared by every process of a node.

The tier itself is :class:`~spillcache.disk.tier.DiskTier`; this package re-exports what the
rest of spillcache uses of it.
"""

from .tier import (
    LOCK_FILE,
    MARKER,
    DiskTier,
    SpillCacheWarning,
    Value,
    filesystem_type,
    inspected,
    is_store,
    live_tier,
    not_a_store,
    open_tier,
    owned_files,
    read_marker,
    store_files_size,
    try_lock_exclusive,
)

__all__ = [
    "LOCK_FILE",
    "MARKER",
    "DiskTier",
    "SpillCacheWarning",
    "Value",
    "filesystem_type",
    "inspected",
    "is_store",
    "live_tier",
    "not_a_store",
    "open_tier",
    "owned_files",
    "read_marker",
    "store_files_size",
    "try_lock_exclusive",
]
