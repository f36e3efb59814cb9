"""The node tier's LMDB environment: entries, their slots for sampling, and the accounting.

Four databases in one environment on the memory file system:

``data``
    8-byte big-endian key -> the encoded value, byte for byte as the disk tier stores it.
``where``
    key -> (slot, accounted bytes), two little-endian uint64.
``slots``
    slot -> key: the residents in arbitrary order, so a uniform random victim sample costs
    one lookup (removal swaps the last slot into the freed one).
``meta``
    ``b"account"`` -> (items, bytes, budget), three little-endian uint64; ``b"generation"`` ->
    the generation of the store whose values the tier holds (see :meth:`Ledger.generation`).

Every change of an entry changes the accounting in the same write transaction, so LMDB's
atomic commit keeps all four consistent whenever a writer dies (kill -9 included): an
interrupted transaction never happened. ``writemap=False``: LMDB writes pages with ``pwrite``,
which fails with ENOSPC on a full file system, where writes through a shared map would die of
SIGBUS; readers only ever touch pages that were written.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb

from ..disk.env import open_lmdb
from .place import OVERFLOW_HEADER, split_at

__all__ = ["Account", "Ledger", "Txn", "pack_key"]

Txn = lmdb.Transaction
_ACCOUNT = b"account"
_GENERATION = b"generation"
_TWO = struct.Struct("<QQ")
_THREE = struct.Struct("<QQQ")
_SLOT = struct.Struct(">Q")


def pack_key(key: int) -> bytes:
    """The 8-byte big-endian form of a sample index (the disk tier's order too)."""
    return key.to_bytes(8, "big")


@dataclass
class Account:
    """What the tier holds, read and written inside one write transaction.

    Attributes
    ----------
    items : int
        Resident entries.
    nbytes : int
        Their accounted bytes.
    budget : int
        Most accounted bytes allowed (0: off).
    """

    items: int
    nbytes: int
    budget: int


class Ledger:
    """The environment and its databases, with the few operations the tier needs.

    Parameters
    ----------
    directory : Path
        The tier directory (on a memory file system).
    map_size : int
        Most bytes the data file may grow to.
    budget : int or None
        Create the accounting with this budget (first opener); None opens what is there.
    """

    def __init__(self, directory: Path, map_size: int, budget: int | None) -> None:
        self.env = open_lmdb(
            directory,
            map_size,
            max_dbs=5,
            spare_txns=2,
            metasync=False,
            readahead=False,
            lock=True,
        )
        try:
            self.page_size = int(self.env.stat()["psize"])
            self._head_rest = self.page_size - OVERFLOW_HEADER
            with self.env.begin(write=True) as txn:
                self.data = self.env.open_db(b"data", txn=txn)
                self.where = self.env.open_db(b"where", txn=txn)
                self.slots = self.env.open_db(b"slots", txn=txn)
                self.meta = self.env.open_db(b"meta", txn=txn)
                self.tails = self.env.open_db(b"tails", txn=txn)
                if budget is not None:
                    self.save(txn, Account(0, 0, budget))
            self.env.reader_check()  # reader slots of killed processes
        except BaseException:
            self.env.close()
            raise

    def account(self, txn: Txn[Any]) -> Account:
        """The accounting as of ``txn``."""
        raw = txn.get(_ACCOUNT, db=self.meta)
        if raw is None:
            raise lmdb.CorruptedError("the node tier has no accounting")
        return Account(*_THREE.unpack(raw))

    def save(self, txn: Txn[Any], account: Account) -> None:
        """Write ``account`` (in the transaction that made the change)."""
        txn.put(_ACCOUNT, _THREE.pack(account.items, account.nbytes, account.budget), db=self.meta)

    def generation(self, txn: Txn[Any]) -> bytes | None:
        """The store generation the entries belong to (None: not recorded yet)."""
        raw = txn.get(_GENERATION, db=self.meta)
        return None if raw is None else bytes(raw)

    def set_generation(self, txn: Txn[Any], generation: bytes) -> None:
        """Record ``generation`` as the one the entries belong to (after emptying the tier)."""
        txn.put(_GENERATION, generation, db=self.meta)

    def size_of(self, txn: Txn[Any], key: bytes) -> int | None:
        """Accounted bytes of the entry ``key``, or None if it is not resident."""
        raw = txn.get(key, db=self.where)
        return None if raw is None else _TWO.unpack(raw)[1]

    def insert(
        self, txn: Txn[Any], account: Account, key: bytes, value: bytes | memoryview, size: int
    ) -> None:
        """Add a new entry (``key`` must not be resident); split as :func:`split_at` says."""
        head = split_at(len(value), self.page_size)
        if head < len(value):
            view = memoryview(value)
            txn.put(key, view[:head], db=self.data)
            txn.put(key, view[head:], db=self.tails)
        else:
            txn.put(key, value, db=self.data)
        txn.put(key, _TWO.pack(account.items, size), db=self.where)
        txn.put(_SLOT.pack(account.items), key, db=self.slots)
        account.items += 1
        account.nbytes += size

    def remove(self, txn: Txn[Any], account: Account, key: bytes) -> None:
        """Remove the resident entry ``key``; the last slot moves into its slot."""
        slot, size = _TWO.unpack(_row(txn, key, self.where))
        last = account.items - 1
        if slot != last:
            moved = bytes(_row(txn, _SLOT.pack(last), self.slots))
            txn.put(_SLOT.pack(slot), moved, db=self.slots)
            moved_size = _TWO.unpack(_row(txn, moved, self.where))[1]
            txn.put(moved, _TWO.pack(slot, moved_size), db=self.where)
        txn.delete(_SLOT.pack(last), db=self.slots)
        txn.delete(key, db=self.where)
        txn.delete(key, db=self.data)
        txn.delete(key, db=self.tails)
        account.items -= 1
        account.nbytes -= size

    def drop(self, txn: Txn[Any], key: bytes) -> None:
        """Remove ``key`` if it is resident, with its accounting."""
        if self.size_of(txn, key) is not None:
            account = self.account(txn)
            self.remove(txn, account, key)
            self.save(txn, account)

    def evict_to(self, txn: Txn[Any], account: Account, goal: int, rand: random.Random) -> None:
        """Remove residents drawn at random until at most ``goal`` bytes are held; save."""
        while account.items and account.nbytes > goal:
            self.remove(txn, account, self.draw(txn, account, rand)[0])
        self.save(txn, account)

    def empty(self, txn: Txn[Any]) -> None:
        """Remove every entry; the budget stays."""
        for db in (self.data, self.tails, self.where, self.slots):
            txn.drop(db, delete=False)
        self.save(txn, Account(0, 0, self.account(txn).budget))

    def value(self, txn: Txn[Any], key: bytes) -> memoryview | None:
        """The value of ``key`` (in a ``buffers`` transaction): in place, or joined if split."""
        head: memoryview | None = txn.get(key, db=self.data)
        # Only a head that fills its overflow pages exactly can have a tail (split_at).
        if head is None or len(head) % self.page_size != self._head_rest:
            return head
        tail = txn.get(key, db=self.tails)
        return head if tail is None else memoryview(b"".join((head, tail)))

    def draw(self, txn: Txn[Any], account: Account, rand: random.Random) -> tuple[bytes, int]:
        """A resident drawn uniformly at random: its key and accounted bytes."""
        key = bytes(_row(txn, _SLOT.pack(rand.randrange(account.items)), self.slots))
        return key, _TWO.unpack(_row(txn, key, self.where))[1]

    def problems(self) -> list[str]:
        """Inconsistencies between entries, slots and accounting (empty if there are none)."""
        found: list[str] = []
        with self.env.begin(buffers=True) as txn:
            account = self.account(txn)
            total, seen = 0, 0
            for key, raw in txn.cursor(db=self.where):
                slot, size = _TWO.unpack(raw)
                seen += 1
                total += size
                if slot >= account.items or txn.get(_SLOT.pack(slot), db=self.slots) != key:
                    found.append(f"entry {bytes(key).hex()} claims slot {slot} it does not hold")
                if txn.get(key, db=self.data) is None:
                    found.append(f"entry {bytes(key).hex()} has no value")
            for key, _ in txn.cursor(db=self.tails):
                if txn.get(key, db=self.where) is None:
                    found.append(f"tail {bytes(key).hex()} of no entry")
            counts = (seen, txn.stat(self.slots)["entries"], txn.stat(self.data)["entries"])
            if counts != (account.items,) * 3:
                found.append(f"{account.items} items accounted, entries/slots/values {counts}")
            if total != account.nbytes:
                found.append(f"{account.nbytes} bytes accounted, entries hold {total}")
            if account.nbytes > account.budget:
                found.append(f"{account.nbytes} bytes over the budget of {account.budget}")
        return found

    def close(self) -> None:
        """Close the environment (only in the process that opened it). Idempotent."""
        self.env.close()


def _row(txn: Txn[Any], key: bytes, db: lmdb._Database) -> Any:
    """The row ``key`` of ``db``, which the bookkeeping says exists."""
    raw = txn.get(key, db=db)
    if raw is None:
        raise lmdb.CorruptedError(f"the node tier lacks the row {key.hex()} it accounts for")
    return raw
