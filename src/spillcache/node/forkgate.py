"""A gate every use of the LMDB environment passes, so a fork or a close waits for them all.

LMDB forbids using an environment across ``fork`` (and py-lmdb refuses to open one in a child
that inherited it open), so the tier closes its environment before every fork and reopens it
after, which needs every transaction of this process finished first. Many threads may be inside
at once; :meth:`ForkGate.shut` waits until none is and keeps new ones out until
:meth:`ForkGate.reopen`.
"""

from __future__ import annotations

import threading
import time

__all__ = ["ForkGate"]

# A shut gate polls for the last use to leave: uses are single LMDB transactions (microseconds),
# and polling keeps the two calls every use makes at one uncontended lock each.
_POLL_SECONDS = 0.0005


class ForkGate:
    """Shared entry for uses, exclusive for closing (a fork, a close)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inside = 0

    def enter(self) -> None:
        """Come in (blocks while the gate is shut)."""
        with self._lock:
            self._inside += 1

    def leave(self) -> None:
        """Go out."""
        with self._lock:
            self._inside -= 1

    def shut(self) -> None:
        """Wait until nobody is inside; keep everyone out until :meth:`reopen`.

        Not from a thread that is inside (it would wait for itself).
        """
        while True:
            self._lock.acquire()
            if not self._inside:
                return
            self._lock.release()
            time.sleep(_POLL_SECONDS)

    def reopen(self) -> None:
        """Let uses in again (in a forked child too: the forking thread shut it)."""
        self._lock.release()
