"""The samples a process put with ``copy=False``, while the node RAM tier holds their values.

A process sharing its store's node tier keeps no local tier, so a RAM hit decodes a copy out of
the node tier. With ``copy=False`` (and the Hyrax 0.9+ interface, which uses it) the process
that put a sample must get back the object it put, as it does alone. So that process remembers
the object beside the stamp its put gave the key (node/stamps.py): while the node tier still
holds the key under that stamp, the entry is this put's value, and the object is served. Any
later put of the key (in any process), a clear, or an eviction followed by another process's
admission with a newer stamp ends that; the object is then forgotten and a decoded copy served.

The objects are memory beyond the node tier's bytes, so they are capped at
``budget // OWN_SHARE`` (their estimated footprint), oldest forgotten first: beyond that a
``get`` returns an equal decoded copy, as for a sample another process put.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from .footprint import sample_nbytes

__all__ = ["OWN_SHARE", "OwnPuts"]

#: The objects kept take at most this share of the node tier's budget (1/8).
OWN_SHARE = 8


class OwnPuts:
    """Objects put here with ``copy=False``, each with its key's stamp after the put.

    Parameters
    ----------
    cap : int
        Most estimated bytes of objects kept (0: keep none).
    """

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._lock = threading.Lock()
        self._held: OrderedDict[int, tuple[Any, int, int]] = OrderedDict()
        self._nbytes = 0

    def __bool__(self) -> bool:
        return bool(self._held)

    @property
    def nbytes(self) -> int:
        """Estimated bytes of the objects kept."""
        return self._nbytes

    def keep(self, key: int, sample: object, stamp: int) -> None:
        """Remember ``sample``, put under ``key``, which the node tier holds at ``stamp``."""
        nbytes = sample_nbytes(sample)
        with self._lock:
            self._drop(key)
            if nbytes > self._cap:
                return
            self._held[key] = (sample, stamp, nbytes)
            self._nbytes += nbytes
            while self._nbytes > self._cap:
                self._drop(next(iter(self._held)))

    def lookup(self, key: int) -> tuple[Any, int] | None:
        """The object put under ``key`` and its stamp, or None."""
        held = self._held.get(key)
        return None if held is None else (held[0], held[1])

    def forget(self, key: int) -> None:
        """Forget the object put under ``key`` (replaced, or gone from the node tier)."""
        with self._lock:
            self._drop(key)

    def clear(self) -> None:
        """Forget every object (a reset, a close, a forked child that put none of them)."""
        with self._lock:
            self._held.clear()
            self._nbytes = 0

    def _drop(self, key: int) -> None:
        held = self._held.pop(key, None)
        if held is not None:
            self._nbytes -= held[2]
