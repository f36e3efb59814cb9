"""Records: values re-laid for packs (spec named by id, arrays 8-aligned), decoded and checked."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import assert_sample_equal
from spillcache.codec import UnknownSpec, decode, decode_sized, encode, learn, relaid
from spillcache.codec.records import RECORD_PLANS, spec_id
from spillcache.errors import CodecError

SAMPLES = [
    {"image": torch.arange(128, dtype=torch.float32), "meta": {"id": 3, "z": 0.5}},
    {"a": [np.arange(5, dtype=np.int16), b"xy", "hé", None, True], "n": 2**70, 1: np.float64(2)},
    {"t": torch.ones(2, 3, dtype=torch.bfloat16), "e": torch.zeros(0), "s": ""},
    [],
]


def record_of(sample: object) -> bytes:
    record = relaid(encode(sample))
    out = bytearray(record.size)
    record.write(memoryview(out), 0)
    return bytes(out)


@pytest.mark.parametrize("index", range(len(SAMPLES)))
def test_a_record_decodes_to_its_sample(index: int) -> None:
    sample = SAMPLES[index]
    record = record_of(sample)
    for _ in range(3):  # interpreted, then generated builders
        assert_sample_equal(decode(record), sample)
        assert_sample_equal(decode_sized(memoryview(record)).sample, sample)


def test_the_issue_sample_loses_its_spec_and_padding() -> None:
    value = encode(SAMPLES[0])
    # 12 prefix + 20 table (a u32 shape, an i64, an f64) + 512 + 8 checksum: no spec, no
    # padding (the tensor starts 8-aligned at 32).
    assert (len(value), len(record_of(SAMPLES[0]))) == (648, 552)


def test_a_record_of_an_unknown_spec_names_it_until_learnt() -> None:
    record = record_of(SAMPLES[0])
    spec = relaid(encode(SAMPLES[0])).spec
    RECORD_PLANS.clear()
    with pytest.raises(UnknownSpec) as info:
        decode(record)
    assert info.value.spec == spec_id(spec)
    with pytest.raises(CodecError, match="damaged"):
        learn(spec + b"x", spec_id(spec))
    learn(spec, spec_id(spec))
    assert_sample_equal(decode(record), SAMPLES[0])


@pytest.mark.parametrize("at", [0, 5, 12, 40, -1, -9])
def test_a_damaged_record_is_refused(at: int) -> None:
    record = bytearray(record_of(SAMPLES[0]))
    decode(bytes(record))
    record[at] ^= 0x04
    with pytest.raises(CodecError):
        decode(bytes(record))


def test_a_truncated_or_extended_record_is_refused() -> None:
    record = record_of(SAMPLES[1])
    for bad in (record[:-1], record[: len(record) // 2], record + b"\0", record[:12]):
        with pytest.raises(CodecError):
            decode(bad)
