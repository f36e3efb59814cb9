"""Every setting's default, type and validator, each in one place with its reason.

The constructors of :class:`~spillcache.SpillCache`, :class:`~spillcache.CachedDataset`, the
Hyrax ``DataCache`` (through the key map of :mod:`spillcache.config`) and the store itself take
their defaults and argument types from here, so that one default is never written twice and
every entry point refuses a bad value with the same words. What a size (``"4GiB"``, ``"25%"``)
means is :mod:`spillcache.budget`'s.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Literal

from .budget import parse_budget

__all__ = [
    "AUTO_MAX_THREADS",
    "COPY",
    "DISABLE",
    "DISABLE_MODES",
    "LOG_EVERY",
    "ON_MISMATCH",
    "RAM_BUDGET",
    "READAHEAD",
    "THREADS",
    "DisableMode",
    "OnMismatch",
    "Threads",
    "check_budget",
    "check_log_every",
    "check_store_arguments",
    "check_threads",
]

#: What opening a store built for other data (or damaged) does: ``"rebuild"`` empties it,
#: ``"error"`` raises :class:`~spillcache.errors.FingerprintMismatch`.
OnMismatch = Literal["rebuild", "error"]
#: A cache only ever holds copies of its source, so emptying and refilling a store built for
#: other data loses nothing but time; serving it would be wrong, and refusing it would stop a
#: training job over a cache.
ON_MISMATCH: OnMismatch = "rebuild"

#: RAM tier budget: enough to keep a useful share of a typical data set decoded, little enough
#: for a laptop or a small job allocation (a percentage such as ``"25%"`` adapts to the job).
RAM_BUDGET = "1GiB"

#: Every ``get`` returns new tensors and ``put`` takes a snapshot: a caller that modifies a
#: sample (in-place augmentation) can never change what the cache stores or serves. ``False``
#: is faster, for callers that promise not to.
COPY = True

#: Let the OS read ahead when the store is read from disk: right for samples of tens of KiB
#: and more, the common case; only tiny samples in a store much larger than RAM lose by it.
READAHEAD = True

#: Loads the preload keeps in flight: an int, or ``"auto"`` to tune the count to the storage.
Threads = int | Literal["auto"]
#: Tuned, because the right count depends on the storage's latency, which no default knows.
THREADS: Threads = "auto"
#: Upper bound of ``threads="auto"``: enough for a network file system with tens of
#: milliseconds of latency, few enough that a machine is never swamped (ask for more with an
#: explicit count).
AUTO_MAX_THREADS = 64

#: Requests between two logs of the statistics to TensorBoard: Hyrax logged every 1000 inserts,
#: and a point per thousand samples draws a smooth curve without flooding the event file.
LOG_EVERY = 1000

#: What ``DataCache.disable()`` does (Hyrax 0.9+ interface; Hyrax's infer verb calls it).
DisableMode = Literal["read_only", "disk_only", "off"]
DISABLE_MODES: tuple[DisableMode, ...] = ("read_only", "disk_only", "off")
#: Serve what the stores hold but write nothing new: an inference run over data a training
#: run cached is fast, and it does not fill the disk with samples nobody trains on.
DISABLE: DisableMode = "read_only"


def check_threads(value: object, name: str = "preload_threads") -> Threads:
    """``value`` if it is a positive int or ``"auto"``.

    Raises ``TypeError`` for other types (``bool``, ``float``, ...) and ``ValueError`` for other
    values (``0``, ``"fast"``).
    """
    if value == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f'{name}={value!r} is not an int; use a positive int or "auto"')
    if isinstance(value, str) or value < 1:
        raise ValueError(f'{name}={value!r} is invalid; use a positive int or "auto"')
    return value


def check_log_every(every: object) -> int:
    """``every`` if it is a positive int (``TypeError`` for other types, else ``ValueError``)."""
    if isinstance(every, bool) or not isinstance(every, int):
        raise TypeError(f"log_every={every!r} is not an int; use a positive int")
    if every < 1:
        raise ValueError(f"log_every={every!r} is invalid; use a positive int")
    return every


def check_budget(value: object, name: str, total: Callable[[], int]) -> int | str:
    """``value`` if it is a size :func:`~spillcache.budget.parse_budget` accepts.

    For settings read long before the cache opens (a Hyrax config): a typo then fails when the
    config is read rather than at the first sample.

    Parameters
    ----------
    value : object
        The size as given.
    name : str
        How the message names the setting.
    total : callable returning int
        What a percentage is a percentage of.

    Raises
    ------
    TypeError
        If ``value`` is neither an int nor a str (``bool`` included).
    ValueError
        If it is not a size.
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(
            f"{name} = {value!r} must be a size: bytes (int), a string like '4GiB', or a "
            "percentage like '25%'"
        )
    parse_budget(value, name=name, total=total)
    return value


def check_store_arguments(
    path: object, *, on_mismatch: object, fingerprint: object, flags: Mapping[str, object]
) -> None:
    """Refuse a store's arguments of the wrong type or value, naming the argument and the fix.

    ``path`` is a str, an ``os.PathLike`` or None; ``on_mismatch`` one of :data:`OnMismatch`;
    ``fingerprint`` a str or None; each of ``flags`` (name to value) True or False.
    """
    if not isinstance(on_mismatch, str):
        raise TypeError(f"on_mismatch={on_mismatch!r} is not a str; use 'rebuild' or 'error'")
    if on_mismatch not in ("rebuild", "error"):
        raise ValueError(f"on_mismatch={on_mismatch!r} is invalid; use 'rebuild' or 'error'")
    if fingerprint is not None and not isinstance(fingerprint, str):
        raise TypeError(f"fingerprint must be a str or None, not {type(fingerprint).__name__}")
    for name, flag in flags.items():
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be True or False, not {flag!r}")
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str, os.PathLike or None, not {type(path).__name__}")
