"""Bad input: every public entry point refuses it with a message naming the argument.

A refused call creates, modifies and deletes nothing. (Keys of get/put and the basic
SpillCache arguments are also in test_cache.py; here every entry point gets every kind.)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from reliability import fill, store_with, write_tree
from spillcache import (
    CachedDataset,
    DataCache,
    SpillCache,
    StoreError,
    cache_info,
    clear_cache,
)
from spillcache.admin import find_stores, verify
from spillcache.cli import main
from spillcache.disk import MARKER


class Source(torch.utils.data.Dataset[dict[str, int]]):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> dict[str, int]:
        return {"x": i}


class Provider:
    def __len__(self) -> int:
        return 4

    def resolve_data(self, idx: int) -> dict[str, int]:
        return {"x": idx}


def _hyrax(path: Path, **data_set: Any) -> DataCache:
    cache = DataCache({"data_set": {"cache_dir": str(path), **data_set}}, Provider())
    cache.try_fetch(0)  # the store opens lazily: make any late check happen
    return cache


def _snapshot(root: Path) -> dict[str, bytes | None]:
    return {
        str(p.relative_to(root)): p.read_bytes() if p.is_file() else None
        for p in sorted(root.rglob("*"))
    }


# -- budgets ---------------------------------------------------------------------------------------

BUDGET_ARGUMENTS: dict[str, Callable[[Path, object], object]] = {
    "SpillCache(ram_budget)": lambda p, v: SpillCache(p, ram_budget=v),  # type: ignore[arg-type]
    "SpillCache(disk_budget)": lambda p, v: SpillCache(p, disk_budget=v),  # type: ignore[arg-type]
    "CachedDataset(ram_budget)": lambda p, v: CachedDataset(Source(), p, ram_budget=v),  # type: ignore[arg-type]
    "CachedDataset(disk_budget)": lambda p, v: CachedDataset(Source(), p, disk_budget=v),  # type: ignore[arg-type]
    "DataCache(cache_ram_budget)": lambda p, v: _hyrax(p, cache_ram_budget=v),
    "DataCache(cache_disk_budget)": lambda p, v: _hyrax(p, cache_disk_budget=v),
}
# One rule: a wrong type raises TypeError, a wrong value of the right type ValueError.
BAD_BUDGETS: list[tuple[object, type[Exception]]] = [
    ("lots", ValueError),
    ("-1GiB", ValueError),
    ("-5MiB", ValueError),
    (-1, ValueError),
    ("1.5", ValueError),
    ("150%", ValueError),
    ("0%", ValueError),
    ("12 parsecs", ValueError),
    (1.5, TypeError),
    ([1], TypeError),
    (float("nan"), TypeError),
    (True, TypeError),
]


@pytest.mark.parametrize(("value", "error"), BAD_BUDGETS, ids=repr)
@pytest.mark.parametrize("entry", sorted(BUDGET_ARGUMENTS))
def test_bad_budget_names_the_argument(
    tmp_path: Path, entry: str, value: object, error: type[Exception]
) -> None:
    argument = entry.split("(")[1].rstrip(")")
    with pytest.raises(error, match=argument) as caught:
        BUDGET_ARGUMENTS[entry](tmp_path / "store", value)
    assert type(caught.value) is error
    assert list(tmp_path.iterdir()) == []


# -- paths -----------------------------------------------------------------------------------------

# The caches that take a store path and SpillCache's arguments.
STORE_CACHES = ["SpillCache", "CachedDataset"]

PATH_ARGUMENTS: dict[str, Callable[[Path], object]] = {
    "SpillCache": SpillCache,
    "CachedDataset": lambda p: CachedDataset(Source(), p),
    "DataCache(cache_dir)": _hyrax,
}


@pytest.mark.parametrize("entry", sorted(PATH_ARGUMENTS))
def test_a_file_instead_of_a_directory(tmp_path: Path, entry: str) -> None:
    target = tmp_path / "results.csv"
    target.write_text("epoch,loss\n1,0.5\n")
    with pytest.raises(StoreError, match=r"results\.csv"):
        PATH_ARGUMENTS[entry](target)
    assert _snapshot(tmp_path) == {"results.csv": b"epoch,loss\n1,0.5\n"}


@pytest.mark.parametrize("entry", STORE_CACHES)
def test_a_directory_holding_other_files(tmp_path: Path, entry: str) -> None:
    target = tmp_path / "checkpoints"
    target.mkdir()
    (target / "model.pt").write_bytes(b"weights")
    before = _snapshot(tmp_path)
    with pytest.raises(StoreError, match=r"model\.pt"):
        PATH_ARGUMENTS[entry](target)
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("value", [1, b"/tmp/store", ["a"]], ids=repr)
@pytest.mark.parametrize("entry", STORE_CACHES)
def test_path_of_a_wrong_type(tmp_path: Path, entry: str, value: object) -> None:
    with pytest.raises(TypeError, match="path"):
        PATH_ARGUMENTS[entry](value)  # type: ignore[arg-type]


# -- other arguments -------------------------------------------------------------------------------

OTHER_ARGUMENTS: list[tuple[str, dict[str, object], type[Exception]]] = [
    ("on_mismatch", {"on_mismatch": "ignore"}, ValueError),
    ("on_mismatch", {"on_mismatch": None}, TypeError),
    ("on_mismatch", {"on_mismatch": "Rebuild"}, ValueError),
    ("fingerprint", {"fingerprint": 42}, TypeError),
    ("fingerprint", {"fingerprint": b"v1"}, TypeError),
]


@pytest.mark.parametrize(("name", "kwargs", "error"), OTHER_ARGUMENTS)
@pytest.mark.parametrize("entry", STORE_CACHES)
def test_bad_argument_names_it(
    tmp_path: Path, entry: str, name: str, kwargs: dict[str, object], error: type[Exception]
) -> None:
    with pytest.raises(error, match=name):
        if entry == "SpillCache":
            SpillCache(tmp_path / "store", **kwargs)  # type: ignore[arg-type]
        else:
            CachedDataset(Source(), tmp_path / "store", **kwargs)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


BAD_KEYS: list[tuple[object, type[Exception]]] = [
    (1.0, TypeError),
    ("3", TypeError),
    (True, TypeError),
    (None, TypeError),
    (np.float32(2), TypeError),
    (torch.tensor([1, 2]), TypeError),
    (-1, ValueError),
    (2**64, ValueError),
]


@pytest.mark.parametrize(("key", "error"), BAD_KEYS, ids=repr)
def test_bad_keys_everywhere(tmp_path: Path, key: object, error: type[Exception]) -> None:
    with SpillCache(tmp_path / "store") as cache:
        for call in (cache.get, lambda k: cache.put(k, {"x": 1}), cache.__contains__):
            with pytest.raises(error, match="key"):
                call(key)
        assert len(cache) == 0


@pytest.mark.parametrize(
    ("index", "error"),
    [(1.0, TypeError), ("1", TypeError), (None, TypeError), (4, IndexError), (-5, IndexError)],
    ids=repr,
)
def test_bad_dataset_indices(tmp_path: Path, index: object, error: type[Exception]) -> None:
    with CachedDataset(Source(), tmp_path / "store") as ds:
        stored = len(ds.cache)  # the probes' samples
        with pytest.raises(error, match="ind"):
            ds[index]  # type: ignore[index]
        assert len(ds.cache) == stored


@pytest.mark.parametrize(
    ("config", "text", "error"),
    [
        ([("data_set", {})], "config", TypeError),
        ({"data_set": ["use_cache"]}, "data_set", TypeError),
        ({"data_set": {"use_cache": "false"}}, "use_cache", TypeError),
        ({"data_set": {"preload_cache": 1}}, "preload_cache", TypeError),
        ({"data_set": {"cache_dir": Path("/tmp")}}, "cache_dir", TypeError),
        ({"data_set": {"cache_fingerprint": 3.5}}, "cache_fingerprint", TypeError),
        ({"data_set": {"cache_ram_budget": 1.5}}, "cache_ram_budget", TypeError),
        ({"data_set": {"cache_ram_budget": "-5MiB"}}, "cache_ram_budget", ValueError),
        ({"data_set": {"cache_disk_budget": [1]}}, "cache_disk_budget", TypeError),
        ({"data_set": {"cache_disk_budget": "lots"}}, "cache_disk_budget", ValueError),
        ({"data_set": {"preload_threads": -2}}, "preload_threads", ValueError),
        ({"data_set": {"preload_threads": "fast"}}, "preload_threads", ValueError),
        ({"data_set": {"preload_threads": 2.0}}, "preload_threads", TypeError),
        ({"data_set": {"preload_threads": True}}, "preload_threads", TypeError),
    ],
    ids=repr,
)
def test_bad_hyrax_config_names_the_key(config: object, text: str, error: type) -> None:
    with pytest.raises(error, match=text) as caught:
        DataCache(config, Provider())  # type: ignore[arg-type]
    assert type(caught.value) is error


# -- administration: only stores are ever touched --------------------------------------------------


def _cache_dir_with_a_stranger(path: Path) -> None:
    fill(path / "a", range(2))
    write_tree(path / "b", {"x.txt": b"x"})


NOT_STORES: dict[str, Callable[[Path], object]] = {
    "missing": lambda _p: None,
    "a-file": lambda p: p.write_bytes(b"data"),
    "empty-directory": lambda p: write_tree(p, {}),
    "other-files": lambda p: write_tree(p, {"model.pt": b"weights"}),
    "store-plus-a-file": store_with({"notes.txt": b"mine"}),
    "someone-elses-spillcache-json": lambda p: write_tree(
        p, {MARKER: b'{"project": "my spillcache settings"}'}
    ),
    "a-cache-dir-with-a-stranger": _cache_dir_with_a_stranger,
}


@pytest.mark.parametrize("what", sorted(NOT_STORES))
def test_admin_refuses_what_is_not_a_store_and_touches_nothing(tmp_path: Path, what: str) -> None:
    target = tmp_path / "target"
    NOT_STORES[what](target)
    before = _snapshot(tmp_path)
    for call in (clear_cache, find_stores, cache_info, verify):
        with pytest.raises(StoreError, match=r"store|does not exist"):
            call(target)
        assert _snapshot(tmp_path) == before, call.__name__
    assert main(["clear", "--yes", str(target)]) == 2
    assert _snapshot(tmp_path) == before
