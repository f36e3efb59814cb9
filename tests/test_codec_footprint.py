"""decode_sized: the footprint computed from the plan equals sample_nbytes, and its copy.

The RAM tier accounts an entry admitted on a disk hit with the footprint decode_sized computes
from the plan, and one admitted by a put with sizing.sample_nbytes: the two must agree exactly,
for every sample the codec stores, with either builder (interpreted or generated) and however
many decoded samples share the plan's dict keys.
"""

from __future__ import annotations

import os
from typing import Any

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import assert_sample_equal
from spillcache.codec import Decoded, decode, decode_sized, encode, replicate
from spillcache.codec.compiler import PLANS
from spillcache.footprint import sample_nbytes

pytestmark = pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental:UserWarning")

EXAMPLES = settings(
    max_examples=3000 if os.environ.get("SPILLCACHE_LONG") == "1" else 150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

TORCH_DTYPES = [
    getattr(torch, name)
    for name in [
        "bool", "uint8", "int8", "int16", "int32", "int64", "uint16", "float16", "bfloat16",
        "float32", "float64", "complex32", "complex64", "complex128", "float8_e4m3fn",
    ]
    if hasattr(torch, name)
]  # fmt: skip
NUMPY_DTYPES = ["?", "i1", "<i2", ">i4", "<i8", "u1", "<u8", "<f2", ">f4", "<f8", "<c8", ">c16",
                "<M8[ns]", "<m8[s]", "S3", "<U2", ">U5"]  # fmt: skip

texts = st.one_of(
    st.sampled_from(["", "a", "\xe9", "\u20ac", "ab", "\U0001f600", "\ud800x", "ascii text"]),
    st.text(max_size=20),
)
ints = st.one_of(
    st.integers(-6, 257),
    st.integers(-(2**62), 2**62),
    st.sampled_from([2**60 - 1, 2**60, -(2**60) + 1, -(2**60), 2**63 - 1, -(2**63)]),
    st.integers(-(2**200), 2**200),
)
keys = st.one_of(texts, ints.filter(lambda k: -(2**63) <= k < 2**63))


@st.composite
def tensors(draw: st.DrawFn) -> torch.Tensor:
    dtype = draw(st.sampled_from(TORCH_DTYPES))
    shape = draw(st.lists(st.integers(0, 3), max_size=7))
    tensor = (
        torch.zeros(shape, dtype=torch.float64).to(dtype) if shape else torch.zeros((), dtype=dtype)
    )
    if tensor.dim() >= 2 and draw(st.booleans()):
        tensor = tensor.transpose(0, 1)  # non-contiguous
    elif tensor.dim() >= 1 and tensor.shape[0] > 1 and draw(st.booleans()):
        tensor = tensor[::2]  # a view with a stride
    if (tensor.dtype.is_floating_point or tensor.dtype.is_complex) and draw(st.booleans()):
        tensor = tensor.detach().requires_grad_()
    return tensor


@st.composite
def arrays(draw: st.DrawFn) -> np.ndarray:
    dtype = np.dtype(draw(st.sampled_from(NUMPY_DTYPES)))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=7, min_side=0, max_side=3))
    array = np.zeros(shape, dtype)
    if array.ndim >= 1 and array.shape[0] > 1 and draw(st.booleans()):
        array = array[::2]  # a non-contiguous view
    return array


numpy_scalars = st.sampled_from(
    [
        np.float32(1.5),
        np.int64(7),
        np.uint8(3),
        np.bool_(True),
        np.complex128(1j),
        np.datetime64(5, "ns"),
        np.timedelta64(3, "s"),
        np.float16(2),
        np.str_("ab"),
        np.str_(""),
        np.bytes_(b"xy"),
        np.bytes_(b""),
    ]
)
leaves = st.one_of(
    st.none(),
    st.booleans(),
    ints,
    st.floats(allow_nan=True),
    texts,
    st.binary(max_size=8),
    numpy_scalars,
    arrays(),
    tensors(),
)
samples = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(tuple),
        st.dictionaries(keys, children, max_size=12),
    ),
    max_leaves=12,
)


def sized_matches(value: bytes) -> Decoded:
    decoded = decode_sized(value)
    assert decoded.nbytes == sample_nbytes(decoded.sample)
    return decoded


@EXAMPLES
@given(samples)
def test_footprint_equals_sample_nbytes_with_both_builders(sample: Any) -> None:
    value = encode(sample)
    PLANS.clear()  # the first decode interprets the plan, the third runs generated code
    for _ in range(3):
        decoded = sized_matches(value)
        assert_sample_equal(decoded.sample, decode(value))


@EXAMPLES
@given(samples)
def test_copy_is_an_equal_independent_sample_like_replicate(sample: Any) -> None:
    decoded = decode_sized(encode(sample))
    copy = decoded.copy()
    assert_sample_equal(copy, decoded.sample)
    assert_sample_equal(copy, replicate(decoded.sample))
    for mine, theirs in zip(_arrays(copy), _arrays(decoded.sample), strict=True):
        assert not np.shares_memory(mine, theirs)
    for mine, theirs in zip(_tensors(copy), _tensors(decoded.sample), strict=True):
        if mine.numel():
            assert mine.data_ptr() != theirs.data_ptr()
        assert mine.requires_grad == theirs.requires_grad
        assert mine.is_leaf


def _walk(x: Any) -> list[Any]:
    if isinstance(x, dict):
        return [leaf for v in x.values() for leaf in _walk(v)]
    if isinstance(x, (list, tuple)):
        return [leaf for v in x for leaf in _walk(v)]
    return [x]


def _tensors(x: Any) -> list[torch.Tensor]:
    return [leaf for leaf in _walk(x) if isinstance(leaf, torch.Tensor)]


def _arrays(x: Any) -> list[np.ndarray]:
    return [leaf for leaf in _walk(x) if isinstance(leaf, np.ndarray)]


def test_footprint_follows_keys_shared_by_many_decoded_samples() -> None:
    # sizing counts a dict key once few samples hold it, and as shared once many do; the keys
    # of decoded samples are the plan's, so the footprint must follow as samples pile up.
    value = encode({"image": np.zeros(4), "meta": {"identifier": 1000, "é€": b"ab"}, 70000: 1.5})
    for _ in range(3):  # from here on, the generated builder
        alone = sized_matches(value).nbytes
    kept = [sized_matches(value).sample for _ in range(40)]
    assert sized_matches(value).nbytes < alone  # the keys now count as shared
    del kept
    assert sized_matches(value).nbytes == alone


def test_footprint_of_every_leaf_kind_alone() -> None:
    for sample in [
        None, True, 5, 300, 2**61, 2**70, -(2**70), 0.5, "", "a", "\u20ac", "text", b"", b"a",
        b"bytes", np.float64(1), np.bool_(False), np.str_("x"), np.bytes_(b"y"),
        np.zeros((2, 3)), torch.zeros(5), torch.zeros(0), torch.zeros((1,) * 7),
        torch.zeros(3, dtype=torch.bfloat16, requires_grad=True), [], (), {},
    ]:  # fmt: skip
        for _ in range(3):
            sized_matches(encode(sample))


@pytest.mark.parametrize("count", [0, 1, 5, 6, 11, 12, 22, 43, 90])
def test_footprint_of_containers_of_every_size(count: int) -> None:
    # dict and list displays presize differently from the makers, and a tuple of constants in
    # a display is one shared object: decode_sized's builders must make them as the makers do.
    for sample in [
        {f"key{i}": i for i in range(count)},
        {i * 1000: None for i in range(count)},
        list(range(count)),
        [None] * count,
        tuple([None] * count),
        [(None,) * count, (None,) * count],
    ]:
        value = encode(sample)
        PLANS.clear()
        for _ in range(3):
            sized_matches(value)
