"""Joining and leaving a node tier: the first user creates it, the last one removes it.

Both happen under the tier's gate (see users.py). The first user (nobody else holds
``users.lock``) removes whatever a crashed run left in the directory, then creates the
environment, the sketch and the ``params`` file, which records the sizes every later user adopts
(LMDB's map size and the sketch's size must agree across processes). LMDB refuses an environment
opened twice in one process, so a process attaches once per tier, however many handles use it
(:func:`attach` counts them). The environment is closed around every fork (see forkgate.py);
a forked child then attaches anew.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import lmdb

from .. import forksafe
from .forkgate import ForkGate
from .ledger import Ledger
from .place import LOCK_FILE_BYTES, Place
from .sketch import SharedSketch
from .stamps import PutStamps
from .users import Membership, gate

__all__ = ["Attached", "attach"]

logger = logging.getLogger(__name__)

_PARAMS = "params"
_SKETCH = "sketch"
_STAMPS = "stamps"
_CONTENTS = ("data.mdb", "lock.mdb", _SKETCH, _STAMPS, _PARAMS, _PARAMS + ".tmp")


@dataclass(frozen=True)
class Params:
    """Sizes fixed by the tier's first user.

    Attributes
    ----------
    asked : int
        The budget the first user asked for.
    budget : int
        The budget it got (smaller if the memory file system is).
    map_size : int
        LMDB map size.
    sketch_bytes : int
        Bytes of frequency counters.
    """

    asked: int
    budget: int
    map_size: int
    sketch_bytes: int


class Attached:
    """This process's use of a tier: its environment, sketch and membership, and their gate.

    Shared by every handle of this process on the tier; the last :meth:`release` leaves it.

    Attributes
    ----------
    first : bool
        Whether this process created the tier.
    pid : int
        The process that attached (a forked child must attach anew).
    gate : ForkGate
        Passed by every use of :attr:`ledger`.
    """

    def __init__(self, params: Params, directory: Path, membership: Membership) -> None:
        self.directory = directory
        self.params = params
        self.membership = membership
        self.first = membership.first
        self.pid = os.getpid()
        self.gate = ForkGate()
        self.handles = 1
        self.ledger = Ledger(directory, params.map_size, params.budget if self.first else None)
        try:
            sketch_bytes = params.sketch_bytes if self.first else None
            self.sketch = SharedSketch(directory / _SKETCH, sketch_bytes)
        except BaseException:
            self.ledger.close()
            raise
        try:
            self.stamps = PutStamps(directory / _STAMPS, create=self.first)
        except BaseException:
            self.ledger.close()
            self.sketch.close()
            raise
        forksafe.register(self._before_fork, self._after_fork_in_parent, self._after_fork_in_child)

    @property
    def current(self) -> bool:
        """Whether this is usable here: not released, and attached by this process."""
        return self.handles > 0 and self.pid == os.getpid()

    def place(self) -> Place:
        """Where this tier lives, with the sizes its first user fixed."""
        p = self.params
        return Place(self.directory, p.budget, p.map_size, p.sketch_bytes)

    def release(self) -> None:
        """One handle fewer; the last one closes all and leaves.

        The last user on the node removes the directory. In a forked child this only unmaps
        the inherited sketch.
        """
        with _registry_lock:
            if self.handles == 0:
                return
            self.handles -= 1
            if self.handles and self.pid == os.getpid():
                return
            if _registry.get(self.directory) is self:
                del _registry[self.directory]
        self.gate.shut()
        try:
            self.ledger.close()
            self.sketch.close()
            self.stamps.close()
            if self.pid == os.getpid():
                with gate(self.directory):
                    self.membership.leave(self.directory)
        finally:
            self.handles = 0
            self.gate.reopen()

    def _before_fork(self) -> None:
        self.gate.shut()
        if self.current:
            self.ledger.close()

    def _after_fork_in_parent(self) -> None:
        try:
            if self.current:
                self.ledger = Ledger(self.directory, self.params.map_size, None)
        except (OSError, lmdb.Error) as exc:  # a fork hook must not raise
            logger.warning(
                "cannot reopen the node RAM tier in %s after a fork: %s", self.directory, exc
            )
        finally:
            self.gate.reopen()

    def _after_fork_in_child(self) -> None:
        self.gate.reopen()


# The tiers this process has attached, by directory.
_registry: dict[Path, Attached] = {}
_registry_lock = threading.Lock()


def _reset_lock() -> None:
    global _registry_lock
    _registry_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_lock)


def attach(place: Place, asked: int) -> Attached:
    """Join the tier at ``place.directory``, creating it if this is its first user on the node.

    Parameters
    ----------
    place : Place
        Where the tier lives and, for a first user, its sizes.
    asked : int
        The budget asked for (recorded by a first user).

    Returns
    -------
    Attached
        This process's attachment, shared with its other handles (one more is counted).

    Raises
    ------
    OSError, lmdb.Error
        If it cannot be created or opened (e.g. the memory file system is full).
    """
    directory = place.directory
    with _registry_lock:
        attached = _registry.get(directory)
        if attached is not None and attached.current:
            attached.handles += 1
            return attached
        attached = _join(place, asked)
        _registry[directory] = attached
        return attached


def _join(place: Place, asked: int) -> Attached:
    directory = place.directory
    with gate(directory):
        membership = Membership(directory)
        try:
            params = _create(place, asked) if membership.first else _read_params(directory)
            attached = Attached(params, directory, membership)
        except BaseException:
            membership.leave(directory)
            raise
        attached.stamps.count_join()
        return attached


def _create(place: Place, asked: int) -> Params:
    for name in _CONTENTS:  # a crashed run's leftovers
        with contextlib.suppress(FileNotFoundError):
            (place.directory / name).unlink()
    _allocate(place.directory / "lock.mdb", LOCK_FILE_BYTES)
    params = Params(asked, place.budget, place.map_size, place.sketch_bytes)
    temporary = place.directory / (_PARAMS + ".tmp")
    temporary.write_text(f"{asked} {place.budget} {place.map_size} {place.sketch_bytes}\n")
    temporary.rename(place.directory / _PARAMS)
    return params


def _read_params(directory: Path) -> Params:
    fields = (directory / _PARAMS).read_text().split()
    if len(fields) != 4 or not all(f.isdigit() for f in fields):
        raise OSError(f"{directory / _PARAMS} is damaged")
    return Params(*(int(f) for f in fields))


def _allocate(path: Path, size: int) -> None:
    """Create LMDB's lock file with its pages allocated, before LMDB opens it.

    LMDB maps the lock file (its reader table) writable and touches a reader slot's page when a
    reader first takes it: on a full tmpfs, a page that is not allocated yet would be SIGBUS.
    LMDB uses a lock file larger than it needs as it is (more reader slots). This must happen
    before LMDB opens the file: closing any fd of it drops the process's fcntl locks on it,
    which LMDB uses to tell live readers from dead ones.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)
