"""The state every part of :class:`~spillcache.cache.SpillCache` shares, and its checks.

:class:`SpillCache` is assembled from one base class per concern (reads, the miss hook, puts),
rather than from objects it holds: a hit then pays no extra call. They share the state this
module declares, which only they touch.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..counters import CORRUPT, Counters
from ..disk import DiskTier
from ..errors import CodecError, SpillCacheWarning
from ..flight import SingleFlight
from ..nodelink import NodeLink
from ..overtaking import Overtaking
from ..ram import RamTier
from ..userwarn import warn

__all__ = ["CacheState"]


class CacheState:
    """What a :class:`~spillcache.cache.SpillCache` holds, with the checks its parts share.

    Attributes
    ----------
    _disk : DiskTier
        The store, shared with every other object on it in this process.
    _generation : bytes or None
        The generation of the store this object's data is under.
    _ram : RamTier
        This process's decoded samples, guarded by ``_lock``.
    _reads : Overtaking
        The admitting reads in flight, which a put of their key overtakes.
    _counters : Counters
        Requests counted, by tier.
    _node : NodeLink
        This object's use of the store's node RAM tier (shared by the node's processes).
    _flights : SingleFlight
        The loads in progress, one per key.
    """

    _disk: DiskTier
    _generation: bytes | None
    _ram_budget: int
    _copy: bool
    _fingerprint: str | None
    _closed: bool
    _parent_block: Path | None
    _lock: threading.Lock
    _ram: RamTier
    _admits: bool | None
    _reads: Overtaking
    _warned: set[str]
    _flights: SingleFlight
    _counters: Counters
    _node: NodeLink
    _finalizer: weakref.finalize[Any, Any]

    @property
    def path(self) -> Path:
        """Directory of the store."""
        return self._disk.path

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed or self._disk.closed

    def _current(self) -> bool:
        """Whether the store still holds this object's data (raises if closed).

        Not once another object on the same store in this process emptied it for other data:
        this one then serves what it misses from its source and stores nothing more.
        """
        if self._closed:
            raise ValueError(f"the cache at {str(self.path)!r} is closed")
        if self._generation == self._disk.view.current:
            return True
        self._warn_once(
            "stale",
            f"the store at {str(self.path)!r} was emptied for other data by another cache "
            "object of this process: this cache stores nothing more in it and serves what it "
            "does not hold in RAM from its source",
        )
        return False

    def _found_corrupt(self, k: int, exc: CodecError) -> None:
        """Count and warn about the corrupt entry under ``k``, served as a miss."""
        with self._lock:
            self._counters.add(CORRUPT)
        self._warn_once(
            "corrupt",
            f"a corrupt entry (key {k}) in the store at {str(self.path)!r} was ignored and "
            f"will be replaced by the next put ({exc}); further ones are only counted",
        )

    def _read(self, key: int, reader: Callable[[memoryview | bytes], Any]) -> Any | None:
        """``reader`` of the value under ``key``; None if missing or this object's data is gone."""
        if not self._current():
            return None
        value = self._disk.read(key, reader)
        return value if self._generation == self._disk.view.current else None

    def _may_admit(self) -> bool:
        """Whether this process adds samples to its RAM tier.

        DataLoader workers do not: per-worker RAM tiers would hold up to ``num_workers + 1``
        budgets, or, split, each serve only ``1 / num_workers`` of the hits. Workers read what
        the main process had in RAM when they were forked (copy-on-write: the sample data is
        not copied) and otherwise the LMDB pages in the OS page cache, which all processes share.
        """
        admits = self._admits
        if admits is None:
            admits = self._admits = self._ram_budget > 0 and not self._counters.worker
        return admits

    def _warn_once(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            warn(message, SpillCacheWarning)
