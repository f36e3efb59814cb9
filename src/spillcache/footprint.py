"""The RAM footprint model: the bytes a decoded sample keeps alive, and a RAM entry's overhead.

:func:`sample_nbytes` estimates the memory a decoded sample keeps alive, so that the RAM tier
can honour its byte budget. It models the allocators (pymalloc, glibc malloc, the aligned
allocator of torch) instead of trusting ``sys.getsizeof``, which ignores allocator rounding,
the C++ objects behind a tensor and memory shared between views. :data:`ENTRY_OVERHEAD` is what
the RAM tier's own bookkeeping adds per entry.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

__all__ = [
    "DICT_OBJECT",
    "ENTRY_OVERHEAD",
    "FLOAT_NBYTES",
    "FOREIGN_OWNER",
    "INLINE_DIMS",
    "INT_NBYTES",
    "INT_WORD",
    "LIST_OBJECT",
    "NDARRAY_DIMS",
    "NDARRAY_OBJECT",
    "SHARED_REFCOUNT",
    "STORAGE_OBJECT",
    "STORAGE_PYOBJECT",
    "TENSOR_OBJECT",
    "VIEW_RECORD",
    "alloc",
    "malloc",
    "sample_nbytes",
    "split_alloc",
]

_KIB = 1024

# CPython's small-object allocator serves requests up to 512 bytes from 16-byte size classes.
_PYMALLOC_MAX = 512
# glibc malloc: 8 bytes of chunk header, 16-byte alignment, 32-byte minimum chunk; requests of
# at least M_MMAP_THRESHOLD (128 KiB unless tuned) get their own pages.
_MMAP_THRESHOLD = 128 * _KIB
_PAGE = 4096


def malloc(size: int) -> int:
    """Return the bytes glibc malloc takes for a request of ``size`` bytes."""
    if size >= _MMAP_THRESHOLD:
        return -(-(size + 16) // _PAGE) * _PAGE
    return (size + 8 + 15) & ~15 if size > 24 else 32


def alloc(size: int) -> int:
    """Return the bytes CPython's object allocator takes for ``size`` bytes."""
    return (size + 15) & ~15 if size <= _PYMALLOC_MAX else malloc(size)


def split_alloc(size: int, head: int) -> int:
    """Return the bytes of a container made of an object and a separate table.

    ``size`` is what ``sys.getsizeof`` says, ``head`` the part that is the object itself.
    """
    return alloc(head) + (alloc(size - head) if size > head else 0)


# Measured with torch 2.13 on x86-64 Linux as the RssAnon growth per tensor over 100k tensors
# (tests/test_sizing.py checks the sum against real samples): a Python tensor object with its
# TensorImpl; the StorageImpl behind it; the autograd record every view carries (it shares
# the version counter of its base); what c10's 64-byte-aligned posix_memalign leaves unusable
# around a buffer, on average; and the hidden owner of a buffer torch did not allocate
# (``torch.from_numpy``: the numpy array object, its shape block and the deleter context).
TENSOR_OBJECT = 280
STORAGE_OBJECT = 134
VIEW_RECORD = 300
_ALIGNED_SLACK = 32
FOREIGN_OWNER = 174
# ``Tensor.untyped_storage()`` creates a Python storage object that torch then keeps alive as
# long as the storage lives, so looking at the storage costs this much (once per storage).
STORAGE_PYOBJECT = alloc(sys.getsizeof(torch.empty(0).untyped_storage()))
# TensorImpl keeps up to 5 sizes and strides inline; more go to one heap block.
INLINE_DIMS = 5

NDARRAY_OBJECT = alloc(np.ndarray.__basicsize__)
# numpy keeps an array's shape and strides in one block (of at least one dimension), by ndim.
NDARRAY_DIMS = tuple(malloc(16 * max(ndim, 1)) for ndim in range(65))
DICT_OBJECT = sys.getsizeof({})
LIST_OBJECT = sys.getsizeof([])
FLOAT_NBYTES = alloc(sys.getsizeof(0.5))
# Every int below 2**60 takes the same size class (28 or 32 bytes before rounding).
INT_WORD = 1 << 60
INT_NBYTES = alloc(sys.getsizeof(INT_WORD - 1))
# Refcounts up to this are references from the sample itself and from this walk; an immutable
# leaf with more (an interned or cached dict key, a string constant, an immortal object) is
# shared with other samples and is not freed with this one.
SHARED_REFCOUNT = 16

# How sample_nbytes treats objects, by exact type; subclasses are classified on first sight.
# The immutable leaves come first: sample_nbytes tells them by ``kind <= _BYTES``.
_SKIP, _STR, _INT, _FLOAT, _BYTES, _DICT, _LIST, _TUPLE, _TENSOR, _ARRAY, _OTHER = range(1, 12)
_KINDS: dict[type, int] = {
    type(None): _SKIP,
    bool: _SKIP,
    np.bool_: _SKIP,  # np.True_ and np.False_ are singletons
    str: _STR,
    int: _INT,
    float: _FLOAT,
    bytes: _BYTES,
    dict: _DICT,
    list: _LIST,
    tuple: _TUPLE,
    torch.Tensor: _TENSOR,
    np.ndarray: _ARRAY,
}

_SUBCLASS_KINDS = (
    (dict, _DICT),
    (list, _LIST),
    (tuple, _TUPLE),
    (torch.Tensor, _TENSOR),
    (np.ndarray, _ARRAY),
)

ENTRY_OVERHEAD = 232
"""Bytes the RAM tier adds per entry for its own bookkeeping.

:class:`~spillcache.ram.RamTier` keeps two dicts and two lists per resident (key to value,
key to size, and the resident list used to draw eviction candidates); their RssAnon growth
measured 208 to 257 bytes per entry between 60k and 250k entries (dict tables grow in steps,
so the share of a slot varies).
"""


def _classify(cls: type) -> int:
    """Return (and remember) how :func:`sample_nbytes` treats instances of ``cls``."""
    # Subclasses of str, int and float (np.str_, np.float64...) are never cached by CPython,
    # so they count as they are, as _OTHER.
    kind = next((kind for base, kind in _SUBCLASS_KINDS if issubclass(cls, base)), _OTHER)
    _KINDS[cls] = kind
    return kind


def sample_nbytes(sample: object) -> int:
    """Estimate the memory a decoded sample keeps alive.

    Counts the objects and containers of the sample with their allocator overhead, and the
    data of tensors and arrays once per underlying buffer, however many views of it the sample
    holds (a numpy array viewing a tensor's memory counts that tensor). Objects shared with the
    rest of the process (``None``, booleans, small ints, interned or cached strings) count zero.

    Parameters
    ----------
    sample : object
        Nested dicts, lists and tuples whose leaves are CPU tensors, numpy arrays and scalars,
        and Python ``int``, ``float``, ``bool``, ``str``, ``bytes`` or ``None``. Other objects
        count as ``sys.getsizeof`` says, without looking inside.

    Returns
    -------
    int
        Bytes; within about 10 % of the resident anonymous memory the sample uses when
        its tensors and arrays were freshly allocated. A view into a buffer that lives on
        elsewhere (a slice of a data-set-wide array) counts the whole buffer it keeps alive.
    """
    total = 0
    seen: set[int] = set()
    storages: set[int] = set()
    # Any: the walk meets objects of every type and tells them apart by _KINDS.
    stack: list[Any] = [sample]
    pop, push, extend = stack.pop, stack.append, stack.extend
    kinds = _KINDS
    while stack:
        obj = pop()
        cls = type(obj)
        kind = kinds.get(cls) or _classify(cls)
        if kind == _SKIP:
            continue
        if kind <= _BYTES:  # an immutable leaf, perhaps shared
            # The refcount here, not in a helper: a call would add its own references.
            if sys.getrefcount(obj) > SHARED_REFCOUNT or id(obj) in seen:
                continue
            seen.add(id(obj))
            total += _leaf_nbytes(obj, kind)
        elif id(obj) not in seen:
            seen.add(id(obj))
            total += _node_nbytes(obj, kind, storages, push, extend)
    return total


def _leaf_nbytes(obj: Any, kind: int) -> int:
    """Return the bytes of an immutable leaf (str, int, float, bytes) of its own."""
    if kind == _FLOAT:
        return FLOAT_NBYTES
    if kind == _INT:
        if -5 <= obj <= 256:  # CPython's small ints are singletons
            return 0
        return INT_NBYTES if -INT_WORD < obj < INT_WORD else alloc(sys.getsizeof(obj))
    if len(obj) > 1 or (kind == _STR and obj > "\xff"):
        return alloc(sys.getsizeof(obj))
    # The empty string and those of one Latin-1 character (bytes: one byte) are singletons.
    return 0


def _node_nbytes(
    obj: Any,
    kind: int,
    storages: set[int],
    visit: Callable[[object], None],
    visit_all: Callable[[Iterable[object]], None],
) -> int:
    """Return the bytes of a container, tensor, array or other object, visiting its items."""
    if kind == _DICT:
        visit_all(obj.keys())
        visit_all(obj.values())
        return split_alloc(sys.getsizeof(obj), DICT_OBJECT)
    if kind == _TENSOR:
        return _tensor_nbytes(obj, storages)
    if kind == _ARRAY:
        return _array_nbytes(obj, visit)
    if kind == _LIST:
        visit_all(obj)
        return split_alloc(sys.getsizeof(obj), LIST_OBJECT)
    if kind == _TUPLE:
        visit_all(obj)
        return alloc(sys.getsizeof(obj)) if obj else 0  # the empty tuple is a singleton
    return alloc(sys.getsizeof(obj))


def _array_nbytes(array: np.ndarray, visit: Callable[[object], None]) -> int:
    """Return the bytes of a numpy array, passing to ``visit`` the objects it keeps alive."""
    nbytes = NDARRAY_OBJECT + NDARRAY_DIMS[array.ndim]
    if array.base is not None:
        # The buffer belongs to the base (an array, a tensor, bytes...), which this view
        # keeps alive: it is counted there, once.
        visit(array.base)
        return nbytes
    if array.dtype.hasobject:
        for item in array.flat:
            visit(item)
    return nbytes + malloc(array.nbytes)


def _tensor_nbytes(tensor: torch.Tensor, storages: set[int]) -> int:
    """Return the bytes of a tensor's objects, and of its storage unless in ``storages``."""
    nbytes = TENSOR_OBJECT
    if tensor._is_view():
        nbytes += VIEW_RECORD
    if tensor.dim() > INLINE_DIMS:
        nbytes += malloc(16 * tensor.dim())
    storage = tensor.untyped_storage()
    # The StorageImpl address identifies the buffer even when its data pointer is null.
    if storage._cdata in storages:
        return nbytes
    storages.add(storage._cdata)
    nbytes += STORAGE_OBJECT + STORAGE_PYOBJECT
    if not tensor.is_cpu:
        return nbytes
    size = storage.nbytes()
    # Only storages from torch's own allocator can be resized; the others wrap a buffer
    # allocated (with plain malloc) by numpy or Python and keep its owner alive.
    if storage.resizable():
        return nbytes + (malloc(size) + _ALIGNED_SLACK if size else 0)
    return nbytes + malloc(size) + FOREIGN_OWNER
