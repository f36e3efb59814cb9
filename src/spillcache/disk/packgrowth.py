"""How many pages a packed commit can add to the data file, known before it writes.

The bound of :mod:`spillcache.disk.growth` for the layout of format 2: the records go to new
packs, each a run of ``ceil((16 + size) / psize)`` overflow pages; every index chunk a commit
touches is written anew (one overflow page) and may copy a leaf of the ``index`` tree; every
sparse key adds a node to the ``keys`` tree; every pack created or losing a record changes a
node of ``live``; each tree may copy its path and split. No freed page is assumed reused.
"""

from __future__ import annotations

from typing import Any

import lmdb

from .env import Dbs
from .index import CHUNK_KEYS
from .packs import HEAD, PACK_BYTES, SINGLE_MIN, SLOT

__all__ = ["PackGrowth"]

_PAGE_HEADER = 16
# A leaf node of the small trees (index, keys, live, reclaim): header, key, value of <= 16 B.
_NODE = 8 + 8 + 16 + 2
# Pages of the trees besides the leaves counted: meta, specs, the main db and the free list.
_FIXED = 12


class PackGrowth:
    """An upper bound of the pages a commit adds, entry by entry.

    Parameters
    ----------
    txn : lmdb.Transaction
        The write transaction (before it writes).
    dbs : Dbs
        The store's databases.
    """

    def __init__(self, txn: lmdb.Transaction[Any], dbs: Dbs) -> None:
        self._txn, self._dbs = txn, dbs
        stats = [txn.stat(db) for db in (dbs.chunks, dbs.keys, dbs.live, dbs.reclaim)]
        self.psize = int(stats[0]["psize"])
        self._capacity = self.psize - _PAGE_HEADER
        self._paths = sum(2 * int(s["depth"]) + 2 for s in stats)
        self._index_leaves = int(stats[0]["leaf_pages"])
        self._keys_leaves = int(stats[1]["leaf_pages"])
        self._live_leaves = int(stats[2]["leaf_pages"])
        self._packed = 0
        self._records = 0
        self._singles = 0
        self._single_pages = 0
        self._chunks: set[int] = set()

    def _bound(
        self, packed: int, records: int, singles: int, single_pages: int, chunks: int
    ) -> int:
        if not records and not singles:
            return 0
        packs = packed // PACK_BYTES + 1
        head = HEAD.size + 8 + _PAGE_HEADER
        overflow = (packed + SLOT.size * records + head * packs) // self.psize + packs
        # A key is indexed in a chunk (written anew, its leaf copied) or alone in ``keys``
        # (a leaf copied, the new nodes' bytes in split pages at least half full).
        entries = records + singles
        index = chunks + min(chunks, self._index_leaves) + -(-2 * _NODE * chunks // self._capacity)
        sparse_pages = min(entries, self._keys_leaves) + -(-2 * _NODE * entries // self._capacity)
        # live: a node per new pack, and one of each pack losing a record.
        new_packs = packs + singles
        live = min(entries, self._live_leaves) + -(-2 * _NODE * new_packs // self._capacity)
        tree = index + sparse_pages + live + self._paths
        free_list = -(-8 * tree // self._capacity) + 2
        return overflow + single_pages + tree + free_list + _FIXED

    def fresh(self) -> PackGrowth:
        """The bound of the same transaction with nothing counted."""
        return PackGrowth(self._txn, self._dbs)

    @property
    def pages(self) -> int:
        """The bound for the entries added so far."""
        return self._bound(
            self._packed, self._records, self._singles, self._single_pages, len(self._chunks)
        )

    def _split(self, key: int, size: int) -> tuple[int, int, int, int, int]:
        chunks = len(self._chunks) + (key // CHUNK_KEYS not in self._chunks)
        if size >= SINGLE_MIN:
            pages = (_PAGE_HEADER + size - 1) // self.psize + 1
            return (
                self._packed,
                self._records,
                self._singles + 1,
                self._single_pages + pages,
                chunks,
            )
        return self._packed + size + 8, self._records + 1, self._singles, self._single_pages, chunks

    def pages_with(self, key: int, size: int) -> int:
        """The bound if ``key``'s value of ``size`` bytes were added too."""
        return self._bound(*self._split(key, size))

    def add(self, key: int, size: int) -> None:
        """Count ``key``'s value of ``size`` bytes in the commit."""
        self._packed, self._records, self._singles, self._single_pages, _ = self._split(key, size)
        self._chunks.add(key // CHUNK_KEYS)

    def pages_for_batch(self, keys: list[int], size: int) -> int:
        """A looser bound for values of ``size`` bytes in all under ``keys``, from those alone."""
        chunks = len({key // CHUNK_KEYS for key in keys})
        n = len(keys)
        # As if every value were packed and as if every one were alone: whichever is worse.
        alone = (size + (_PAGE_HEADER + HEAD.size + SLOT.size + 8) * n) // self.psize + n
        return max(self._bound(size + 8 * n, n, 0, 0, chunks), self._bound(0, 0, n, alone, chunks))
