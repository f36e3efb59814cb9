"""Which generation of its store a tier reads and writes, and emptying the store.

Opening a store checks its identity (a damaged store of ours is rebuilt empty, per
``on_mismatch``); emptying it makes a new generation; a process notices another emptied it.

The generation is recorded in the store (:mod:`spillcache.disk.meta`) and replaced whenever
the store is emptied; every read and write transaction compares it with the one this process
opened, so that a process whose view is stale neither writes into a rebuilt store nor serves
its entries.
"""

from __future__ import annotations

import contextlib

from ..codec import FORMAT_VERSION
from ..errors import FingerprintMismatch, StoreError
from ..settings import OnMismatch
from .env import DamagedStore
from .events import Events
from .layout import LMDB_FILES
from .meta import CLEARED, GENERATION, identity, new_generation, put_meta, recorded
from .options import TierOptions
from .packing import clear_counters
from .transactions import Transactions
from .writer import WriteQueue

__all__ = ["Generation"]

_Recorded = tuple[bytes | None, bytes | None, bytes | None]


class Generation:
    """This process's view of the identity of its store.

    Parameters
    ----------
    txns : Transactions
        The store's transactions.
    writes : WriteQueue
        The tier's write queue (emptied with the store); its lock is the tier's.
    events : Events
        Counts the queued entries dropped, warns of emptied stores.
    current : bytes or None
        The generation to start with (one another process opened, for an unpickled tier).
    fingerprint : str or None
        The fingerprint of the data stored under it.

    Attributes
    ----------
    current : bytes or None
        The generation this process's writes belong to; None for a store without one (an
        older version's, read-only) or while the store is being emptied.
    fingerprint : str or None
        The fingerprint of the data of ``current``.
    stale : bool
        Another process emptied the store since this process's view of it (rebuilt or
        cleared): nothing more is written, nothing read is served.
    """

    def __init__(
        self,
        txns: Transactions,
        writes: WriteQueue,
        events: Events,
        current: bytes | None,
        fingerprint: str | None,
    ) -> None:
        self.current = current
        self.fingerprint = fingerprint
        self.stale = False
        self._txns = txns
        self._writes = writes
        self._lock = writes.lock
        self._events = events

    def open(self, options: TierOptions) -> None:
        """Open the environment and take the store's generation, checked per ``options``."""
        txns = self._txns
        if not options.check_identity:
            txns.open()
            with txns.read() as txn:
                stored = txn.get(GENERATION, db=txns.meta_db)
            self.current = None if stored is None else bytes(stored)
            return
        self._open_checked(options.on_mismatch)
        if txns.read_only:
            self._events.warn_once(
                "read-only",
                f"the store at {str(txns.path)!r} is read-only for this user (a read-only "
                "mount, another user's store): it serves what it holds and stores nothing new",
            )

    def _open_checked(self, on_mismatch: OnMismatch) -> None:
        try:
            self._open_and_identify(on_mismatch)
        except DamagedStore as exc:
            if on_mismatch != "rebuild" or self._txns.read_only:
                raise
            # Only the LMDB files of a directory with our marker: a damaged store of ours.
            self._events.warn_once("damaged", f"{exc}; rebuilding it empty")
            for name in LMDB_FILES:
                with contextlib.suppress(FileNotFoundError):
                    (self._txns.path / name).unlink()
            self._open_and_identify(on_mismatch)

    def _open_and_identify(self, on_mismatch: OnMismatch) -> None:
        self._txns.open()
        try:
            self.identify(self.fingerprint, on_mismatch)
        except BaseException:
            self._txns.drop()
            raise

    def identify(self, fingerprint: str | None, on_mismatch: OnMismatch) -> bytes | None:
        """Check the store holds ``fingerprint``'s data, per ``on_mismatch``; its generation.

        The generation is what the opener's reads and writes belong to (see :attr:`current`):
        the stored one, or a new one if the store was (re)built for it.
        """
        stored_fmt, stored_fp, generation = self._recorded(fingerprint)
        if stored_fmt is None:
            if self._txns.read_only:
                raise StoreError(f"the store at {str(self._txns.path)!r} is empty and read-only")
            self._adopt(generation, fingerprint)
            return generation
        held = (stored_fp or b"").decode()
        stored = f"format {stored_fmt.decode()}, fingerprint {held!r}"
        expected = identity(held if fingerprint is None else fingerprint)
        if stored == expected:
            self._adopt(generation, held if fingerprint is None else fingerprint)
            return generation
        if on_mismatch == "error":
            raise FingerprintMismatch(str(self._txns.path), stored, expected)
        if self._txns.read_only:
            raise StoreError(
                f"the store at {str(self._txns.path)!r} holds {stored}, expected {expected}, and "
                "is read-only for this user, so it cannot be rebuilt: pass a directory you can "
                "write to, or the fingerprint the store was built with"
            )
        reason = f"it holds {stored}, expected {expected}"
        if stored_fmt != str(FORMAT_VERSION).encode():
            reason += (
                f" (format {stored_fmt.decode(errors='replace')} is the layout of another "
                "spillcache version, which this one does not read: samples are stored again as "
                "they are loaded)"
            )
        return self.reset(reason, fingerprint)

    def _recorded(self, fingerprint: str | None) -> _Recorded:
        """The recorded format, fingerprint and generation; a writer records them if missing."""
        txns = self._txns
        if txns.read_only:
            with txns.read() as txn:
                return recorded(txn, txns.meta_db)
        with txns.write() as txn:
            stored_fmt, stored_fp, generation = recorded(txn, txns.meta_db)
            if stored_fmt is None:  # a new store; in this transaction, or a process
                # creating it at the same time would give it another generation
                generation = put_meta(txn, txns.meta_db, fingerprint)
            elif generation is None:  # an older version's store
                generation = new_generation()
                txn.put(GENERATION, generation, db=txns.meta_db)
        return stored_fmt, stored_fp, generation

    def _adopt(self, generation: bytes | None, fingerprint: str | None) -> None:
        """Make ``generation`` the one this process writes to (the store holds it)."""
        with self._lock:
            if generation != self.current:
                self.stale = False
                self.current = generation
                self.fingerprint = fingerprint

    def _discard_queue(self) -> None:
        """Drop queued writes and stop accepting new ones; return once none is in flight."""
        with self._lock:
            self.current = None
            self._writes.drop_locked()
            self._writes.wait_idle_locked()

    def reset(self, reason: str | None, fingerprint: str | None) -> bytes:
        """Empty the store in one transaction for ``fingerprint``; its new generation.

        Queued writes are discarded, and users of the old generation write nothing more.
        Warns if ``reason``.
        """
        self._discard_queue()
        txns = self._txns
        if reason is not None:
            self._events.warn_once(
                "mismatch", f"emptying the store at {str(txns.path)!r}: {reason}"
            )
        with txns.write() as txn:
            # One transaction: readers see either the old store or the empty new one.
            for db in txns.dbs:
                txn.drop(db, delete=False)
            generation = put_meta(txn, txns.meta_db, fingerprint)
        self._adopt(generation, fingerprint)
        return generation

    def retire(self) -> None:
        """Empty the store and mark it cleared: every process using it stops writing to it."""
        self._discard_queue()
        with self._lock:
            self.stale = True
        txns = self._txns
        with txns.write() as txn:
            for db in txns.dbs[2:]:
                txn.drop(db, delete=False)
            txn.drop(txns.data_db, delete=False)
            clear_counters(txn, txns.dbs)
            txn.put(GENERATION, CLEARED + new_generation(), db=txns.meta_db)

    def set_meta(self, name: str, value: bytes) -> None:
        """Record a small metadata value in this generation, committed before returning.

        Writes queued before it are committed first: another process never sees the record
        without the entries it describes.
        """
        self._writes.commit_queued()
        txns = self._txns
        if txns.read_only:
            return
        generation = self.current
        with txns.write() as txn:
            if generation is None or self.stale:
                return
            stored = txn.get(GENERATION, db=txns.meta_db)
            if stored == generation:
                txn.put(b"user:" + name.encode(), value, db=txns.meta_db)
                return
        self.went_stale(generation, stored)

    def went_stale(self, generation: bytes, stored: bytes | None) -> None:
        """The store holds ``stored``, no longer ``generation``: stop writing (warn once)."""
        with self._lock:
            if self.current != generation or self.stale:
                return
            self.stale = True
            dropped = self._writes.drop_locked()
            self._events.rejected += dropped
            self._lock.notify_all()
        how = (
            "cleared (`spillcache clear --force`)"
            if stored is not None and stored.startswith(CLEARED)
            else "emptied or rebuilt for other data"
        )
        self._events.warn_once(
            "stale",
            f"the store at {str(self._txns.path)!r} was {how} by another process since this "
            f"process opened it: this process stores nothing more in it ({dropped} queued "
            "entries were dropped) and serves its samples from their source",
        )
