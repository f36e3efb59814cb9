"""Keep spillcache objects usable across ``os.fork``.

LMDB forbids using an environment across ``fork``, and a ``threading.Lock`` held by another
thread at the moment of the fork stays locked forever in the child. ``DataLoader(num_workers>0)``
forks by default on Linux, often while our writer thread or a preload thread is busy. Objects
that own such state register here; one process-wide ``os.register_at_fork`` hook then brings each
of them into a fork-safe state before the fork (transactions finished, environment closed, locks
held by the forking thread) and repairs both sides afterwards.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Protocol

__all__ = ["ForkAware", "register"]


class ForkAware(Protocol):
    """What a registered object provides; each hook must not raise."""

    def _before_fork(self) -> None: ...

    def _after_fork_in_parent(self) -> None: ...

    def _after_fork_in_child(self) -> None: ...


# Registration order matters: owners register before the objects they own, so owners are
# prepared first (and may still use what they own) and repaired last.
_registry: weakref.WeakValueDictionary[int, ForkAware] = weakref.WeakValueDictionary()
_registry_lock = threading.Lock()
_counter = 0
_prepared: list[ForkAware] = []


def register(obj: ForkAware) -> None:
    """Have ``obj``'s fork hooks called around every ``os.fork`` while ``obj`` is alive."""
    global _counter
    with _registry_lock:
        _counter += 1
        _registry[_counter] = obj


def _before() -> None:
    _registry_lock.acquire()
    # Strong references for the duration of the fork, so an object cannot vanish between its
    # before and after hooks.
    _prepared[:] = [o for k in sorted(_registry.keys()) if (o := _registry.get(k)) is not None]
    for obj in _prepared:
        obj._before_fork()


def _after_in_parent() -> None:
    for obj in reversed(_prepared):
        obj._after_fork_in_parent()
    _prepared.clear()
    _registry_lock.release()


def _after_in_child() -> None:
    global _registry_lock
    for obj in reversed(_prepared):
        obj._after_fork_in_child()
    _prepared.clear()
    _registry_lock = threading.Lock()


os.register_at_fork(
    before=_before, after_in_parent=_after_in_parent, after_in_child=_after_in_child
)
