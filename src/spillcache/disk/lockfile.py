"""The store's lock file: held shared by every process using the store, exclusively by ``clear``."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ..errors import StoreError
from .layout import LOCK_FILE, MARKER, prepare_directory

__all__ = ["enter_store", "try_lock_exclusive"]


def enter_store(root: Path) -> tuple[bool, int | None, bool]:
    """Prepare ``root`` (see :func:`prepare_directory`) and hold its lock file, shared.

    Returns whether the store is writable, the descriptor holding the lock (``None`` for a
    read-only store without a lock file, which nobody can clear anyway) and whether the lock
    file was created (to be removed if the store turns out not to open). ``flock``, not
    ``fcntl``: its lock belongs to the open file, so forked children (DataLoader workers) hold
    it as long as they live, and no other descriptor of the file this process opens and
    closes (``clear`` in this process) releases it. Waits while a ``clear`` holds the lock,
    then checks the store still exists: if it was cleared meanwhile, it is created anew.
    """
    while True:
        writable = prepare_directory(root)
        lock = root / LOCK_FILE
        created = False
        try:
            if writable:
                try:
                    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
                    created = True
                except FileExistsError:
                    fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC)
            else:
                fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            if not writable:
                return False, None, False
            continue  # cleared between the two steps
        except OSError as exc:
            raise StoreError(f"the lock file of the store at {str(root)!r}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            held, now = os.fstat(fd), os.stat(lock)
            if (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino) and (root / MARKER).is_file():
                return writable, fd, created
        except FileNotFoundError:
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def try_lock_exclusive(path: str | os.PathLike[str]) -> int | None:
    """The store's lock held exclusively (its descriptor), or ``None`` if a process holds it.

    A store is in use while any process holds its lock (see :func:`enter_store`); close the
    descriptor to let go.
    """
    fd = os.open(Path(path) / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd
