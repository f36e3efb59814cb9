"""Packs: many samples' records in one LMDB value, and finding one record in a pack.

A pack is one value of the ``data`` database (key: the pack id, 8 bytes big-endian)::

    offset 0      magic b"SPK2", u32 count                      (little-endian, as below)
    offset 8      count slots of struct "<QI": the slot's sample key, the end of its record
    then          records, each 8-aligned: slot s spans [align8(end of s - 1), end of s),
                  slot 0 starting at align8(8 + 12 * count)

A record is a value re-laid by :mod:`spillcache.codec.records`. A value of ``SINGLE_MIN``
bytes or more is stored as it is instead, headerless, as the whole pack: its index entry
names slot ``SINGLE`` (no copy into a pack buffer; the value checks itself). A value of LMDB
is written whole by one transaction, so a reader never sees a pack half-written. Nothing in
the pack is
trusted: every offset is checked against the pack's size and the slot's key against the key
looked up, and the record checks itself (its checksum), so a damaged pack reads as a miss.
"""

from __future__ import annotations

import struct
from typing import Final, Protocol

from ..errors import CodecError
from .index import SLOT_MASK
from .values import Stored

__all__ = [
    "HEAD",
    "HEAD_SIZE",
    "MAX_SLOTS",
    "PACK_BYTES",
    "PACK_MAX",
    "PACK_SLACK",
    "SINGLE",
    "SINGLE_MIN",
    "SLOT",
    "SLOT_SIZE",
    "SLOT_WITH_START",
    "PackBuilder",
    "pack_key",
    "record_of",
    "slots_of",
]

HEAD: Final = struct.Struct("<4sI")
SLOT: Final = struct.Struct("<QI")
# Their sizes as constants: the disk hit reads them without an attribute lookup each.
HEAD_SIZE: Final = 8
SLOT_SIZE: Final = 12
# The end of the slot before (for slot 0: the pack's count), then the slot: one unpack of
# what a read needs, at offset ``12 * slot + 4``.
SLOT_WITH_START: Final = struct.Struct("<IQI")
MAGIC: Final = b"SPK2"
# A pack is closed once it holds PACK_BYTES and its last LMDB page is nearly full (unused bytes
# at most PACK_SLACK, and 1/32 of what it holds past PACK_BYTES), or once it holds PACK_MAX:
# py-lmdb touches every page of a value it gets, so a sample read from disk faults in its whole
# pack. Page-aware, packs stay small (68-192 KiB) and round to pages by about 2 % at most
# (docs/design.rst, "Packs").
PACK_BYTES: Final = 64 << 10
PACK_SLACK: Final = 256
PACK_MAX: Final = 1 << 20
# LMDB's header in the first page of a value's overflow run.
_PAGE_HEADER: Final = 16
# Values this large get a pack of their own, not re-laid: a page of rounding is < 1.6 % of
# them, and they are written and read without one more copy.
SINGLE_MIN: Final = 256 << 10
# Slots are numbered in SLOT_BITS bits in the index (see :mod:`spillcache.disk.index`); the last
# number means "the pack is one value, without a header".
MAX_SLOTS: Final = SLOT_MASK
SINGLE: Final = SLOT_MASK


def pack_key(pack: int) -> bytes:
    """The LMDB key of pack ``pack``."""
    return pack.to_bytes(8, "big")


def _align8(pos: int) -> int:
    return (pos + 7) & -8


def _damaged(pack: int, key: int, what: str) -> CodecError:
    return CodecError(f"pack {pack} holding key {key} is damaged ({what})")


def record_of(raw: memoryview, pack: int, slot: int, key: int) -> memoryview:
    """The record of ``key`` in slot ``slot`` of pack ``pack`` (``raw``), checked for bounds.

    Raises
    ------
    CodecError
        If the pack is damaged or the slot holds another key (a damaged index).
    """
    if slot == SINGLE:
        return raw
    size = len(raw)
    if size < HEAD.size:
        raise _damaged(pack, key, f"{size} bytes")
    magic, count = HEAD.unpack_from(raw)
    head = _align8(HEAD.size + SLOT.size * count)
    if magic != MAGIC or slot >= count or head > size:
        raise _damaged(pack, key, "bad header")
    stored, end = SLOT.unpack_from(raw, HEAD.size + SLOT.size * slot)
    start = head if slot == 0 else _align8(SLOT.unpack_from(raw, SLOT.size * slot - 4)[1])
    if stored != key:
        raise _damaged(pack, key, f"slot {slot} holds key {stored}")
    if not start <= end <= size:
        raise _damaged(pack, key, f"slot {slot} runs past the pack")
    return raw[start:end]


def slots_of(raw: memoryview) -> list[tuple[int, int, int]]:
    """Every slot of a pack: (key, start, end); empty for a damaged pack."""
    if len(raw) < HEAD.size:
        return []
    magic, count = HEAD.unpack_from(raw)
    start = _align8(HEAD.size + SLOT.size * count)
    if magic != MAGIC or start > len(raw):
        return []
    slots = []
    for key, end in SLOT.iter_unpack(raw[HEAD.size : HEAD.size + SLOT.size * count]):
        if not start <= end <= len(raw):
            return []
        slots.append((key, start, end))
        start = _align8(end)
    return slots


class _Verbatim:
    """A record copied as it is (a large value, or a record moved out of a reclaimed pack)."""

    __slots__ = ("_raw", "size")

    def __init__(self, raw: Stored) -> None:
        self._raw = raw
        self.size = len(raw)

    def write(self, target: memoryview, pos: int) -> None:
        target[pos : pos + self.size] = self._raw


class _Writable(Protocol):
    """What a pack is built from: a record's size, and writing it (``codec.Relaid``)."""

    @property
    def size(self) -> int:
        """Bytes of the record."""
        ...

    def write(self, target: memoryview, pos: int) -> None:
        """Write the record at ``target[pos:]``."""
        ...


class PackBuilder:
    """The records of one pack being built, in arrival order; their slots.

    Parameters
    ----------
    psize : int
        LMDB's page size, which the pack's size is fitted to.

    Attributes
    ----------
    keys : list of int
        The key of each slot.
    size : int
        Bytes of the pack as it stands.
    """

    def __init__(self, psize: int = 4096) -> None:
        self.keys: list[int] = []
        self._records: list[_Writable | _Verbatim] = []
        self._bytes = 0
        self._psize = psize

    @property
    def size(self) -> int:
        """Bytes of the pack with the records added so far."""
        return _align8(HEAD.size + SLOT.size * len(self.keys)) + self._bytes

    def add(self, key: int, record: _Writable | _Verbatim) -> int:
        """Add ``key``'s record; its slot."""
        self.keys.append(key)
        self._records.append(record)
        self._bytes = _align8(self._bytes) + record.size
        return len(self.keys) - 1

    def add_verbatim(self, key: int, raw: Stored) -> int:
        """Add a record (or a large value) copied as it is; its slot."""
        return self.add(key, _Verbatim(raw))

    def full(self) -> bool:
        """Whether the pack is closed: no more records go in (see ``PACK_BYTES``)."""
        size = self.size
        if size < PACK_BYTES:
            return len(self.keys) >= MAX_SLOTS
        unused = -(size + _PAGE_HEADER) % self._psize
        return (
            unused <= PACK_SLACK + (size - PACK_BYTES) // 32
            or size >= PACK_MAX
            or len(self.keys) >= MAX_SLOTS
        )

    def record_sizes(self) -> list[int]:
        """The size of each slot's record."""
        return [r.size for r in self._records]

    def build(self) -> bytearray:
        """The pack's bytes (padding zeroed)."""
        out = bytearray(self.size)
        view = memoryview(out)
        pos = _align8(HEAD.size + SLOT.size * len(self.keys))
        HEAD.pack_into(view, 0, MAGIC, len(self.keys))
        for slot, (key, record) in enumerate(zip(self.keys, self._records, strict=True)):
            pos = _align8(pos)
            record.write(view, pos)
            pos += record.size
            SLOT.pack_into(view, HEAD.size + SLOT.size * slot, key, pos)
        return out
