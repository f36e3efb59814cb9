"""What a sample may hold: supported types and dtypes, and errors that name the path to a part.

Shared by the encoder (which refuses what it cannot store) and :func:`~spillcache.codec.clone`
(which refuses the same); the spec compiler checks stored dtypes with the same rules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, NamedTuple

import numpy as np
import torch
from numpy.typing import NDArray

from .format import CACHE_LIMIT, I64, MAX_DEPTH, MAX_NDIM, U32

__all__ = [
    "ARRAY_KINDS",
    "IMMUTABLE",
    "NDIM_BYTES",
    "NUMPY_SCALAR_TYPES",
    "SCALAR_KINDS",
    "TORCH_BY_NAME",
    "TORCH_TYPES",
    "Array",
    "Data",
    "PathError",
    "array_head",
    "as_base",
    "dense",
    "key_token",
    "scalar_head",
    "stored_dtype",
    "too_deep",
    "torch_type",
    "unsupported",
]

Array = NDArray[Any]
# bytes or a C-contiguous array: both export their bytes, but numpy's stubs only declare the
# buffer protocol from Python 3.12 on.
Data = Any

# numpy dtype kinds stored as arrays and scalars: bool, ints, floats, complex, datetimes, and
# (arrays only) fixed-width bytes and unicode. long double is excluded: its size and layout
# differ between platforms, so a stored value could not be read back elsewhere.
ARRAY_KINDS: Final = frozenset("biufcmMSU")
SCALAR_KINDS: Final = frozenset("biufcmM")
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


TORCH_TYPES: Final = _torch_types()
TORCH_BY_NAME: Final = {info.head[2:]: info for info in TORCH_TYPES.values()}
NDIM_BYTES: Final = tuple(bytes((ndim,)) for ndim in range(MAX_NDIM + 1))
NUMPY_SCALAR_TYPES: Final = frozenset(np.dtype(code).type for code in "?bBhHiIlLqQefdFDmM")
IMMUTABLE: Final = frozenset(
    {type(None), bool, int, float, str, bytes, np.str_, np.bytes_, *NUMPY_SCALAR_TYPES}
)


class PathError(Exception):
    """An unsupported part of a sample; the path to it is collected while unwinding."""

    def __init__(self, kind: type[Exception], reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.path: list[str] = []  # innermost first

    def located(self, action: str, name: str = "sample") -> Exception:
        """The error to raise: ``cannot <action> <name>[path]: <reason>``."""
        where = name + "".join(reversed(self.path))
        return self.kind(f"cannot {action} {where}: {self.reason}")


_SUPPORTED: Final = (
    "supported: dict with str/int keys, list, tuple, torch.Tensor, numpy.ndarray, numpy scalars "
    "(not long double), int, float, bool, str, bytes, None"
)
# Containers and leaves stored only as exactly these types.
_PLAIN_BASES: Final = (dict, list, tuple, str, bytes, int, float)


def unsupported(x: object) -> PathError:
    """The error for a part of a sample of an unsupported type, saying what to convert it to."""
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
    return PathError(TypeError, reason)


def too_deep() -> PathError:
    """The error for containers nested more than :data:`MAX_DEPTH` deep."""
    return PathError(
        ValueError, f"nested more than {MAX_DEPTH} containers deep (a self-referencing structure?)"
    )


# --------------------------------------------------------------------------- validation


_STR_KEY_TOKENS: dict[str, bytes] = {}


def as_base(x: object) -> object:
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


def key_token(key: object) -> bytes:
    """Return the spec bytes of a dict key, refusing unsupported keys."""
    if type(key) is not str and type(key) is not int:
        key = as_base(key)
    if type(key) is str:
        token = _STR_KEY_TOKENS.get(key)
        if token is None:
            raw = key.encode("utf-8", "surrogatepass")
            token = b"s" + U32.pack(len(raw)) + raw
            if len(_STR_KEY_TOKENS) >= CACHE_LIMIT:
                _STR_KEY_TOKENS.clear()
            _STR_KEY_TOKENS[key] = token
        return token
    if type(key) is int and -(2**63) <= key < 2**63:
        return b"i" + I64.pack(key)
    raise PathError(
        TypeError,
        f"dict key {key!r} of type {type(key).__qualname__} is not supported "
        "(keys must be str or int in the int64 range)",
    )


def stored_dtype(dtype: np.dtype[Any], kinds: frozenset[str]) -> np.dtype[Any]:
    """Return the little-endian dtype values of ``dtype`` are stored as, refusing others."""
    if dtype.kind not in kinds or dtype in _PLATFORM_DEPENDENT or dtype.itemsize == 0:
        raise PathError(TypeError, f"unsupported numpy dtype {dtype!s} ({_dtype_advice(dtype)})")
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
            stored = stored_dtype(dtype, kinds)
            found = (stored, tag + _short_token(stored.str))
            if len(cache) >= CACHE_LIMIT:
                cache.clear()
            cache[dtype] = found
        return found

    return head


array_head: Final = _spec_heads(b"a", ARRAY_KINDS)
scalar_head: Final = _spec_heads(b"g", SCALAR_KINDS)


def torch_type(t: torch.Tensor) -> _TorchType:
    """Return how a tensor is stored, refusing tensors that are not plain dense CPU data."""
    info = TORCH_TYPES.get(t.dtype)
    if info is not None and t.layout is torch.strided and t.is_cpu and not t.is_nested:
        return info
    raise PathError(
        TypeError,
        f"unsupported tensor (dtype {t.dtype}, layout {t.layout}, device {t.device}"
        f"{', nested' if t.is_nested else ''}); only dense CPU tensors of plain dtypes are",
    )


def dense(t: torch.Tensor) -> torch.Tensor:
    """Return ``t`` without autograd history or lazy conjugate/negative bits (no copy if none)."""
    if t.requires_grad:
        t = t.detach()
    if t.is_conj() or t.is_neg():
        t = t.resolve_conj().resolve_neg()
    return t
