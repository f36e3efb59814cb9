"""Admission to a node tier: one write transaction that checks its terms, makes room, inserts.

The policy is the process-local RAM tier's TinyLFU (ram.py explains it): free space is always
taken; a full tier admits a candidate only if its shared frequency beats each victim's by a
margin, victims being the least frequent of a few residents drawn at random from the slot
table (ledger.py). A put or an admission after a miss carries :class:`Terms` (stamps.py).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import lmdb

from .attach import Attached
from .degrade import drop_stale, failed, make_room, untaint
from .ledger import Account, Txn, pack_key
from .place import footprint
from .stamps import NO_STAMP

__all__ = ["Admission", "Declined", "Terms"]

# As in the process-local tier (ram.py explains both): a candidate must beat each victim by 3
# counts; a victim is the least frequent of 3 residents drawn at random.
_MARGIN = 3
_SAMPLE = 3


class Declined(Exception):
    """Abort the admitting transaction: nothing changes."""


@dataclass(frozen=True)
class Terms:
    """When an admission may go ahead, checked inside its write transaction."""

    stamp: int | None
    generation: bytes | None
    evict: bool
    put: bool

    def hold(self, attached: Attached, txn: Txn[bytes], key: int) -> bool:
        """Whether the terms hold; a put also bumps the stamp of ``key`` (see stamps.py)."""
        if self.generation is not None and attached.ledger.generation(txn) != self.generation:
            return False
        if self.put:
            attached.stamps.bump(key)
        return self.stamp is None or self.stamp == attached.stamps.read(key)


class Admission:
    """The admissions of one :class:`~spillcache.node.NodeTier` handle.

    Parameters
    ----------
    store_path : str
        The store (for warnings).
    rand : random.Random
        Draws victims.
    """

    def __init__(self, store_path: str, rand: random.Random) -> None:
        self._store_path = store_path
        self._random = rand

    def run(
        self, attached: Attached, key: int, value: bytes | memoryview | None, terms: Terms
    ) -> tuple[bool, int]:
        """Admit ``value`` for ``key`` on ``terms`` in one write transaction.

        Returns whether ``key`` is resident afterwards, and its stamp as of the transaction
        (exact: stamps change only inside write transactions, which LMDB serializes).
        """
        if not terms.put and value is not None and not self._worth(attached, key, value, terms):
            return False, NO_STAMP
        return self._write(attached, key, value, terms)

    def _write(
        self, attached: Attached, key: int, value: bytes | memoryview | None, terms: Terms
    ) -> tuple[bool, int]:
        """:meth:`run`'s write transaction, retried once after clearing dead readers."""
        ledger = attached.ledger
        for retry in (True, False):
            try:
                with ledger.env.begin(write=True) as txn:
                    if not terms.hold(attached, txn, key):
                        raise Declined
                    stamp, taints = attached.stamps.read(key), attached.stamps.taints
                    if taints:
                        ledger.empty(txn)  # a stale entry may be among them (degrade.py)
                    account = ledger.account(txn)
                    admitted = self._place(txn, attached, account, (key, value), terms.evict)
                    ledger.save(txn, account)
            except Declined:
                return False, NO_STAMP
            except lmdb.MapFullError:
                # Pages a killed reader's snapshot pinned are free again once its slot is gone.
                if retry and ledger.env.reader_check():
                    continue
                make_room(attached, self._random, 0 if value is None else len(value))
            except lmdb.Error as exc:
                failed(attached, self._random, self._store_path, exc)
            else:
                untaint(attached, taints)
                attached.sketch.publish_items(account.items)
                return admitted, stamp
            if terms.put:  # the put failed: the older value must not outlive it
                drop_stale(attached, pack_key(key))
            break
        return False, NO_STAMP

    def _worth(self, attached: Attached, key: int, value: bytes | memoryview, terms: Terms) -> bool:
        """Whether an admission may go ahead, judged in a read transaction (no writer lock).

        In a full tier most offers after a miss lose to their victims; deciding that without
        the writer lock keeps them from serializing the misses of every process on the node.
        The write transaction decides again (on its own draw of victims).
        """
        ledger = attached.ledger
        try:
            with ledger.env.begin() as txn:
                account = ledger.account(txn)
                return self._room(txn, attached, account, (key, value), terms.evict)[2] is not None
        except lmdb.Error:
            return True  # the write transaction meets the fault and handles it

    def _place(
        self,
        txn: Txn[bytes],
        attached: Attached,
        account: Account,
        item: tuple[int, bytes | memoryview | None],
        evict: bool,
    ) -> bool:
        """Inside the write transaction: make room for ``key`` and insert it, or decline."""
        key, value = item
        ledger = attached.ledger
        packed = pack_key(key)
        old, size, victims = self._room(txn, attached, account, item, evict)
        if victims is None or value is None:
            if old is None:
                raise Declined
            ledger.remove(txn, account, packed)  # a stale value never outlives a put
            return False
        if old is not None:
            ledger.remove(txn, account, packed)
        for victim in victims:
            ledger.remove(txn, account, victim)
        ledger.insert(txn, account, packed, value, size)
        return True

    def _room(
        self,
        txn: Txn[bytes],
        attached: Attached,
        account: Account,
        item: tuple[int, bytes | memoryview | None],
        evict: bool,
    ) -> tuple[int | None, int, list[bytes] | None]:
        """What admitting ``item`` takes: ``(old, size, victims)``.

        ``old``: the accounted bytes of ``key`` if resident; ``size``: the value's footprint;
        ``victims``: residents that make room for it, ``[]`` if it fits, None if it may not go in.
        """
        key, value = item
        ledger = attached.ledger
        old = ledger.size_of(txn, pack_key(key))
        size = account.budget + 1 if value is None else footprint(len(value), ledger.page_size)
        excess = account.nbytes - (old or 0) + size - account.budget
        if value is None or size > account.budget or (excess > 0 and not evict):
            return old, size, None
        if excess <= 0:
            return old, size, []
        return old, size, self._victims(txn, attached, account, key, excess)

    def _victims(
        self, txn: Txn[bytes], attached: Attached, account: Account, key: int, excess: int
    ) -> list[bytes] | None:
        """Residents worth ``excess`` bytes that ``key`` beats each, or None."""
        ledger, frequency = attached.ledger, attached.sketch.frequency
        threshold = frequency(key, False) - _MARGIN
        if threshold < 0:
            return None
        packed = pack_key(key)
        chosen: dict[bytes, int] = {}
        freed = 0
        while freed < excess:
            best, best_size, best_count = b"", 0, threshold + 1
            for _ in range(_SAMPLE):
                victim, size = ledger.draw(txn, account, self._random)
                if victim in chosen or victim == packed:
                    continue
                count = frequency(int.from_bytes(victim, "big"), False)
                if count < best_count:
                    best, best_size, best_count = victim, size, count
            if not best:
                return None
            chosen[best] = best_size
            freed += best_size
        return list(chosen)
