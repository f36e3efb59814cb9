"""The stores the Hyrax caches of one process have open: one ``SpillCache`` per path, shared."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from ..cache import SpillCache

__all__ = ["acquire", "release"]

# LMDB allows one environment per path per process, and a train and an infer provider built
# from one config often ask for the same store: they share one disk-only SpillCache.
_lock = threading.Lock()
_open: dict[Path, tuple[SpillCache, int]] = {}


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # another thread may have held it at the fork


os.register_at_fork(after_in_child=_after_fork_in_child)


def acquire(path: Path | None, *, fingerprint: str, disk_budget: int | str | None) -> SpillCache:
    """The store at ``path`` (opened if need be), counted as one more user until :func:`release`.

    ``None``: a new private temporary store. The store holds no RAM tier (``ram_budget=0``) and
    does not copy what it is given (``copy=False``): the Hyrax cache keeps samples in RAM
    itself and never changes them.
    """
    with _lock:
        cache, users = _open.get(path, (None, 0)) if path is not None else (None, 0)
        if cache is None or cache.closed:
            cache = SpillCache(
                path, ram_budget=0, disk_budget=disk_budget, fingerprint=fingerprint, copy=False
            )
            users = 0
        _open[cache.path] = (cache, users + 1)
        return cache


def release(cache: SpillCache) -> None:
    """One user fewer of ``cache``; the last one closes it."""
    with _lock:
        held, users = _open.get(cache.path, (None, 0))
        if held is not cache:
            return
        if users > 1:
            _open[cache.path] = (cache, users - 1)
            return
        del _open[cache.path]
    cache.close()
