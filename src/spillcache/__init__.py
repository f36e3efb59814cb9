"""spillcache: a two-tier (RAM + LMDB) persistent sample cache for PyTorch training.

Hot samples stay decoded in RAM under a byte budget; every sample is written through to an LMDB
store on local disk that the next run, DataLoader workers and DDP ranks on the node reuse.

The public API is :data:`__all__`. Types that are only ever returned, :class:`CacheStats`
(from ``stats()``, defined in :mod:`spillcache.stats`) and :class:`CacheInfo` (from
:func:`cache_info`, defined in :mod:`spillcache.admin`), are importable from here too.
"""

from .admin import CacheInfo as CacheInfo
from .admin import cache_info, clear_cache, copy_cache
from .cache import SpillCache
from .dataset import CachedDataset
from .errors import (
    FingerprintMismatch,
    NondeterministicDataError,
    SpillCacheWarning,
    StoreError,
)
from .hyrax import DataCache
from .stats import CacheStats as CacheStats

__all__ = [
    "CachedDataset",
    "DataCache",
    "FingerprintMismatch",
    "NondeterministicDataError",
    "SpillCache",
    "SpillCacheWarning",
    "StoreError",
    "cache_info",
    "clear_cache",
    "copy_cache",
]

__version__ = "0.1.0"
