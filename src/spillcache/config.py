"""The Hyrax-style configuration: ``config["data_set"]`` keys, defaults and validation."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from .budget import memory_limit
from .settings import (
    DISABLE,
    DISABLE_MODES,
    RAM_BUDGET,
    THREADS,
    DisableMode,
    Threads,
    check_budget,
    check_threads,
)

__all__ = ["DEFAULTS", "CacheSettings", "settings_from_config"]

# The defaults of spillcache.settings under Hyrax's key names. TOML (Hyrax's config format) has
# no null: ``false`` or ``""`` mean "not set" for optional keys.
DEFAULTS: dict[str, Any] = {
    "use_cache": True,
    "preload_cache": False,
    "preload_threads": THREADS,
    "cache_dir": False,
    "cache_ram_budget": RAM_BUDGET,
    "cache_disk_budget": False,
    "cache_fingerprint": False,
    "cache_disable": DISABLE,
}


@dataclasses.dataclass(frozen=True)
class CacheSettings:
    """Validated cache settings from a Hyrax config (see :data:`DEFAULTS` for the defaults)."""

    use_cache: bool
    preload_cache: bool
    preload_threads: Threads
    cache_dir: str | None
    cache_ram_budget: int | str
    cache_disk_budget: int | str | None
    cache_fingerprint: str | None
    cache_disable: DisableMode = DISABLE


def _key(name: str) -> str:
    return f'config["data_set"]["{name}"]'


def _bool(section: Mapping[str, Any], name: str) -> bool:
    value = section.get(name, DEFAULTS[name])
    if not isinstance(value, bool):
        raise TypeError(f"{_key(name)} = {value!r} must be true or false")
    return value


def _optional_str(section: Mapping[str, Any], name: str) -> str | None:
    value = section.get(name, DEFAULTS[name])
    if value is None or value is False or value == "":
        return None
    if not isinstance(value, str):
        raise TypeError(f"{_key(name)} = {value!r} must be a string, or false for none")
    return value


def _budget(section: Mapping[str, Any], name: str) -> int | str:
    # A percentage of the disk is checked against the real file system when the store opens.
    total = memory_limit if name == "cache_ram_budget" else (lambda: 1 << 40)
    return check_budget(section.get(name, DEFAULTS[name]), _key(name), total)


def _optional_budget(section: Mapping[str, Any], name: str) -> int | str | None:
    value = section.get(name, DEFAULTS[name])
    if value is None or value is False or value == "":
        return None
    return _budget(section, name)


def _disable_mode(section: Mapping[str, Any]) -> DisableMode:
    value = section.get("cache_disable", DEFAULTS["cache_disable"])
    if not isinstance(value, str):
        raise TypeError(
            f"{_key('cache_disable')} = {value!r} must be a string: one of {DISABLE_MODES}"
        )
    for mode in DISABLE_MODES:
        if value == mode:
            return mode
    raise ValueError(f"{_key('cache_disable')} = {value!r} is not one of {DISABLE_MODES}")


def settings_from_config(config: Mapping[str, Any]) -> CacheSettings:
    """Read and validate the cache keys of ``config["data_set"]``.

    Parameters
    ----------
    config : Mapping
        A Hyrax configuration (a nested mapping). Missing keys take the values of
        :data:`DEFAULTS`.

    Raises
    ------
    TypeError
        Naming the key whose value has the wrong type (``use_cache = "false"``,
        ``cache_disable = 1``).
    ValueError
        Naming the key whose value is invalid (``preload_threads = 0``, ``cache_disable =
        "never"``).
    """
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a mapping (a Hyrax config), not {type(config).__name__}")
    section = config.get("data_set", {})
    if not isinstance(section, Mapping):
        raise TypeError(f'config["data_set"] must be a table, not {type(section).__name__}')
    return CacheSettings(
        use_cache=_bool(section, "use_cache"),
        preload_cache=_bool(section, "preload_cache"),
        preload_threads=check_threads(
            section.get("preload_threads", DEFAULTS["preload_threads"]),
            name=_key("preload_threads"),
        ),
        cache_dir=_optional_str(section, "cache_dir"),
        cache_ram_budget=_budget(section, "cache_ram_budget"),
        cache_disk_budget=_optional_budget(section, "cache_disk_budget"),
        cache_fingerprint=_optional_str(section, "cache_fingerprint"),
        cache_disable=_disable_mode(section),
    )
