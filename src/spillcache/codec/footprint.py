"""The memory a decoded sample keeps alive, computed from its plan instead of a walk.

:func:`~spillcache.footprint.sample_nbytes` walks any sample and asks every object its size; a
sample :func:`~spillcache.codec.decode` just built has a known structure, so its plan can say
the same number from the table's numbers (shapes, ints) and the few leaves whose size depends
on their content (str, bytes, big ints). :class:`Footprint` applies the footprint model
rule by rule, so the two agree exactly (tests/test_codec_footprint.py checks them against each
other over many samples): the RAM tier's accounting must not depend on which one measured.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import torch

# The RAM footprint model (spillcache.footprint), rule by rule (docs/design.rst,
# "Decoding for the RAM tier").
from ..footprint import (
    DICT_OBJECT,
    FLOAT_NBYTES,
    FOREIGN_OWNER,
    INLINE_DIMS,
    INT_NBYTES,
    INT_WORD,
    LIST_OBJECT,
    NDARRAY_DIMS,
    NDARRAY_OBJECT,
    SHARED_REFCOUNT,
    STORAGE_OBJECT,
    STORAGE_PYOBJECT,
    TENSOR_OBJECT,
    VIEW_RECORD,
    alloc,
    malloc,
    split_alloc,
)
from .builders import ARRAY, SCALAR, Op, decode_int, decode_str
from .copying import replicate_built

if TYPE_CHECKING:
    from .plan import Node, Plan

__all__ = ["Decoded", "Footprint"]

# A leaf whose size depends on its content: op index and the function that sizes it.
_Measure = Callable[[Any], int]
_getsizeof: Final = sys.getsizeof
_getrefcount: Final = sys.getrefcount


def _int_nbytes(x: int) -> int:
    """Bytes of an int leaf: small ints are cached by CPython, the rest take one size class."""
    if -5 <= x <= 256:
        return 0
    return INT_NBYTES if -INT_WORD < x < INT_WORD else alloc(_getsizeof(x))


def _str_nbytes(x: str) -> int:
    # The empty string and those of one Latin-1 character are singletons.
    return alloc(_getsizeof(x)) if len(x) > 1 or x > "\xff" else 0


def _bytes_nbytes(x: bytes) -> int:
    return alloc(_getsizeof(x)) if len(x) > 1 else 0


def _object_nbytes(x: object) -> int:
    """Bytes of a leaf the footprint model does not look inside (numpy str and bytes scalars)."""
    return alloc(_getsizeof(x))


# How blob leaves are sized, by the converter that made them.
_BLOB_MEASURES: Final[dict[object, _Measure]] = {
    decode_str: _str_nbytes,
    decode_int: _int_nbytes,
    bytes: _bytes_nbytes,
}


class Footprint:
    """What :func:`~spillcache.footprint.sample_nbytes` says of a sample decoded by one plan.

    Parameters
    ----------
    plan : Plan
        The plan whose samples are measured.
    """

    __slots__ = ("_buffers", "_fixed", "_ints", "_keys", "_objects", "_shell", "_tree")

    def __init__(self, plan: Plan) -> None:
        self._tree = plan.tree
        self._fixed = 0
        # (first shape slot, ndim, itemsize) of every array and tensor: its data buffer.
        self._buffers: list[tuple[int, int, int]] = []
        self._objects: list[tuple[int, _Measure]] = []
        for index, op in enumerate(plan.ops):
            self._add_op(index, op)
        codes = plan.table.format[1:]
        table_leaves = [slot for slot in _table_leaves(plan.tree) if codes[slot] != "?"]
        self._fixed += FLOAT_NBYTES * sum(codes[slot] == "d" for slot in table_leaves)
        self._ints = tuple(slot for slot in table_leaves if codes[slot] == "q")
        self._keys = tuple(
            (key, size) for key in _keys(plan.tree) if (size := _leaf_nbytes(key)) > 0
        )
        # The containers' bytes, measured once: every builder of decode_sized makes them alike.
        self._shell: int | None = None

    def _add_op(self, index: int, op: Op) -> None:
        if op.kind == ARRAY:
            self._buffers.append((op.slot, op.ndim, op.itemsize))
            self._fixed += _array_overhead(op)
        elif op.kind == SCALAR:
            assert op.dtype is not None  # every scalar op has one
            proto: object = np.zeros((), op.dtype)[()]
            self._fixed += 0 if type(proto) is np.bool_ else _object_nbytes(proto)
        else:
            self._objects.append((index, _BLOB_MEASURES.get(op.convert, _object_nbytes)))

    def nbytes(self, sample: object, nums: tuple[Any, ...], leaves: Sequence[object]) -> int:
        """Bytes of ``sample``, just built with ``nums`` and ``leaves``."""
        total = self._fixed
        for slot, ndim, itemsize in self._buffers:
            total += malloc(math.prod(nums[slot : slot + ndim]) * itemsize)
        for slot in self._ints:
            total += _int_nbytes(nums[slot])
        for index, measure in self._objects:
            total += measure(leaves[index])
        # Dict keys belong to the plan: once many samples hold one, it counts as shared.
        for key, size in self._keys:
            if _getrefcount(key) <= SHARED_REFCOUNT:
                total += size
        shell = self._shell
        if shell is None:
            shell = self._shell = _shell_nbytes(self._tree, sample)
        return total + shell


class Decoded:
    """A sample :func:`~spillcache.codec.decode_sized` rebuilt, with what its plan knows of it.

    Attributes
    ----------
    sample : object
        The sample, as :func:`~spillcache.codec.decode` returns it.
    nbytes : int
        Exactly what :func:`~spillcache.footprint.sample_nbytes` says of ``sample`` when it was
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

        The plan's makers rebuild the containers around copies of the tensors and arrays;
        the other leaves are shared.
        """
        return replicate_built(self._plan, self._nums, self._leaves)

    @property
    def plan(self) -> Plan:
        """The plan of the sample's structure spec (what :func:`~.replicators.replicator` takes)."""
        return self._plan


def _array_overhead(op: Op) -> int:
    """Bytes of an array or tensor leaf but for its data buffer."""
    if op.convert is None:  # a numpy array owning its copy
        return NDARRAY_OBJECT + NDARRAY_DIMS[op.ndim]
    assert op.dtype is not None  # every array op has one
    # A tensor wrapping its numpy copy: as the op's converter makes it.
    proto = op.convert(np.zeros(0, op.dtype))
    assert isinstance(proto, torch.Tensor)
    assert not proto.untyped_storage().resizable()
    overhead = TENSOR_OBJECT + STORAGE_OBJECT + STORAGE_PYOBJECT + FOREIGN_OWNER
    if proto._is_view():
        overhead += VIEW_RECORD
    if op.ndim > INLINE_DIMS:
        overhead += malloc(16 * op.ndim)
    return overhead


def _leaf_nbytes(x: object) -> int:
    """Bytes of a dict key of the plan (a str or an int)."""
    return _str_nbytes(x) if isinstance(x, str) else _int_nbytes(x)  # type: ignore[arg-type]


def _table_leaves(node: Node) -> list[int]:
    """The table slots that are leaves of the sample (bools, ints, floats)."""
    if isinstance(node, tuple):
        return [slot for child in node[2] for slot in _table_leaves(child)]
    return [node] if node is not None and node >= 0 else []


def _keys(node: Node) -> list[object]:
    """Every dict key of the tree (the objects the decoded dicts share)."""
    if not isinstance(node, tuple):
        return []
    own = list(node[1]) if node[1] is not None else []
    return own + [key for child in node[2] for key in _keys(child)]


def _shell_nbytes(node: Node, obj: Any) -> int:
    """Bytes of the containers of ``obj``, whose structure is ``node``."""
    if not isinstance(node, tuple):
        return 0
    tag, _, children = node
    if tag == b"D":
        own, items = split_alloc(_getsizeof(obj), DICT_OBJECT), obj.values()
    elif tag == b"L":
        own, items = split_alloc(_getsizeof(obj), LIST_OBJECT), obj
    else:  # the empty tuple is a singleton
        own, items = (alloc(_getsizeof(obj)) if obj else 0), obj
    return own + sum(
        _shell_nbytes(child, item) for child, item in zip(children, items, strict=True)
    )
