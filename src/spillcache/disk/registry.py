"""The open tier of each store in this process, and closing them all when the process exits.

LMDB allows one environment per file and process, so a process has at most one tier per
store, shared by its users (:func:`spillcache.disk.opening.open_tier`). A :class:`Registry`
holds them by real path and closes those still open at interpreter exit, in
``multiprocessing`` children (DataLoader workers) too.
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing.util
import os
import threading
from typing import Generic, Protocol, TypeVar

from ..signalsafe import Condition

__all__ = ["Registry"]


class _Tier(Protocol):
    @property
    def closing(self) -> bool: ...

    def close(self) -> None: ...


T = TypeVar("T", bound=_Tier)


class Registry(Generic[T]):
    """Open tiers by key (a store's real path), under a re-entrant lock.

    Re-entrant: a cache collected while the lock is held (the cycle collector runs anywhere)
    releases its tier. A tier that is ``closing`` is waited out by :meth:`live_locked`.
    """

    def __init__(self) -> None:
        self.tiers: dict[str, T] = {}
        self.lock = Condition(threading.RLock())
        self._exit_hook_pid: int | None = None
        # A thread of the parent may have held the lock at the fork.
        os.register_at_fork(after_in_child=self._renew_lock)
        atexit.register(self.close_all)

    def _renew_lock(self) -> None:
        self.lock = Condition(threading.RLock())

    def live_locked(self, key: str) -> T | None:
        """The usable tier of ``key`` (caller holds the lock); waits out one being closed."""
        while True:
            tier = self.tiers.get(key)
            if tier is None or not tier.closing:
                return tier
            self.lock.wait()

    def get(self, key: str) -> T | None:
        """The tier of ``key``, closing or not."""
        return self.tiers.get(key)

    def add(self, key: str, tier: T) -> bool:
        """Make ``tier`` the one of ``key``; False if another tier holds it."""
        with self.lock:
            if self.tiers.get(key) not in (None, tier):
                return False
            self.tiers[key] = tier
            return True

    def remove(self, key: str, tier: T) -> None:
        """``tier`` is closed: forget it (if it still holds ``key``), wake who waits."""
        with self.lock:
            if self.tiers.get(key) is tier:
                del self.tiers[key]
            self.lock.notify_all()

    def close_all(self) -> None:
        """Commit what live stores have queued when the process exits: close them."""
        for tier in list(self.tiers.values()):
            with contextlib.suppress(Exception):
                tier.close()

    def ensure_exit_hook(self) -> None:
        """Close live stores when a multiprocessing child exits, too.

        Children of ``multiprocessing`` (DataLoader workers among them) end with ``os._exit``
        and skip ``atexit``; they do run multiprocessing's own finalizers, registered here
        once per process, at the first write (registrations made before the child's
        bootstrap are cleared).
        """
        if self._exit_hook_pid != os.getpid():
            self._exit_hook_pid = os.getpid()
            multiprocessing.util.Finalize(None, self.close_all, exitpriority=100)
