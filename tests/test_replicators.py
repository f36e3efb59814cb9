"""Replicators generated per plan copy a RAM-tier resident exactly as ``replicate`` does.

A resident is what the RAM tier keeps: a sample decoded, cloned (a put) or viewed (a put of a
large sample). Its copy must equal ``replicate``'s: same structure, container, key and leaf
types, tensors and arrays fresh, writable and leaves (requires_grad kept), immutable leaves
shared, dicts of the same size. The generated code is cached per plan, bounded like the plan
cache, and generated only for a plan asked for twice.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given

from helpers import assert_sample_equal
from spillcache import SpillCache
from spillcache.codec import (
    Encoding,
    clone,
    decode,
    decode_sized,
    encode,
    replicate,
    replicators,
    view,
)
from spillcache.codec.replicators import REPLICATORS, generate, replicator
from test_codec_footprint import EXAMPLES, samples

pytestmark = pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental:UserWarning")


def _nodes(x: Any) -> list[Any]:
    """Every container and leaf of a sample, depth first."""
    if isinstance(x, dict):
        return [x, *(n for v in x.values() for n in _nodes(v))]
    if isinstance(x, (list, tuple)):
        return [x, *(n for v in x for n in _nodes(v))]
    return [x]


def assert_replica(copy: Any, resident: Any) -> None:
    """``copy`` is what ``replicate(resident)`` would be, sharing nothing mutable with it."""
    expected = replicate(resident)
    assert_sample_equal(copy, expected)
    for mine, theirs, other in zip(_nodes(copy), _nodes(resident), _nodes(expected), strict=True):
        if isinstance(theirs, torch.Tensor):
            assert mine.requires_grad == theirs.requires_grad and mine.is_leaf
            assert mine.is_contiguous() and not mine._is_view()
            if mine.numel():
                assert mine.data_ptr() != theirs.data_ptr()
        elif isinstance(theirs, np.ndarray):
            assert mine.flags.writeable and mine.flags.owndata
            assert not np.shares_memory(mine, theirs)
        elif isinstance(theirs, (dict, list)) or (isinstance(theirs, tuple) and theirs):
            assert mine is not theirs
            if isinstance(theirs, dict):  # filled as replicate's comprehension fills it
                assert sys.getsizeof(mine) == sys.getsizeof(other)
            else:  # a display: never larger than replicate's list
                assert sys.getsizeof(mine) <= sys.getsizeof(other)
        else:
            assert mine is theirs  # immutable leaves are shared


@EXAMPLES
@given(samples)
def test_generated_replicator_copies_decoded_cloned_and_viewed_residents(sample: Any) -> None:
    value = encode(sample)
    plan = decode_sized(value).plan
    assert Encoding(sample).plan is plan
    copy = generate(plan)
    # clone() of the decoded sample: a one-element tensor of stride 2 stays so when cloned
    # (torch calls it contiguous), which assert_sample_equal cannot view as bytes.
    cloned = clone(decode(value))
    for resident in (decode(value), cloned, view(memoryview(bytearray(value)))):
        assert_replica(copy(resident), resident)
        assert_replica(copy(copy(resident)), resident)  # a copy is a resident of its own


def _every_kind() -> dict[Any, Any]:
    return {
        "none": None,
        "flags": (True, False),
        "ints": [0, -(2**63), 2**90],
        "float": 0.5,
        "text": ("", "é'\"; import os #", b"\x00", np.str_("a"), np.bytes_(b"b")),
        "scalars": [np.float32(1.5), np.datetime64(5, "ns"), np.complex128(1j)],
        "arrays": [np.arange(6.0).reshape(2, 3), np.zeros(0, "<U3"), np.array(True)],
        "tensors": [
            torch.arange(6).reshape(2, 3),
            torch.ones(3, dtype=torch.bfloat16),
            torch.zeros(4, requires_grad=True),
            torch.zeros(40000),  # numpy copies it (torch's thread pool stalls on busy cores)
            torch.zeros(40000, requires_grad=True),
            torch.tensor(2.0),
        ],
        7: {1: {}, "a": [], "t": ()},
        "many": {f"k{i}": i for i in range(9)},
        "mixed": {**{i: float(i) for i in range(7)}, "s": 1},
        "deep": [[[[{"x": (torch.ones(2),)}]]]],
    }


@pytest.mark.parametrize("make", [clone, lambda s: decode(encode(s))], ids=["cloned", "decoded"])
def test_every_leaf_and_container_type_is_replicated_by_generated_code(make: Any) -> None:
    sample = _every_kind()
    resident = make(sample)
    plan = Encoding(sample).plan
    copy = generate(plan)
    assert copy is not replicate
    got = copy(resident)
    assert_replica(got, resident)
    tensors = got["tensors"]
    assert tensors[2].requires_grad and tensors[2].is_leaf and tensors[4].requires_grad
    assert not tensors[3].untyped_storage().resizable()  # a numpy copy, as replicate makes
    tensors[0] += 1  # fresh and writable
    assert resident["tensors"][0].sum() == 15


@pytest.mark.parametrize("root", [torch.ones(3), np.ones(2), 5, "s", None, [], ()])
def test_a_sample_that_is_a_single_leaf_or_empty_container_is_replicated(root: Any) -> None:
    resident = clone(root)
    assert_replica(generate(Encoding(root).plan)(resident), resident)


def test_a_tensor_held_twice_is_copied_twice_as_replicate_does() -> None:
    t = torch.ones(3)
    resident = clone({"a": t, "b": [t]})
    got = generate(Encoding(resident).plan)(resident)
    assert got["a"].data_ptr() != got["b"][0].data_ptr()
    want = replicate(resident)
    assert (got["a"].data_ptr() == got["b"][0].data_ptr()) == (
        want["a"].data_ptr() == want["b"][0].data_ptr()
    )


def test_a_plan_gets_generated_code_when_asked_for_the_second_time() -> None:
    plan = Encoding({"one of a kind": [torch.ones(1), 1, "x"]}).plan
    REPLICATORS.pop((plan, False), None)
    assert replicator(plan) is replicate  # structures seen once keep the walk
    made = replicator(plan)
    assert made is not replicate and replicator(plan) is made
    assert REPLICATORS[plan, False] is made


def test_plans_of_over_256_nodes_keep_the_walk() -> None:
    big = Encoding(list(range(256))).plan  # the list and its 256 ints
    assert big.nodes == 257
    assert [replicator(big) for _ in range(3)] == [replicate] * 3
    assert (big, False) not in REPLICATORS
    small = Encoding(list(range(255))).plan
    replicator(small)
    assert replicator(small) is not replicate


def test_the_cache_of_generated_code_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replicators, "CACHE_LIMIT", 4)
    REPLICATORS.clear()
    plans = [Encoding({f"key {i}": i}).plan for i in range(10)]
    for plan in plans:
        replicator(plan)
        made = replicator(plan)
        assert REPLICATORS[plan, False] is made
        assert len(REPLICATORS) <= 4
    assert len(replicators._ASKED) <= 4
    assert (plans[0], False) not in REPLICATORS  # emptied when full, as the plan cache is


def test_samples_of_small_tensors_get_a_copier_that_clones_without_asking_their_size() -> None:
    sample = {
        "image": torch.ones(1024),
        "meta": {"id": 3, "z": 0.5},
        "g": torch.ones(2, requires_grad=True),
    }
    plan = Encoding(sample).plan
    small, sized = generate(plan, small=True), generate(plan)
    assert "numel" not in small.__code__.co_names and "numel" in sized.__code__.co_names
    resident = clone(sample)
    assert_replica(small(resident), resident)
    assert small(resident)["g"].requires_grad


@pytest.mark.parametrize(("at_most", "small"), [(None, False), (32767, True), (32768, False)])
def test_only_a_bound_below_the_parallel_size_gets_the_small_copier(
    at_most: int | None, small: bool
) -> None:
    plan = Encoding({"bound test": torch.ones(1)}).plan
    replicator(plan, at_most)
    made = replicator(plan, at_most)
    assert made is REPLICATORS[plan, small]
    assert ("numel" not in made.__code__.co_names) == small
    assert made is not replicator(plan, None if small else 100)


@pytest.mark.parametrize("path", ["put", "read"])
def test_the_cache_admits_samples_with_the_copier_their_tensors_bytes_allow(
    tmp_path: Path, path: str
) -> None:
    def copier_names(tensor: torch.Tensor, store: Path) -> tuple[str, ...]:
        with SpillCache(store, ram_budget=0 if path == "read" else 1 << 24) as cache:
            for key in range(2):  # the plan's second admission gets generated code
                cache.put(key, {"x": tensor.clone(), "copier test": 1})
            cache.flush()
            if path == "read":  # admitted by get's read from the store
                with SpillCache(store, ram_budget=1 << 24) as reader:
                    for key in range(2):
                        assert reader.get(key) is not None
                    return _copier(reader, 1).__code__.co_names
            return _copier(cache, 1).__code__.co_names

    assert "numel" not in copier_names(torch.ones(1024), tmp_path / "a")  # 4 KiB
    assert "numel" in copier_names(torch.ones(32768, dtype=torch.uint8), tmp_path / "b")
    assert "numel" in copier_names(torch.ones(1 << 18), tmp_path / "c")  # 1 MiB


def _copier(cache: SpillCache, key: int) -> Any:
    value, copier = cache._ram.lookup(key)
    assert value is not None and copier is not None and copier is not replicate
    return copier
