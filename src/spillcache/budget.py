"""Byte budgets: what a user-given size means, and what a percentage is a percentage of.

Budgets (``ram_budget``, ``disk_budget``) are given by users as bytes, as strings with a unit
(``"512MiB"``, ``"4GB"``) or as a percentage of what the machine offers (``"25%"``).
:func:`parse_budget` turns them into bytes; :func:`memory_limit` (the physical RAM, or the
cgroup or SLURM limit of this job when lower) and :func:`filesystem_size` say what a percentage
is a percentage of. The bytes a sample occupies are :mod:`spillcache.footprint`'s.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
from collections.abc import Callable, Mapping
from fractions import Fraction
from pathlib import Path

import numpy as np

from .userwarn import warn

__all__ = ["check_ram_budget", "filesystem_size", "memory_limit", "parse_budget"]

logger = logging.getLogger(__name__)

_MIB = 1024 * 1024

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
