"""Tests of the sample codec: round trips, ownership, refusals and hostile values."""

from __future__ import annotations

import collections
import gc
import math
import os
import pickle
import re
import struct
import tracemalloc
import warnings
from typing import Any

import hypothesis.extra.numpy as hnp
import lmdb
import numpy as np
import pytest
import torch
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import assert_sample_equal
from spillcache.codec import (
    FORMAT_VERSION,
    Encoding,
    clone,
    compiler,
    decode,
    digest,
    encode,
    seal,
    view,
)
from spillcache.codec import format as codec_format
from spillcache.errors import CodecError
from spillcache.footprint import sample_nbytes

pytestmark = pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental:UserWarning")

LONG = os.environ.get("SPILLCACHE_LONG") == "1"
EXAMPLES = settings(
    max_examples=5000 if LONG else 60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

NAN_PAYLOAD = struct.unpack("<d", bytes.fromhex("0100000000f8ff7f"))[0]
TORCH_DTYPES = [
    getattr(torch, name)
    for name in [
        "bool", "uint8", "int8", "int16", "int32", "int64", "uint16", "uint32", "uint64",
        "float16", "bfloat16", "float32", "float64", "complex32", "complex64", "complex128",
        "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu",
    ]
    if hasattr(torch, name)
]  # fmt: skip
NUMPY_DTYPES = [
    "?", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16",
    "M8[ns]", "M8[D]", "M8", "m8[s]", "m8[us]", "U1", "U7", "S1", "S5",
]  # fmt: skip
SHAPES = [(), (0,), (5,), (2, 3), (3, 0, 2), (2, 1, 3, 2)]


def roundtrip(sample: object) -> Any:
    value = encode(sample)
    encoding = Encoding(sample)
    assert encoding.size == len(value)
    assert encoding.to_bytes() == encoding.to_bytes() == value  # the encoding is not used up
    pooled = encoding.into(bytearray(encoding.size + 7))
    seal(pooled)
    assert bytes(pooled) == value
    assert_sample_equal(view(pooled), decode(value))
    return decode(value)


def sealed(body: bytes) -> bytes:
    """Append the checksum the format expects, making a (possibly hostile) body acceptable."""
    return body + struct.pack("<Q", xxhash.xxh3_64_intdigest(body))


def craft(spec: bytes, table: bytes = b"", data: bytes = b"", version: int = 1) -> bytes:
    """A value built by hand from the documented layout, with a valid checksum."""
    return sealed(struct.pack("<4sHHI", b"SPLC", version, 0, len(spec)) + spec + table + data)


def spec_of(value: bytes) -> bytes:
    (spec_len,) = struct.unpack_from("<I", value, 8)
    return value[12 : 12 + spec_len]


def make_tensor(dtype: torch.dtype, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.rand(shape, generator=gen) > 0.5
    if dtype.is_complex:
        return torch.randn(shape, dtype=torch.complex64, generator=gen).to(dtype)
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=gen) * 4).to(dtype)
    info = torch.iinfo(dtype)
    low, high = max(info.min, -(2**62)), min(info.max, 2**62)
    return torch.randint(low, high, shape, generator=gen, dtype=torch.int64).to(dtype)


def make_array(dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, size=math.prod(shape) * np.dtype(dtype).itemsize, dtype=np.uint8)
    if np.dtype(dtype).kind in "US":
        raw = rng.integers(0x20, 0x7F, size=raw.size, dtype=np.uint8)
        if np.dtype(dtype).kind == "U":
            raw = np.frombuffer(raw.tobytes(), np.uint8).astype("<u4").view(np.uint8)[: raw.size]
    return raw.view(dtype).reshape(shape).copy()


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    "leaf",
    [
        None, True, False, 0, -1, 7, 2**63 - 1, -(2**63), 2**63, -(2**63) - 1, 10**100,
        -(10**100) + 3, 0.0, -0.0, 1.5, 5e-324, math.inf, -math.inf, math.nan, NAN_PAYLOAD,
        "", "id-123", "héllo ✓ 𝄞", "\ud800 lone surrogate", "a\x00b", b"", b"\x00\xff\x10",
    ],
    ids=repr,
)  # fmt: skip
def test_python_leaves_round_trip_exactly(leaf: object) -> None:
    assert_sample_equal(roundtrip(leaf), leaf)
    assert_sample_equal(roundtrip({"k": [leaf, (leaf,)]}), {"k": [leaf, (leaf,)]})


def test_containers_keep_types_order_and_key_types() -> None:
    sample = {
        "b": [(), [], {}, ((),), [[[]]]],
        2: ("x", [1, {"deep": (None,)}]),
        "a": {-(2**63): "min", 2**63 - 1: "max", "1": "str one", 1: "int one"},
        0: [],
    }
    out = roundtrip(sample)
    assert_sample_equal(out, sample)
    assert list(out) == ["b", 2, "a", 0]
    for empty in ({}, [], ()):
        assert_sample_equal(roundtrip(empty), empty)


@pytest.mark.parametrize("dtype", TORCH_DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_tensor_dtypes_and_shapes_round_trip(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    t = make_tensor(dtype, shape)
    out = roundtrip({"t": t})["t"]
    assert_sample_equal(out, t)
    assert out.is_contiguous()


def test_torch_float8_and_bfloat16_keep_special_values() -> None:
    bf = torch.tensor([math.nan, -0.0, math.inf, 1e-40, 3.0]).to(torch.bfloat16)
    assert_sample_equal(roundtrip(bf), bf)
    e5 = torch.tensor([-0.0, math.inf, 57344.0]).to(torch.float8_e5m2)
    assert_sample_equal(roundtrip(e5), e5)


@pytest.mark.parametrize("dtype", NUMPY_DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_numpy_dtypes_and_shapes_round_trip(dtype: str, shape: tuple[int, ...]) -> None:
    a = make_array(dtype, shape)
    out = roundtrip([a])[0]
    assert_sample_equal(out, a)
    assert out.flags.c_contiguous and out.flags.writeable and out.flags.owndata


@pytest.mark.parametrize(
    "scalar",
    [
        np.float32(1.5), np.float16(-0.0), np.float64(math.nan), np.int8(-3), np.int64(-(2**63)),
        np.uint64(2**64 - 1), np.uint8(255), np.bool_(True), np.bool_(False), np.complex64(1 - 2j),
        np.complex128(complex(math.inf, math.nan)), np.datetime64("2020-01-02T03:04:05", "ns"),
        np.datetime64("NaT"), np.timedelta64(5, "s"), np.str_("héllo"), np.str_("a\x00"),
        np.str_(""), np.bytes_(b"x\x00y"), np.bytes_(b""),
    ],
    ids=repr,
)  # fmt: skip
def test_numpy_scalars_round_trip_with_their_type(scalar: np.generic) -> None:
    out = roundtrip({"s": scalar})["s"]
    assert type(out) is type(scalar)
    assert_sample_equal(out, scalar)


def test_non_contiguous_inputs_are_stored_contiguous() -> None:
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    arr = np.arange(48, dtype=np.int16).reshape(6, 8)
    tensors = [
        base.T,
        base[::2, 1::3],
        base[:, 2],
        torch.tensor(1.0).expand(3, 4),
        base.reshape(-1)[3:5],
    ]
    arrays = [
        arr.T, arr[::2, ::-3], np.broadcast_to(np.int16(7), (3, 2)), np.asfortranarray(arr),
        arr[1:3, 2:4],
    ]  # fmt: skip
    out = roundtrip((tensors, arrays))
    for got, want in zip(out[0], tensors, strict=True):
        assert_sample_equal(got, want.contiguous())
        assert got.is_contiguous()
        assert got.numel() == want.numel()  # only the viewed elements, not the base
    for got, want in zip(out[1], arrays, strict=True):
        assert_sample_equal(got, np.ascontiguousarray(want))
        assert got.flags.c_contiguous and got.flags.writeable


@pytest.mark.parametrize("dtype", [">f4", ">i8", ">c16", ">u2", ">U3", ">M8[ns]", ">m8[s]"])
def test_big_endian_arrays_decode_in_native_order(dtype: str) -> None:
    native = make_array(np.dtype(dtype).newbyteorder("=").str, (3, 2))
    big = native.astype(dtype)
    out = roundtrip(big)
    assert out.dtype.isnative
    assert_sample_equal(out, native)
    assert encode(big) == encode(native)


def test_autograd_and_lazy_bits_are_stored_as_plain_data() -> None:
    grad = torch.randn(3, requires_grad=True) * 2
    conj = torch.tensor([1 + 2j, -3j], dtype=torch.complex64).conj()
    neg = torch.tensor([1 + 2j, -3j], dtype=torch.complex128).conj().imag
    assert conj.is_conj() and neg.is_neg()
    out = roundtrip([grad, conj, neg])
    # requires_grad is kept (a leaf: the history is not); before #14 it came back False.
    assert out[0].requires_grad and out[0].is_leaf
    assert torch.equal(out[0].detach(), grad.detach())
    assert not out[1].is_conj() and not out[2].is_neg()
    assert torch.equal(out[1], torch.tensor([1 - 2j, 3j], dtype=torch.complex64))
    assert torch.equal(out[2], torch.tensor([-2.0, 3.0], dtype=torch.float64))


def test_memmap_is_stored_as_its_data(tmp_path: Any) -> None:
    mm = np.memmap(tmp_path / "a.bin", dtype=np.float32, mode="w+", shape=(4, 5))
    mm[:] = np.arange(20, dtype=np.float32).reshape(4, 5)
    out = roundtrip(mm[1:3])
    assert type(out) is np.ndarray
    assert_sample_equal(out, np.arange(5, 15, dtype=np.float32).reshape(2, 5))


# --------------------------------------------------------------------------- ownership


def test_decoded_arrays_and_tensors_own_writable_memory() -> None:
    sample = {"t": torch.arange(6.0).reshape(2, 3), "bf": torch.ones(4, dtype=torch.bfloat16),
              "a": np.arange(6).reshape(3, 2), "s": np.float32(2.0)}  # fmt: skip
    buf = bytearray(encode(sample))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch.frombuffer on read-only memory warns
        first = decode(memoryview(buf))
    second = decode(bytes(buf))
    buf[:] = bytes(len(buf))  # the decoded values must not have been views of buf
    assert_sample_equal(first, sample)
    first["t"] += 1
    first["bf"][0] = 5
    first["a"][0, 0] = 100
    assert_sample_equal(second, sample)
    assert first["a"].base is None


def test_decode_from_lmdb_buffer_survives_the_transaction(tmp_path: Any) -> None:
    sample = {"x": torch.randn(64, 64), "id": "abc"}
    env = lmdb.open(str(tmp_path / "db"), map_size=2**24)
    with env.begin(write=True) as txn:
        assert txn.put(b"k", encode(sample))
    with env.begin(buffers=True) as txn:
        out = decode(txn.get(b"k"))
    with env.begin(write=True) as txn:  # reuse the pages the buffer pointed to
        txn.put(b"k", bytes(len(encode(sample))))
    env.close()
    assert_sample_equal(out, sample)


def test_decode_accepts_bytes_like_views() -> None:
    value = encode({"a": np.arange(3)})
    padded = b"xx" + value + b"yy"
    for buffer in (value, bytearray(value), memoryview(value), memoryview(padded)[2:-2]):
        assert_sample_equal(decode(buffer), {"a": np.arange(3)})


# --------------------------------------------------------------------------- format


def test_golden_bytes_follow_the_documented_format() -> None:
    sample = {"x": np.array([1, 2], dtype="<i4"), "s": "hé", "n": 7}
    spec = (
        b"D" + struct.pack("<I", 3)
        + b"s" + struct.pack("<I", 1) + b"x" + b"a" + bytes([3]) + b"<i4" + bytes([1])
        + b"s" + struct.pack("<I", 1) + b"s" + b"s"
        + b"s" + struct.pack("<I", 1) + b"n" + b"i"
    )  # fmt: skip
    table = struct.pack("<QQq", 2, 3, 7)
    head = struct.pack("<4sHHI", b"SPLC", 1, 0, len(spec)) + spec + table
    pad = bytes(-len(head) % 64)
    expected = sealed(head + pad + struct.pack("<2i", 1, 2) + "hé".encode())
    assert FORMAT_VERSION == 2  # the store's; a value's prefix says 1 (its layout)
    assert encode(sample) == expected
    assert_sample_equal(decode(expected), sample)


def test_samples_of_one_shape_share_the_structure_spec() -> None:
    def hyrax(i: int, side: int) -> dict[str, object]:
        return {"image": {"flux": np.full((4, side, side), i, np.float32),
                          "mask": np.zeros((side, side), bool)},
                "object_id": str(10**i), "label": i, "score": i / 3}  # fmt: skip

    values = [encode(hyrax(i, side)) for i, side in [(1, 8), (5, 16), (12, 3)]]
    assert len({spec_of(v) for v in values}) == 1
    assert len(set(values)) == 3


def test_array_payloads_are_aligned_to_64_bytes() -> None:
    marker = np.full(16, 0x5A, np.uint8)
    value = encode(["odd length id", marker, {"k": marker}])
    offsets = [m.start() for m in re.finditer(re.escape(marker.tobytes()), value)]
    assert len(offsets) == 2 and all(offset % 64 == 0 for offset in offsets)


def test_encode_is_deterministic_and_digest_tells_data_apart() -> None:
    sample = {"a": torch.arange(5), "b": [np.ones(3), "x"], "c": 2**70}
    value = encode(sample)
    assert encode(sample) == value == encode(clone(sample))
    assert digest(value) == digest(memoryview(value)) == digest(bytearray(value))
    assert digest(value) == xxhash.xxh3_128_hexdigest(value)  # stable across runs and hosts
    other = encode({"a": torch.arange(5), "b": [np.ones(3), "y"], "c": 2**70})
    assert digest(other) != digest(value)
    assert digest(encode(0.0)) != digest(encode(-0.0))


def test_plan_cache_stays_bounded() -> None:
    for i in range(codec_format.CACHE_LIMIT + 10):
        assert decode(encode({f"key{i}": i})) == {f"key{i}": i}
    assert len(compiler.PLANS) <= codec_format.CACHE_LIMIT


# --------------------------------------------------------------------------- refusals


class Custom:
    pass


def _sparse() -> torch.Tensor:
    return torch.eye(3).to_sparse()


def _quantized() -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # quantized dtypes are deprecated
        return torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.quint8)


@pytest.mark.parametrize(
    ("leaf", "type_name"),
    [
        ({1, 2}, "set"),
        (Custom(), "Custom"),
        (np.array([1, "a"], dtype=object), "dtype object"),
        (np.zeros(2, np.longdouble), "float128"),
        (np.zeros(2, dtype=[("a", "<i4")]), "dtype"),
        (np.zeros(1, dtype=[("a", "<i4")])[0], "numpy.void"),
        (np.longdouble(1), "longdouble"),
        (_sparse(), "sparse"),
        (_quantized(), "quint8"),
        (torch.zeros(2, device="meta"), "meta"),
        (torch.nn.Parameter(torch.zeros(2)), "Parameter"),
        (collections.OrderedDict(a=1), "OrderedDict"),
        (bytearray(b"x"), "bytearray"),
        (1 + 2j, "complex"),
        (np.ma.masked_array([1, 2]), "MaskedArray"),
        (lambda: None, "function"),
    ],
    ids=lambda v: v if isinstance(v, str) else type(v).__name__,
)
def test_unsupported_leaves_are_refused_with_their_path(leaf: object, type_name: str) -> None:
    sample = {"image": {"meta": [0, 1, leaf]}, "ok": 1}
    for func in (encode, clone):
        with pytest.raises(TypeError, match=re.escape("sample['image']['meta'][2]")) as info:
            func(sample)
        assert type_name in str(info.value)


@pytest.mark.parametrize(
    ("key", "type_name"),
    [(1.5, "float"), (True, "bool"), ((1, 2), "tuple"), (np.str_("a"), "str_"), (2**64, "int")],
    ids=repr,
)
def test_unsupported_dict_keys_are_refused(key: object, type_name: str) -> None:
    for func in (encode, clone):
        with pytest.raises(TypeError, match=re.escape("sample['outer']")) as info:
            func({"outer": {key: 1}})
        assert type_name in str(info.value)


def test_self_references_and_absurd_depth_are_refused() -> None:
    loop: list[object] = [1]
    loop.append(loop)
    cyclic: dict[str, object] = {}
    cyclic["me"] = cyclic
    deep: object = "leaf"
    for _ in range(5000):
        deep = [deep]
    for sample, path in [(loop, "sample[1][1][1]"), (cyclic, "sample['me']['me']"), (deep, "")]:
        for func in (encode, clone):
            with pytest.raises(ValueError, match="deep") as info:
                func(sample)
            assert str(info.value).startswith(f"cannot {func.__name__} {path or 'sample'}")


def test_deepest_allowed_nesting_round_trips() -> None:
    deep: object = 1
    for _ in range(codec_format.MAX_DEPTH):
        deep = (deep,)
    assert_sample_equal(roundtrip(deep), deep)
    with pytest.raises(ValueError, match="deep"):
        encode([deep])


# --------------------------------------------------------------------------- invalid values

HYRAX = {
    "image": {"flux": np.arange(64, dtype=np.float32).reshape(8, 8), "mask": np.ones(8, bool)},
    "object_id": "1234",
    "label": 3,
    "extra": [torch.arange(4, dtype=torch.bfloat16), np.str_("x"), 2**80],
}
VALUE = encode(HYRAX)


@pytest.mark.parametrize("position", [0, 5, 7, 10, 13, 40, 90, len(VALUE) // 2, len(VALUE) - 9,
                                      len(VALUE) - 1])  # fmt: skip
def test_any_flipped_bit_is_detected(position: int) -> None:
    for bit in (0, 7):
        damaged = bytearray(VALUE)
        damaged[position] ^= 1 << bit
        with pytest.raises(CodecError):
            decode(bytes(damaged))


def test_a_value_encoded_into_a_buffer_decodes_only_once_sealed() -> None:
    buffer = bytearray(b"\xaa" * (len(VALUE) + 100))
    value = Encoding(HYRAX).into(buffer)
    assert len(value) == len(VALUE)
    with pytest.raises(CodecError, match="checksum"):
        decode(value)
    seal(value)
    assert bytes(value) == VALUE
    seal(value)  # sealing twice changes nothing
    assert_sample_equal(decode(value), decode(VALUE))


def test_view_shares_the_value_and_pins_it() -> None:
    sample = {"t": torch.arange(6.0).reshape(2, 3), "a": np.arange(4, dtype=np.int16), "s": "x"}
    for _ in range(3):  # interpreted, then from generated code
        buffer = np.empty(Encoding(sample).size, np.uint8)
        value = Encoding(sample).into(buffer)
        kept = view(value)
        assert_sample_equal(kept, sample)
        buffer[:] = 0  # the views see the buffer itself
        assert not kept["t"].any() and not kept["a"].any()
        buffer[:] = 7
        value.release()  # what the disk tier does once the value is written
        del buffer, value
        gc.collect()
        # The views alone keep the buffer alive: its memory was not freed and reused.
        filler = [np.zeros(1 << 16, np.uint8) for _ in range(64)]
        assert (kept["a"].view(np.uint8) == 7).all()
        assert (kept["t"].numpy().view(np.uint8) == 7).all()
        del filler


def test_truncation_and_extra_bytes_are_detected() -> None:
    for length in [*range(25), 60, len(VALUE) // 2, len(VALUE) - 8, len(VALUE) - 1]:
        with pytest.raises(CodecError):
            decode(VALUE[:length])
    for extra in (b"\x00", bytes(8), b"junk" * 20):
        with pytest.raises(CodecError):
            decode(VALUE + extra)


@pytest.mark.parametrize(
    "value",
    [
        b"", b"S", b"SPLC", pickle.dumps(HYRAX), pickle.dumps(HYRAX, protocol=2),
        bytes(range(256)) * 3, os.urandom(4096), b"\x00" * 100, VALUE[:12] + bytes(100),
    ],
    ids=lambda v: f"{len(v)}B:{v[:6]!r}",
)  # fmt: skip
def test_foreign_values_are_refused(value: bytes) -> None:
    with pytest.raises(CodecError):
        decode(value)


@pytest.mark.parametrize("value", ["text", None, 12, [1, 2], np.arange(3)[::2]], ids=repr)
def test_non_buffers_are_refused(value: object) -> None:
    with pytest.raises(CodecError):
        decode(value)


def test_other_format_versions_and_flags_are_refused() -> None:
    body = bytearray(VALUE[:-8])
    for version in (0, 2, 65535):
        struct.pack_into("<H", body, 4, version)
        with pytest.raises(CodecError, match="version"):
            decode(sealed(bytes(body)))
    struct.pack_into("<HH", body, 4, 1, 1)
    with pytest.raises(CodecError, match="flags"):
        decode(sealed(bytes(body)))


def _array_spec(dtype: bytes, ndim: int) -> bytes:
    return b"a" + bytes([len(dtype)]) + dtype + bytes([ndim])


@pytest.mark.parametrize(
    ("spec", "table", "data"),
    [
        # shapes claiming far more data than there is
        (_array_spec(b"<f4", 1), struct.pack("<Q", 2**40), bytes(52) + bytes(64)),
        (_array_spec(b"<f8", 3), struct.pack("<3Q", 2**21, 2**21, 2**21), bytes(100)),
        (_array_spec(b"<f4", 2), struct.pack("<2Q", 2**63, 2**63), bytes(100)),
        (_array_spec(b"<f4", 2), struct.pack("<2Q", 0, 2**64 - 1), bytes(40)),
        (_array_spec(b"<U99999999", 1), struct.pack("<Q", 10**6), bytes(100)),
        (b"t\x07float32\x01", struct.pack("<Q", 2**50), bytes(100)),
        (b"s", struct.pack("<Q", 2**62), b"abc"),
        (b"j", struct.pack("<Q", 2**40), b"\x01"),
        # container counts beyond the spec
        (b"L" + struct.pack("<I", 2**32 - 1) + b"N", b"", b""),
        (b"D" + struct.pack("<I", 10**9) + b"s" + struct.pack("<I", 2**31) + b"k", b"", b""),
        # forbidden or unknown dtypes and tags
        (_array_spec(b"|O8", 1), struct.pack("<Q", 1), bytes(60)),
        (_array_spec(b"|V8", 1), struct.pack("<Q", 1), bytes(60)),
        (_array_spec(b"<f16", 1), struct.pack("<Q", 1), bytes(64)),
        (_array_spec(b">f4", 1), struct.pack("<Q", 1), bytes(60)),
        (_array_spec(b"f4,f4", 1), struct.pack("<Q", 1), bytes(60)),
        (_array_spec(b"(2,)f4", 1), struct.pack("<Q", 1), bytes(60)),
        (_array_spec(b"<U0", 1), struct.pack("<Q", 1), bytes(60)),
        (_array_spec(b"<i1", 1), struct.pack("<Q", 1), bytes(60)),
        (_array_spec(b"<f4", 200), struct.pack("<200Q", *[1] * 200), bytes(64)),
        (b"g\x03|O8", b"", bytes(8)),
        (b"t\x06qint8\x01", struct.pack("<Q", 1), bytes(60)),
        (b"t\x04bits\x01", struct.pack("<Q", 1), bytes(60)),
        (b"X", b"", b""),
        (b"D" + struct.pack("<I", 1) + b"x" + b"N", b"", b""),
        # duplicate keys, excessive nesting, spec trailing bytes, invalid UTF-8
        (b"D" + struct.pack("<I", 2) + (b"s" + struct.pack("<I", 1) + b"k" + b"N") * 2, b"", b""),
        (b"L\x01\x00\x00\x00" * 101 + b"N", b"", b""),
        (b"NN", b"", b""),
        (b"s", struct.pack("<Q", 2), b"\xff\xfe"),
        (b"D" + struct.pack("<I", 1) + b"s" + struct.pack("<I", 1) + b"\xff" + b"N", b"", b""),
        # a table or data region that does not match the value's size
        (b"i", b"", b""),
        (b"i", struct.pack("<q", 1), b"\x00"),
        (b"y", struct.pack("<Q", 3), b"ab"),
    ],
)
def test_hostile_headers_are_refused_without_allocating(
    spec: bytes, table: bytes, data: bytes
) -> None:
    value = craft(spec, table, data)
    tracemalloc.start()
    try:
        with pytest.raises(CodecError):
            decode(value)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2**20


def test_spec_length_past_the_end_is_refused() -> None:
    body = bytearray(VALUE[:-8])
    struct.pack_into("<I", body, 8, 2**32 - 1)
    with pytest.raises(CodecError):
        decode(sealed(bytes(body)))


def test_crafted_values_of_the_documented_layout_decode() -> None:
    """The hostile-header tests use ``craft``; make sure it builds valid values when honest."""
    assert decode(craft(b"i", struct.pack("<q", -5))) == -5
    pad = bytes(-(12 + 6 + 8) % 64)  # prefix, spec, table; then the array starts aligned
    value = craft(_array_spec(b"<i2", 1), struct.pack("<Q", 2), pad + b"\x01\x00\x02\x00")
    assert_sample_equal(decode(value), np.array([1, 2], np.int16))


# --------------------------------------------------------------------------- clone


def test_clone_copies_arrays_once_and_shares_immutables() -> None:
    t = torch.randn(3, 4)
    a = np.arange(6.0)
    label, name, big = 7, "id-1", 2**90
    sample = {"x": [t, a, t.T], "meta": (label, name, big, np.float32(1), None)}
    out = clone(sample)
    assert_sample_equal(out, sample | {"x": [t, a, t.T.contiguous()]})
    assert out is not sample and out["x"] is not sample["x"]
    assert out["x"][0].data_ptr() != t.data_ptr() and not np.shares_memory(out["x"][1], a)
    assert out["x"][2].is_contiguous()
    for got, want in zip(out["meta"], sample["meta"], strict=True):
        assert got is want
    out["x"][0] += 1
    out["x"][1][0] = 99
    assert t.sum() != out["x"][0].sum() and a[0] == 0.0


def test_clone_normalises_like_decode() -> None:
    sample = [
        torch.randn(3, requires_grad=True) * 1,
        torch.tensor([1 + 1j]).conj(),
        np.arange(4, dtype=">i4"),
        np.arange(12.0).reshape(3, 4)[:, ::2],
        np.broadcast_to(np.arange(3), (2, 3)),
    ]
    cloned, decoded = clone(sample), roundtrip(sample)
    assert_sample_equal(cloned, decoded)
    assert cloned[0].requires_grad and cloned[0].is_leaf and not cloned[1].is_conj()
    assert cloned[2].dtype.isnative and all(c.flags.c_contiguous for c in cloned[2:])
    assert all(c.flags.writeable for c in cloned[2:])


class _Shouty(str):
    """A str subclass whose own conversions lie: the codec must use str's."""

    def __str__(self) -> str:
        return "LIE"


def test_str_int_float_subclasses_are_stored_as_their_base_type() -> None:
    import enum

    import tomlkit

    class Band(str, enum.Enum):  # enum.StrEnum (3.11+) is this with str's __str__
        G = "g"

    class Level(enum.IntEnum):
        HIGH = 3

    doc = tomlkit.parse('field = "image"\nsize = 7\nscale = 1.5\n')
    field, size, scale = doc["field"], doc["size"], doc["scale"]
    assert type(field) is not str and type(size) is not int and type(scale) is not float
    sample = {
        field: {field: size, "scale": scale, "band": Band.G, Level.HIGH: Level.HIGH},
        _Shouty("id"): _Shouty("x1"),
        "keep": [True, np.str_("s"), np.bytes_(b"b"), np.float64(2.0), np.int64(-1)],
    }
    want = {
        "image": {"image": 7, "scale": 1.5, "band": "g", 3: 3},
        "id": "x1",
        "keep": [True, np.str_("s"), np.bytes_(b"b"), np.float64(2.0), np.int64(-1)],
    }
    for out in (decode(encode(sample)), clone(sample)):
        assert out == want

        def types(x: Any) -> Any:
            if isinstance(x, dict):
                return {(type(k), k): types(v) for k, v in x.items()}
            return [types(v) for v in x] if isinstance(x, list) else type(x)

        assert types(out) == types(want)
    assert encode(sample) == encode(want)


# --------------------------------------------------------------------------- properties

# Dtypes hypothesis generates as numpy arrays; torch tensors come from a subset of them.
_NUMPY_STRATEGY_DTYPES = [
    np.dtype(code)
    for code in ["?", "i1", "<i2", "<i4", "<i8", "u1", "<u2", "<u4", "<u8", "<f2", "<f4",
                 "<f8", "<c8", "<c16", ">f4", ">i8", "<M8[ns]", "<m8[s]", "<U3", "|S4"]
]  # fmt: skip
_FROM_FLOAT = [d for d in TORCH_DTYPES if d.is_floating_point and d.itemsize < 4]


@st.composite
def numpy_arrays(draw: st.DrawFn) -> np.ndarray:
    dtype = draw(st.sampled_from(_NUMPY_STRATEGY_DTYPES))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
    array = draw(hnp.arrays(dtype, shape))
    if array.ndim and draw(st.booleans()):
        array = array[::-1] if draw(st.booleans()) else array.T
    return array


@st.composite
def tensors(draw: st.DrawFn) -> torch.Tensor:
    dtype = draw(st.sampled_from(TORCH_DTYPES))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
    if dtype in _FROM_FLOAT or dtype == torch.complex32:
        source = torch.complex64 if dtype.is_complex else torch.float32
        base = draw(hnp.arrays(np.dtype(str(source).removeprefix("torch.")), shape))
        t = torch.from_numpy(base).to(dtype)
    else:
        base = draw(hnp.arrays(torch.empty(0, dtype=dtype).numpy().dtype, shape))
        t = torch.from_numpy(base)
    return t.transpose(0, -1) if t.ndim > 1 and draw(st.booleans()) else t


def numpy_scalars() -> st.SearchStrategy[np.generic]:
    dtypes = [d for d in _NUMPY_STRATEGY_DTYPES if d.isnative and d.kind not in "US"]
    return st.sampled_from(dtypes).flatmap(
        lambda dt: hnp.from_dtype(dt).map(lambda v: np.array(v, dt)[()])
    )


TEXT = st.text(st.characters(exclude_categories=()), max_size=12)
LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_subnormal=True), TEXT,
    st.binary(max_size=12), TEXT.map(np.str_), st.binary(max_size=6).map(np.bytes_),
    numpy_scalars(), numpy_arrays(), tensors(),
)  # fmt: skip
SAMPLES = st.recursive(
    LEAVES,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(tuple),
        st.dictionaries(TEXT | st.integers(-(2**63), 2**63 - 1), children, max_size=4),
    ),
    max_leaves=12,
)


def native(sample: Any) -> Any:
    """The sample as decode returns it: big-endian arrays in native order, data contiguous."""
    if isinstance(sample, dict):
        return {k: native(v) for k, v in sample.items()}
    if isinstance(sample, (list, tuple)):
        return type(sample)(native(v) for v in sample)
    if isinstance(sample, np.ndarray):
        return sample.astype(sample.dtype.newbyteorder("="))
    return sample


@EXAMPLES
@given(SAMPLES)
def test_random_samples_round_trip_exactly(sample: object) -> None:
    value = encode(sample)
    encoding = Encoding(sample)
    pooled = encoding.into(np.empty(encoding.size, np.uint8))
    seal(pooled)
    assert bytes(pooled) == value
    assert_sample_equal(view(pooled), native(sample))
    # What a copy holds at least: the bytes of every tensor and array in it.
    assert encoding.array_bytes <= sample_nbytes(clone(sample))
    assert_sample_equal(decode(value), native(sample))
    assert_sample_equal(clone(sample), native(sample))
    assert encode(clone(sample)) == value


@st.composite
def damaged_values(draw: st.DrawFn) -> bytes:
    value = bytearray(encode(draw(SAMPLES)))
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, max(len(value) - 1, 0)))
        action = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete"]))
        if action == "flip" and value:
            value[position] ^= 1 << draw(st.integers(0, 7))
        elif action == "set" and value:
            value[position] = draw(st.integers(0, 255))
        elif action == "cut":
            del value[position:]
        elif action == "insert":
            value[position:position] = draw(st.binary(min_size=1, max_size=9))
        elif value:
            del value[position : position + draw(st.integers(1, 9))]
    # Resealing lets the damage past the checksum, into the header and payload parsers.
    if len(value) > 8 and draw(st.booleans()):
        return sealed(bytes(value[:-8]))
    return bytes(value)


@EXAMPLES
@given(st.one_of(st.binary(max_size=300), damaged_values()))
def test_damaged_or_random_values_raise_only_codec_error(value: bytes) -> None:
    try:
        sample = decode(value)
    except CodecError:
        return
    # Damage that still parses (say, a flipped payload bit, resealed) gives a valid sample.
    assert_sample_equal(decode(encode(sample)), sample)
