"""The byte format's constants: prefix, checksum, alignment and bounds, and a value's digest."""

from __future__ import annotations

import struct
from typing import Final

import xxhash

__all__ = [
    "ALIGN",
    "CACHE_LIMIT",
    "CHECKSUM",
    "CONTAINER_TAGS",
    "FORMAT_VERSION",
    "I64",
    "MAGIC",
    "MAX_DEPTH",
    "MAX_NDIM",
    "PADDING",
    "PREFIX",
    "RECORD",
    "RECORD_ALIGN",
    "RECORD_LENGTHS",
    "RECORD_MAGIC",
    "U32",
    "VALUE_VERSION",
    "digest",
]

# The format of a store: values, records and packs (2: samples packed, see ``records``).
FORMAT_VERSION: Final = 2
# The version in a value's prefix: its layout is the same in formats 1 and 2.
VALUE_VERSION: Final = 1

MAGIC: Final = b"SPLC"
PREFIX: Final = struct.Struct("<4sHHI")
CHECKSUM: Final = struct.Struct("<Q")
U32: Final = struct.Struct("<I")
I64: Final = struct.Struct("<q")
ALIGN: Final = 64
# A record in a pack (module ``records``): magic, the id of its spec, kept elsewhere.
RECORD_MAGIC: Final = b"SPLR"
RECORD: Final = struct.Struct("<4sQ")
# A record's shapes and blob lengths: u32, as a record is under 4 GiB (a value's are u64).
RECORD_LENGTHS: Final = "I"
# Arrays in a record are 8-aligned: records sit 8-aligned in a pack, 16 bytes into a page.
RECORD_ALIGN: Final = 8
PADDING: Final = bytes(ALIGN)
MAX_DEPTH: Final = 100
MAX_NDIM: Final = 64
# Bounds on caches keyed by data the codec sees (specs, dict keys, dtypes): cleared when full.
CACHE_LIMIT: Final = 1024

CONTAINER_TAGS: Final[dict[type[object], bytes]] = {dict: b"D", list: b"L", tuple: b"T"}


def digest(value: bytes | bytearray | memoryview) -> str:
    """Return a content digest of an encoded value, to tell whether two hold the same data.

    Parameters
    ----------
    value : bytes, bytearray or memoryview
        An encoded value (not checked).

    Returns
    -------
    str
        32 hex digits of the value's xxh3_128.
    """
    return xxhash.xxh3_128_hexdigest(value)
