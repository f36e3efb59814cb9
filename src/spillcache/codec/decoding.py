"""The decoders: :func:`decode` and :func:`decode_sized` (checked, copies), :func:`view`."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

import xxhash

from spillcache.errors import CodecError

from .builders import Builder, Built
from .compiler import PLANS, SpecCompiler, plan_of, remember
from .copying import replicate_built
from .footprint import Footprint
from .format import CHECKSUM, FORMAT_VERSION, MAGIC, PREFIX

if TYPE_CHECKING:
    from .plan import Plan

__all__ = ["Decoded", "decode", "decode_sized", "view"]

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
    return _decode(value)[2][0]


def decode_sized(value: bytes | bytearray | memoryview) -> Decoded:
    """Rebuild a sample as :func:`decode` does, with its footprint and a way to copy it.

    For a cache that keeps the sample in RAM and hands out a copy: what the decode knows (the
    plan's structure, the table's numbers) gives both without a walk of the sample.

    Parameters
    ----------
    value : bytes, bytearray or memoryview
        The encoded value.

    Returns
    -------
    Decoded
        The sample, its :func:`~spillcache.sizing.sample_nbytes` and its copier.

    Raises
    ------
    CodecError
        As :func:`decode`.
    """
    plan, builder, (sample, nums, leaves) = _decode(value)
    footprint = plan.footprint
    if footprint is None:
        footprint = plan.footprint = Footprint(plan)
    return Decoded(sample, footprint.nbytes(builder, sample, nums, leaves), plan, nums, leaves)


class Decoded:
    """A sample :func:`decode_sized` rebuilt, with what its plan knows about it.

    Attributes
    ----------
    sample : object
        The sample, as :func:`decode` returns it.
    nbytes : int
        Exactly what :func:`~spillcache.sizing.sample_nbytes` says of ``sample`` when it was
        decoded, computed from the plan.
    """

    __slots__ = ("_leaves", "_nums", "_plan", "nbytes", "sample")

    def __init__(
        self,
        sample: object,
        nbytes: int,
        plan: Plan,
        nums: tuple[Any, ...],
        leaves: Sequence[object],
    ) -> None:
        self.sample = sample
        self.nbytes = nbytes
        self._plan = plan
        self._nums = nums
        self._leaves = leaves

    def copy(self) -> object:
        """A copy of :attr:`sample`, as :func:`~spillcache.codec.replicate` makes one.

        Containers rebuilt by the plan, every tensor and array copied, other leaves shared.
        """
        return replicate_built(self._plan, self._nums, self._leaves)


def _decode(value: bytes | bytearray | memoryview) -> tuple[Plan, Builder, Built]:
    """Check and decode ``value``: its plan, the builder that ran and what it built."""
    if type(value) is not bytes:
        value = _as_bytes(value)
    limit, checksum, flags, spec_len = _open(value)
    hasher = None
    if limit >= _FUSED_MIN:
        hasher = xxhash.xxh3_64()
    elif xxhash.xxh3_64_intdigest(memoryview(value)[:limit]) != checksum:
        raise CodecError(_CHECKSUM_MISMATCH)
    spec = _spec(value, flags, spec_len, limit)
    plan = PLANS.get(spec)
    known = plan is not None
    if plan is None:
        plan = SpecCompiler(spec).compile()
    if plan.data_start > limit:
        raise CodecError("table runs past the end of the value")
    builder = plan.build
    try:
        built = builder(value, limit, hasher)
    except CodecError:
        raise
    except (ValueError, TypeError, OverflowError, struct.error) as exc:
        raise CodecError(f"invalid value: {exc}") from exc
    if hasher is not None and hasher.intdigest() != checksum:
        raise CodecError(_CHECKSUM_MISMATCH)
    if not known:
        # Only once the checksum held: damaged values must not crowd out real specs.
        remember(spec, plan)
    return plan, builder, built


def _as_bytes(value: object) -> memoryview:
    try:
        return memoryview(value).cast("B")  # type: ignore[arg-type]
    except TypeError as exc:
        raise CodecError(f"cannot decode a {type(value).__qualname__}: {exc}") from None


def _open(value: bytes | memoryview) -> tuple[int, int, int, int]:
    """Check magic and version: the checksum's offset, the checksum, flags and spec length."""
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
    return limit, checksum, flags, spec_len


def _spec(value: bytes | memoryview, flags: int, spec_len: int, limit: int) -> bytes:
    """The structure spec, once the checksum held (the flags are checked only then)."""
    if flags:
        raise CodecError(f"unknown flags {flags:#x}")
    spec_end = PREFIX.size + spec_len
    if spec_end > limit:
        raise CodecError("structure spec runs past the end of the value")
    return bytes(value[PREFIX.size : spec_end])


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
    return plan.view_build(value, len(value) - CHECKSUM.size, None)[0]
