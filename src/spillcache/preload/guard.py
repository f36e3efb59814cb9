"""The store guard: keeps every thread of a stopped preload away from the store.

A load stuck in user code may finish long after ``stop()`` returned; it then must not write
to a store that ``close()`` (or interpreter exit) is closing. Each use of the store by a
thread of the preload happens inside :meth:`StoreGuard.open`, and :meth:`StoreGuard.close`
refuses new users and waits for the current ones, which never block long.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ..signalsafe import Condition

__all__ = ["StoreGuard"]


class StoreGuard:
    """Lets threads use the store until it is closed; closing waits for the current users.

    Parameters
    ----------
    closed : bool
        Start closed (the copy of a preload in a forked child).

    Attributes
    ----------
    closed : bool
        Whether :meth:`close` was called: no new user gets in.
    """

    def __init__(self, *, closed: bool = False) -> None:
        self._cond = Condition()
        self._users = 0
        self.closed = closed

    @contextlib.contextmanager
    def open(self) -> Iterator[bool]:
        """Yield whether the store may be used; it stays usable until the block ends."""
        with self._cond:
            entered = not self.closed
            self._users += entered
        try:
            yield entered
        finally:
            if entered:
                with self._cond:
                    self._users -= 1
                    if not self._users:
                        self._cond.notify_all()

    def close(self) -> None:
        """Refuse new users and wait until the current ones are done (they never block long)."""
        with self._cond:
            self.closed = True
            while self._users:
                self._cond.wait()
