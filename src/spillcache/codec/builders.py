"""Decoders of one plan: the interpreter, and straight-line code generated per spec.

A builder turns a value's bytes into the sample, walking the plan's ops (:func:`interpret`) or
running code generated from them (:func:`generate`); both check every payload's end against the
value's size before touching its bytes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, NamedTuple, cast

import numpy as np
import xxhash

from spillcache.errors import CodecError

from .rules import Array, Data

if TYPE_CHECKING:
    from .plan import Node, Plan

__all__ = [
    "ARRAY",
    "BLOB",
    "COPY",
    "SCALAR",
    "SIZED",
    "VIEW",
    "Builder",
    "Op",
    "decode_int",
    "decode_str",
    "generate",
    "interpret",
]

# How a leaf with a payload is decoded (the ``kind`` of an :class:`Op`):
ARRAY: Final = 0  # nums[slot:slot + ndim] is the shape; data at a multiple of plan.align
SCALAR: Final = 1  # a numpy scalar: itemsize bytes of dtype
BLOB: Final = 2  # nums[slot] bytes passed to convert


class Op(NamedTuple):
    """How one leaf with a payload is decoded."""

    kind: int
    slot: int  # first table slot holding its shape or length
    ndim: int
    dtype: np.dtype[Any] | None
    itemsize: int
    # Applied to the copied array (None: keep the numpy array) or to the blob's bytes.
    convert: Callable[[Any], object] | None


# (value, limit, hasher) -> the sample (a Decoded in SIZED mode); the hasher, if any, is fed
# every byte before ``limit``.
Builder = Callable[[Any, int, "xxhash.xxh3_64 | None"], Any]

# What a builder makes: the sample with copies of the payloads (decode), with views of them
# (view), or a Decoded with copies (decode_sized: the plan sizes and copies it from the table's
# numbers and the leaves, so its containers are built as the interpreter builds them).
COPY: Final = 0
VIEW: Final = 1
SIZED: Final = 2


def decode_str(raw: bytes | memoryview) -> str:
    """Decode the UTF-8 of a stored str (lone surrogates were kept with ``surrogatepass``)."""
    return str(raw, "utf-8", "surrogatepass")


def decode_int(raw: bytes | memoryview) -> int:
    """Decode a stored int outside the int64 range (two's complement, little-endian)."""
    return int.from_bytes(raw, "little", signed=True)


def _overrun() -> CodecError:
    return CodecError("data runs past the end of the value")


def _short_table() -> CodecError:
    return CodecError("table runs past the end of the value")


def _unexplained(count: int) -> CodecError:
    return CodecError(f"{count} unexplained bytes before the checksum")


def _flat_bytes(array: Array) -> Data:
    """A fresh C-ordered array's bytes as a buffer (datetime arrays export none themselves)."""
    return array.reshape(-1).view(np.uint8)


def interpret(plan: Plan, value: Any, limit: int, hasher: xxhash.xxh3_64 | None, mode: int) -> Any:
    """Decode by walking the plan's ops and makers (see :func:`generate` for the fast path)."""
    nums, leaves = _read(plan, value, limit, hasher=hasher, copy=mode != VIEW)
    vals: list[object] = [*nums, None, *leaves]
    for make in plan.makers:
        vals.append(make(vals))
    if mode == SIZED:
        return plan.decoded(vals[plan.root], nums, leaves)
    return vals[plan.root]


def _read(
    plan: Plan, value: Any, limit: int, *, hasher: xxhash.xxh3_64 | None, copy: bool
) -> tuple[tuple[Any, ...], list[object]]:
    """The table's numbers and the leaves with payloads of ``value``, up to ``limit``."""
    pos = plan.data_start
    align = plan.align
    if pos > limit:
        raise _short_table()
    nums = plan.table.unpack_from(value, plan.table_start)
    hashed = 0
    leaves: list[object] = []
    for kind, slot, ndim, dtype, itemsize, convert in plan.ops:
        if kind == ARRAY:
            pos += -pos % align
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
            leaves.append(array if convert is None else convert(array))
        else:
            end = pos + (itemsize if kind == SCALAR else nums[slot])
            if end > limit:
                raise _overrun()
            leaves.append(_small_leaf(kind, dtype, convert, value, (pos, end)))
        pos = end
    if pos != limit:
        raise _unexplained(limit - pos)
    if hasher is not None:
        hasher.update(value[hashed:limit])
    return nums, leaves


def _small_leaf(
    kind: int,
    dtype: np.dtype[Any] | None,
    convert: Callable[[Any], object] | None,
    value: Any,
    span: tuple[int, int],
) -> object:
    """A numpy scalar or a blob's object, from the bytes ``span`` (start, end) of ``value``."""
    pos, end = span
    if kind == SCALAR:
        return np.ndarray((), dtype, value, pos)[()]
    assert convert is not None  # every blob op has one
    return convert(value[pos:end])


def generate(plan: Plan, mode: int) -> Builder:
    """Generate the decoder of one spec: :func:`interpret` unrolled into straight-line code.

    Only names chosen here and integers computed here enter the source. Dict keys, dtypes and
    converters are passed in as constants, so no byte of any value is ever parsed as code.
    """
    consts: dict[str, object] = {
        "unpack_from": plan.table.unpack_from,
        "ndarray": np.ndarray,
        "flat_bytes": _flat_bytes,
        "overrun": _overrun,
        "unexplained": _unexplained,
        "short_table": _short_table,
        "decoded": plan.decoded,
    }
    slots = len(plan.table.format) - 1
    lines = [
        "def build(value, limit, hasher):",
        f"    if limit < {plan.data_start}:",
        "        raise short_table()",
    ]
    names = "".join(f"n{i}, " for i in range(slots))
    if mode == SIZED:
        lines.append(f"    nums = unpack_from(value, {plan.table_start})")
        if slots:
            lines.append(f"    {names}= nums")
    elif slots:
        lines.append(f"    {names}= unpack_from(value, {plan.table_start})")
    lines += [f"    pos = {plan.data_start}", "    hashed = 0"]
    for index, op in enumerate(plan.ops):
        lines += _leaf_lines(index, op, mode != VIEW, consts, plan.align)
        lines.append("    pos = end")
    lines += [
        "    if pos != limit:",
        "        raise unexplained(limit - pos)",
        "    if hasher is not None:",
        "        hasher.update(value[hashed:limit])",
    ]
    root = _container_lines(plan.tree, lines, consts, inserted=mode == SIZED)
    if mode == SIZED:
        leaves = "".join(f"v{index}, " for index in range(len(plan.ops)))
        lines.append(f"    return decoded({root}, nums, ({leaves}))")
    else:
        lines.append(f"    return {root}")
    exec(compile("\n".join(lines), "<spillcache decoder>", "exec"), consts)
    return cast(Builder, consts["build"])


def _leaf_lines(index: int, op: Op, copy: bool, consts: dict[str, object], align: int) -> list[str]:
    """Source reading the leaf of ``op`` into ``v<index>`` and setting ``end`` past its payload."""
    kind, slot, ndim, dtype, itemsize, convert = op
    leaf = f"v{index}"
    if dtype is not None:
        consts[f"d{index}"] = dtype
    if convert is not None:
        consts[f"f{index}"] = convert
    check = ["    if end > limit:", "        raise overrun()"]
    if kind == SCALAR:
        return [
            f"    end = pos + {itemsize}",
            *check,
            f"    {leaf} = ndarray((), d{index}, value, pos)[()]",
        ]
    if kind == BLOB:
        return [f"    end = pos + n{slot}", *check, f"    {leaf} = f{index}(value[pos:end])"]
    dims = [f"n{slot + d}" for d in range(ndim)]
    lines = [
        f"    pos += -pos % {align}",
        f"    end = pos + {' * '.join([*dims, str(itemsize)])}",
        *check,
        f"    {leaf} = ndarray(({''.join(d + ', ' for d in dims)}), d{index}, value, pos)"
        + (".copy()" if copy else ""),
        "    if hasher is not None:",
        "        hasher.update(value[hashed:pos])",
        f"        hasher.update(flat_bytes({leaf}))",
        "        hashed = end",
    ]
    if convert is not None:
        lines.append(f"    {leaf} = f{index}({leaf})")
    return lines


def _container_lines(
    tree: Node, lines: list[str], consts: dict[str, object], *, inserted: bool
) -> str:
    """Append the source building the containers of ``tree``; return the root's expression.

    ``inserted``: containers are made as the interpreter's makers make them, so that they take
    the same memory: dicts filled key by key and lists made from tuples (a display presizes
    them differently), tuples made from lists (a display of constants is one shared object).
    """
    keys: list[object] = []
    containers = 0

    def expression(node: Node) -> str:
        """Source of a node's value; a container is built into a variable of its own."""
        if node is None:
            return "None"
        if isinstance(node, int):
            return f"n{node}" if node >= 0 else f"v{~node}"
        tag, node_keys, children = node
        parts = [expression(child) for child in children]
        nonlocal containers
        name = f"c{containers}"
        containers += 1
        if node_keys is not None:
            names = [f"k{len(keys) + i}" for i in range(len(node_keys))]
            keys.extend(node_keys)
            lines.extend(_dict_lines(name, names, parts, inserted=inserted))
        elif tag == b"L":
            items = "".join(f"{p}, " for p in parts)
            lines.append(f"    {name} = list(({items}))" if inserted else f"    {name} = [{items}]")
        elif inserted:  # a tuple of constants in a display would be one shared object
            lines.append(f"    {name} = tuple([{''.join(f'{p}, ' for p in parts)}])")
        else:
            lines.append(f"    {name} = ({''.join(f'{p}, ' for p in parts)})")
        return name

    root = expression(tree)
    consts.update((f"k{i}", key) for i, key in enumerate(keys))
    return root


def _dict_lines(name: str, keys: list[str], parts: list[str], *, inserted: bool) -> list[str]:
    pairs = list(zip(keys, parts, strict=True))
    if not inserted:
        return [f"    {name} = {{{', '.join(f'{k}: {p}' for k, p in pairs)}}}"]
    return [f"    {name} = {{}}", *(f"    {name}[{k}] = {p}" for k, p in pairs)]
