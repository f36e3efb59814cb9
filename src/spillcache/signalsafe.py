"""A condition variable that a Ctrl-C cannot leave locked.

``with threading.Condition():`` enters through Condition's Python-level ``__enter__``: a
signal handled between the lock's acquisition and the return of that frame raises
KeyboardInterrupt with the lock held and the block never entered, so ``__exit__`` never runs
(bpo-29988). The lock then stays held, and the exit hooks that close the store deadlock on it.
:class:`Condition` enters and exits through the lock's own C methods, which leave no such gap.
"""

from __future__ import annotations

import threading
from operator import attrgetter
from typing import Any

__all__ = ["Condition"]


class Condition(threading.Condition):
    """A ``threading.Condition`` whose ``with`` acquires and releases its lock in C.

    Parameters
    ----------
    lock : threading.Lock or threading.RLock, optional
        The lock (a new ``threading.Lock`` by default).
    """

    def __init__(self, lock: Any = None) -> None:
        lock = threading.Lock() if lock is None else lock
        super().__init__(lock)
        self._entered = lock

    # Properties: ``with`` looks the special methods up on the type and binds them through
    # the descriptor, so the lock's C methods run with no Python frame after the acquisition.
    # Their getters are C too (attrgetter, not a lambda): no Python call at all, where every
    # transaction of a disk hit enters and leaves the tier's gate (two calls a ``with``).
    __enter__ = property(attrgetter("_entered.__enter__"))
    __exit__ = property(attrgetter("_entered.__exit__"))
