"""A gate every use of the LMDB environment passes, so a fork or a close waits for them all.

LMDB forbids using an environment across ``fork`` (and py-lmdb refuses to open one in a child
that inherited it open), so the tier closes its environment before every fork and reopens it
after, which needs every transaction of this process finished first. Many threads may be inside
at once; :meth:`ForkGate.shut` waits until none is and keeps new ones out until
:meth:`ForkGate.reopen`.
"""

from __future__ import annotations

import threading

__all__ = ["ForkGate"]


class ForkGate:
    """Shared entry for uses, exclusive for closing (a fork, a close)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._inside = 0

    def enter(self) -> None:
        """Come in (blocks while the gate is shut)."""
        with self._cond:
            self._inside += 1

    def leave(self) -> None:
        """Go out; the last one out wakes a waiting :meth:`shut`."""
        with self._cond:
            self._inside -= 1
            if not self._inside:
                self._cond.notify_all()

    def shut(self) -> None:
        """Wait until nobody is inside; keep everyone out until :meth:`reopen`.

        Not from a thread that is inside (it would wait for itself).
        """
        self._cond.acquire()
        while self._inside:
            self._cond.wait()

    def reopen(self) -> None:
        """Let uses in again (in a forked child too: the forking thread shut it)."""
        self._cond.release()
