"""Safe, versioned serialization of one sample into one LMDB value.

A *sample* is a nested structure of ``dict`` (keys ``str`` or ``int``, insertion order kept),
``list`` and ``tuple`` whose leaves are torch tensors, numpy arrays, numpy scalars (including
``np.str_`` and ``np.bytes_``), Python ``int`` (any size), ``float``, ``bool``, ``str``, ``bytes``
or ``None``. Nothing is pickled and decoding never executes code: a value only ever turns into
those types. Anything else is refused by :func:`encode` with a ``TypeError`` naming its path.

Byte format, version 1
----------------------
All integers are little-endian; offsets count from the first byte of the value::

    offset 0            prefix, 12 bytes, struct "<4sHHI":
                          magic      4 bytes  b"SPLC"
                          version    u16      FORMAT_VERSION (1)
                          flags      u16      0 (reserved; any other value is invalid)
                          spec_len   u32      length of the structure spec
    offset 12           structure spec, spec_len bytes (grammar below)
    12 + spec_len       table: one packed struct (no padding) of the slots the spec asks for
    after the table     data region: one payload per leaf that has one, in spec order
    n - 8               checksum: u64 xxh3_64 (seed 0) of bytes [0, n - 8)

The *structure spec* describes containers, dict keys, leaf kinds, dtypes and numbers of
dimensions, but no lengths or values, so samples of the same shape share the same spec bytes
(and the decoder compiled for it). It is written depth first, children in order::

    node   := dict | list | tuple | leaf
    dict   := "D" u32:count (key node){count}
    key    := "s" u32:len utf8[len]          a str key
            | "i" i64                        an int key (int64 range)
    list   := "L" u32:count node{count}
    tuple  := "T" u32:count node{count}
    leaf   := "N"                            None
            | "b" | "i" | "f"                bool, int (int64 range), float
            | "j"                            int outside the int64 range
            | "s" | "y" | "S" | "Y"          str, bytes, numpy.str_, numpy.bytes_
            | "g" dtype                      numpy scalar
            | "a" dtype u8:ndim              numpy array
            | "t" tname u8:ndim              torch tensor
            | "r" tname u8:ndim              torch tensor with requires_grad=True (floating
                                             point and complex dtypes only)
    dtype  := u8:len ascii[len]    numpy ``dtype.str``: "<f4", "|b1", "<M8[ns]", "<U3", ...
    tname  := u8:len ascii[len]    torch dtype name without "torch.": "float32", "bfloat16", ...

Containers nest at most 100 deep; arrays and tensors have at most 64 dimensions. Array dtypes
are of the kinds ``b i u f c m M S U`` and scalar dtypes of ``b i u f c m M``, never long double
(its layout differs between platforms), object, structured or zero-sized.

Table slots, in leaf order (struct codes): ``b`` → ``?``; ``i`` → ``q``; ``f`` → ``d`` (the
float's exact 64 bits); ``j s y S Y`` → ``Q``, the payload's byte length; ``a t`` → ``ndim``
times ``Q``, the shape; ``N g`` → none.

Data region payloads, in leaf order: ``a`` and ``t`` hold the C-order element bytes, starting at
the next offset that is a multiple of 64 (zero padding before); the other payloads follow
without padding: ``s S`` UTF-8 (lone surrogates kept via ``surrogatepass``), ``y Y`` the bytes,
``j`` the two's complement, little-endian, in ``bit_length // 8 + 1`` bytes, ``g`` the scalar's
``itemsize`` bytes. The last payload ends exactly at ``n - 8``. Element bytes are little-endian:
big-endian numpy input is converted; tensors and numpy scalars are written in host order, hosts
being assumed little-endian. Tensors of dtypes numpy lacks are stored as a same-size integer
carrier (``bfloat16`` as ``<i2``, ``complex32`` as ``<i4``, ``float8_*`` as ``|u1``) and viewed
back on decode. Encoding is deterministic: equal samples give equal bytes, so :func:`digest`
(xxh3_128 of the whole value) tells whether two values hold the same data.

Decoding checks the magic and version, then the checksum (before trusting any length in the
value), then parses the spec, validating every tag, count, length and dtype against the spec's
size, and checks each payload's end against the value's size before allocating anything for it:
a hostile value cannot make it allocate much more than its own size. Values of 256 KiB and more
are checksummed while they are copied instead (each array is hashed from its fresh copy, so the
value is read from memory once); the same bounds hold, and a mismatch discards the copies. Any
invalid value raises :class:`~spillcache.errors.CodecError`. Parsed specs are compiled into
plans kept in a bounded cache keyed by the spec bytes; from its second decode on, a spec of at
most 256 nodes gets a generated decoder, straight-line Python built only from the plan's
numbers and names (no value byte is ever parsed as code), so decoding a sample of a known shape
only unpacks the prefix and the table, checks the checksum and copies the payloads.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Callable, Sequence
from functools import partial
from operator import itemgetter
from typing import Any, Final, NamedTuple, TypeVar, cast

import numpy as np
import torch
import xxhash
from numpy.typing import NDArray

from spillcache.errors import CodecError

__all__ = ["FORMAT_VERSION", "clone", "decode", "digest", "encode", "replicate"]

FORMAT_VERSION: Final = 1

_MAGIC: Final = b"SPLC"
_PREFIX: Final = struct.Struct("<4sHHI")
_CHECKSUM: Final = struct.Struct("<Q")
_U32: Final = struct.Struct("<I")
_I64: Final = struct.Struct("<q")
_ALIGN: Final = 64
_PADDING: Final = bytes(_ALIGN)
_MAX_DEPTH: Final = 100
_MAX_NDIM: Final = 64
# Bounds on caches keyed by data the codec sees (specs, dict keys, dtypes): cleared when full.
_CACHE_LIMIT: Final = 1024

_T = TypeVar("_T")
_Array = NDArray[Any]
# bytes or a C-contiguous array: both export their bytes, but numpy's stubs only declare the
# buffer protocol from Python 3.12 on.
_Data = Any
_Payload = tuple[bool, _Data, int]  # (64-aligned?, data, byte length)
# A writable, C-contiguous buffer a value is copied into (Encoding.into).
Buffer = bytearray | NDArray[np.uint8]

# numpy dtype kinds stored as arrays and scalars: bool, ints, floats, complex, datetimes, and
# (arrays only) fixed-width bytes and unicode. long double is excluded: its size and layout
# differ between platforms, so a stored value could not be read back elsewhere.
_ARRAY_KINDS: Final = frozenset("biufcmMSU")
_SCALAR_KINDS: Final = frozenset("biufcmM")
_PLATFORM_DEPENDENT: Final = frozenset({np.dtype(np.longdouble), np.dtype(np.clongdouble)})


class _TorchType(NamedTuple):
    """How a torch dtype is stored: its name in the spec and a numpy-compatible carrier."""

    head: bytes  # spec bytes of a tensor leaf of this dtype, but for ndim
    dtype: torch.dtype
    carrier: torch.dtype | None  # view as this before .numpy() when numpy lacks the dtype
    numpy_dtype: np.dtype[Any]  # dtype of the stored bytes (the carrier's, if any)


def _torch_types() -> dict[torch.dtype, _TorchType]:
    numpy_native = {
        "bool": "|b1",
        "uint8": "|u1",
        "int8": "|i1",
        "int16": "<i2",
        "int32": "<i4",
        "int64": "<i8",
        "uint16": "<u2",
        "uint32": "<u4",
        "uint64": "<u8",
        "float16": "<f2",
        "float32": "<f4",
        "float64": "<f8",
        "complex64": "<c8",
        "complex128": "<c16",
    }
    carried = {
        "bfloat16": "int16",
        "complex32": "int32",
        "float8_e4m3fn": "uint8",
        "float8_e4m3fnuz": "uint8",
        "float8_e5m2": "uint8",
        "float8_e5m2fnuz": "uint8",
        "float8_e8m0fnu": "uint8",
    }
    types = {}
    # Older torch versions lack some dtypes (uint16/32/64 before 2.3, float8 before 2.1).
    for name in numpy_native.keys() | carried.keys():
        dtype = getattr(torch, name, None)
        if not isinstance(dtype, torch.dtype):
            continue
        carrier = getattr(torch, carried[name]) if name in carried else None
        stored = np.dtype(numpy_native[carried.get(name, name)])
        types[dtype] = _TorchType(b"t" + _short_token(name), dtype, carrier, stored)
    return types


def _short_token(text: str) -> bytes:
    raw = text.encode("ascii")
    return bytes((len(raw),)) + raw


_TORCH_TYPES: Final = _torch_types()
_TORCH_BY_NAME: Final = {info.head[2:]: info for info in _TORCH_TYPES.values()}
_NDIM_BYTES: Final = tuple(bytes((ndim,)) for ndim in range(_MAX_NDIM + 1))
_NUMPY_SCALAR_TYPES: Final = frozenset(np.dtype(code).type for code in "?bBhHiIlLqQefdFDmM")
_IMMUTABLE: Final = frozenset(
    {type(None), bool, int, float, str, bytes, np.str_, np.bytes_, *_NUMPY_SCALAR_TYPES}
)


class _PathError(Exception):
    """An unsupported part of a sample; the path to it is collected while unwinding."""

    def __init__(self, kind: type[Exception], reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.path: list[str] = []  # innermost first

    def located(self, action: str, name: str = "sample") -> Exception:
        where = name + "".join(reversed(self.path))
        return self.kind(f"cannot {action} {where}: {self.reason}")


_SUPPORTED: Final = (
    "supported: dict with str/int keys, list, tuple, torch.Tensor, numpy.ndarray, numpy scalars "
    "(not long double), int, float, bool, str, bytes, None"
)
# Containers and leaves stored only as exactly these types.
_PLAIN_BASES: Final = (dict, list, tuple, str, bytes, int, float)


def _unsupported(x: object) -> _PathError:
    kind = type(x)
    name = f"{kind.__module__}.{kind.__qualname__}"
    # The supported list must not seem to include what is refused: say why instead.
    if isinstance(x, torch.Tensor):
        reason = (
            f"unsupported type {name}, a subclass of torch.Tensor (only plain torch.Tensor is "
            "supported: convert it with .as_subclass(torch.Tensor), or .detach())"
        )
    elif isinstance(x, np.ndarray):
        reason = (
            f"unsupported type {name}, a subclass of numpy.ndarray (only plain numpy.ndarray "
            "and numpy.memmap are supported: convert it with numpy.asarray)"
        )
    elif isinstance(x, np.generic) and x.dtype in _PLATFORM_DEPENDENT:
        reason = (
            f"unsupported type {name}: long double has a different size and layout on other "
            "platforms, so a stored value could not be read back there; convert it to "
            "numpy.float64 (or numpy.complex128)"
        )
    elif isinstance(x, np.generic):
        reason = (
            f"unsupported numpy scalar type {name} (supported numpy scalars: bool_, integers, "
            "floats, complex, datetime64, timedelta64, str_, bytes_)"
        )
    elif base := next((b for b in _PLAIN_BASES if isinstance(x, b)), None):
        reason = (
            f"unsupported type {name}, a subclass of {base.__name__} (only {base.__name__} "
            f"itself is stored, so that a sample decodes to what was put: convert it with "
            f"{base.__name__}(...))"
        )
    else:
        reason = f"unsupported type {name} ({_SUPPORTED})"
    return _PathError(TypeError, reason)


def _too_deep() -> _PathError:
    return _PathError(
        ValueError, f"nested more than {_MAX_DEPTH} containers deep (a self-referencing structure?)"
    )


# --------------------------------------------------------------------------- validation


_STR_KEY_TOKENS: dict[str, bytes] = {}


def _as_base(x: object) -> object:
    """``x`` as its exact base type if it subclasses ``str``, ``int`` or ``float``, else ``x``.

    For tomlkit's ``String``/``Integer``/``Float`` and ``StrEnum``/``IntEnum`` members; numpy
    scalars (``np.str_``, ``np.float64``) keep their own types and ``bool`` cannot be subclassed.
    """
    if isinstance(x, (np.generic, bool)):
        return x
    # The base classes' own conversions: a subclass may override __str__, __int__ or __float__.
    if isinstance(x, str):
        return str.__str__(x)
    if isinstance(x, int):
        return int.__index__(x)
    if isinstance(x, float):
        return float.__float__(x)
    return x


def _key_token(key: object) -> bytes:
    """Return the spec bytes of a dict key, refusing unsupported keys."""
    if type(key) is not str and type(key) is not int:
        key = _as_base(key)
    if type(key) is str:
        token = _STR_KEY_TOKENS.get(key)
        if token is None:
            raw = key.encode("utf-8", "surrogatepass")
            token = b"s" + _U32.pack(len(raw)) + raw
            if len(_STR_KEY_TOKENS) >= _CACHE_LIMIT:
                _STR_KEY_TOKENS.clear()
            _STR_KEY_TOKENS[key] = token
        return token
    if type(key) is int and -(2**63) <= key < 2**63:
        return b"i" + _I64.pack(key)
    raise _PathError(
        TypeError,
        f"dict key {key!r} of type {type(key).__qualname__} is not supported "
        "(keys must be str or int in the int64 range)",
    )


def _stored_dtype(dtype: np.dtype[Any], kinds: frozenset[str]) -> np.dtype[Any]:
    """Return the little-endian dtype values of ``dtype`` are stored as, refusing others."""
    if dtype.kind not in kinds or dtype in _PLATFORM_DEPENDENT or dtype.itemsize == 0:
        raise _PathError(TypeError, f"unsupported numpy dtype {dtype!s} ({_dtype_advice(dtype)})")
    return dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype


def _dtype_advice(dtype: np.dtype[Any]) -> str:
    if dtype in _PLATFORM_DEPENDENT:
        return "long double differs between platforms: convert to float64 or complex128"
    if dtype.hasobject:
        return "object arrays are not stored: nothing is pickled"
    if dtype.names is not None:
        return "structured arrays are not supported: store each field as its own array"
    if dtype.itemsize == 0:
        return "zero-sized dtypes are not supported"
    return "supported: bool, integers, floats, complex, datetime64, timedelta64, bytes, str"


def _spec_heads(
    tag: bytes, kinds: frozenset[str]
) -> Callable[[np.dtype[Any]], tuple[np.dtype[Any], bytes]]:
    """Return a cached lookup: dtype -> (stored dtype, spec bytes of a leaf with that dtype)."""
    cache: dict[np.dtype[Any], tuple[np.dtype[Any], bytes]] = {}

    def head(dtype: np.dtype[Any]) -> tuple[np.dtype[Any], bytes]:
        found = cache.get(dtype)
        if found is None:
            stored = _stored_dtype(dtype, kinds)
            found = (stored, tag + _short_token(stored.str))
            if len(cache) >= _CACHE_LIMIT:
                cache.clear()
            cache[dtype] = found
        return found

    return head


_array_head: Final = _spec_heads(b"a", _ARRAY_KINDS)
_scalar_head: Final = _spec_heads(b"g", _SCALAR_KINDS)


def _torch_type(t: torch.Tensor) -> _TorchType:
    """Return how a tensor is stored, refusing tensors that are not plain dense CPU data."""
    info = _TORCH_TYPES.get(t.dtype)
    if info is not None and t.layout is torch.strided and t.is_cpu and not t.is_nested:
        return info
    raise _PathError(
        TypeError,
        f"unsupported tensor (dtype {t.dtype}, layout {t.layout}, device {t.device}"
        f"{', nested' if t.is_nested else ''}); only dense CPU tensors of plain dtypes are",
    )


def _dense(t: torch.Tensor) -> torch.Tensor:
    """Return ``t`` without autograd history or lazy conjugate/negative bits (no copy if none)."""
    if t.requires_grad:
        t = t.detach()
    if t.is_conj() or t.is_neg():
        t = t.resolve_conj().resolve_neg()
    return t


# --------------------------------------------------------------------------- encode


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
    """

    __slots__ = ("_parts", "array_bytes", "size")

    def __init__(self, sample: object, *, name: str = "sample") -> None:
        self._parts, data_size, self.array_bytes = _layout(sample, name)
        self.size = data_size + _CHECKSUM.size

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


def seal(value: memoryview | bytearray) -> None:
    """Write the checksum into a value made by :meth:`Encoding.into` (its last eight bytes).

    Parameters
    ----------
    value : memoryview or bytearray
        The writable value; sealing it again is harmless.
    """
    limit = len(value) - _CHECKSUM.size
    _CHECKSUM.pack_into(value, limit, xxhash.xxh3_64_intdigest(memoryview(value)[:limit]))


def _joined(parts: list[_Data]) -> bytes:
    """The value made of ``parts``, sealed with their checksum."""
    hasher = xxhash.xxh3_64()
    for part in parts:
        hasher.update(part)
    return b"".join([*parts, _CHECKSUM.pack(hasher.intdigest())])


def _layout(sample: object, name: str) -> tuple[list[_Data], int, int]:
    """The parts of ``sample``'s value up to its checksum, their size, and the arrays' share."""
    spec: list[bytes] = []
    nums: list[Any] = []
    payloads: list[_Payload] = []
    try:
        _emit(sample, spec, nums, payloads, 0)
    except _PathError as exc:
        raise exc.located("encode", name) from None
    spec_bytes = b"".join(spec)
    plan = _plan(spec_bytes)
    parts: list[_Data] = [
        _PREFIX.pack(_MAGIC, FORMAT_VERSION, 0, len(spec_bytes)),
        spec_bytes,
        plan.table.pack(*nums),
    ]
    pos = plan.data_start
    array_bytes = 0
    for aligned, data, size in payloads:
        pad = -pos % _ALIGN if aligned else 0
        if pad:
            parts.append(_PADDING[:pad])
        parts.append(data)
        pos += pad + size
        if aligned:  # tensors and arrays: the other payloads are scalars, text and bytes
            array_bytes += size
    return parts, pos, array_bytes


_Emitter = Callable[[Any, list[bytes], list[Any], list[_Payload]], None]


def _emit(x: Any, spec: list[bytes], nums: list[Any], payloads: list[_Payload], depth: int) -> None:
    kind = type(x)
    emitter = _EMITTERS.get(kind)
    if emitter is None and kind is not dict and kind is not list and kind is not tuple:
        x = _as_base(x)
        emitter = _EMITTERS.get(type(x))
        if emitter is None:
            raise _unsupported(x)
    if emitter is not None:
        emitter(x, spec, nums, payloads)
        return
    if depth >= _MAX_DEPTH:
        raise _too_deep()
    is_dict = kind is dict
    spec.append(_CONTAINER_TAGS[kind] + _U32.pack(len(x)))
    for key, value in x.items() if is_dict else enumerate(x):
        if is_dict:
            spec.append(_key_token(key))
        try:
            # Leaves are dispatched here rather than by recursing: a call less per leaf.
            emitter = _EMITTERS.get(type(value))
            if emitter is None:
                _emit(value, spec, nums, payloads, depth + 1)
            else:
                emitter(value, spec, nums, payloads)
        except _PathError as exc:
            exc.path.append(f"[{key!r}]")
            raise


_CONTAINER_TAGS: Final[dict[type[Any], bytes]] = {dict: b"D", list: b"L", tuple: b"T"}


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
    stored, head = _scalar_head(x.dtype)
    spec.append(head)
    payloads.append((False, x.tobytes(), stored.itemsize))


def _emit_array(x: _Array, spec: list[bytes], nums: list[Any], payloads: list[_Payload]) -> None:
    stored, head = _array_head(x.dtype)
    if x.dtype.byteorder == ">" or not x.flags.c_contiguous:
        x = np.array(x, dtype=stored, order="C")
    _emit_buffer(head, x, spec, nums, payloads)


def _emit_tensor(
    x: torch.Tensor, spec: list[bytes], nums: list[Any], payloads: list[_Payload]
) -> None:
    info = _torch_type(x)
    # "r" keeps the flag; "t", all that values had before it existed, still means False.
    head = b"r" + info.head[1:] if x.requires_grad else info.head
    x = _dense(x).contiguous()
    data = (x if info.carrier is None else x.view(info.carrier)).numpy()
    _emit_buffer(head, data, spec, nums, payloads)


def _emit_buffer(
    head: bytes, data: _Array, spec: list[bytes], nums: list[Any], payloads: list[_Payload]
) -> None:
    spec.append(head + _NDIM_BYTES[data.ndim])
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
    **dict.fromkeys(_NUMPY_SCALAR_TYPES, _emit_numpy_scalar),
}


# --------------------------------------------------------------------------- decode

# Values at least this large are checked while they are copied: each array is hashed from its
# fresh copy, still in the CPU cache, instead of from the value (in RAM, or in LMDB's mapped
# page cache), so a large value is read from memory once rather than twice. Measured on 1 MiB
# values here: a decode 20-30 % faster. Smaller values fit the cache anyway and are checked
# first, in one call.
_FUSED_MIN: Final = 1 << 18
# A spec's decoder is generated when the spec comes up for its second decode: straight-line
# code is about twice as fast on small samples as interpreting the plan, but generating it
# costs about as much as ten decodes, which samples whose structure never repeats would pay
# in vain. Specs with more nodes than this stay interpreted: the code would grow with them.
_GENERATE_AT_USE: Final = 2
_GENERATE_MAX_NODES: Final = 256

# How a leaf with a payload is decoded (the ``kind`` of an :class:`_Op`):
_ARRAY: Final = 0  # nums[slot:slot + ndim] is the shape; data at the next multiple of _ALIGN
_SCALAR: Final = 1  # a numpy scalar: itemsize bytes of dtype
_BLOB: Final = 2  # nums[slot] bytes passed to convert


class _Op(NamedTuple):
    """How one leaf with a payload is decoded."""

    kind: int
    slot: int  # first table slot holding its shape or length
    ndim: int
    dtype: np.dtype[Any] | None
    itemsize: int
    # Applied to the copied array (None: keep the numpy array) or to the blob's bytes.
    convert: Callable[[Any], object] | None


_Maker = Callable[[list[object]], object]
# (value, limit, hasher) -> sample; the hasher, if any, is fed every byte before ``limit``.
_Builder = Callable[[Any, int, "xxhash.xxh3_64 | None"], object]


class _Plan:
    """What encoding and decoding need to know about one structure spec."""

    __slots__ = (
        "build",
        "data_start",
        "makers",
        "nodes",
        "ops",
        "root",
        "table",
        "table_start",
        "tree",
        "uses",
        "view_build",
    )

    def __init__(
        self,
        table: struct.Struct,
        table_start: int,
        ops: tuple[_Op, ...],
        tree: _Node,
        nodes: int,
    ) -> None:
        self.table = table
        self.table_start = table_start
        self.data_start = table_start + table.size
        self.ops = ops
        self.tree = tree
        self.nodes = nodes
        self.makers, self.root = _assemble(tree, len(table.format) - 1, len(ops))
        self.uses = 0
        # What decode() and view() call: interpreted until the spec has been used twice.
        self.build: _Builder = partial(self._count_and_interpret, True)
        self.view_build: _Builder = partial(self._count_and_interpret, False)

    def _count_and_interpret(
        self, copy: bool, value: Any, limit: int, hasher: xxhash.xxh3_64 | None
    ) -> object:
        self.uses += 1
        if self.uses >= _GENERATE_AT_USE and self.nodes <= _GENERATE_MAX_NODES:
            if copy:
                self.build = _generate(self, copy=True)
            else:
                self.view_build = _generate(self, copy=False)
        return _interpret(self, value, limit, hasher, copy)


_PLANS: dict[bytes, _Plan] = {}


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
    if size < _PREFIX.size + _CHECKSUM.size:
        raise CodecError(f"value of {size} bytes is too short")
    magic, version, flags, spec_len = _PREFIX.unpack_from(value)
    if magic != _MAGIC:
        raise CodecError("not a spillcache value (bad magic)")
    if version != FORMAT_VERSION:
        raise CodecError(f"value has format version {version}, this codec reads {FORMAT_VERSION}")
    limit = size - _CHECKSUM.size
    (checksum,) = _CHECKSUM.unpack_from(value, limit)
    hasher = None
    if limit >= _FUSED_MIN:
        hasher = xxhash.xxh3_64()
    elif xxhash.xxh3_64_intdigest(memoryview(value)[:limit]) != checksum:
        raise CodecError(_CHECKSUM_MISMATCH)
    if flags:
        raise CodecError(f"unknown flags {flags:#x}")
    spec_end = _PREFIX.size + spec_len
    if spec_end > limit:
        raise CodecError("structure spec runs past the end of the value")
    spec = bytes(value[_PREFIX.size : spec_end])
    plan = _PLANS.get(spec)
    known = plan is not None
    if plan is None:
        plan = _SpecCompiler(spec).compile()
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
        _remember(spec, plan)
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
    (_, _, _, spec_len) = _PREFIX.unpack_from(value)
    plan = _plan(bytes(value[_PREFIX.size : _PREFIX.size + spec_len]))
    return plan.view_build(value, len(value) - _CHECKSUM.size, None)


def _overrun() -> CodecError:
    return CodecError("data runs past the end of the value")


def _unexplained(count: int) -> CodecError:
    return CodecError(f"{count} unexplained bytes before the checksum")


def _flat_bytes(array: _Array) -> _Data:
    """A fresh C-ordered array's bytes as a buffer (datetime arrays export none themselves)."""
    return array.reshape(-1).view(np.uint8)


def _interpret(
    plan: _Plan, value: Any, limit: int, hasher: xxhash.xxh3_64 | None, copy: bool
) -> object:
    """Decode by walking the plan's ops and makers (see :func:`_generate` for the fast path).

    ``copy``: arrays are copies (:func:`decode`) or views of ``value`` (:func:`view`).
    """
    nums = plan.table.unpack_from(value, plan.table_start)
    vals: list[object] = [*nums, None]
    pos = plan.data_start
    hashed = 0
    for kind, slot, ndim, dtype, itemsize, convert in plan.ops:
        if kind == _ARRAY:
            pos += -pos % _ALIGN
            shape = nums[slot : slot + ndim]
            end = pos + math.prod(shape) * itemsize
            if end > limit:
                raise _overrun()
            array = np.ndarray(shape, dtype, value, pos)
            if copy:
                array = array.copy()
            if hasher is not None:
                hasher.update(value[hashed:pos])
                hasher.update(_flat_bytes(array))
                hashed = end
            vals.append(array if convert is None else convert(array))
        elif kind == _SCALAR:
            end = pos + itemsize
            if end > limit:
                raise _overrun()
            vals.append(np.ndarray((), dtype, value, pos)[()])
        else:
            assert convert is not None  # every blob op has one
            end = pos + nums[slot]
            if end > limit:
                raise _overrun()
            vals.append(convert(value[pos:end]))
        pos = end
    if pos != limit:
        raise _unexplained(limit - pos)
    if hasher is not None:
        hasher.update(value[hashed:limit])
    for make in plan.makers:
        vals.append(make(vals))
    return vals[plan.root]


def _generate(plan: _Plan, copy: bool) -> _Builder:
    """Generate the decoder of one spec: :func:`_interpret` unrolled into straight-line code.

    Only names chosen here and integers computed here enter the source. Dict keys, dtypes and
    converters are passed in as constants, so no byte of any value is ever parsed as code.
    """
    consts: dict[str, object] = {
        "unpack_from": plan.table.unpack_from,
        "ndarray": np.ndarray,
        "flat_bytes": _flat_bytes,
        "overrun": _overrun,
        "unexplained": _unexplained,
    }
    slots = len(plan.table.format) - 1
    lines = ["def build(value, limit, hasher):"]
    if slots:
        names = "".join(f"n{i}, " for i in range(slots))
        lines.append(f"    {names}= unpack_from(value, {plan.table_start})")
    lines += [f"    pos = {plan.data_start}", "    hashed = 0"]
    for index, (kind, slot, ndim, dtype, itemsize, convert) in enumerate(plan.ops):
        leaf = f"v{index}"
        if dtype is not None:
            consts[f"d{index}"] = dtype
        if convert is not None:
            consts[f"f{index}"] = convert
        if kind == _ARRAY:
            dims = [f"n{slot + d}" for d in range(ndim)]
            lines += [
                f"    pos += -pos % {_ALIGN}",
                f"    end = pos + {' * '.join([*dims, str(itemsize)])}",
                "    if end > limit:",
                "        raise overrun()",
                f"    {leaf} = ndarray(({''.join(d + ', ' for d in dims)}), d{index}, value, pos)"
                + (".copy()" if copy else ""),
                "    if hasher is not None:",
                "        hasher.update(value[hashed:pos])",
                f"        hasher.update(flat_bytes({leaf}))",
                "        hashed = end",
            ]
            if convert is not None:
                lines.append(f"    {leaf} = f{index}({leaf})")
        elif kind == _SCALAR:
            lines += [
                f"    end = pos + {itemsize}",
                "    if end > limit:",
                "        raise overrun()",
                f"    {leaf} = ndarray((), d{index}, value, pos)[()]",
            ]
        else:
            lines += [
                f"    end = pos + n{slot}",
                "    if end > limit:",
                "        raise overrun()",
                f"    {leaf} = f{index}(value[pos:end])",
            ]
        lines.append("    pos = end")
    lines += [
        "    if pos != limit:",
        "        raise unexplained(limit - pos)",
        "    if hasher is not None:",
        "        hasher.update(value[hashed:limit])",
    ]
    keys: list[object] = []
    containers = 0

    def expression(node: _Node) -> str:
        """Source of a node's value; a container is built into a variable of its own."""
        if node is None:
            return "None"
        if isinstance(node, int):
            return f"n{node}" if node >= 0 else f"v{~node}"
        tag, node_keys, children = node
        parts = [expression(child) for child in children]
        if node_keys is not None:
            names = []
            for key in node_keys:
                names.append(f"k{len(keys)}")
                keys.append(key)
            body = "{" + ", ".join(f"{k}: {p}" for k, p in zip(names, parts, strict=True)) + "}"
        elif tag == b"L":
            body = "[" + ", ".join(parts) + "]"
        else:
            body = "(" + "".join(f"{p}, " for p in parts) + ")"
        nonlocal containers
        name = f"c{containers}"
        containers += 1
        lines.append(f"    {name} = {body}")
        return name

    lines.append(f"    return {expression(plan.tree)}")
    consts.update((f"k{i}", key) for i, key in enumerate(keys))
    exec(compile("\n".join(lines), "<spillcache decoder>", "exec"), consts)
    return cast(_Builder, consts["build"])


def _plan(spec: bytes) -> _Plan:
    """Return the cached or newly compiled plan of a structure spec (one made by encode)."""
    plan = _PLANS.get(spec)
    if plan is None:
        plan = _SpecCompiler(spec).compile()
        _remember(spec, plan)
    return plan


def _remember(spec: bytes, plan: _Plan) -> None:
    if len(_PLANS) >= _CACHE_LIMIT:
        _PLANS.clear()
    _PLANS[spec] = plan


def _decode_str(raw: bytes | memoryview) -> str:
    return str(raw, "utf-8", "surrogatepass")


def _decode_int(raw: bytes | memoryview) -> int:
    return int.from_bytes(raw, "little", signed=True)


def _tensor_converter(
    view: torch.dtype | None, grad: bool = False
) -> Callable[[_Array], torch.Tensor]:
    """Turn a freshly copied array into a tensor, viewed as ``view`` if numpy lacks the dtype.

    ``grad``: the tensor requires grad (a leaf, as the tensor that was encoded is once detached).
    """
    if view is None and not grad:
        return torch.from_numpy
    dtype = view

    def converted_tensor(array: _Array) -> torch.Tensor:
        tensor = torch.from_numpy(array)
        if dtype is not None:
            tensor = tensor.view(dtype)
        return tensor.requires_grad_() if grad else tensor

    return converted_tensor


_BLOB_DECODERS: Final[dict[bytes, Callable[[Any], object]]] = {
    b"j": _decode_int,
    b"s": _decode_str,
    b"y": bytes,
    b"S": lambda raw: np.str_(_decode_str(raw)),
    b"Y": lambda raw: np.bytes_(bytes(raw)),
}
_TABLE_CODES: Final = {b"b": "?", b"i": "q", b"f": "d"}
_DTYPE_SPELLING: Final = re.compile(
    rb"[<|](?:[biufcSU][0-9]{1,9}|[mM]8(?:\[[0-9]{0,9}(?:[YMWDhms]|[mun]s|[pfa]s)\])?)"
)

# A spec node: a leaf's reference (table slot >= 0, payload op as ~index, None for None) or a
# container (tag, dict keys or None, children).
_Leaf = int | None
_Node = _Leaf | tuple[bytes, "tuple[object, ...] | None", "list[_Node]"]


class _SpecCompiler:
    """Parser of an untrusted structure spec into a :class:`_Plan`."""

    def __init__(self, spec: bytes) -> None:
        self.spec = spec
        self.pos = 0
        self.table: list[str] = ["<"]
        self.ops: list[_Op] = []
        self.nodes = 0

    def compile(self) -> _Plan:
        try:
            root = self.node(0)
            if self.pos != len(self.spec):
                raise CodecError("trailing bytes after the structure spec")
            table = struct.Struct("".join(self.table))
        except (ValueError, TypeError, OverflowError, struct.error) as exc:
            if isinstance(exc, CodecError):
                raise
            raise CodecError(f"invalid structure spec: {exc}") from exc
        return _Plan(table, _PREFIX.size + len(self.spec), tuple(self.ops), root, self.nodes)

    def take(self, count: int) -> bytes:
        end = self.pos + count
        if end > len(self.spec):
            raise CodecError("structure spec is truncated")
        raw = self.spec[self.pos : end]
        self.pos = end
        return raw

    def count(self) -> int:
        (count,) = _U32.unpack(self.take(4))
        # Each entry takes at least one spec byte, so this bounds what a count can allocate.
        if count > len(self.spec) - self.pos:
            raise CodecError("container count exceeds the structure spec")
        return cast(int, count)

    def slot(self, code: str) -> int:
        self.table.append(code)
        return len(self.table) - 2

    def op(self, op: _Op) -> int:
        self.ops.append(op)
        return ~(len(self.ops) - 1)

    def dtype(self, kinds: frozenset[str]) -> np.dtype[Any]:
        token = self.take(self.take(1)[0])
        # Only canonical spellings reach np.dtype: no structured, sub-array or big-endian dtypes.
        if _DTYPE_SPELLING.fullmatch(token) is None:
            raise CodecError(f"unsupported dtype {token!r}")
        dtype = np.dtype(token.decode("ascii"))
        if dtype.str.encode("ascii") != token:
            raise CodecError(f"non-canonical dtype {token!r}")
        try:
            return _stored_dtype(dtype, kinds)
        except _PathError as exc:
            raise CodecError(exc.reason) from None

    def ndim(self) -> int:
        ndim = self.take(1)[0]
        if ndim > _MAX_NDIM:
            raise CodecError(f"{ndim} dimensions")
        return ndim

    def node(self, depth: int) -> _Node:
        self.nodes += 1
        tag = self.take(1)
        if tag in _CONTAINER_TAGS.values():
            if depth >= _MAX_DEPTH:
                raise CodecError("structure nests too deep")
            count = self.count()
            keys: list[object] | None = [] if tag == b"D" else None
            children: list[_Node] = []
            for _ in range(count):
                if keys is not None:
                    keys.append(self.key())
                children.append(self.node(depth + 1))
            if keys is None:
                return (tag, None, children)
            if len(set(keys)) != count:
                raise CodecError("duplicate dict key in the structure spec")
            return (tag, tuple(keys), children)
        if tag == b"N":
            return None
        if tag in _TABLE_CODES:
            return self.slot(_TABLE_CODES[tag])
        if tag in _BLOB_DECODERS:
            return self.op(_Op(_BLOB, self.slot("Q"), 0, None, 1, _BLOB_DECODERS[tag]))
        if tag == b"g":
            dtype = self.dtype(_SCALAR_KINDS)
            return self.op(_Op(_SCALAR, 0, 0, dtype, dtype.itemsize, None))
        if tag == b"a":
            return self.op(self.array_op(self.dtype(_ARRAY_KINDS), None))
        if tag in (b"t", b"r"):
            info = _TORCH_BY_NAME.get(self.take(self.take(1)[0]))
            if info is None:
                raise CodecError("unknown torch dtype")
            grad = tag == b"r"
            if grad and not (info.dtype.is_floating_point or info.dtype.is_complex):
                raise CodecError(f"a {info.dtype} tensor cannot require grad")
            convert = _tensor_converter(None if info.carrier is None else info.dtype, grad)
            return self.op(self.array_op(info.numpy_dtype, convert))
        raise CodecError(f"unknown tag {tag!r} in the structure spec")

    def array_op(self, dtype: np.dtype[Any], convert: Callable[[_Array], object] | None) -> _Op:
        ndim = self.ndim()
        first = len(self.table) - 1
        self.table.extend("Q" * ndim)
        return _Op(_ARRAY, first, ndim, dtype, dtype.itemsize, convert)

    def key(self) -> object:
        tag = self.take(1)
        if tag == b"s":
            (length,) = _U32.unpack(self.take(4))
            return _decode_str(self.take(length))
        if tag == b"i":
            return _I64.unpack(self.take(8))[0]
        raise CodecError(f"unknown dict key tag {tag!r}")


def _assemble(root: _Node, n_slots: int, n_ops: int) -> tuple[tuple[_Maker, ...], int]:
    """Return the container makers in build order and the index of the sample in vals."""
    # vals holds the table slots, None, the payload leaves, then the containers.
    n_leaves = n_slots + 1 + n_ops
    makers: list[_Maker] = []

    def place(node: _Node) -> int:
        if node is None:
            return n_slots
        if isinstance(node, int):
            return node if node >= 0 else n_slots + 1 + ~node
        tag, keys, children = node
        makers.append(_maker(tag, keys, [place(child) for child in children]))
        return n_leaves + len(makers) - 1

    root_index = place(root)
    return tuple(makers), root_index


def _maker(tag: bytes, keys: tuple[object, ...] | None, indices: list[int]) -> _Maker:
    """Return a function building one container from the values at ``indices`` in vals."""
    # Measured on CPython 3.11: a plain loop builds a small dict about twice as fast as
    # dict(zip(...)) or a comprehension; itemgetter is the fastest gather for sequences.
    if keys is not None:
        pairs = tuple(zip(keys, indices, strict=True))

        def make_dict(vals: list[object]) -> object:
            built = {}
            for key, index in pairs:
                built[key] = vals[index]
            return built

        return make_dict
    if len(indices) >= 2:
        gather: Callable[[list[object]], Sequence[object]] = itemgetter(*indices)
    else:
        picks = slice(indices[0], indices[0] + 1) if indices else slice(0, 0)

        def gather(vals: list[object]) -> Sequence[object]:
            return vals[picks]

    def make_list(vals: list[object]) -> object:
        return list(gather(vals))

    def make_tuple(vals: list[object]) -> object:
        return tuple(gather(vals))

    return make_list if tag == b"L" else make_tuple


# --------------------------------------------------------------------------- clone, digest


def clone(sample: _T) -> _T:
    """Deep-copy a sample as the RAM tier keeps it.

    Containers are rebuilt, every tensor and array is copied once (contiguous, writable,
    detached, native byte order, as :func:`decode` would return it; a tensor that requires grad
    becomes a leaf that requires grad) and immutable leaves are shared.

    Parameters
    ----------
    sample : object
        Nested dict/list/tuple of supported leaves.

    Returns
    -------
    object
        The copy, of the same type as ``sample``.

    Raises
    ------
    TypeError, ValueError
        As :func:`encode` does for the same sample.
    """
    try:
        return cast(_T, _clone(sample, 0))
    except _PathError as exc:
        raise exc.located("clone") from None


def _clone(x: Any, depth: int) -> Any:
    kind = type(x)
    copier = _COPIERS.get(kind)
    if copier is None and kind is not dict and kind is not list and kind is not tuple:
        x = _as_base(x)
        copier = _COPIERS.get(type(x))
        if copier is None:
            raise _unsupported(x)
    if copier is not None:
        return copier(x)
    if depth >= _MAX_DEPTH:
        raise _too_deep()
    is_dict = kind is dict
    # Lists and tuples are gathered by index too: one loop for all three container types.
    copies = {}
    for key, value in x.items() if is_dict else enumerate(x):
        if is_dict:
            _key_token(key)
            if type(key) is not str and type(key) is not int:
                key = _as_base(key)  # noqa: PLW2901 (the copy's key is of the base type)
        if type(value) in _IMMUTABLE:
            copies[key] = value
            continue
        try:
            copies[key] = _clone(value, depth + 1)
        except _PathError as exc:
            exc.path.append(f"[{key!r}]")
            raise
    if is_dict:
        return copies
    return list(copies.values()) if kind is list else tuple(copies.values())


def _copy_tensor(t: torch.Tensor) -> torch.Tensor:
    _torch_type(t)
    copied = _copy_plain_tensor(_dense(t))
    return copied.requires_grad_() if t.requires_grad else copied


# torch copies tensors of this many elements or more with its intra-op thread pool
# (at::internal::GRAIN_SIZE), whose barrier stalls for milliseconds when the cores are busy
# (DataLoader workers, other jobs): on 2 busy cores, copies of 64 Ki floats took 10 us at the
# median but 20 ms at p99. numpy copies them in the calling thread; smaller tensors are
# cloned, which is faster than a round trip through numpy (1.8 against 2.8 us for 4 KiB).
_PARALLEL_NUMEL: Final = 32768


def _copy_plain_tensor(t: torch.Tensor) -> torch.Tensor:
    """Copy a dense, detached CPU tensor of a supported dtype into fresh C-ordered memory."""
    if t.numel() < _PARALLEL_NUMEL:
        # Faster than clone(memory_format=torch.contiguous_format), which does the same.
        return t.clone() if t.is_contiguous() else t.contiguous()
    carrier = _TORCH_TYPES[t.dtype].carrier
    if carrier is None:
        return torch.from_numpy(t.numpy().copy())
    return torch.from_numpy(t.view(carrier).numpy().copy()).view(t.dtype)


def _copy_array(a: _Array) -> _Array:
    stored, _ = _array_head(a.dtype)
    if a.dtype.byteorder == ">" or isinstance(a, np.memmap):
        return a.astype(stored, order="C", subok=False)
    copied: _Array = a.copy()  # C order; twice as fast as astype or np.copy
    return copied


def _share(x: object) -> object:
    return x


_COPIERS: Final[dict[type[Any], Callable[[Any], object]]] = {
    torch.Tensor: _copy_tensor,
    np.ndarray: _copy_array,
    np.memmap: _copy_array,
    **dict.fromkeys(_IMMUTABLE, _share),
}


def replicate(sample: _T) -> _T:
    """Copy a sample that :func:`decode` or :func:`clone` returned, without checking it again.

    The RAM tier's copy on every hit: :func:`clone` validates and normalizes arbitrary user
    samples, work that samples made by this module do not need.

    Parameters
    ----------
    sample : object
        A sample returned by :func:`decode` or :func:`clone` (or a copy made by this function).

    Returns
    -------
    object
        The copy: containers rebuilt, every tensor and array copied, immutable leaves shared.
    """
    return cast(_T, _replicate(sample))


def _replicate(x: Any) -> Any:
    kind = type(x)
    if kind is dict:
        # Immutable leaves are shared without a call: most keys of a sample hold one.
        return {k: v if type(v) in _IMMUTABLE else _replicate(v) for k, v in x.items()}
    if kind is torch.Tensor:
        if x.requires_grad:  # a clone would be a non-leaf with the original in its history
            return _copy_plain_tensor(x.detach()).requires_grad_()
        # Samples made here are contiguous: clone() keeps them so.
        return x.clone() if x.numel() < _PARALLEL_NUMEL else _copy_plain_tensor(x)
    if kind is np.ndarray:
        return x.copy()
    if kind is list:
        return [v if type(v) in _IMMUTABLE else _replicate(v) for v in x]
    if kind is tuple:
        return tuple([v if type(v) in _IMMUTABLE else _replicate(v) for v in x])
    return x


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
