"""The disk tier: one LMDB store in a directory, shared by every process of a node.

The tier itself is :class:`~spillcache.disk.tier.DiskTier`; this package re-exports what the
rest of spillcache uses of it.
"""

from .filesystem import filesystem_type
from .layout import (
    LOCK_FILE,
    MARKER,
    is_store,
    not_a_store,
    owned_files,
    read_marker,
    store_files_size,
)
from .lockfile import try_lock_exclusive
from .opening import inspected, live_tier, open_tier
from .options import TierOptions
from .tier import DiskTier
from .values import Deferred, Value

__all__ = [
    "LOCK_FILE",
    "MARKER",
    "Deferred",
    "DiskTier",
    "TierOptions",
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
