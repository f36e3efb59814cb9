"""The public API (#16): at most ten names, and every name exported before still imports."""

from __future__ import annotations

import importlib

import spillcache

# ``spillcache.__all__`` at b032dad, the commit #16 was reviewed at.
EXPORTED_AT_B032DAD = (
    "CacheInfo",
    "CacheStats",
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
)

# Types that are only return values stay importable, from the package and where they live.
RETURN_TYPES = {"CacheStats": "spillcache.stats", "CacheInfo": "spillcache.admin"}


def test_the_public_api_is_ten_names() -> None:
    assert spillcache.__all__ == [
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
    for name in spillcache.__all__:
        assert hasattr(spillcache, name), name


def test_every_name_exported_at_b032dad_still_imports() -> None:
    namespace: dict[str, object] = {}
    exec(f"from spillcache import {', '.join(EXPORTED_AT_B032DAD)}", namespace)
    for name in EXPORTED_AT_B032DAD:
        assert namespace[name] is getattr(spillcache, name), name


def test_return_types_are_documented_where_they_live() -> None:
    for name, module in RETURN_TYPES.items():
        cls = getattr(importlib.import_module(module), name)
        assert cls is getattr(spillcache, name)
        assert cls.__module__ == module and cls.__doc__, name
