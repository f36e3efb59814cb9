"""This process's LMDB environment of a store: opened at first use, and the transactions on it.

LMDB forbids using an environment across ``fork``: the tier closes it before a fork
(:meth:`Transactions.drop`) and the next transaction, on either side, opens it again. Every
transaction is taken inside the :class:`~spillcache.disk.gate.Gate`, which closing, forking and
growing the map hold alone.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import lmdb

from ..signalsafe import Condition
from .env import DAMAGE_IN_TXN, Dbs, damaged, open_env
from .events import Events
from .gate import Gate
from .index import CheckedChunks

__all__ = ["Transactions"]

logger = logging.getLogger(__name__)

_Txn = TypeVar("_Txn", bound="lmdb.Transaction[Any]")


class Transactions:
    """The environment of a store in this process, and its read and write transactions.

    Parameters
    ----------
    path : Path
        The store directory.
    lock : Condition
        The tier's lock: the environment is opened holding it.
    events : Events
        Where a failed sync is warned about.
    read_only : bool
        Open the environment read-only (the store is not writable for this process).
    readahead : bool
        Let the OS read ahead on page faults.

    Attributes
    ----------
    gate : Gate
        Transactions share it; closing, forking and growing the map hold it alone.
    env : lmdb.Environment or None
        The open environment; None until first use, after a fork and once closed.
    dbs : Dbs
        The handles of the store's named databases (set wherever ``env`` is opened).
    checked : CheckedChunks
        The index chunks found intact in the latest snapshot read (set with ``dbs``).
    data_db, meta_db : lmdb._Database
        The handles of the named databases of ``env`` (set wherever it is opened).
    released : bool
        :meth:`close` was called: the environment is not opened again.
    """

    dbs: Dbs
    checked: CheckedChunks
    data_db: lmdb._Database
    meta_db: lmdb._Database

    def __init__(
        self, path: Path, lock: Condition, events: Events, *, read_only: bool, readahead: bool
    ) -> None:
        self.path = path
        self.read_only = read_only
        self.readahead = readahead
        self.gate = Gate()
        self.env: lmdb.Environment | None = None
        self.released = False
        self._lock = lock
        self._events = events

    def open(self) -> lmdb.Environment:
        """Open the environment now (checked: see :func:`~spillcache.disk.env.open_env`)."""
        opened = open_env(self.path, read_only=self.read_only, readahead=self.readahead)
        self.dbs = opened.dbs
        self.checked = CheckedChunks()
        self.data_db, self.meta_db = opened.dbs.data, opened.dbs.meta
        self.env = opened.env
        return opened.env

    def current(self) -> lmdb.Environment:
        """The environment, opened if need be (caller is inside the gate)."""
        env = self.env
        if env is None:
            with self._lock:
                if self.released:
                    raise ValueError(f"the cache at {str(self.path)!r} is closed")
                env = self.env if self.env is not None else self.open()
        return env

    def read(self) -> contextlib.AbstractContextManager[lmdb.Transaction[memoryview]]:
        """A read transaction whose values are buffers (valid only inside it)."""
        return self._began(lambda env: env.begin(buffers=True))

    def write(self) -> contextlib.AbstractContextManager[lmdb.Transaction[bytes]]:
        """A write transaction (it holds the store's write lock, which every process shares)."""
        return self._began(lambda env: env.begin(write=True))

    @contextlib.contextmanager
    def _began(self, begin: Callable[[lmdb.Environment], _Txn]) -> Iterator[_Txn]:
        """A transaction, inside the gate, that survives another process growing the map."""
        for attempt in range(2):
            with self.gate.shared():
                try:
                    txn = begin(self.current())
                except lmdb.MapResizedError:
                    if attempt:
                        raise
                else:
                    with txn:
                        try:
                            yield txn
                        except DAMAGE_IN_TXN as exc:
                            raise damaged(self.path, exc) from exc
                    return
            self.adopt_map_size()

    def adopt_map_size(self) -> None:
        """Take the size another process grew the map to (after ``MapResizedError``)."""
        with self.gate.exclusive():
            if self.env is not None:
                self.env.set_mapsize(0)

    def grow_map(self, need: int) -> None:
        """Grow the map to hold ``need`` more bytes (at least double it); failures are logged."""
        with self.gate.exclusive():
            env = self.env
            if env is None:
                return
            size = env.info()["map_size"]
            try:
                env.set_mapsize(max(2 * size, size + 2 * need))
            except lmdb.Error as exc:
                logger.debug("growing the map of %s failed: %s", self.path, exc)

    def check_readers(self) -> None:
        """Free the slots of killed readers: they pin old pages and make the file grow."""
        try:
            with self.gate.shared():
                self.current().reader_check()
        except lmdb.Error as exc:
            logger.debug("after a commit to %s: %s", self.path, exc)

    def copy(self, destination: Path) -> None:
        """Write a compacted copy of the committed store (one snapshot) into ``destination``."""
        with self.gate.shared():
            self.current().copy(str(destination), compact=True)

    def sync(self) -> None:
        """Sync what was committed to disk, if the environment is open."""
        with self.gate.shared():
            if self.env is not None:
                self._sync(self.env)

    def _sync(self, env: lmdb.Environment) -> None:
        if self.read_only:
            return
        try:
            env.sync(True)
        except lmdb.Error as exc:  # e.g. EIO from fsync: a storage fault, not a training error
            self._events.warn_once(
                "sync",
                f"syncing the store at {str(self.path)!r} to disk failed ({exc}); what was "
                "committed survives the end of this process, but maybe not an OS crash",
            )

    def drop(self) -> None:
        """Close the environment (caller holds the gate alone, or opened it just now)."""
        if self.env is not None:
            self.env.close()
            self.env = None

    def close(self) -> None:
        """Sync and close the environment for good, once every transaction is finished."""
        with self.gate.exclusive():
            self.released = True
            env, self.env = self.env, None
            if env is not None:
                try:
                    self._sync(env)
                finally:
                    env.close()
