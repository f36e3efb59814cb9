"""The disk tier: one LMDB store in a directory, shared by every process of a node.

A store directory holds exactly the files the store owns: ``spillcache.json`` (the marker that
tells a store from any other directory, written before anything else), ``spillcache.lock``
(which every process holding the store open holds shared, see :func:`enter_store`), LMDB's
``data.mdb`` and ``lock.mdb``, and transient ``spillcache.json.<pid>.tmp`` files while the
marker is written. Inside LMDB the named database ``data`` maps 8-byte big-endian keys to
encoded samples and ``meta`` records the format version, the fingerprint, the creation time
and the generation (replaced whenever the store is emptied; checked in every write and read
transaction, so that a process whose view is stale neither writes into a rebuilt store nor
serves its entries). A process has one tier per store (:func:`open_tier`), shared by its
users.

Durability: writes are queued and committed by one writer thread per process in batched
transactions — when ``_BATCH_BYTES`` (1 MiB) are queued, at the latest ``_COMMIT_INTERVAL``
(0.25 s) after a put, and on :meth:`DiskTier.flush` / :meth:`DiskTier.close` / interpreter exit
(also in DataLoader workers). The environment runs with ``sync=False``: a committed transaction
survives the death of the process (``kill -9``); only an OS crash or power loss can lose
transactions committed since the last ``flush``/``close``, which call ``env.sync(True)``.
LMDB's copy-on-write B-tree means a store is never left half-written.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import lmdb

from .. import forksafe
from ..errors import FingerprintMismatch, SpillCacheWarning, StoreError
from ..settings import OnMismatch
from ..signalsafe import Condition
from ..userwarn import warn
from .buffers import RECYCLE_MIN, BufferPool
from .env import DAMAGE_IN_TXN, DamagedStore, damaged, key_bytes, open_env
from .filesystem import require_local
from .fill import FillPolicy
from .gate import Gate
from .layout import (
    LMDB_FILES,
    LOCK_FILE,
    MARKER,
    is_store,
)
from .lockfile import enter_store
from .meta import CLEARED, GENERATION, describe, identity, new_generation, put_meta, recorded
from .options import TierOptions
from .registry import Registry
from .values import Buffer, Stored, Value, readable
from .writer import MAX_QUEUED_BYTES, Batch, Pending, WriteQueue

__all__ = ["TIERS", "DiskTier"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
_Txn = TypeVar("_Txn", bound="lmdb.Transaction[Any]")

# After commits, the slots of killed readers are cleared once this many bytes were committed
# since the last time (the file may grow by this much while a killed reader's slot pins old
# pages), or this many seconds passed: not after every commit, since each check makes a training
# thread that holds the GIL wait (docs/design.rst, "Batch sizes").
_CHECK_BYTES = 4 << 20
_CHECK_SECONDS = 0.25


class _Stale(Exception):
    """Raised inside a write transaction that finds the store of another generation."""

    def __init__(self, stored: bytes | None) -> None:
        super().__init__()
        self.stored = stored


class DiskTier:
    """An LMDB store of encoded samples with a batching writer thread.

    Safe to use from several threads; survives ``os.fork`` (the environment is closed before a
    fork and reopened lazily on either side) and pickling (only the path and settings travel).

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

    _env: lmdb.Environment | None
    # The descriptor holding the store's lock file (see _enter); the pid that deletes the
    # store when the tier closes (a temporary store).
    _lock_fd: int | None
    _delete_on_close: int | None
    # Handles of the named databases of the current environment (set wherever it is opened).
    _data_db: lmdb._Database
    _meta_db: lmdb._Database

    def __init__(
        self,
        path: str | os.PathLike[str],
        options: TierOptions,
    ) -> None:
        self._setup(path, options, None)
        if not options.allow_remote_fs:
            require_local(self.path)
        if options.temporary:
            self._delete_on_close = os.getpid()
        new_store = not (self.path / MARKER).is_file()
        writable, self._lock_fd, created = enter_store(self.path)
        self.read_only = not writable
        try:
            if options.check_identity:
                self._open_checked(options.on_mismatch)
                if self.read_only:
                    self._warn_once(
                        "read-only",
                        f"the store at {str(self.path)!r} is read-only for this user (a "
                        "read-only mount, another user's store): it serves what it holds and "
                        "stores nothing new",
                    )
            else:
                self._env = self._open_env()
                with self._read_txn() as txn:
                    stored = txn.get(GENERATION, db=self._meta_db)
                self.generation = None if stored is None else bytes(stored)
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
        self, path: str | os.PathLike[str], options: TierOptions, generation: bytes | None
    ) -> None:
        self.path = Path(path)
        self.fingerprint = options.fingerprint
        self.fill = FillPolicy(self.path, options.budget)  # renewed with the runtime state
        self.readahead = options.readahead
        # The generation this process's writes belong to; None for a store without one (an
        # older version's, read-only) or while the store is being emptied.
        self.generation = generation
        self.read_only = False
        self._lock_fd = None
        self._delete_on_close = None
        self._key = os.path.realpath(self.path)
        self._users = 0
        # The last user released the tier, or it is being closed: the registry waits it out.
        self.closing = False
        # Another process emptied the store since this process's view of it (rebuilt or
        # cleared): nothing more is written, nothing read is served.
        self._stale = False
        self._init_runtime_state()

    @property
    def budget(self) -> int | None:
        """Bytes the data file never exceeds (``None``: keep the file system's floor free)."""
        return self.fill.budget

    @budget.setter
    def budget(self, budget: int | None) -> None:
        self.fill.budget = budget

    def _register(self) -> None:
        forksafe.register(self._before_fork, self._after_fork_in_parent, self._after_fork_in_child)
        if not TIERS.add(self._key, self):
            raise StoreError(f"the store at {str(self.path)!r} is already open in this process")

    def _drop_lock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)

    def _init_runtime_state(self) -> None:
        """State that lives in one process only (rebuilt after fork and unpickling)."""
        self._state = Condition()
        self._gate = Gate()
        self._env = None
        self.pool = BufferPool(self._state, MAX_QUEUED_BYTES)
        self.writes = WriteQueue(
            self._state,
            self.pool,
            self,
            name=f"spillcache-writer:{self.path.name}",
            on_start=TIERS.ensure_exit_hook,
        )
        self._env_released = False
        self.fill = FillPolicy(self.path, self.fill.budget)
        self._readers_checked_at = 0.0
        self._unchecked_bytes = 0
        self.rejected = 0
        self.write_errors = 0
        self._warned: set[str] = set()

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
        tier = cls.__new__(cls)
        tier._setup(path, options, generation)
        if not is_store(tier.path):
            raise StoreError(f"path={path!r} is no longer a spillcache store")
        writable, tier._lock_fd, _ = enter_store(tier.path)
        tier.read_only = not writable
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

    # -- opening ---------------------------------------------------------------------------------

    def _open_env(self) -> lmdb.Environment:
        opened = open_env(self.path, read_only=self.read_only, readahead=self.readahead)
        self._data_db, self._meta_db = opened.data_db, opened.meta_db
        return opened.env

    def _open_checked(self, on_mismatch: OnMismatch) -> None:
        try:
            self._open_and_identify(on_mismatch)
        except DamagedStore as exc:
            if on_mismatch != "rebuild" or self.read_only:
                raise
            # Only the LMDB files of a directory with our marker: a damaged store of ours.
            self._warn_once("damaged", f"{exc}; rebuilding it empty")
            for name in LMDB_FILES:
                with contextlib.suppress(FileNotFoundError):
                    (self.path / name).unlink()
            self._open_and_identify(on_mismatch)

    def _open_and_identify(self, on_mismatch: OnMismatch) -> None:
        self._env = self._open_env()
        try:
            self.identify(self.fingerprint, on_mismatch)
        except BaseException:
            self._env.close()
            self._env = None
            raise

    def identify(self, fingerprint: str | None, on_mismatch: OnMismatch) -> bytes | None:
        """Check the store holds ``fingerprint``'s data, per ``on_mismatch``; its generation.

        The generation is what the opener's reads and writes belong to (see
        :meth:`generation`): the stored one, or a new one if the store was (re)built for it.
        """
        expected = identity(fingerprint)
        if self.read_only:
            with self._read_txn() as txn:
                stored_fmt, stored_fp, generation = recorded(txn, self._meta_db)
        else:
            with self._write_txn() as txn:
                stored_fmt, stored_fp, generation = recorded(txn, self._meta_db)
                if stored_fmt is None:  # a new store; in this transaction, or a process
                    # creating it at the same time would give it another generation
                    generation = put_meta(txn, self._meta_db, fingerprint)
                elif generation is None:  # an older version's store
                    generation = new_generation()
                    txn.put(GENERATION, generation, db=self._meta_db)
        if stored_fmt is None:
            if self.read_only:
                raise StoreError(f"the store at {str(self.path)!r} is empty and read-only")
            self._adopt(generation, fingerprint)
            return generation
        stored = f"format {stored_fmt.decode()}, fingerprint {(stored_fp or b'').decode()!r}"
        if fingerprint is None:
            expected = identity((stored_fp or b"").decode())
        if stored == expected:
            self._adopt(
                generation, (stored_fp or b"").decode() if fingerprint is None else fingerprint
            )
            return generation
        if on_mismatch == "error":
            raise FingerprintMismatch(str(self.path), stored, expected)
        if self.read_only:
            raise StoreError(
                f"the store at {str(self.path)!r} holds {stored}, expected {expected}, and is "
                "read-only for this user, so it cannot be rebuilt: pass a directory you can "
                "write to, or the fingerprint the store was built with"
            )
        return self.reset(f"it holds {stored}, expected {expected}", fingerprint)

    def _adopt(self, generation: bytes | None, fingerprint: str | None) -> None:
        """Make ``generation`` the one this process writes to (the store holds it)."""
        with self._state:
            if generation != self.generation:
                self._stale = False
                self.generation = generation
                self.fingerprint = fingerprint

    def _discard_queue(self) -> None:
        """Drop queued writes and stop accepting new ones; return once none is in flight."""
        with self._state:
            self.generation = None
            self.writes.drop_locked()
            self.writes.wait_idle_locked()

    def reset(self, reason: str | None, fingerprint: str | None) -> bytes:
        """Empty the store in one transaction for ``fingerprint``; its new generation.

        Queued writes are discarded, and users of the old generation write nothing more.
        Warns if ``reason``.
        """
        self._discard_queue()
        if reason is not None:
            self._warn_once("mismatch", f"emptying the store at {str(self.path)!r}: {reason}")
        with self._write_txn() as txn:
            # One transaction: readers see either the old store or the empty new one.
            txn.drop(self._data_db, delete=False)
            txn.drop(self._meta_db, delete=False)
            generation = put_meta(txn, self._meta_db, fingerprint)
        self._adopt(generation, fingerprint)
        return generation

    def retire(self) -> None:
        """Empty the store and mark it cleared: every process using it stops writing to it."""
        self._discard_queue()
        with self._state:
            self._stale = True
        with self._write_txn() as txn:
            txn.drop(self._data_db, delete=False)
            txn.put(GENERATION, CLEARED + new_generation(), db=self._meta_db)

    def _env_for_use(self) -> lmdb.Environment:
        """This process's environment (caller is inside the gate)."""
        env = self._env
        if env is None:
            with self._state:
                if self._env_released:
                    raise ValueError(f"the cache at {str(self.path)!r} is closed")
                if self._env is None:
                    self._env = self._open_env()
                env = self._env
        return env

    @contextlib.contextmanager
    def _began(self, begin: Callable[[lmdb.Environment], _Txn]) -> Iterator[_Txn]:
        """A transaction, inside the gate, that survives another process growing the map."""
        for attempt in range(2):
            with self._gate.shared():
                try:
                    txn = begin(self._env_for_use())
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
            with self._gate.exclusive():
                if self._env is not None:
                    self._env.set_mapsize(0)  # adopt the size another process grew the map to

    def _read_txn(self) -> contextlib.AbstractContextManager[lmdb.Transaction[memoryview]]:
        return self._began(lambda env: env.begin(buffers=True))

    def _write_txn(self) -> contextlib.AbstractContextManager[lmdb.Transaction[bytes]]:
        return self._began(lambda env: env.begin(write=True))

    # -- reading ---------------------------------------------------------------------------------

    def read(self, key: int, decode: Callable[[memoryview | bytes], T]) -> T | None:
        """Decode the entry for ``key`` inside its read transaction, or return None.

        ``decode`` must copy what it keeps: the buffer it gets is valid only during the call.
        Decoding errors propagate. An entry of another generation than this process's (the
        store was emptied by another process since) is None.
        """
        writes = self.writes
        if writes.queue or writes.inflight:
            pending = writes.pending(key)
            if pending is not None:
                return decode(readable(pending))
        # Every disk hit comes through here: _read_txn's two context managers would cost about
        # a quarter of a small sample's hit. Its retry (another process grew the map) is taken
        # only when begin() asks for it.
        gate = self._gate
        generation = self.generation
        gate.enter()
        try:
            env = self._env
            if env is None:
                env = self._env_for_use()
            try:
                txn = env.begin(buffers=True)
            except lmdb.MapResizedError:
                pass
            else:
                try:
                    # In the value's transaction: the store cannot be emptied in between.
                    stored = txn.get(GENERATION, db=self._meta_db)
                    if generation is None or stored == generation:  # type: ignore[comparison-overlap]
                        value = txn.get(key_bytes(key), db=self._data_db)
                        return None if value is None else decode(value)
                    seen = None if stored is None else bytes(stored)
                except DAMAGE_IN_TXN as exc:
                    raise damaged(self.path, exc) from exc
                finally:
                    txn.abort()
                self._went_stale(generation, seen)
                return None
        finally:
            gate.leave()
        with self._read_txn() as txn:
            stored = txn.get(GENERATION, db=self._meta_db)
            if generation is None or stored == generation:  # type: ignore[comparison-overlap]
                value = txn.get(key_bytes(key), db=self._data_db)
                return None if value is None else decode(value)
            seen = None if stored is None else bytes(stored)
        self._went_stale(generation, seen)
        return None

    def _went_stale(self, generation: bytes, stored: bytes | None) -> None:
        """The store holds ``stored``, no longer ``generation``: stop writing (warn once)."""
        with self._state:
            if self.generation != generation or self._stale:
                return
            self._stale = True
            dropped = self.writes.drop_locked()
            self.rejected += dropped
            self._state.notify_all()
        how = (
            "cleared (`spillcache clear --force`)"
            if stored is not None and stored.startswith(CLEARED)
            else "emptied or rebuilt for other data"
        )
        self._warn_once(
            "stale",
            f"the store at {str(self.path)!r} was {how} by another process since this process "
            f"opened it: this process stores nothing more in it ({dropped} queued entries were "
            "dropped) and serves its samples from their source",
        )

    def contains(self, key: int) -> bool:
        """Whether ``key`` is stored (in this process's generation) or queued."""
        if key in self.writes.queue or key in self.writes.inflight:
            return True
        generation = self.generation
        with self._read_txn() as txn:
            stored = txn.get(GENERATION, db=self._meta_db)
            if generation is not None and stored != generation:  # type: ignore[comparison-overlap]
                return False
            return txn.get(key_bytes(key), db=self._data_db) is not None

    def __len__(self) -> int:
        pending = self.writes.keys()
        with self._read_txn() as txn:
            stored = int(txn.stat(self._data_db)["entries"])
            new = sum(1 for k in pending if txn.get(key_bytes(k), db=self._data_db) is None)
        return stored + new

    def file_bytes(self) -> int:
        """Size of the data file in bytes."""
        try:
            return (self.path / "data.mdb").stat().st_size
        except FileNotFoundError:
            return 0

    def get_meta(self, name: str) -> bytes | None:
        """A metadata value recorded with :meth:`set_meta`."""
        with self._read_txn() as txn:
            value = txn.get(b"user:" + name.encode(), db=self._meta_db)
            return None if value is None else bytes(value)

    def set_meta(self, name: str, value: bytes) -> None:
        """Record a small metadata value, committed before returning.

        Writes queued before it are committed first: another process never sees the record
        without the entries it describes (a data set's probe digests, then the probed samples
        loaded once more by a DDP rank that opened the store in between).
        """
        self.writes.commit_queued()
        if self.read_only:
            return
        generation = self.generation
        with self._write_txn() as txn:
            if generation is None or self._stale:
                return
            stored = txn.get(GENERATION, db=self._meta_db)
            if stored == generation:
                txn.put(b"user:" + name.encode(), value, db=self._meta_db)
                return
        self._went_stale(generation, stored)

    def describe(self) -> dict[str, object]:
        """Items, format version, fingerprint and creation time, read from the store."""
        with self._read_txn() as txn:
            return describe(txn, self._data_db, self._meta_db)

    def scan(self, visit: Callable[[int, memoryview], None]) -> int:
        """Call ``visit(key, value)`` for every stored entry in key order; return the count.

        One read transaction covers the whole scan (a consistent snapshot); ``value`` is valid
        only during its call.
        """
        count = 0
        with self._read_txn() as txn:
            for raw_key, value in txn.cursor(db=self._data_db):
                visit(int.from_bytes(raw_key, "big"), value)
                count += 1
        return count

    def copy_to(self, destination: Path) -> None:
        """Write a compacted copy of the committed store into the directory ``destination``.

        A consistent snapshot (one read transaction) taken after committing what this process
        has queued; other processes may keep writing meanwhile.
        """
        self.flush()
        with self._gate.shared():
            self._env_for_use().copy(str(destination), compact=True)

    # -- writing ---------------------------------------------------------------------------------

    def buffer(self, size: int, *, keep: bool = False) -> Buffer | None:
        """A buffer of at least ``size`` bytes to encode a value into, or None if small.

        For :meth:`~spillcache.codec.Encoding.into`: the view it returns, given to
        :meth:`write`, hands the buffer back once the value is committed (or dropped), unless
        views of it still live.

        ``keep``: the caller keeps views of the value (the RAM tier, by
        :func:`~spillcache.codec.view`). The buffer then fits exactly, and the writer
        prepares the next ones of this size in advance, their pages touched: the memory a RAM
        tier grows into is fresh, and its page faults would otherwise slow the caller
        (docs/design.rst, "Buffer pool").
        """
        if size < RECYCLE_MIN:  # before the call: every put asks
            return None
        return self.pool.take(size, keep=keep)

    def write(self, key: int, value: Value, generation: bytes | None = None) -> bool:
        """Queue ``value`` for ``key``; False when the store refuses new entries.

        It refuses them when full, read-only, stale (emptied by another process since), or
        when ``generation``, the one the caller opened (if given), is no longer this process's.

        ``value``: bytes, or a :class:`~spillcache.disk.values.Deferred` value the writer
        thread finishes (its :meth:`~spillcache.disk.values.Deferred.finish` may be given
        :meth:`buffer`) and takes back the buffer of once it is committed or dropped.
        """
        pending: Pending = value
        if not isinstance(value, bytes) and len(value) < RECYCLE_MIN:
            # Finished here: for a small value, the writer's extra trips through the GIL cost
            # the caller more than the copy (docs/design.rst, "Small values").
            pending = value.snapshot()
        writes = self.writes
        with self._state:
            if writes.closed:
                raise ValueError(f"the cache at {str(self.path)!r} is closed")
            while writes.forking:
                self._state.wait()
            if self.read_only or self._stale or generation not in (None, self.generation):
                self.rejected += 1
                self.pool.recycle_locked((pending,))
                return False
            if self.fill.refuses_locked(len(pending)):
                self.rejected += 1
                self.pool.recycle_locked((pending,))
                return False
            writes.add_locked(key, pending)
        return True

    def store_batch(self, batch: Batch, generation: bytes | None) -> None:
        """Store ``batch``, taken from the queue while the store was at ``generation``."""
        try:
            items = self._stored_items(batch)
        except MemoryError as exc:
            self._write_fault(len(batch), exc)
            return
        need = sum(len(v) for _, v in items)
        for _ in range(8):
            try:
                with self._write_txn() as txn:
                    # Inside the transaction, which excludes every other writer of the node:
                    # a store emptied by another process since is never written to.
                    current = txn.get(GENERATION, db=self._meta_db)
                    if generation is not None and current != generation:
                        raise _Stale(current)
                    stored = self.fill.admitted(
                        txn, self._data_db, self._env_for_use(), items, need
                    )
                    for key, value in stored:
                        txn.put(key_bytes(key), value, db=self._data_db)
            except _Stale as stale:
                with self._state:
                    self.rejected += len(items)
                assert generation is not None
                self._went_stale(generation, stale.stored)
                return
            except lmdb.MapFullError:
                self._grow_map(need)
                continue
            except Exception as exc:  # any storage fault: training goes on without this batch
                self._write_fault(len(items), exc)
                return
            break
        else:  # the map could not be grown enough (address space or ulimit -v)
            self._write_fault(len(items), MemoryError("the LMDB map could not grow"))
            return
        if len(stored) < len(items):
            self._refused(items, stored)
        self._unchecked_bytes += need
        if (
            self._unchecked_bytes < _CHECK_BYTES
            and time.monotonic() - self._readers_checked_at < _CHECK_SECONDS
        ):
            return
        self._clear_stale_readers()

    def _clear_stale_readers(self) -> None:
        """Free the slots of killed readers: they pin old pages and make the file grow."""
        self._unchecked_bytes = 0
        self._readers_checked_at = time.monotonic()
        try:
            with self._gate.shared():
                self._env_for_use().reader_check()
        except lmdb.Error as exc:
            logger.debug("after a commit to %s: %s", self.path, exc)

    def _stored_items(self, batch: Batch) -> list[tuple[int, Stored]]:
        """``batch`` by key, each Deferred value finished (which replaces it in ``batch``).

        Before the transaction: it holds the store's write lock, which every process shares.
        """
        items: list[tuple[int, Stored]] = []
        finished: Batch = {}
        for key, value in sorted(batch.items()):  # keys are unique: values are not compared
            if type(value) is bytes or type(value) is memoryview:
                items.append((key, value))
            else:
                stored = value.finish(self.pool.take)  # type: ignore[union-attr]
                finished[key] = stored
                items.append((key, stored))
        if finished:
            # Under the lock: read() may be looking the batch up. The buffers are recycled
            # with the batch's values once it is committed.
            with self._state:
                batch.update(finished)
        return items

    def _grow_map(self, need: int) -> None:
        with self._gate.exclusive():
            env = self._env
            if env is None:
                return
            size = env.info()["map_size"]
            try:
                env.set_mapsize(max(2 * size, size + 2 * need))
            except lmdb.Error as exc:
                logger.debug("growing the map of %s failed: %s", self.path, exc)

    def _write_fault(self, entries: int, exc: BaseException) -> None:
        with self._state:
            self.write_errors += entries
            self.fill.refused_locked(0)
        self._warn_once(
            "write",
            f"writing to the store at {str(self.path)!r} failed ({exc}); {entries} entries were "
            "not stored and new entries are refused until space frees up; training goes on",
        )

    def _refused(
        self,
        items: list[tuple[int, Stored]],
        stored: list[tuple[int, Stored]],
    ) -> None:
        """Count the entries of ``items`` not in ``stored``; refuse puts as large for a while."""
        kept = {key for key, _ in stored}
        sizes = [len(value) for key, value in items if key not in kept]
        with self._state:
            self.rejected += len(sizes)
            self.fill.refused_locked(min(sizes))
        self._warn_once("full", self.fill.message())

    def _warn_once(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            # Also logged: rebuilds (with their reason) and budget refusals are store events.
            logger.info("%s", message)
            warn(message, SpillCacheWarning)

    def flush(self) -> None:
        """Commit everything queued and sync it to disk; return when done."""
        self.writes.commit_queued()
        with self._gate.shared():
            if self._env is not None:
                self._sync(self._env)

    def commit(self) -> None:
        """Commit everything queued (without syncing it to disk); return when done.

        The calling thread commits what the writer thread is not busy with itself
        (:meth:`~spillcache.disk.writer.WriteQueue.commit`).
        """
        self.writes.commit()

    def _sync(self, env: lmdb.Environment) -> None:
        if self.read_only:
            return
        try:
            env.sync(True)
        except lmdb.Error as exc:  # e.g. EIO from fsync: a storage fault, not a training error
            self._warn_once(
                "sync",
                f"syncing the store at {str(self.path)!r} to disk failed ({exc}); what was "
                "committed survives the end of this process, but maybe not an OS crash",
            )

    def close(self) -> None:
        """Commit what is queued, sync, and close the environment, for every user. Idempotent."""
        with self._state:
            if self.writes.closed:
                return
            self.writes.closed = True
            self._state.notify_all()
        with TIERS.lock:
            self.closing = True
        try:
            self.writes.stop()
            with self._gate.exclusive():
                self._env_released = True
                env, self._env = self._env, None
                if env is not None:
                    try:
                        self._sync(env)
                    finally:
                        env.close()
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
        with self._state:
            self.writes.forking = True
        self.writes.stop()
        self._gate.lock()
        self._state.acquire()
        if self._env is not None:
            self._env.close()
            self._env = None

    def _after_fork_in_parent(self) -> None:
        self.writes.forking = False
        if self.writes.queue:
            self.writes.ensure_writer_locked()
        self._state.notify_all()
        self._state.release()
        self._gate.unlock()

    def _after_fork_in_child(self) -> None:
        closed, released = self.writes.closed, self._env_released
        rejected, errors = self.rejected, self.write_errors
        self._init_runtime_state()
        self.writes.closed, self._env_released = closed, released
        self.rejected, self.write_errors = rejected, errors


# The open tier of each store in this process.
TIERS: Registry[DiskTier] = Registry()
