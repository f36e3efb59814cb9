"""Keep spillcache objects usable across ``os.fork``.

LMDB forbids using an environment across ``fork``, and a ``threading.Lock`` held by another
thread at the moment of the fork stays locked forever in the child. ``DataLoader(num_workers>0)``
forks by default on Linux, often while our writer thread or a preload thread is busy. Objects
that own such state register here; one process-wide ``os.register_at_fork`` hook then brings each
of them into a fork-safe state before the fork (transactions finished, environment closed, locks
held by the forking thread) and repairs both sides afterwards.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import NamedTuple

__all__ = ["Hook", "register"]

logger = logging.getLogger(__name__)

Hook = Callable[[], None]


class _Hooks(NamedTuple):
    """One object's hooks, held weakly so registration never keeps the object alive."""

    before: weakref.WeakMethod[Hook] | None
    in_parent: weakref.WeakMethod[Hook] | None
    in_child: weakref.WeakMethod[Hook] | None


# Registration order matters: owners register before the objects they own, so owners are
# prepared first (and may still use what they own) and repaired last.
_registry: dict[int, _Hooks] = {}
_registry_lock = threading.Lock()
_counter = 0
_prepared: list[tuple[Hook | None, Hook | None]] = []


def register(
    before: Hook | None = None, in_parent: Hook | None = None, in_child: Hook | None = None
) -> None:
    """Have an object's fork hooks called around every ``os.fork`` while it is alive.

    Parameters
    ----------
    before, in_parent, in_child : bound methods of one object, or None
        Called before the fork, then in the parent or in the child after it; none may raise.
        They are held weakly: when their object is collected its hooks are dropped. ``None``:
        nothing to do at that point.
    """
    hooks = _Hooks(
        *(None if h is None else weakref.WeakMethod(h) for h in (before, in_parent, in_child))
    )
    global _counter
    with _registry_lock:
        _counter += 1
        _registry[_counter] = hooks


def _live() -> list[tuple[Hook | None, Hook | None, Hook | None]]:
    """The hooks of every object still alive, bound (strong references); drops the others."""
    live = []
    for key in sorted(_registry):
        bound = [None if ref is None else ref() for ref in _registry[key]]
        if any(b is None and ref is not None for b, ref in zip(bound, _registry[key], strict=True)):
            del _registry[key]
        else:
            live.append((bound[0], bound[1], bound[2]))
    return live


def _before() -> None:
    _registry_lock.acquire()
    # Strong references for the duration of the fork, so an object cannot vanish between its
    # before and after hooks; an object whose before hook failed is not repaired either.
    _prepared.clear()
    for before, in_parent, in_child in _live():
        if _ran(before):
            _prepared.append((in_parent, in_child))


def _after_in_parent() -> None:
    try:
        for in_parent, _ in reversed(_prepared):
            _ran(in_parent)
        _prepared.clear()
    finally:
        _registry_lock.release()


def _after_in_child() -> None:
    global _registry_lock
    for _, in_child in reversed(_prepared):
        _ran(in_child)
    _prepared.clear()
    _registry_lock = threading.Lock()


def _ran(hook: Hook | None) -> bool:
    """Call ``hook``; a hook that raises is a bug, logged, and must not break the fork."""
    if hook is None:
        return True
    try:
        hook()
    except Exception:
        logger.exception("fork hook %s failed", getattr(hook, "__qualname__", hook))
        return False
    return True


os.register_at_fork(
    before=_before, after_in_parent=_after_in_parent, after_in_child=_after_in_child
)
