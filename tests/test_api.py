"""The public API (#16): at most ten names, and every name exported before still imports."""

from __future__ import annotations

import importlib

import pytest

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

# The public API since #16: every name exported at b032dad but the return types, in order.
PUBLIC_API = [name for name in EXPORTED_AT_B032DAD if name not in RETURN_TYPES]


def test_the_public_api_is_ten_names() -> None:
    assert len(PUBLIC_API) == 10
    assert spillcache.__all__ == PUBLIC_API


@pytest.mark.parametrize("name", PUBLIC_API)
def test_every_public_name_is_defined(name: str) -> None:
    assert hasattr(spillcache, name), name


@pytest.mark.parametrize("name", EXPORTED_AT_B032DAD)
def test_every_name_exported_at_b032dad_still_imports(name: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from spillcache import {name}", namespace)
    assert namespace[name] is getattr(spillcache, name), name


@pytest.mark.parametrize(("name", "module"), sorted(RETURN_TYPES.items()))
def test_return_types_are_documented_where_they_live(name: str, module: str) -> None:
    cls = getattr(importlib.import_module(module), name)
    assert cls is getattr(spillcache, name)
    assert cls.__module__ == module and cls.__doc__, name
