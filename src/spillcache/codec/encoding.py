"""The encoder: a sample laid out as a value (:class:`Encoding`), :func:`encode`, :func:`seal`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, cast

import numpy as np
import torch
import xxhash
from numpy.typing import NDArray

from .compiler import plan_of
from .format import (
    ALIGN,
    CHECKSUM,
    CONTAINER_TAGS,
    MAGIC,
    MAX_DEPTH,
    PADDING,
    PREFIX,
    U32,
    VALUE_VERSION,
)
from .plan import Plan
from .rules import (
    NDIM_BYTES,
    NUMPY_SCALAR_TYPES,
    Array,
    Data,
    PathError,
    array_head,
    as_base,
    dense,
    key_token,
    scalar_head,
    too_deep,
    torch_type,
    unsupported,
)

__all__ = ["Buffer", "Encoding", "Unsealed", "encode", "seal"]

_Payload = tuple[bool, Data, int]  # (64-aligned?, data, byte length)
# A writable, C-contiguous buffer a value is copied into (Encoding.into).
Buffer = bytearray | NDArray[np.uint8]


def encode(sample: object) -> bytes:
    """Serialize a sample into one self-checking value.

    Parameters
    ----------
    sample : object
        Nested dict/list/tuple of supported leaves (see the module docstring).

    Returns
    -------
    bytes
        The encoded value; identical samples give identical bytes.

    Raises
    ------
    TypeError
        A leaf, dict key, dtype or tensor kind is unsupported; the message names its path,
        e.g. ``sample['image']['meta'][2]``, and its type.
    ValueError
        Containers nest more than 100 deep (for instance a self-referencing list).
    """
    return Encoding(sample).to_bytes()


class Encoding:
    """A sample laid out as a value, its size known before a byte of data is copied.

    What :func:`encode` does in two steps, so that the caller can choose where the value goes
    from its size: into a recycled buffer (a fresh one costs page faults: glibc hands freed
    blocks of a MiB back to the kernel, and on virtual machines a page touched again costs
    several microseconds), or into one the RAM tier keeps (:func:`view`), or later, by another
    thread: it holds views of the sample's tensors and arrays, not copies, so it reads what they
    hold when it is copied.

    Parameters
    ----------
    sample : object
        As for :func:`encode`, which raises the same errors here.
    name : str
        What error messages call the sample (``"dataset[5]"``: ``dataset[5]['meta']``).

    Attributes
    ----------
    size : int
        Bytes of the value.
    array_bytes : int
        The data bytes of the sample's tensors and arrays, counted at every occurrence: what
        a copy made by :func:`clone` holds at least (it copies each one compactly).
    plan : Plan
        The plan of the sample's structure spec (what :func:`~.replicators.replicator` takes).
    """

    __slots__ = ("_parts", "array_bytes", "plan", "size")

    def __init__(self, sample: object, *, name: str = "sample") -> None:
        self._parts, data_size, self.array_bytes, self.plan = _layout(sample, name)
        self.size = data_size + CHECKSUM.size

    def __len__(self) -> int:
        """Bytes of the value (:attr:`size`), like ``len()`` of the bytes it becomes."""
        return self.size

    def to_bytes(self) -> bytes:
        """The value, sealed: what :func:`encode` returns."""
        return _joined(self._parts)

    def into(self, buffer: Buffer) -> memoryview:
        """Copy the value into the first :attr:`size` bytes of ``buffer``, all but its checksum.

        The checksum is left to :func:`seal`, which must run before the value is stored or
        decoded: hashing a MiB (~40 us) is work another thread can do.

        Parameters
        ----------
        buffer : bytearray or numpy.ndarray of uint8
            Writable, C-contiguous, at least :attr:`size` bytes.

        Returns
        -------
        memoryview
            The value's bytes in ``buffer``.
        """
        target = np.frombuffer(buffer, np.uint8, self.size)
        pos = 0
        for part in self._parts:
            # Arrays are C-contiguous here; a byte view copies any dtype, datetimes included.
            flat = (
                np.frombuffer(part, np.uint8)
                if type(part) is bytes
                else part.reshape(-1).view(np.uint8)
            )
            target[pos : pos + flat.size] = flat
            pos += flat.size
        # cast: numpy's stubs declare no buffer protocol before Python 3.12.
        return memoryview(cast(bytearray, buffer)).cast("B")[: self.size]

    def finish(self, take: Callable[[int], Buffer | None]) -> bytes | memoryview:
        """The value, sealed: in ``take(size)``'s buffer if it gives one, else as bytes.

        The disk tier's writer thread calls it (:class:`spillcache.disk.values.Deferred`) to
        copy the sample there, off the thread of the put.
        """
        buffer = take(self.size)
        if buffer is None:
            return self.to_bytes()
        value = self.into(buffer)
        seal(value)
        return value

    def snapshot(self) -> bytes:
        """The value, sealed, in memory of its own (:meth:`to_bytes`)."""
        return self.to_bytes()

    def pooled(self) -> None:
        """No buffer holds the value before :meth:`finish` (see :meth:`Unsealed.pooled`)."""
        return None


def seal(value: memoryview | bytearray) -> None:
    """Write the checksum into a value made by :meth:`Encoding.into` (its last eight bytes).

    Parameters
    ----------
    value : memoryview or bytearray
        The writable value; sealing it again is harmless.
    """
    limit = len(value) - CHECKSUM.size
    CHECKSUM.pack_into(value, limit, xxhash.xxh3_64_intdigest(memoryview(value)[:limit]))


class Unsealed:
    """A value :meth:`Encoding.into` copied into a buffer, sealed later by the disk's writer.

    A :class:`spillcache.disk.values.Deferred`: the checksum (:func:`seal`) is written by
    the disk tier's writer thread, off the thread of the put.

    Parameters
    ----------
    value : memoryview
        What :meth:`Encoding.into` returned.
    """

    __slots__ = ("_value",)

    def __init__(self, value: memoryview) -> None:
        self._value = value

    def __len__(self) -> int:
        """Bytes of the value."""
        return len(self._value)

    def finish(self, take: Callable[[int], Buffer | None]) -> memoryview:
        """The value, sealed in its buffer (``take`` is not needed)."""
        seal(self._value)
        return self._value

    def snapshot(self) -> memoryview:
        """The value, sealed, in memory of its own (its buffer is recycled once written)."""
        copy = bytearray(self._value)
        seal(copy)
        return memoryview(copy)

    def pooled(self) -> memoryview:
        """The view of the buffer the value lies in, for the disk tier to take back."""
        return self._value


def _joined(parts: list[Data]) -> bytes:
    """The value made of ``parts``, sealed with their checksum."""
    hasher = xxhash.xxh3_64()
    for part in parts:
        hasher.update(part)
    return b"".join([*parts, CHECKSUM.pack(hasher.intdigest())])


def _layout(sample: object, name: str) -> tuple[list[Data], int, int, Plan]:
    """The parts of ``sample``'s value up to its checksum, their size, arrays' share, plan."""
    spec: list[bytes] = []
    nums: list[Any] = []
    payloads: list[_Payload] = []
    try:
        _emit(sample, spec, nums, payloads, 0)
    except PathError as exc:
        raise exc.located("encode", name) from None
    spec_bytes = b"".join(spec)
    plan = plan_of(spec_bytes)
    parts: list[Data] = [
        PREFIX.pack(MAGIC, VALUE_VERSION, 0, len(spec_bytes)),
        spec_bytes,
        plan.table.pack(*nums),
    ]
    pos = plan.data_start
    array_bytes = 0
    for aligned, data, size in payloads:
        pad = -pos % ALIGN if aligned else 0
        if pad:
            parts.append(PADDING[:pad])
        parts.append(data)
        pos += pad + size
        if aligned:  # tensors and arrays: the other payloads are scalars, text and bytes
            array_bytes += size
    return parts, pos, array_bytes, plan


_Emitter = Callable[[Any, list[bytes], list[Any], list[_Payload]], None]


def _emit(x: Any, spec: list[bytes], nums: list[Any], payloads: list[_Payload], depth: int) -> None:
    kind = type(x)
    emitter = _EMITTERS.get(kind)
    if emitter is None and kind is not dict and kind is not list and kind is not tuple:
        x = as_base(x)
        emitter = _EMITTERS.get(type(x))
        if emitter is None:
            raise unsupported(x)
    if emitter is not None:
        emitter(x, spec, nums, payloads)
        return
    if depth >= MAX_DEPTH:
        raise too_deep()
    is_dict = kind is dict
    spec.append(CONTAINER_TAGS[kind] + U32.pack(len(x)))
    for key, value in x.items() if is_dict else enumerate(x):
        if is_dict:
            spec.append(key_token(key))
        try:
            # Leaves are dispatched here rather than by recursing: a call less per leaf.
            emitter = _EMITTERS.get(type(value))
            if emitter is None:
                _emit(value, spec, nums, payloads, depth + 1)
            else:
                emitter(value, spec, nums, payloads)
        except PathError as exc:
            exc.path.append(f"[{key!r}]")
            raise


def _emit_none(x: None, spec: list[bytes], nums: list[Any], payloads: list[_Payload]) -> None:
    spec.append(b"N")


def _emit_bool(x: bool, spec: list[bytes], nums: list[Any], payloads: list[_Payload]) -> None:
    spec.append(b"b")
    nums.append(x)


def _emit_int(x: int, spec: list[bytes], nums: list[Any], payloads: list[_Payload]) -> None:
    if -(2**63) <= x < 2**63:
        spec.append(b"i")
        nums.append(x)
    else:
        spec.append(b"j")
        _emit_blob(x.to_bytes(x.bit_length() // 8 + 1, "little", signed=True), nums, payloads)


def _emit_float(x: float, spec: list[bytes], nums: list[Any], payloads: list[_Payload]) -> None:
    spec.append(b"f")
    nums.append(x)


def _emit_blob(raw: bytes, nums: list[Any], payloads: list[_Payload]) -> None:
    nums.append(len(raw))
    payloads.append((False, raw, len(raw)))


def _emit_text(tag: bytes) -> _Emitter:
    def emit(x: str, spec: list[bytes], nums: list[Any], payloads: list[_Payload]) -> None:
        spec.append(tag)
        _emit_blob(x.encode("utf-8", "surrogatepass"), nums, payloads)

    return emit


def _emit_bytes(tag: bytes) -> _Emitter:
    def emit(x: bytes, spec: list[bytes], nums: list[Any], payloads: list[_Payload]) -> None:
        spec.append(tag)
        _emit_blob(bytes(x), nums, payloads)

    return emit


def _emit_numpy_scalar(
    x: np.generic, spec: list[bytes], nums: list[Any], payloads: list[_Payload]
) -> None:
    stored, head = scalar_head(x.dtype)
    spec.append(head)
    payloads.append((False, x.tobytes(), stored.itemsize))


def _emit_array(x: Array, spec: list[bytes], nums: list[Any], payloads: list[_Payload]) -> None:
    stored, head = array_head(x.dtype)
    if x.dtype.byteorder == ">" or not x.flags.c_contiguous:
        x = np.array(x, dtype=stored, order="C")
    _emit_buffer(head, x, spec, nums, payloads)


def _emit_tensor(
    x: torch.Tensor, spec: list[bytes], nums: list[Any], payloads: list[_Payload]
) -> None:
    info = torch_type(x)
    # "r" keeps the flag; "t", all that values had before it existed, still means False.
    head = b"r" + info.head[1:] if x.requires_grad else info.head
    x = dense(x).contiguous()
    data = (x if info.carrier is None else x.view(info.carrier)).numpy()
    _emit_buffer(head, data, spec, nums, payloads)


def _emit_buffer(
    head: bytes, data: Array, spec: list[bytes], nums: list[Any], payloads: list[_Payload]
) -> None:
    spec.append(head + NDIM_BYTES[data.ndim])
    nums.extend(data.shape)
    payloads.append((True, data, data.nbytes))


_EMITTERS: Final[dict[type[Any], _Emitter]] = {
    type(None): _emit_none,
    bool: _emit_bool,
    int: _emit_int,
    float: _emit_float,
    str: _emit_text(b"s"),
    bytes: _emit_bytes(b"y"),
    np.str_: _emit_text(b"S"),
    np.bytes_: _emit_bytes(b"Y"),
    np.ndarray: _emit_array,
    # A memory-mapped array is stored as its data; it decodes as a plain ndarray.
    np.memmap: _emit_array,
    torch.Tensor: _emit_tensor,
    **dict.fromkeys(NUMPY_SCALAR_TYPES, _emit_numpy_scalar),
}
