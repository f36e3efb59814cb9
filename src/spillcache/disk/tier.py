"""The disk tier: one LMDB store in a directory, shared by every process of a node.

A store directory holds exactly the files the store owns (:mod:`spillcache.disk.layout`). A
process has one tier per store (:func:`~spillcache.disk.opening.open_tier`), shared by its
users. :class:`DiskTier` ties the parts together: the environment and its transactions
(:mod:`~spillcache.disk.transactions`), the store's generation (:mod:`~spillcache.disk.generation`),
the read path (:mod:`~spillcache.disk.reading`), the write path (:mod:`~spillcache.disk.writing`,
:mod:`~spillcache.disk.writer`, :mod:`~spillcache.disk.commits`), counters and warnings
(:mod:`~spillcache.disk.events`).

Durability: writes are committed in batches by the writer thread, and on :meth:`DiskTier.flush`
/ :meth:`DiskTier.close` / interpreter exit (also in DataLoader workers). A committed
transaction survives the death of the process; ``flush`` and ``close`` sync it to disk. LMDB's
copy-on-write B-tree means a store is never left half-written.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from .. import forksafe
from ..errors import StoreError
from ..signalsafe import Condition
from .buffers import BufferPool
from .commits import Committer
from .events import Events
from .filesystem import require_local
from .fill import FillPolicy
from .generation import Generation
from .layout import LOCK_FILE, MARKER, is_store
from .lockfile import enter_store
from .options import TierOptions
from .reading import Reading
from .registry import Registry
from .transactions import Transactions
from .writer import MAX_QUEUED_BYTES, WriteQueue
from .writing import Writing

__all__ = ["TIERS", "DiskTier"]

logger = logging.getLogger(__name__)


class DiskTier(Reading, Writing):
    """An LMDB store of encoded samples with a batching writer thread.

    Safe to use from several threads; survives ``os.fork`` (the environment is closed before a
    fork and reopened lazily on either side) and pickling (only the path and settings travel).
    Its read methods (:meth:`read`, :meth:`contains`, :meth:`scan`, ...) are those of
    :class:`~spillcache.disk.reading.Reading`, its write methods (:meth:`write`,
    :meth:`buffer`, :meth:`store_batch`) those of :class:`~spillcache.disk.writing.Writing`.

    Parameters
    ----------
    path : str or os.PathLike
        Store directory: created if missing; an empty directory becomes a store; a directory holding
        anything else raises :class:`~spillcache.errors.StoreError` and is left untouched.
    options : TierOptions
        How to open it.

    A process has at most one tier per store (LMDB allows one environment per file and
    process): build tiers with :func:`open_tier`, which shares the open one and counts its
    users, never directly.
    """

    _delete_on_close: int | None

    def __init__(self, path: str | os.PathLike[str], options: TierOptions) -> None:
        self.path = Path(path)
        if not options.allow_remote_fs:
            require_local(self.path)
        new_store = not (self.path / MARKER).is_file()
        writable, lock_fd, created = enter_store(self.path)
        self._setup(options, None, lock_fd, read_only=not writable)
        if options.temporary:
            self._delete_on_close = os.getpid()
        try:
            self.view.open(options)
        except BaseException:
            self._drop_lock()
            if created:  # a directory that is not ours after all stays as it was
                with contextlib.suppress(OSError):
                    (self.path / LOCK_FILE).unlink()
            raise
        self._register()
        log = logger.info if options.check_identity else logger.debug  # inspection is not a use
        log(
            "%s the store at %s (entries: %d)",
            "created" if new_store else "opened",
            path,
            len(self),
        )

    def _setup(
        self,
        options: TierOptions,
        generation: bytes | None,
        lock_fd: int | None,
        *,
        read_only: bool,
    ) -> None:
        self._key = os.path.realpath(self.path)
        self.readahead = options.readahead
        # The descriptor holding the store's lock file; the pid that deletes the store when
        # the tier closes (a temporary store).
        self._lock_fd = lock_fd
        self._delete_on_close = None
        self._users = 0
        # The last user released the tier, or it is being closed: the registry waits it out.
        self.closing = False
        self.events = Events()
        self._init_runtime_state(options.budget, read_only, generation, options.fingerprint)

    def _init_runtime_state(
        self,
        budget: int | None,
        read_only: bool,
        generation: bytes | None,
        fingerprint: str | None,
    ) -> None:
        """State that lives in one process only (rebuilt after fork and unpickling)."""
        lock = self.lock = Condition()
        self.txns = Transactions(
            self.path, lock, self.events, read_only=read_only, readahead=self.readahead
        )
        self.pool = BufferPool(lock, MAX_QUEUED_BYTES)
        self.writes = WriteQueue(
            lock,
            self.pool,
            self,
            name=f"spillcache-writer:{self.path.name}",
            on_start=TIERS.ensure_exit_hook,
        )
        self.view = Generation(self.txns, self.writes, self.events, generation, fingerprint)
        self.fill = FillPolicy(self.path, budget)
        self.committer = Committer(self.txns, self.view, self.pool, self.fill, self.events)

    def _register(self) -> None:
        forksafe.register(self._before_fork, self._after_fork_in_parent, self._after_fork_in_child)
        if not TIERS.add(self._key, self):
            raise StoreError(f"the store at {str(self.path)!r} is already open in this process")

    def _drop_lock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)

    # -- settings and state ----------------------------------------------------------------------

    @property
    def budget(self) -> int | None:
        """Bytes the data file never exceeds (``None``: keep the file system's floor free)."""
        return self.fill.budget

    @budget.setter
    def budget(self, budget: int | None) -> None:
        self.fill.budget = budget

    @property
    def generation(self) -> bytes | None:
        """The generation this process's writes belong to (see :class:`Generation`)."""
        return self.view.current

    @property
    def fingerprint(self) -> str | None:
        """The fingerprint of the data this process stores."""
        return self.view.fingerprint

    @property
    def read_only(self) -> bool:
        """Whether the store is read-only for this process (it serves, stores nothing)."""
        return self.txns.read_only

    @property
    def rejected(self) -> int:
        """Entries refused (full, read-only, stale store) or dropped from the queue."""
        return self.events.rejected

    @property
    def write_errors(self) -> int:
        """Entries a storage fault kept from being stored."""
        return self.events.write_errors

    # -- pickling (spawn / forkserver workers) ---------------------------------------------------

    def __reduce__(self) -> tuple[Callable[..., DiskTier], tuple[object, ...]]:
        # Only the path and settings travel; unpickling is one more use of the tier of that
        # store in the receiving process (the same one, in the process that pickled).
        options = TierOptions(self.fingerprint, budget=self.budget, readahead=self.readahead)
        return DiskTier.attach, (str(self.path), options, self.generation)

    @classmethod
    def attach(cls, path: str, options: TierOptions, generation: bytes | None) -> DiskTier:
        """Unpickle a tier: one more use of this process's tier of the store, opened if need be.

        ``generation``: the one the pickling process wrote to, which this process writes to.
        """
        with TIERS.lock:
            tier = TIERS.live_locked(os.path.realpath(path))
            if tier is None:
                tier = cls._attached(path, options, generation)
            tier.add_user()
            return tier

    @classmethod
    def _attached(cls, path: str, options: TierOptions, generation: bytes | None) -> DiskTier:
        """The tier of a store another process has open (environment opened at first use)."""
        if not is_store(path):
            raise StoreError(f"path={path!r} is no longer a spillcache store")
        tier = cls.__new__(cls)
        tier.path = Path(path)
        writable, lock_fd, _ = enter_store(tier.path)
        tier._setup(options, generation, lock_fd, read_only=not writable)
        tier._register()
        logger.debug("reopened the store at %s in process %d", tier.path, os.getpid())
        return tier

    # -- users ------------------------------------------------------------------------------------

    def add_user(self) -> None:
        """One more user of the tier (caller holds the registry's lock)."""
        self._users += 1

    def release(self) -> None:
        """One user (see :func:`open_tier`) is done with the tier; the last one closes it."""
        with TIERS.lock:
            self._users -= 1
            if self._users > 0 or self.closing:
                return
            self.closing = True
        self.close()

    # -- the store's identity (see Generation) ----------------------------------------------------

    def reset(self, reason: str | None, fingerprint: str | None) -> bytes:
        """Empty the store for ``fingerprint``; its new generation (:meth:`Generation.reset`)."""
        return self.view.reset(reason, fingerprint)

    def retire(self) -> None:
        """Empty the store and mark it cleared (:meth:`Generation.retire`)."""
        self.view.retire()

    def set_meta(self, name: str, value: bytes) -> None:
        """Record a small metadata value, committed before returning (:meth:`Generation.set_meta`).

        Another process never sees the record without the entries queued before it (a data
        set's probe digests, then the probed samples loaded once more by a DDP rank that
        opened the store in between).
        """
        self.view.set_meta(name, value)

    # -- writing (see Writing) ------------------------------------------------------------------

    def flush(self) -> None:
        """Commit everything queued and sync it to disk; return when done."""
        self.writes.commit_queued()
        self.txns.sync()

    def commit(self) -> None:
        """Commit everything queued (without syncing it to disk); return when done.

        The calling thread commits what the writer thread is not busy with itself
        (:meth:`~spillcache.disk.writer.WriteQueue.commit`).
        """
        self.writes.commit()

    def copy_to(self, destination: Path) -> None:
        """Write a compacted copy of the committed store into the directory ``destination``.

        A consistent snapshot (one read transaction) taken after committing what this process
        has queued; other processes may keep writing meanwhile.
        """
        self.flush()
        self.txns.copy(destination)

    def file_bytes(self) -> int:
        """Size of the data file in bytes."""
        try:
            return (self.path / "data.mdb").stat().st_size
        except FileNotFoundError:
            return 0

    # -- closing ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Commit what is queued, sync, and close the environment, for every user. Idempotent."""
        with self.lock:
            if self.writes.closed:
                return
            self.writes.closed = True
            self.lock.notify_all()
        with TIERS.lock:
            self.closing = True
        try:
            self.writes.stop()
            self.txns.close()
            if self._delete_on_close == os.getpid():
                shutil.rmtree(self.path, ignore_errors=True)
        finally:
            self._drop_lock()
            TIERS.remove(self._key, self)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self.writes.closed

    # -- fork ------------------------------------------------------------------------------------

    def _before_fork(self) -> None:
        # Finish every transaction and close the environment: LMDB forbids using it across fork.
        with self.lock:
            self.writes.forking = True
        self.writes.stop()
        self.txns.gate.lock()
        self.lock.acquire()
        self.txns.drop()

    def _after_fork_in_parent(self) -> None:
        self.writes.forking = False
        if self.writes.queue:
            self.writes.ensure_writer_locked()
        self.lock.notify_all()
        self.lock.release()
        self.txns.gate.unlock()

    def _after_fork_in_child(self) -> None:
        # What this process knows of the store goes on; locks, threads and the environment
        # are new.
        txns, writes, view = self.txns, self.writes, self.view
        self.events = self.events.renewed()
        self._init_runtime_state(self.budget, txns.read_only, view.current, view.fingerprint)
        self.view.stale = view.stale
        self.writes.closed, self.txns.released = writes.closed, txns.released


# The open tier of each store in this process.
TIERS: Registry[DiskTier] = Registry()
