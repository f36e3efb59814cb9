"""The decoders: :func:`decode` and :func:`decode_sized` (checked, copies), :func:`view`."""

from __future__ import annotations

import struct
from typing import Final, Literal, overload

import xxhash

from spillcache.errors import CodecError

from .compiler import PLANS, SpecCompiler, plan_of, remember
from .footprint import Decoded
from .format import CHECKSUM, MAGIC, PREFIX, RECORD_MAGIC, VALUE_VERSION
from .plan import Plan
from .records import RECORD_PLANS

__all__ = ["decode", "decode_sized", "view"]

# Values at least this large are checked while they are copied: each array is hashed from its
# fresh copy, still in the CPU cache, so a large value is read from memory once, not twice
# (docs/design.rst, "The codec's costs"). Smaller values are checked first, in one call.
_FUSED_MIN: Final = 1 << 18
# Sizes as constants, not Struct attributes looked up on every decode.
_CHECKSUM_SIZE: Final = CHECKSUM.size
_SHORTEST: Final = PREFIX.size + CHECKSUM.size


@overload
def decode(value: bytes | bytearray | memoryview, *, sized: Literal[False] = False) -> object: ...
@overload
def decode(value: bytes | bytearray | memoryview, *, sized: Literal[True]) -> Decoded: ...


def decode(value: bytes | bytearray | memoryview, *, sized: bool = False) -> object:
    """Rebuild a sample from a value made by :func:`encode`, or a pack's record.

    Every tensor and array is a fresh, writable copy: nothing refers to ``value`` afterwards,
    so it may be a buffer that becomes invalid (e.g. LMDB memory) as soon as this returns.

    Parameters
    ----------
    value : bytes, bytearray or memoryview
        The encoded value.
    sized : bool
        Return a :class:`~spillcache.codec.footprint.Decoded`: the sample with its footprint
        and a way to copy it, which the decode knows without a walk of the sample (for a cache
        that keeps the sample in RAM and hands out copies).

    Returns
    -------
    object
        The sample, with the types, dtypes, shapes and values it was encoded with (in a
        :class:`~spillcache.codec.footprint.Decoded` if ``sized``).

    Raises
    ------
    CodecError
        For any invalid ``value``: corrupt, truncated, extended, of another format or version,
        or not a buffer at all.
    """
    # One function, not a wrapper of a shared one: it runs on every disk hit, where each call
    # shows (docs/design.rst, "The codec's costs").
    data = value
    # LMDB's buffers are byte views already: only other buffers need one made.
    if type(data) is not bytes and not (
        type(data) is memoryview and data.format == "B" and data.ndim == 1 and data.c_contiguous
    ):
        data = _as_bytes(data)
    size = len(data)
    if size < _SHORTEST:
        raise CodecError(f"value of {size} bytes is too short")
    magic, version, flags, spec_len = PREFIX.unpack_from(data)
    record = magic == RECORD_MAGIC  # a pack's record: its spec is named by id (``records``)
    if not record and (magic != MAGIC or version != VALUE_VERSION):
        raise _foreign(magic, version)
    limit = size - _CHECKSUM_SIZE
    (checksum,) = CHECKSUM.unpack_from(data, limit)
    # The checksum comes before any length in the value is trusted (fused with the copy if large).
    hasher = xxhash.xxh3_64() if limit >= _FUSED_MIN else None
    # A byte view is sliced as it is (LMDB's, on every disk hit): no memoryview made of it.
    hashed = (memoryview(data) if type(data) is bytes else data)[:limit]
    if hasher is None and xxhash.xxh3_64_intdigest(hashed) != checksum:
        raise CodecError(_CHECKSUM_MISMATCH)
    if record:
        # A record's spec id is the prefix's last 8 bytes, which PREFIX read as three numbers:
        # joined here, without a call (every disk hit of a packed sample comes through). An
        # unknown id raises UnknownSpec.
        plan, fresh = RECORD_PLANS[version | flags << 16 | spec_len << 32], None
    else:
        plan, fresh = _value_plan(data, flags, spec_len, limit)
    try:  # the builder checks the table's end and each payload's against ``limit``
        built = (plan.sized_build if sized else plan.build)(data, limit, hasher)
    except CodecError:
        raise
    except (ValueError, TypeError, OverflowError, struct.error) as exc:
        raise CodecError(f"invalid value: {exc}") from exc
    if hasher is not None and hasher.intdigest() != checksum:
        raise CodecError(_CHECKSUM_MISMATCH)
    if fresh is not None:
        # Only once the checksum held: damaged values must not crowd out real specs.
        remember(fresh, plan)
    return built


def decode_sized(value: bytes | bytearray | memoryview) -> Decoded:
    """``decode(value, sized=True)``: a one-argument reader for the disk tier.

    Parameters
    ----------
    value : bytes, bytearray or memoryview
        The encoded value.

    Returns
    -------
    Decoded
        The sample, its :func:`~spillcache.footprint.sample_nbytes` and its copier.

    Raises
    ------
    CodecError
        As :func:`decode`.
    """
    return decode(value, sized=True)


def _value_plan(
    data: bytes | memoryview, flags: int, spec_len: int, limit: int
) -> tuple[Plan, bytes | None]:
    """The plan of a value's spec, and the spec if the plan is new (not cached yet)."""
    spec_end = PREFIX.size + spec_len
    if flags or spec_end > limit:
        raise _bad_spec(flags)
    spec = bytes(data[PREFIX.size : spec_end])
    known = PLANS.get(spec)
    if known is not None:
        return known, None
    return SpecCompiler(spec).compile(), spec


def _as_bytes(value: object) -> memoryview:
    try:
        return memoryview(value).cast("B")  # type: ignore[arg-type]
    except TypeError as exc:
        raise CodecError(f"cannot decode a {type(value).__qualname__}: {exc}") from None


def _foreign(magic: bytes, version: int) -> CodecError:
    if magic != MAGIC:
        return CodecError("not a spillcache value (bad magic)")
    return CodecError(f"value has format version {version}, this codec reads {VALUE_VERSION}")


def _bad_spec(flags: int) -> CodecError:
    if flags:
        return CodecError(f"unknown flags {flags:#x}")
    return CodecError("structure spec runs past the end of the value")


_CHECKSUM_MISMATCH: Final = "checksum mismatch (corrupt or truncated value)"


def view(value: memoryview) -> object:
    """The sample of a value made by :meth:`Encoding.into`, its tensors and arrays views of it.

    No copy and no check of the checksum: for the process that made ``value``, to keep the
    sample without a second copy (the RAM tier, in the buffer the disk tier writes from). The
    views keep the buffer alive, even once ``value`` is released (numpy refers to the buffer,
    not to the memoryview); whoever hands out the buffer must not reuse it while they live.

    Parameters
    ----------
    value : memoryview
        A writable view of the value, sealed or not.

    Returns
    -------
    object
        The sample, as :func:`decode` would return it but sharing memory with ``value``.
    """
    (_, _, _, spec_len) = PREFIX.unpack_from(value)
    plan = plan_of(bytes(value[PREFIX.size : PREFIX.size + spec_len]))
    return plan.view_build(value, len(value) - CHECKSUM.size, None)
