"""The read/write gate of a tier: transactions share it, closing and remapping exclude them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ..signalsafe import Condition

__all__ = ["Gate"]


class Gate:
    """Many holders at once (read and write transactions) or one exclusive holder.

    Exclusive holders (close, fork, map resize) need every transaction of this process finished,
    since ``env.close()`` and ``env.set_mapsize()`` invalidate them and a memory view left over
    from a closed map segfaults.
    """

    def __init__(self) -> None:
        self._cond = Condition()
        self._holders = 0
        self._exclusive = False

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        """Be a shared holder for the ``with`` block."""
        self.enter()
        try:
            yield
        finally:
            self.leave()

    def enter(self) -> None:
        """Become a shared holder (:meth:`shared` without a context manager, for hot paths)."""
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._holders += 1

    def leave(self) -> None:
        """Stop being a shared holder (after :meth:`enter`)."""
        with self._cond:
            self._holders -= 1
            if self._exclusive and not self._holders:
                self._cond.notify_all()

    def lock(self) -> None:
        """Become the exclusive holder, once every shared holder left."""
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._exclusive = True
            while self._holders:
                self._cond.wait()

    def unlock(self) -> None:
        """Stop being the exclusive holder (after :meth:`lock`)."""
        with self._cond:
            self._exclusive = False
            self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Be the exclusive holder for the ``with`` block."""
        self.lock()
        try:
            yield
        finally:
            self.unlock()
