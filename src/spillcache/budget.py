"""Sizes of things: memory and disk budgets, and the bytes a decoded sample occupies.

Budgets (``ram_budget``, ``disk_budget``) are given by users as bytes, as strings with a unit
(``"512MiB"``, ``"4GB"``) or as a percentage of what the machine offers (``"25%"``).
:func:`parse_budget` turns them into bytes; :func:`memory_limit` and :func:`filesystem_size` say
what a percentage is a percentage of.

:func:`sample_nbytes` estimates the memory a decoded sample keeps alive, so that the RAM tier
can honour its byte budget. It models the allocators (pymalloc, glibc malloc, the aligned
allocator of torch) instead of trusting ``sys.getsizeof``, which ignores allocator rounding,
the C++ objects behind a tensor and memory shared between views.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import sys
from collections.abc import Callable, Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .userwarn import warn

__all__ = [
    "ENTRY_OVERHEAD",
    "check_ram_budget",
    "filesystem_size",
    "memory_limit",
    "parse_budget",
    "sample_nbytes",
]

logger = logging.getLogger(__name__)

_KIB = 1024
_MIB = 1024 * _KIB

# ---------------------------------------------------------------------------------------------
# Budget parsing
# ---------------------------------------------------------------------------------------------

_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE_RE = re.compile(
    r"(?P<sign>-\s*)?(?P<number>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>[a-z]*)(?P<percent>\s*%)?"
)
_ACCEPTED = "use bytes (int), a string like '512MiB' or '4GB', or a percentage like '25%'"


def parse_budget(value: object, *, name: str, total: Callable[[], int] | None = None) -> int:
    """Turn a user-given size into a number of bytes.

    Parameters
    ----------
    value : object
        An ``int`` (or numpy integer) number of bytes, not a ``bool``; a string with a number
        and an optional unit (``"1024"``, ``"100 KiB"``, ``"1.5GiB"``, ``"4GB"``; units are B,
        KB, MB, GB, TB in powers of 1000 and KiB, MiB, GiB, TiB in powers of 1024, in any
        case); or a percentage of ``total()`` (``"25%"``, more than 0 and at most 100).
    name : str
        Name of the argument the value was given for; error messages name it.
    total : callable returning int, optional
        What a percentage is a percentage of, e.g. :func:`memory_limit`. Called only for
        percentages; without it, percentages are refused.

    Returns
    -------
    int
        The size in bytes, rounded down to a whole byte.

    Raises
    ------
    TypeError
        If the value is neither an int nor a str (a float, a bool, None, ...).
    ValueError
        If the string is not a size, the size is negative, is a fraction of a byte, is a
        percentage out of range, or is a percentage while ``total`` is None.

    Examples
    --------
    >>> parse_budget("1.5KiB", name="ram_budget")
    1536
    >>> parse_budget("25%", name="ram_budget", total=lambda: 4000)
    1000
    """
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"{name}={value!r} is negative; {_ACCEPTED}")
        return int(value)
    if not isinstance(value, str):
        raise TypeError(f"{name}={value!r} is a {type(value).__name__}, not a size; {_ACCEPTED}")
    match = _SIZE_RE.fullmatch(value.strip().lower())
    if match is None or match["unit"] not in _UNITS or (match["percent"] and match["unit"]):
        raise ValueError(f"{name}={value!r} is not a size; {_ACCEPTED}")
    if match["sign"]:
        raise ValueError(f"{name}={value!r} is negative; {_ACCEPTED}")
    # Fraction, not float: "0.29KB" must be 290 bytes, not 289.99999999999997 rounded down.
    number = Fraction(match["number"])
    if match["percent"]:
        if not 0 < number <= 100:
            raise ValueError(
                f"{name}={value!r} is out of range; a percentage must be in (0%, 100%]"
            )
        if total is None:
            raise ValueError(f"{name}={value!r} cannot be a percentage; give a size like '512MiB'")
        return math.floor(number / 100 * total())
    if number.denominator != 1 and _UNITS[match["unit"]] == 1:
        raise ValueError(f"{name}={value!r} is a fraction of a byte; {_ACCEPTED}")
    return math.floor(number * _UNITS[match["unit"]])


_warned_ram_budget = False


def check_ram_budget(nbytes: int) -> None:
    """Warn once per process when a RAM budget exceeds the memory this process may use.

    Such a budget is no limit at all: the process would be killed (or swap) before the cache
    evicted anything.
    """
    global _warned_ram_budget  # one warning per process, however many caches
    if _warned_ram_budget:
        return
    try:
        limit = memory_limit()
    except OSError:
        return
    if nbytes > limit:
        _warned_ram_budget = True
        warn(
            f"ram_budget={nbytes} bytes is more than the {limit} bytes of memory this process may "
            "use (physical RAM, cgroup or SLURM limit): the process would run out of memory "
            "before the cache evicted anything; give a smaller budget, e.g. '25%'",
            UserWarning,
        )


# ---------------------------------------------------------------------------------------------
# Memory and disk totals
# ---------------------------------------------------------------------------------------------

# cgroup v1 reports "no limit" as PAGE_COUNTER_MAX pages (0x7FFFFFFFFFFFF000 bytes on x86-64);
# no real machine has an exbibyte of RAM, so anything that large means unlimited.
_UNLIMITED = 1 << 60


def memory_limit() -> int:
    """Return the number of bytes of memory this process may use.

    The smallest of: the physical RAM, the memory limit of this process's cgroup (v2
    ``memory.max`` and ``memory.high``, or v1 ``memory.limit_in_bytes``, including those of
    its ancestors) and the memory SLURM allocated to this process (see below).

    SLURM allocates memory per node (``SLURM_MEM_PER_NODE``) or per CPU
    (``SLURM_MEM_PER_CPU`` times the job's CPUs on this node, ``SLURM_CPUS_ON_NODE``, or
    else ``SLURM_CPUS_PER_TASK``, or else one CPU). Inside an ``srun`` step the tasks on a
    node share that memory, so it is divided by the most tasks the step runs on any node
    (``SLURM_STEP_TASKS_PER_NODE``).

    Returns
    -------
    int
        Bytes.

    Raises
    ------
    OSError
        If the platform reports none of these.
    """
    physical: int | None
    try:
        physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows) or no such name
        physical = None
    return _memory_limit(
        physical=physical,
        proc_cgroup=Path("/proc/self/cgroup"),
        cgroup_root=Path("/sys/fs/cgroup"),
        environ=os.environ,
    )


def _memory_limit(
    *, physical: int | None, proc_cgroup: Path, cgroup_root: Path, environ: Mapping[str, str]
) -> int:
    """Return the smallest of the given limits; see :func:`memory_limit`."""
    limits = [
        limit
        for limit in (physical, _cgroup_limit(proc_cgroup, cgroup_root), _slurm_limit(environ))
        if limit is not None
    ]
    if not limits:
        raise OSError("cannot tell how much memory this machine has; give the budget in bytes")
    return min(limits)


def _cgroup_limit(proc_cgroup: Path, cgroup_root: Path) -> int | None:
    """Return the tightest memory limit of the cgroups in ``proc_cgroup``, or None.

    Parameters
    ----------
    proc_cgroup : Path
        A ``/proc/<pid>/cgroup`` file.
    cgroup_root : Path
        Where the cgroup file systems are mounted (``/sys/fs/cgroup``); v2 at the root, the v1
        memory controller under ``memory/``.
    """
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    candidates: list[Path] = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, group = rest.partition(":")
        files: tuple[str, ...]
        if hierarchy == "0" and not controllers:
            files, mount = ("memory.max", "memory.high"), cgroup_root
        elif "memory" in controllers.split(","):
            files, mount = ("memory.limit_in_bytes",), cgroup_root / "memory"
        else:
            continue
        # Ancestors limit their descendants; and inside a container whose cgroup namespace
        # is not private, the path names the host's view and only the mount root exists.
        group_dir = mount / group.lstrip("/")
        for directory in (group_dir, *group_dir.parents):
            candidates.extend(directory / file for file in files)
            if directory == mount:
                break
    limits = [limit for limit in map(_read_limit, candidates) if limit is not None]
    return min(limits, default=None)


def _read_limit(path: Path) -> int | None:
    """Return the byte limit in a cgroup file, or None for a missing file or no limit."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text.isdigit():  # "max" in cgroup v2
        return None
    limit = int(text)
    return limit if limit < _UNLIMITED else None


def _slurm_limit(environ: Mapping[str, str]) -> int | None:
    """Return this process's share of the memory SLURM allocated, or None outside SLURM."""
    per_node = _env_int(environ, "SLURM_MEM_PER_NODE")
    per_cpu = _env_int(environ, "SLURM_MEM_PER_CPU")
    if per_node:
        node_mib = per_node
    elif per_cpu:
        cpus = _env_int(environ, "SLURM_CPUS_ON_NODE") or _env_int(environ, "SLURM_CPUS_PER_TASK")
        node_mib = per_cpu * (cpus or 1)
    else:
        # Unset, or 0 which asks for all the memory of the node: the other limits apply.
        return None
    tasks = [
        int(part.partition("(")[0])
        for part in environ.get("SLURM_STEP_TASKS_PER_NODE", "").split(",")
        if part.partition("(")[0].isdigit()
    ]
    return node_mib * _MIB // max(tasks, default=1)


def _env_int(environ: Mapping[str, str], key: str) -> int | None:
    """Return the non-negative integer in ``environ[key]``, or None if unset or malformed."""
    text = environ.get(key, "").strip()
    if text.isdigit():
        return int(text)
    if text:
        logger.debug("ignoring %s=%r: not a whole number", key, text)
    return None


def filesystem_size(path: str | os.PathLike[str]) -> int:
    """Return the size in bytes of the file system that holds (or would hold) ``path``.

    Parameters
    ----------
    path : str or os.PathLike
        A file or directory. It need not exist: its nearest existing ancestor is asked.

    Returns
    -------
    int
        Total bytes of the file system (not the free bytes).
    """
    existing = Path(os.path.abspath(path))
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return shutil.disk_usage(existing).total


# ---------------------------------------------------------------------------------------------
# Bytes of a decoded sample
# ---------------------------------------------------------------------------------------------

# CPython's small-object allocator serves requests up to 512 bytes from 16-byte size classes.
_PYMALLOC_MAX = 512
# glibc malloc: 8 bytes of chunk header, 16-byte alignment, 32-byte minimum chunk; requests of
# at least M_MMAP_THRESHOLD (128 KiB unless tuned) get their own pages.
_MMAP_THRESHOLD = 128 * _KIB
_PAGE = 4096


def _malloc(size: int) -> int:
    """Return the bytes glibc malloc takes for a request of ``size`` bytes."""
    if size >= _MMAP_THRESHOLD:
        return -(-(size + 16) // _PAGE) * _PAGE
    return (size + 8 + 15) & ~15 if size > 24 else 32


def _alloc(size: int) -> int:
    """Return the bytes CPython's object allocator takes for ``size`` bytes."""
    return (size + 15) & ~15 if size <= _PYMALLOC_MAX else _malloc(size)


def _split_alloc(size: int, head: int) -> int:
    """Return the bytes of a container made of an object and a separate table.

    ``size`` is what ``sys.getsizeof`` says, ``head`` the part that is the object itself.
    """
    return _alloc(head) + (_alloc(size - head) if size > head else 0)


# Measured with torch 2.13 on x86-64 Linux as the RssAnon growth per tensor over 100k tensors
# (tests/test_sizing.py checks the sum against real samples): a Python tensor object with its
# TensorImpl; the StorageImpl behind it; the autograd record every view carries (it shares
# the version counter of its base); what c10's 64-byte-aligned posix_memalign leaves unusable
# around a buffer, on average; and the hidden owner of a buffer torch did not allocate
# (``torch.from_numpy``: the numpy array object, its shape block and the deleter context).
_TENSOR_OBJECT = 280
_STORAGE_OBJECT = 134
_VIEW_RECORD = 300
_ALIGNED_SLACK = 32
_FOREIGN_OWNER = 174
# ``Tensor.untyped_storage()`` creates a Python storage object that torch then keeps alive as
# long as the storage lives, so looking at the storage costs this much (once per storage).
_STORAGE_PYOBJECT = _alloc(sys.getsizeof(torch.empty(0).untyped_storage()))
# TensorImpl keeps up to 5 sizes and strides inline; more go to one heap block.
_INLINE_DIMS = 5

_NDARRAY_OBJECT = _alloc(np.ndarray.__basicsize__)
# numpy keeps an array's shape and strides in one block (of at least one dimension), by ndim.
_NDARRAY_DIMS = tuple(_malloc(16 * max(ndim, 1)) for ndim in range(65))
_DICT_OBJECT = sys.getsizeof({})
_LIST_OBJECT = sys.getsizeof([])
_FLOAT_NBYTES = _alloc(sys.getsizeof(0.5))
# Every int below 2**60 takes the same size class (28 or 32 bytes before rounding).
_INT_WORD = 1 << 60
_INT_NBYTES = _alloc(sys.getsizeof(_INT_WORD - 1))
# Refcounts up to this are references from the sample itself and from this walk; an immutable
# leaf with more (an interned or cached dict key, a string constant, an immortal object) is
# shared with other samples and is not freed with this one.
_SHARED_REFCOUNT = 16

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
            if sys.getrefcount(obj) > _SHARED_REFCOUNT or id(obj) in seen:
                continue
            seen.add(id(obj))
            if kind == _FLOAT:
                total += _FLOAT_NBYTES
            elif kind == _INT:
                if not -5 <= obj <= 256:
                    total += (
                        _INT_NBYTES if -_INT_WORD < obj < _INT_WORD else _alloc(sys.getsizeof(obj))
                    )
            elif len(obj) > 1 or (kind == _STR and obj > "\xff"):
                # The empty string and those of one Latin-1 character (bytes: one byte) are
                # singletons.
                total += _alloc(sys.getsizeof(obj))
            continue
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if kind == _DICT:
            total += _split_alloc(sys.getsizeof(obj), _DICT_OBJECT)
            extend(obj.keys())
            extend(obj.values())
        elif kind == _TENSOR:
            total += _tensor_nbytes(obj, storages)
        elif kind == _ARRAY:
            total += _array_nbytes(obj, push)
        elif kind == _LIST:
            total += _split_alloc(sys.getsizeof(obj), _LIST_OBJECT)
            extend(obj)
        elif kind == _TUPLE:
            total += _alloc(sys.getsizeof(obj)) if obj else 0  # the empty tuple is a singleton
            extend(obj)
        else:
            total += _alloc(sys.getsizeof(obj))
    return total


def _array_nbytes(array: np.ndarray, visit: Callable[[object], None]) -> int:
    """Return the bytes of a numpy array, passing to ``visit`` the objects it keeps alive."""
    nbytes = _NDARRAY_OBJECT + _NDARRAY_DIMS[array.ndim]
    if array.base is not None:
        # The buffer belongs to the base (an array, a tensor, bytes...), which this view
        # keeps alive: it is counted there, once.
        visit(array.base)
        return nbytes
    if array.dtype.hasobject:
        for item in array.flat:
            visit(item)
    return nbytes + _malloc(array.nbytes)


def _tensor_nbytes(tensor: torch.Tensor, storages: set[int]) -> int:
    """Return the bytes of a tensor's objects, and of its storage unless in ``storages``."""
    nbytes = _TENSOR_OBJECT
    if tensor._is_view():
        nbytes += _VIEW_RECORD
    if tensor.dim() > _INLINE_DIMS:
        nbytes += _malloc(16 * tensor.dim())
    storage = tensor.untyped_storage()
    # The StorageImpl address identifies the buffer even when its data pointer is null.
    if storage._cdata in storages:
        return nbytes
    storages.add(storage._cdata)
    nbytes += _STORAGE_OBJECT + _STORAGE_PYOBJECT
    if not tensor.is_cpu:
        return nbytes
    size = storage.nbytes()
    # Only storages from torch's own allocator can be resized; the others wrap a buffer
    # allocated (with plain malloc) by numpy or Python and keep its owner alive.
    if storage.resizable():
        return nbytes + (_malloc(size) + _ALIGNED_SLACK if size else 0)
    return nbytes + _malloc(size) + _FOREIGN_OWNER
