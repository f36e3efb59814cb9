"""Records: a value re-laid for a pack, its structure spec kept once per store.

A value (see the package docstring) carries its structure spec: 54 bytes for a tensor and a
dict of two numbers, padding to 64 after it, 136 bytes in all before a 512-byte tensor. A
pack (:mod:`spillcache.disk.packs`) holds records instead: the value's table (shapes and
lengths in 4 bytes, not 8) and payloads, arrays 8-aligned, after a 12-byte prefix naming the
spec by its id, the xxh3_64 of the spec's bytes; the disk tier keeps each spec once
(:func:`learn` makes it known to the decoder). The record checks itself as a value does: its
last eight bytes are the xxh3_64 of the others.
"""

from __future__ import annotations

import math
from typing import Final

import xxhash

from spillcache.errors import CodecError

from .builders import ARRAY, SCALAR
from .compiler import SpecCompiler, plan_of
from .format import (
    CACHE_LIMIT,
    CHECKSUM,
    PREFIX,
    RECORD,
    RECORD_ALIGN,
    RECORD_LENGTHS,
    RECORD_MAGIC,
)
from .plan import Plan

__all__ = ["RECORD_PLANS", "Relaid", "UnknownSpec", "learn", "relaid", "spec_id"]

# spec bytes -> (spec id, its record plan, the value's plan): what relaying needs.
_BY_SPEC: dict[bytes, tuple[int, Plan, Plan]] = {}


class UnknownSpec(CodecError):
    """A record names a spec this process has not learnt (:func:`learn`) yet.

    Parameters
    ----------
    spec : int
        The spec id the record names.
    """

    def __init__(self, spec: int) -> None:
        super().__init__(f"record of unknown structure spec {spec:#018x}")
        self.spec = spec


class _Plans(dict[int, Plan]):
    """Plans by spec id; a missing id raises :class:`UnknownSpec` (no test on the hit path)."""

    def __missing__(self, spec: int) -> Plan:
        raise UnknownSpec(spec)


# The plan of each record's spec, by spec id (only specs whose bytes hash to their id).
RECORD_PLANS: dict[int, Plan] = _Plans()


def spec_id(spec: bytes) -> int:
    """The id of a structure spec: the xxh3_64 of its bytes."""
    return xxhash.xxh3_64_intdigest(spec)


def learn(spec: bytes, expected: int) -> None:
    """Make the records of ``spec`` decodable; ``expected`` is the id they name.

    Raises
    ------
    CodecError
        If ``spec`` does not hash to ``expected`` (a damaged spec record) or is invalid.
    """
    if spec_id(spec) != expected:
        raise CodecError(f"structure spec {expected:#018x} is damaged (its bytes do not match)")
    _known(spec)


def _known(spec: bytes) -> tuple[int, Plan, Plan]:
    known = _BY_SPEC.get(spec)
    if known is None:
        ident = spec_id(spec)
        record = SpecCompiler(spec, RECORD_LENGTHS).compile(RECORD.size, RECORD_ALIGN)
        if len(_BY_SPEC) >= CACHE_LIMIT:
            _BY_SPEC.clear()
            RECORD_PLANS.clear()
        known = _BY_SPEC[spec] = (ident, record, plan_of(spec))
    RECORD_PLANS[known[0]] = known[1]
    return known


class Relaid:
    """A value (made by the encoder, trusted) laid out as a record: its size, then its bytes.

    Parameters
    ----------
    value : bytes or memoryview
        A sealed value of this format.

    Attributes
    ----------
    size : int
        Bytes of the record.
    spec : bytes
        Its structure spec.
    spec_id : int
        The spec's id.
    """

    __slots__ = ("_copies", "_nums", "_table", "_value", "size", "spec", "spec_id")

    def __init__(self, value: bytes | memoryview) -> None:
        spec_len = PREFIX.unpack_from(value)[3]
        self.spec = spec = bytes(value[PREFIX.size : PREFIX.size + spec_len])
        self.spec_id, record, plan = _known(spec)
        self._value = value
        self._nums = plan.table.unpack_from(value, plan.table_start)
        self._table = record.table.pack_into, record.table_start
        self._copies, end = _copies(plan, record, self._nums)
        self.size = end + CHECKSUM.size

    def write(self, target: memoryview, pos: int) -> None:
        """Write the record into ``target[pos : pos + size]`` (zeroed bytes), sealed."""
        value = self._value
        RECORD.pack_into(target, pos, RECORD_MAGIC, self.spec_id)
        pack_table, table_start = self._table
        pack_table(target, pos + table_start, *self._nums)  # lengths narrower than the value's
        for src, dst, length in self._copies:
            target[pos + dst : pos + dst + length] = value[src : src + length]
        limit = pos + self.size - CHECKSUM.size
        CHECKSUM.pack_into(target, limit, xxhash.xxh3_64_intdigest(target[pos:limit]))


def relaid(value: bytes | memoryview) -> Relaid:
    """``value`` laid out as a record (see :class:`Relaid`)."""
    return Relaid(value)


def _copies(plan: Plan, record: Plan, nums: tuple[int, ...]) -> tuple[list[_Copy], int]:
    """Payload runs to copy from a value into its record (source, target, length); its end."""
    src, dst = plan.data_start, record.data_start
    copies: list[_Copy] = []
    for kind, slot, ndim, _dtype, itemsize, _convert in plan.ops:
        if kind == ARRAY:
            src += -src % plan.align
            dst += -dst % RECORD_ALIGN
            length = math.prod(nums[slot : slot + ndim]) * itemsize
        else:
            length = itemsize if kind == SCALAR else nums[slot]
        last = copies[-1] if copies else (-1, -1, 0)
        if last[0] + last[2] == src and last[1] + last[2] == dst:  # contiguous: one copy
            copies[-1] = (last[0], last[1], last[2] + length)
        else:
            copies.append((src, dst, length))
        src += length
        dst += length
    return copies, dst


_Copy = tuple[int, int, int]

MIN_RECORD: Final = RECORD.size + CHECKSUM.size
