"""The spec compiler: untrusted structure specs parsed into plans, kept in a bounded cache.

Every tag, count, length and dtype of a spec is checked against the spec's size before it is
used, so a hostile spec cannot make the compiler allocate much more than its own size.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from typing import Any, Final, cast

import numpy as np
import torch

from spillcache.errors import CodecError

from .builders import ARRAY, BLOB, SCALAR, Op, decode_int, decode_str
from .format import ALIGN, CACHE_LIMIT, CONTAINER_TAGS, I64, MAX_DEPTH, MAX_NDIM, PREFIX, U32
from .plan import Node, Plan
from .rules import ARRAY_KINDS, SCALAR_KINDS, TORCH_BY_NAME, Array, PathError, stored_dtype

__all__ = ["PLANS", "SpecCompiler", "plan_of", "remember"]

PLANS: dict[bytes, Plan] = {}


def plan_of(spec: bytes) -> Plan:
    """Return the cached or newly compiled plan of a structure spec (one made by encode)."""
    plan = PLANS.get(spec)
    if plan is None:
        plan = SpecCompiler(spec).compile()
        remember(spec, plan)
    return plan


def remember(spec: bytes, plan: Plan) -> None:
    """Keep ``plan`` as the plan of ``spec`` (the cache is emptied when full)."""
    if len(PLANS) >= CACHE_LIMIT:
        PLANS.clear()
    PLANS[spec] = plan


def _tensor_converter(
    view: torch.dtype | None, grad: bool = False
) -> Callable[[Array], torch.Tensor]:
    """Turn a freshly copied array into a tensor, viewed as ``view`` if numpy lacks the dtype.

    ``grad``: the tensor requires grad (a leaf, as the tensor that was encoded is once detached).
    """
    if view is None and not grad:
        return torch.from_numpy
    dtype = view

    def converted_tensor(array: Array) -> torch.Tensor:
        tensor = torch.from_numpy(array)
        if dtype is not None:
            tensor = tensor.view(dtype)
        return tensor.requires_grad_() if grad else tensor

    return converted_tensor


_BLOB_DECODERS: Final[dict[bytes, Callable[[Any], object]]] = {
    b"j": decode_int,
    b"s": decode_str,
    b"y": bytes,
    b"S": lambda raw: np.str_(decode_str(raw)),
    b"Y": lambda raw: np.bytes_(bytes(raw)),
}
_TABLE_CODES: Final = {b"b": "?", b"i": "q", b"f": "d"}
_DTYPE_SPELLING: Final = re.compile(
    rb"[<|](?:[biufcSU][0-9]{1,9}|[mM]8(?:\[[0-9]{0,9}(?:[YMWDhms]|[mun]s|[pfa]s)\])?)"
)

# A spec node: a leaf's reference (table slot >= 0, payload op as ~index, None for None) or a
# container (tag, dict keys or None, children).


class SpecCompiler:
    """Parser of an untrusted structure spec into a :class:`Plan`.

    ``lengths`` is the struct code of the table's shapes and blob lengths: ``"Q"`` in a value,
    ``"I"`` in a pack's record, which is smaller than 4 GiB (4 bytes saved per dimension).
    """

    def __init__(self, spec: bytes, lengths: str = "Q") -> None:
        self.spec = spec
        self.lengths = lengths
        self.pos = 0
        self.table: list[str] = ["<"]
        self.ops: list[Op] = []
        self.nodes = 0

    def compile(self, table_start: int | None = None, align: int = ALIGN) -> Plan:
        """Parse the whole spec into its plan; raises CodecError for any invalid spec.

        ``table_start`` and ``align``: where the table starts and what arrays' payloads are
        aligned to (by default as in a value; a pack's record has its own, see ``records``).
        """
        try:
            root = self._node(0)
            if self.pos != len(self.spec):
                raise CodecError("trailing bytes after the structure spec")
            table = struct.Struct("".join(self.table))
        except (ValueError, TypeError, OverflowError, struct.error) as exc:
            if isinstance(exc, CodecError):
                raise
            raise CodecError(f"invalid structure spec: {exc}") from exc
        start = PREFIX.size + len(self.spec) if table_start is None else table_start
        plan = Plan(table, start, tuple(self.ops), root, self.nodes)
        plan.align = align
        return plan

    def _take(self, count: int) -> bytes:
        end = self.pos + count
        if end > len(self.spec):
            raise CodecError("structure spec is truncated")
        raw = self.spec[self.pos : end]
        self.pos = end
        return raw

    def _count(self) -> int:
        (count,) = U32.unpack(self._take(4))
        # Each entry takes at least one spec byte, so this bounds what a count can allocate.
        if count > len(self.spec) - self.pos:
            raise CodecError("container count exceeds the structure spec")
        return cast(int, count)

    def _slot(self, code: str) -> int:
        self.table.append(code)
        return len(self.table) - 2

    def _op(self, op: Op) -> int:
        self.ops.append(op)
        return ~(len(self.ops) - 1)

    def _dtype(self, kinds: frozenset[str]) -> np.dtype[Any]:
        token = self._take(self._take(1)[0])
        # Only canonical spellings reach np.dtype: no structured, sub-array or big-endian dtypes.
        if _DTYPE_SPELLING.fullmatch(token) is None:
            raise CodecError(f"unsupported dtype {token!r}")
        dtype = np.dtype(token.decode("ascii"))
        if dtype.str.encode("ascii") != token:
            raise CodecError(f"non-canonical dtype {token!r}")
        try:
            return stored_dtype(dtype, kinds)
        except PathError as exc:
            raise CodecError(exc.reason) from None

    def _ndim(self) -> int:
        ndim = self._take(1)[0]
        if ndim > MAX_NDIM:
            raise CodecError(f"{ndim} dimensions")
        return ndim

    def _node(self, depth: int) -> Node:
        self.nodes += 1
        tag = self._take(1)
        if tag in CONTAINER_TAGS.values():
            return self._container(tag, depth)
        if tag == b"N":
            return None
        if tag in _TABLE_CODES:
            return self._slot(_TABLE_CODES[tag])
        if tag in _BLOB_DECODERS:
            return self._op(Op(BLOB, self._slot(self.lengths), 0, None, 1, _BLOB_DECODERS[tag]))
        if tag == b"g":
            dtype = self._dtype(SCALAR_KINDS)
            return self._op(Op(SCALAR, 0, 0, dtype, dtype.itemsize, None))
        if tag == b"a":
            return self._op(self._array_op(self._dtype(ARRAY_KINDS), None))
        if tag in (b"t", b"r"):
            return self._op(self._tensor_op(grad=tag == b"r"))
        raise CodecError(f"unknown tag {tag!r} in the structure spec")

    def _container(self, tag: bytes, depth: int) -> Node:
        if depth >= MAX_DEPTH:
            raise CodecError("structure nests too deep")
        count = self._count()
        keys: list[object] | None = [] if tag == b"D" else None
        children: list[Node] = []
        for _ in range(count):
            if keys is not None:
                keys.append(self._key())
            children.append(self._node(depth + 1))
        if keys is None:
            return (tag, None, children)
        if len(set(keys)) != count:
            raise CodecError("duplicate dict key in the structure spec")
        return (tag, tuple(keys), children)

    def _tensor_op(self, *, grad: bool) -> Op:
        info = TORCH_BY_NAME.get(self._take(self._take(1)[0]))
        if info is None:
            raise CodecError("unknown torch dtype")
        if grad and not (info.dtype.is_floating_point or info.dtype.is_complex):
            raise CodecError(f"a {info.dtype} tensor cannot require grad")
        convert = _tensor_converter(None if info.carrier is None else info.dtype, grad)
        return self._array_op(info.numpy_dtype, convert)

    def _array_op(self, dtype: np.dtype[Any], convert: Callable[[Array], object] | None) -> Op:
        ndim = self._ndim()
        first = len(self.table) - 1
        self.table.extend(self.lengths * ndim)
        return Op(ARRAY, first, ndim, dtype, dtype.itemsize, convert)

    def _key(self) -> object:
        tag = self._take(1)
        if tag == b"s":
            (length,) = U32.unpack(self._take(4))
            return decode_str(self._take(length))
        if tag == b"i":
            return I64.unpack(self._take(8))[0]
        raise CodecError(f"unknown dict key tag {tag!r}")
