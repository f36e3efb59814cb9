"""One home for every default (#16): the entry points take theirs from spillcache.settings."""

from __future__ import annotations

import inspect

import pytest

from spillcache import CachedDataset, SpillCache, settings
from spillcache.config import settings_from_config
from spillcache.disk import TierOptions

# (callable, parameter, setting): every default that more than one entry point shares.
SHARED = [
    (SpillCache, "ram_budget", "RAM_BUDGET"),
    (SpillCache, "on_mismatch", "ON_MISMATCH"),
    (SpillCache, "copy", "COPY"),
    (SpillCache, "readahead", "READAHEAD"),
    (CachedDataset, "ram_budget", "RAM_BUDGET"),
    (CachedDataset, "on_mismatch", "ON_MISMATCH"),
    (CachedDataset, "copy", "COPY"),
    (CachedDataset, "readahead", "READAHEAD"),
    (CachedDataset, "preload_threads", "THREADS"),
    (CachedDataset, "log_every", "LOG_EVERY"),
    (TierOptions, "on_mismatch", "ON_MISMATCH"),
    (TierOptions, "readahead", "READAHEAD"),
]


@pytest.mark.parametrize(
    ("where", "name", "setting"), SHARED, ids=lambda x: getattr(x, "__name__", x)
)
def test_every_entry_point_takes_its_default_from_settings(
    where: object, name: str, setting: str
) -> None:
    parameter = inspect.signature(where).parameters[name]  # type: ignore[arg-type]
    assert parameter.default == getattr(settings, setting)


def test_the_hyrax_keys_default_to_the_same_settings() -> None:
    read = settings_from_config({})
    assert read.cache_ram_budget == settings.RAM_BUDGET
    assert read.preload_threads == settings.THREADS
    assert read.cache_disable == settings.DISABLE
    assert read.cache_disable in settings.DISABLE_MODES


@pytest.mark.parametrize(
    ("value", "error"), [(0, ValueError), ("fast", ValueError), (True, TypeError), (2.0, TypeError)]
)
def test_check_threads_refuses_what_every_entry_point_refuses(
    value: object, error: type[Exception]
) -> None:
    with pytest.raises(error, match="preload_threads"):
        settings.check_threads(value)
    with pytest.raises(error, match="preload_threads"):
        settings_from_config({"data_set": {"preload_threads": value}})
    assert settings.check_threads("auto") == "auto" and settings.check_threads(3) == 3
