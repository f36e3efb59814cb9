"""How many pages a write transaction can add to an LMDB data file, known before it writes.

The disk tier refuses entries that would take a store past ``disk_budget`` or its file system
below the free-space floor, inside the write transaction and before writing them: LMDB only
says how large the file became after the commit, and a commit that does not fit the disk
fails with an I/O error and loses its batch. :class:`Growth` bounds from above what a batch
of puts can add to the file, from the value sizes and the shape of the B-tree it goes into,
assuming that no freed page is reused (readers may pin them).

The arithmetic follows ``mdb.c`` (LMDB 0.9): a page has a 16-byte header; a leaf node is an
8-byte header, the key and the value, rounded up to even, plus a 2-byte index slot; a node
larger than ``nodemax`` keeps its value on ``ceil((16 + size) / psize)`` overflow pages of its
own instead. Every existing page a transaction touches is copied (copy-on-write); a full page
splits into two.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["Growth"]

_PAGE_HEADER = 16
_NODE_HEADER = 8
_INDEX = 2
_KEY = 8
# A branch node: header, key and index slot.
_BRANCH_NODE = _NODE_HEADER + _KEY + _INDEX
# Pages besides the data tree: the main database's root (it records the data tree's root),
# the meta tree untouched, and the free-list tree: its path copied, a split, new records.
_FIXED_PAGES = 8


class Growth:
    """An upper bound of the pages a batch of puts adds to the file, entry by entry.

    Parameters
    ----------
    stat : mapping
        ``txn.stat(db)`` of the data database at the start of the write transaction:
        ``psize``, ``depth``, ``leaf_pages`` and ``branch_pages``.
    """

    def __init__(self, stat: Mapping[str, Any]) -> None:
        self.psize = int(stat["psize"])
        self._capacity = self.psize - _PAGE_HEADER
        # mdb.c: me_nodemax = (((psize - PAGEHDRSZ) / MDB_MINKEYS) & -2) - sizeof(indx_t).
        self._inline_max = ((self._capacity // 2) & -2) - _INDEX - _NODE_HEADER - _KEY
        self._depth = int(stat["depth"])
        self._leaves = int(stat["leaf_pages"])
        self._branches = int(stat["branch_pages"])
        self._entries = 0
        self._runs = 0
        self._overflow = 0
        self._leaf_bytes = 0

    def _entry(self, size: int) -> tuple[int, int]:
        """Overflow pages and leaf bytes of one value of ``size`` bytes."""
        if size > self._inline_max:
            overflow = (_PAGE_HEADER - 1 + size) // self.psize + 1
            return overflow, _NODE_HEADER + _KEY + 8 + _INDEX  # the node holds a page number
        return 0, ((_NODE_HEADER + _KEY + size + 1) & -2) + _INDEX

    def _bound(self, entries: int, runs: int, overflow: int, leaf_bytes: int) -> int:
        if not entries:
            return 0
        # Keys of a run (consecutive integers, none stored yet) go to the leaf of the first.
        touched = min(runs, self._leaves)
        # A put splits at most one page; beyond the touched leaves, the new bytes fill
        # pages that are at least half full once split.
        splits = min(entries, touched + -(-2 * leaf_bytes // self._capacity)) + 1
        copied_branches = min(self._branches, touched * max(self._depth - 1, 0))
        new_branches = -(-2 * _BRANCH_NODE * splits // self._capacity) + self._depth + 1
        # The free list records every page this transaction frees, 8 bytes each.
        freed = touched + copied_branches + _FIXED_PAGES
        free_list = -(-8 * freed // self._capacity) + 1
        return (
            overflow + touched + splits + copied_branches + new_branches + free_list + _FIXED_PAGES
        )

    @property
    def pages(self) -> int:
        """The bound for the entries added so far."""
        return self._bound(self._entries, self._runs, self._overflow, self._leaf_bytes)

    def pages_with(self, size: int, *, new_run: bool) -> int:
        """The bound if a value of ``size`` bytes were added too.

        ``new_run``: its key is not the previous entry's plus one, or is stored already
        (entries come in ascending key order).
        """
        overflow, leaf = self._entry(size)
        return self._bound(
            self._entries + 1,
            self._runs + new_run,
            self._overflow + overflow,
            self._leaf_bytes + leaf,
        )

    def add(self, size: int, *, new_run: bool) -> None:
        """Count a value of ``size`` bytes in the batch (see :meth:`pages_with`)."""
        overflow, leaf = self._entry(size)
        self._entries += 1
        self._runs += new_run
        self._overflow += overflow
        self._leaf_bytes += leaf

    def pages_for_batch(self, entries: int, size: int) -> int:
        """A looser bound for ``entries`` values of ``size`` bytes in all, from those two alone.

        For every commit far from the limit, where looking at each value would cost more.
        """
        overflow = (size + (_PAGE_HEADER - 1) * entries) // self.psize + entries
        largest_node = ((_NODE_HEADER + _KEY + self._inline_max + 1) & -2) + _INDEX
        leaf_bytes = min(
            size + (_NODE_HEADER + _KEY + 8 + _INDEX) * entries, largest_node * entries
        )
        return self._bound(entries, entries, overflow, leaf_bytes)
