"""The decoders: :func:`decode` (checked, copies) and :func:`view` (unchecked, views)."""

from __future__ import annotations

import struct
from typing import Final

import xxhash

from spillcache.errors import CodecError

from .compiler import PLANS, SpecCompiler, plan_of, remember
from .format import CHECKSUM, FORMAT_VERSION, MAGIC, PREFIX

__all__ = ["decode", "view"]

# Values at least this large are checked while they are copied: each array is hashed from its
# fresh copy, still in the CPU cache, instead of from the value (in RAM, or in LMDB's mapped
# page cache), so a large value is read from memory once rather than twice. Measured on 1 MiB
# values here: a decode 20-30 % faster. Smaller values fit the cache anyway and are checked
# first, in one call.
_FUSED_MIN: Final = 1 << 18


def decode(value: bytes | bytearray | memoryview) -> object:
    """Rebuild a sample from a value made by :func:`encode`.

    Every tensor and array is a fresh, writable copy: nothing refers to ``value`` afterwards,
    so it may be a buffer that becomes invalid (e.g. LMDB memory) as soon as this returns.

    Parameters
    ----------
    value : bytes, bytearray or memoryview
        The encoded value.

    Returns
    -------
    object
        The sample, with the types, dtypes, shapes and values it was encoded with.

    Raises
    ------
    CodecError
        For any invalid ``value``: corrupt, truncated, extended, of another format or version,
        or not a buffer at all.
    """
    if type(value) is not bytes:
        try:
            value = memoryview(value).cast("B")
        except TypeError as exc:
            raise CodecError(f"cannot decode a {type(value).__qualname__}: {exc}") from None
    size = len(value)
    if size < PREFIX.size + CHECKSUM.size:
        raise CodecError(f"value of {size} bytes is too short")
    magic, version, flags, spec_len = PREFIX.unpack_from(value)
    if magic != MAGIC:
        raise CodecError("not a spillcache value (bad magic)")
    if version != FORMAT_VERSION:
        raise CodecError(f"value has format version {version}, this codec reads {FORMAT_VERSION}")
    limit = size - CHECKSUM.size
    (checksum,) = CHECKSUM.unpack_from(value, limit)
    hasher = None
    if limit >= _FUSED_MIN:
        hasher = xxhash.xxh3_64()
    elif xxhash.xxh3_64_intdigest(memoryview(value)[:limit]) != checksum:
        raise CodecError(_CHECKSUM_MISMATCH)
    if flags:
        raise CodecError(f"unknown flags {flags:#x}")
    spec_end = PREFIX.size + spec_len
    if spec_end > limit:
        raise CodecError("structure spec runs past the end of the value")
    spec = bytes(value[PREFIX.size : spec_end])
    plan = PLANS.get(spec)
    known = plan is not None
    if plan is None:
        plan = SpecCompiler(spec).compile()
    if plan.data_start > limit:
        raise CodecError("table runs past the end of the value")
    try:
        sample = plan.build(value, limit, hasher)
    except CodecError:
        raise
    except (ValueError, TypeError, OverflowError, struct.error) as exc:
        raise CodecError(f"invalid value: {exc}") from exc
    if hasher is not None and hasher.intdigest() != checksum:
        raise CodecError(_CHECKSUM_MISMATCH)
    if not known:
        # Only once the checksum held: damaged values must not crowd out real specs.
        remember(spec, plan)
    return sample


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
