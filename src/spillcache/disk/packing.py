"""Storing a batch as packs in one write transaction: index, garbage accounting, reclaim.

Values become records in packs of about ``PACK_BYTES`` (:mod:`spillcache.disk.packs`) and the
index points each key at its slot (:mod:`spillcache.disk.index`). A DataLoader worker commits
every sample it loads before handing it out, so its commits make packs of one or two samples (2
workers, 4 KiB samples: 1.51 x the tensor bytes; 512 B: a page each): a later commit of the same
process moves their records into one of its packs (see ``Committer``), as it moves those of
packs listed for reclaim. A replaced key's old record is garbage: the ``live`` database holds,
per pack, the bytes of its records still indexed and the pack's size; a pack whose live records
fill less than ``KEEP`` of its pages is listed in ``reclaim``, and later commits move its live
records (verbatim: a record does not know where it lies) into their own packs, then delete it,
so its pages are reused. A pack with no live record is deleted at once. The garbage a store
holds is thus bounded by about a third of its pages, plus what the last commits left
(docs/design.rst, "Packs").
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any, Final

import lmdb

from ..codec import relaid
from ..errors import StoreError
from .env import Dbs
from .index import MAX_PACK, SLOT_BITS, SLOT_MASK, IndexWriter, entries_of
from .packs import SINGLE, SINGLE_MIN, PackBuilder, pack_key, slots_of
from .values import Stored

__all__ = ["KEEP", "RECLAIM_BYTES", "PackWriter", "clear_counters", "entries_count"]

# A pack is reclaimed once its live records fill less than this share of its pages.
KEEP: Final = 2 / 3
# Live bytes moved out of reclaimed packs per commit at most: bounds a commit's extra work.
RECLAIM_BYTES: Final = 1 << 20
_LIVE: Final = struct.Struct("<QQ")
_COUNTER: Final = struct.Struct("<Q")
ENTRIES: Final = b"entries"
NEXT_PACK: Final = b"next_pack"


def entries_count(txn: lmdb.Transaction[Any], dbs: Dbs) -> int:
    """The keys the store indexes (recorded in ``meta``)."""
    raw = txn.get(ENTRIES, db=dbs.meta)
    return 0 if raw is None else int(_COUNTER.unpack(raw)[0])


def clear_counters(txn: lmdb.Transaction[bytes], dbs: Dbs) -> None:
    """Forget the counters of an emptied store (its packs and index are dropped)."""
    for name in (ENTRIES, NEXT_PACK):
        txn.delete(name, db=dbs.meta)


def _counter(txn: lmdb.Transaction[Any], dbs: Dbs, name: bytes, default: int) -> int:
    raw = txn.get(name, db=dbs.meta)
    return default if raw is None else int(_COUNTER.unpack(raw)[0])


class PackWriter:
    """The packs, index and accounting of one write transaction.

    Parameters
    ----------
    txn : lmdb.Transaction
        The write transaction.
    dbs : Dbs
        The store's databases.
    psize : int
        LMDB's page size.

    Attributes
    ----------
    last_pack : tuple of (int, int) or None
        The id and size of the pack this commit wrote last, if it was not full (a commit's
        last pack, closed by the commit's end).
    """

    def __init__(self, txn: lmdb.Transaction[bytes], dbs: Dbs, psize: int) -> None:
        self._txn = txn
        self._dbs = dbs
        self._psize = psize
        self.index = IndexWriter(txn, dbs.chunks, dbs.keys)
        self._next = _counter(txn, dbs, NEXT_PACK, 1)
        self._live: dict[int, list[int]] = {}
        self._slots: dict[int, list[tuple[int, int, int]]] = {}
        self._specs: set[int] = set()
        self._builder = PackBuilder(psize)
        self._reclaimed: list[bytes] = []
        self.last_pack: tuple[int, int] | None = None

    # -- storing ---------------------------------------------------------------------------------

    def store(self, items: list[tuple[int, Stored]]) -> None:
        """Store ``items`` (sorted by key): packed, or alone if large."""
        self.index.plan(key for key, _ in items)
        for key, value in items:
            if len(value) >= SINGLE_MIN:
                self._write_single(key, value)
                continue
            record = relaid(value)
            if record.spec_id not in self._specs:
                self._spec(record.spec_id, record.spec)
            self._builder.add(key, record)
            if self._builder.full():
                self._close()

    def _spec(self, ident: int, spec: bytes) -> None:
        key = ident.to_bytes(8, "big")
        if self._txn.get(key, db=self._dbs.specs) is None:
            self._txn.put(key, spec, db=self._dbs.specs)
        self._specs.add(ident)

    def _close(self) -> None:
        if self._builder.keys:
            self._write(self._builder)
        self._builder = PackBuilder(self._psize)

    def _new_pack(self) -> int:
        pack = self._next
        if pack > MAX_PACK:
            raise StoreError(
                f"the store has used all {MAX_PACK:,} pack ids (about a petabyte written): "
                "clear it (`spillcache clear PATH`) to start again"
            )
        self._next += 1
        return pack

    def _write(self, builder: PackBuilder) -> None:
        pack = self._new_pack()
        raw = builder.build()
        self._txn.put(pack_key(pack), raw, db=self._dbs.data)
        self._live[pack] = [sum(builder.record_sizes()), len(raw)]
        self.last_pack = None if builder.full() else (pack, len(raw))
        for slot, key in enumerate(builder.keys):
            old = self.index.set(key, pack << SLOT_BITS | slot)
            if old:
                self._dead(old)

    def _write_single(self, key: int, value: Stored) -> None:
        """A large value as a pack of its own, as it is (no copy into a pack buffer)."""
        pack = self._new_pack()
        self._txn.put(pack_key(pack), value, db=self._dbs.data)
        self._live[pack] = [len(value), len(value)]
        old = self.index.set(key, pack << SLOT_BITS | SINGLE)
        if old:
            self._dead(old)

    def _dead(self, entry: int) -> None:
        """The record at ``entry`` is no longer indexed: count it as garbage."""
        pack, slot = entry >> SLOT_BITS, entry & SLOT_MASK
        live = self._live.get(pack)
        if live is None:
            raw = self._txn.get(_live_key(pack), db=self._dbs.live)
            if raw is None:
                return  # damaged accounting: the pack is reclaimed with the store
            live = self._live[pack] = list(_LIVE.unpack(raw))
        if slot == SINGLE:
            live[0] = 0
            return
        slots = self._slots_of(pack)
        if slot < len(slots):
            live[0] -= slots[slot][2] - slots[slot][1]

    def _slots_of(self, pack: int) -> list[tuple[int, int, int]]:
        slots = self._slots.get(pack)
        if slots is None:
            raw = self._txn.get(pack_key(pack), db=self._dbs.data)
            slots = self._slots[pack] = [] if raw is None else slots_of(memoryview(raw))
        return slots

    # -- reclaiming ------------------------------------------------------------------------------

    def reclaimable(self, merged: Iterable[int] = ()) -> list[tuple[int, bytes]]:
        """The live records of the packs listed in ``reclaim`` (``RECLAIM_BYTES``) and ``merged``.

        ``merged``: packs of this process's last commits, to pack densely. :meth:`move` moves
        the records (if the commit has room for them); their packs are then deleted once their
        last record is no longer indexed.
        """
        moved: list[tuple[int, bytes]] = []
        size = 0
        txn, dbs = self._txn, self._dbs
        for raw_pack, _ in txn.cursor(db=dbs.reclaim):
            live = txn.get(raw_pack, db=dbs.live)
            if live is not None and moved and size + _LIVE.unpack(live)[0] > RECLAIM_BYTES:
                break
            self._reclaimed.append(bytes(raw_pack))
            size += self._live_records(int.from_bytes(raw_pack, "big"), moved)
        for pack in merged:
            if pack_key(pack) not in self._reclaimed:
                self._live_records(pack, moved)
        return moved

    def _live_records(self, pack: int, into: list[tuple[int, bytes]]) -> int:
        """Append the records of ``pack`` the index still points at to ``into``; their bytes."""
        raw = self._txn.get(pack_key(pack), db=self._dbs.data)
        if raw is None:
            return 0
        view = memoryview(raw)
        size = 0
        for slot, (key, start, end) in enumerate(slots_of(view)):
            if self.index.get(key) == pack << SLOT_BITS | slot:
                into.append((key, bytes(view[start:end])))
                size += end - start
        return size

    def move(self, moved: list[tuple[int, bytes]]) -> None:
        """Move the records :meth:`reclaimable` returned into new packs."""
        for key, raw in moved:
            self._builder.add_verbatim(key, raw)
            if self._builder.full():
                self._close()
        for raw_pack in self._reclaimed:
            self._txn.delete(raw_pack, db=self._dbs.reclaim)

    # -- finishing ---------------------------------------------------------------------------------

    def finish(self) -> None:
        """Write the last pack, the index, the accounting and the counters."""
        self._close()
        self.index.flush()
        txn, dbs = self._txn, self._dbs
        for lost, entry in self.index.dropped:  # a damaged chunk's: garbage if they were real
            if self._holds(entry, lost):
                self._dead(entry)
        for pack, (live, size) in self._live.items():
            key = _live_key(pack)
            if live <= 0:
                txn.delete(pack_key(pack), db=dbs.data)
                txn.delete(key, db=dbs.live)
                txn.delete(key, db=dbs.reclaim)
                continue
            txn.put(key, _LIVE.pack(live, size), db=dbs.live)
            pages = -(-(16 + size) // self._psize)
            if live < KEEP * pages * self._psize:
                txn.put(key, b"", db=dbs.reclaim)
        txn.put(NEXT_PACK, _COUNTER.pack(self._next), db=dbs.meta)
        if self.index.damaged:
            # Keys lost with a damaged index are not known one by one: counted again.
            count = sum(1 for _, entry in entries_of(txn, dbs.chunks) if entry)
            txn.put(ENTRIES, _COUNTER.pack(count + txn.stat(dbs.keys)["entries"]), db=dbs.meta)
        elif self.index.added:
            count = entries_count(txn, dbs) + self.index.added
            txn.put(ENTRIES, _COUNTER.pack(count), db=dbs.meta)

    def _holds(self, entry: int, key: int) -> bool:
        """Whether ``entry`` points at a record of ``key`` (a stored pack, a slot of the key)."""
        pack, slot = entry >> SLOT_BITS, entry & SLOT_MASK
        if slot == SINGLE:
            return (
                pack in self._live or self._txn.get(_live_key(pack), db=self._dbs.live) is not None
            )
        slots = self._slots_of(pack)
        return slot < len(slots) and slots[slot][0] == key


def _live_key(pack: int) -> bytes:
    return pack.to_bytes(8, "big")
