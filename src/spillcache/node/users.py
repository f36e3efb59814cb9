"""Who uses a node tier: liveness by ``flock``, so a killed process never counts as a user.

A tier directory holds two lock files. ``users.lock`` is held shared by every process that has
the tier open, for as long as it has it open; the kernel drops the lock when the process dies,
however it dies, so "nobody holds it" means "no live user" (PIDs are not trusted: they are
reused, and a PID namespace hides them). ``gate.lock`` is held exclusively for the moment of an
open or a close, so that "am I the first?" and "am I the last?" are each answered while nobody
else joins or leaves.

A closer that finds itself last removes the directory, gate and all; a process that was waiting
for that gate then holds a lock on a removed file. So whoever takes the gate checks that the
path still names the file it locked (same inode), and otherwise starts again.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path

__all__ = ["Membership", "gate", "remove_if_unused"]

_GATE = "gate.lock"
_USERS = "users.lock"
_ATTEMPTS = 100


def _open_locked(path: Path, blocking: bool) -> int | None:
    """An fd of ``path`` (created if missing) locked exclusively, or None if it is busy/gone.

    The fd is in ``_gates`` from its open to its close (see there), so a fork at any moment
    closes the child's copy.
    """
    for _ in range(_ATTEMPTS):
        with _forking:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            except FileNotFoundError:  # the directory was removed by a last closer
                return None
            _gates.add(fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            _close_gate(fd)
            return None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        _close_gate(fd)  # locked a file a last closer removed meanwhile: try the new one
    raise OSError(errno.EAGAIN, f"{path} keeps being removed and re-created")


def _close_gate(fd: int) -> None:
    """Close a gate's fd and forget it, in one step as far as a fork can tell."""
    with _forking:
        if fd in _gates:
            _gates.discard(fd)
            os.close(fd)


@contextlib.contextmanager
def gate(directory: Path, *, blocking: bool = True) -> Iterator[bool]:
    """Hold ``directory``'s gate; yields False if it is busy (non-blocking) or gone.

    Parameters
    ----------
    directory : Path
        A tier directory (created if ``blocking`` and missing).
    blocking : bool
        Wait for the gate; else yield False at once if another process holds it.
    """
    if blocking:
        directory.mkdir(mode=0o700, exist_ok=True)
    fd = None
    for _ in range(_ATTEMPTS):
        fd = _open_locked(directory / _GATE, blocking)
        if fd is not None or not blocking:
            break
        directory.mkdir(mode=0o700, exist_ok=True)  # removed between mkdir and open
    try:
        yield fd is not None
    finally:
        if fd is not None:
            _close_gate(fd)


def _unused(directory: Path) -> bool:
    """Whether no live process holds ``users.lock`` (call with the gate held)."""
    try:
        fd = os.open(directory / _USERS, os.O_RDWR)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def remove_if_unused(directory: Path) -> bool:
    """Remove ``directory`` if no live process uses it (call with its gate held).

    Returns
    -------
    bool
        Whether it was removed.
    """
    if not _unused(directory):
        return False
    shutil.rmtree(directory, ignore_errors=True)
    return not directory.exists()


class Membership:
    """This process's shared hold on ``users.lock``: it counts as a user while this is open.

    Taken and released with the gate held. The fd is not inherited by exec'd children; a
    forked child holds a copy of it, which it must :meth:`forget` (closing a copy releases
    nothing while the parent keeps its own).
    """

    def __init__(self, directory: Path) -> None:
        self.first = _unused(directory)
        with _forking:  # held from its open: a child forked at any moment forgets its copy
            self._fd: int | None = os.open(directory / _USERS, os.O_RDWR | os.O_CREAT, 0o600)
            _held.add(self)
        fcntl.flock(self._fd, fcntl.LOCK_SH)

    def leave(self, directory: Path) -> bool:
        """Stop being a user; remove ``directory`` if that made it unused (gate held).

        Returns
        -------
        bool
            Whether this was the last user (the directory is gone).
        """
        self.forget()
        return remove_if_unused(directory)

    def forget(self) -> None:
        """Close this process's fd (in a forked child: the parent's hold stays). Idempotent."""
        with _forking:  # a child forked in between must not close the fd number again
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


# A forked child is no user until it opens the tier itself: drop its copies of the holds at
# once, so that a parent closing while the child lives still finds itself last.
_held: weakref.WeakSet[Membership] = weakref.WeakSet()


# The gates other threads hold at a fork: a child inheriting one would hold the gate's lock
# (a flock belongs to the open file, which the child shares) and wait for itself at its own
# first open. Its copies are closed at once; the parent's close then releases the lock. An fd
# is listed from its open to its close, not only while locked: a fork between the flock and
# the listing (a DataLoader forking its next worker while the first worker's fork hook opens
# the tier in a thread) left the child holding the gate, and every worker waited forever.
_gates: set[int] = set()

# Held by a fork (before and until after it) and around each open and close of these fds, so
# a child sees each fd listed exactly while it is open.
_forking = threading.RLock()


def _forget_all() -> None:
    for membership in list(_held):
        membership.forget()
    for fd in list(_gates):
        os.close(fd)
    _gates.clear()


def _after_fork_in_child() -> None:
    _forking.release()  # the child's one thread: nothing opens or closes meanwhile
    _forget_all()


os.register_at_fork(
    before=_forking.acquire, after_in_parent=_forking.release, after_in_child=_after_fork_in_child
)
