"""The index of a store: where each key's record is, in dense chunks or, for sparse keys, alone.

An entry is ``pack << SLOT_BITS | slot`` (0: no entry; pack ids start at 1, below 2**34).
Keys are indexed densely, in chunks of ``CHUNK_KEYS`` consecutive keys: the ``index`` database
maps ``key // CHUNK_KEYS`` (8 bytes big-endian) to the chunk's entries, 6 bytes each,
little-endian, then their xxh3_64 seeded with the chunk number (4,076 bytes: one overflow
page). A key whose chunk
does not exist, and that does not come with ``DENSE_MIN`` keys of its chunk in one commit, is
indexed in the ``keys`` database instead (key -> entry and the xxh3_64 of key and entry): a
store of scattered keys does not pay a page per key. A key is in a chunk or in ``keys``, the
chunk first; a damaged chunk or entry raises :class:`~spillcache.errors.CodecError` (a miss
for the key, counted as corrupt), never a pointer to another key's record.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any, Final

import lmdb
import xxhash

from ..errors import CodecError

__all__ = [
    "CHUNKS_KEPT",
    "CHUNK_BYTES",
    "CHUNK_KEYS",
    "CHUNK_SIZE",
    "DENSE_MIN",
    "ENTRY_MASK",
    "ENTRY_SIZE",
    "HASH",
    "MAX_PACK",
    "SLOT_BITS",
    "SLOT_MASK",
    "UNPACK",
    "CheckedChunks",
    "IndexWriter",
    "Snapshot",
    "entries_of",
    "entry_at",
    "lookup",
    "sparse_entries",
    "sparse_lookup",
]

# Entries of 6 bytes: a pack's slots are numbered in 14 bits (16,383 records at most), its id
# in 34 (64 KiB packs: 1 PiB written before they run out). A shuffled fill rewrites every chunk
# per commit, and LMDB keeps two generations of them: the index costs 3 x 6 B per key.
ENTRY_SIZE: Final = 6
SLOT_BITS: Final = 14
SLOT_MASK: Final = (1 << SLOT_BITS) - 1
MAX_PACK: Final = (1 << 8 * ENTRY_SIZE - SLOT_BITS) - 1
# The most keys whose entries and checksum fit one overflow page of 4 KiB (4,080 bytes).
CHUNK_KEYS: Final = 678
# Keys of one chunk that make a commit create it (1/32 of it).
DENSE_MIN: Final = 16
CHUNK_BYTES: Final = CHUNK_KEYS * ENTRY_SIZE
# A stored chunk: its entries, then their checksum.
CHUNK_SIZE: Final = CHUNK_BYTES + 8
_U64: Final = struct.Struct("<Q")
_SPARSE: Final = struct.Struct("<QQ")
_EMPTY: Final = bytes(CHUNK_BYTES)
HASH: Final = xxhash.xxh3_64_intdigest
# Reads 8 bytes: at ``pos * ENTRY_SIZE`` of a whole stored chunk (the checksum follows the
# last entry), masked with ENTRY_MASK, the entry. One call on the disk hit, no slice.
UNPACK: Final = _U64.unpack_from
ENTRY_MASK: Final = (1 << 8 * ENTRY_SIZE) - 1


def entry_at(entries: bytes | bytearray | memoryview, pos: int) -> int:
    """The entry at position ``pos`` of a chunk's entries."""
    start = pos * ENTRY_SIZE
    return int.from_bytes(entries[start : start + ENTRY_SIZE], "little")


def _set_at(entries: bytearray, pos: int, entry: int) -> None:
    start = pos * ENTRY_SIZE
    entries[start : start + ENTRY_SIZE] = entry.to_bytes(ENTRY_SIZE, "little")


def _all(chunk: int, entries: bytes | bytearray | memoryview) -> Iterator[tuple[int, int]]:
    """(key, entry) of every nonzero entry of ``chunk`` (whole entries of ``entries``)."""
    base = chunk * CHUNK_KEYS
    for pos in range(min(len(entries), CHUNK_BYTES) // ENTRY_SIZE):
        entry = entry_at(entries, pos)
        if entry:
            yield base + pos, entry


def _sum(chunk: int, raw: bytes | memoryview) -> int:
    return xxhash.xxh3_64_intdigest(raw, chunk)


def _checked(chunk: int, raw: memoryview | bytes) -> memoryview | bytes:
    """The entries of a stored chunk, checked."""
    if (
        len(raw) != CHUNK_BYTES + 8
        or _sum(chunk, raw[:CHUNK_BYTES]) != _U64.unpack_from(raw, CHUNK_BYTES)[0]
    ):
        raise CodecError(f"index chunk {chunk} (keys {chunk * CHUNK_KEYS}...) is damaged")
    return raw


def _sparse_entry(key: int, raw: memoryview | bytes) -> int:
    if len(raw) != _SPARSE.size:
        raise CodecError(f"index entry of key {key} is damaged")
    entry, check = _SPARSE.unpack(raw)
    if xxhash.xxh3_64_intdigest(_U64.pack(entry), key & 0xFFFFFFFFFFFFFFFF) != check:
        raise CodecError(f"index entry of key {key} is damaged")
    return int(entry)


def lookup(txn: lmdb.Transaction[Any], index_db: Any, keys_db: Any, key: int) -> int:
    """The entry of ``key`` (0: none). Raises CodecError for a damaged chunk or entry."""
    chunk, pos = divmod(key, CHUNK_KEYS)
    raw = txn.get(chunk.to_bytes(8, "big"), db=index_db)
    if raw is not None:  # the disk hit inlines this in lookup.find_in; here: contains, damage
        entry: int = UNPACK(_checked(chunk, raw), pos * ENTRY_SIZE)[0] & ENTRY_MASK
        if entry:
            return entry
    return sparse_lookup(txn, keys_db, key)


def sparse_lookup(txn: lmdb.Transaction[Any], keys_db: Any, key: int) -> int:
    """The entry of ``key`` if indexed alone (0: none). Raises CodecError if damaged."""
    single = txn.get(key.to_bytes(8, "big"), db=keys_db)
    return 0 if single is None else _sparse_entry(key, single)


# A snapshot checked (CheckedChunks): its transaction id, its intact chunks, its generation.
Snapshot = tuple[int, dict[int, bytes | None], bytes | None]

# Chunks a snapshot keeps a copy of (4,076 bytes each: 1 MiB, 173,568 keys).
CHUNKS_KEPT: Final = 256


class CheckedChunks:
    """What one store's latest snapshot read was checked for: its intact chunks, its generation.

    A snapshot is named by its transaction id: LMDB never changes a committed page that a
    snapshot can see, so a chunk intact in it stays intact until a commit makes a new one, and
    the generation it records stays the one it records. So each chunk is hashed, and the
    generation read, once per snapshot, not on every hit; and the entries of the first
    :data:`CHUNKS_KEPT` chunks are copied out once, so that a hit of their keys does not get
    the chunk again. Threads share the object: each keeps the snapshot of its own
    transaction, replaced whole.

    Attributes
    ----------
    snapshot : tuple
        ``(txn_id, chunks, generation)``: the latest snapshot read, its chunks found intact
        (what :meth:`seen` returns: chunk -> a copy of its entries, or None once
        :data:`CHUNKS_KEPT` are kept) and the generation it was found to hold (None: not
        read). The disk hit (``Reading.read``) reads it without a call.
    """

    __slots__ = ("snapshot",)

    def __init__(self) -> None:
        self.snapshot: Snapshot = (-1, {}, None)

    def seen(self, txn_id: int) -> dict[int, bytes | None]:
        """The chunks found intact in the snapshot ``txn_id`` (a dict to add them to)."""
        snapshot = self.snapshot
        if snapshot[0] != txn_id:
            snapshot = self.snapshot = (txn_id, {}, None)
        return snapshot[1]

    def held(self, txn_id: int, generation: bytes | None) -> Snapshot:
        """The snapshot ``txn_id``, found to hold ``generation`` (its chunks kept if current)."""
        snapshot = self.snapshot
        chunks = snapshot[1] if snapshot[0] == txn_id else {}
        snapshot = self.snapshot = (txn_id, chunks, generation)
        return snapshot


def entries_of(txn: lmdb.Transaction[Any], index_db: Any) -> Iterator[tuple[int, int]]:
    """(key, entry) of every key in a chunk, in key order; (first key, 0) for a damaged one."""
    for raw_chunk, raw in txn.cursor(db=index_db):
        chunk = int.from_bytes(raw_chunk, "big")
        try:
            entries = _checked(chunk, raw)
        except CodecError:
            yield chunk * CHUNK_KEYS, 0
            continue
        yield from _all(chunk, entries)


def sparse_entries(txn: lmdb.Transaction[Any], keys_db: Any) -> Iterator[tuple[int, int]]:
    """(key, entry) of every key in ``keys``, in key order; (key, 0) for a damaged one."""
    for raw_key, raw in txn.cursor(db=keys_db):
        key = int.from_bytes(raw_key, "big")
        try:
            entry = _sparse_entry(key, raw)
        except CodecError:
            entry = 0
        yield key, entry


class IndexWriter:
    """The index as one write transaction changes it (changed chunks are written at the end).

    Parameters
    ----------
    txn : lmdb.Transaction
        The write transaction.
    index_db, keys_db : lmdb._Database
        The chunks and the sparse keys.

    Attributes
    ----------
    added : int
        Keys that had no entry and have one now.
    damaged : int
        Damaged chunks or entries found (their keys lost their entries).
    dropped : list of (int, int)
        (key, entry) of each nonzero entry a damaged chunk held, unchecked: the records they
        may point at are garbage now (:class:`~.packing.PackWriter` accounts those it finds).
    """

    def __init__(self, txn: lmdb.Transaction[bytes], index_db: Any, keys_db: Any) -> None:
        self._txn = txn
        self._index_db = index_db
        self._keys_db = keys_db
        self._chunks: dict[int, bytearray | None] = {}
        self._dirty: set[int] = set()
        self._dense: set[int] = set()
        self._any_sparse = int(txn.stat(keys_db)["entries"]) > 0
        self.added = 0
        self.damaged = 0
        self.dropped: list[tuple[int, int]] = []

    def plan(self, keys: Iterable[int]) -> None:
        """Let the chunks of one commit's ``keys`` be created that will hold ``DENSE_MIN`` keys.

        Counting the keys indexed alone already: a shuffled fill brings a dozen keys of each
        chunk per commit, and its keys must not all stay alone.
        """
        counts = Counter(key // CHUNK_KEYS for key in keys)
        for chunk, n in counts.items():
            if n >= DENSE_MIN or (self._any_sparse and n + self._alone(chunk) >= DENSE_MIN):
                self._dense.add(chunk)

    def _alone(self, chunk: int) -> int:
        """Keys of ``chunk`` indexed alone (counted up to ``DENSE_MIN``)."""
        cursor = self._txn.cursor(db=self._keys_db)
        end = (chunk + 1) * CHUNK_KEYS
        count = 0
        if cursor.set_range((chunk * CHUNK_KEYS).to_bytes(8, "big")):
            while count < DENSE_MIN and int.from_bytes(cursor.key(), "big") < end:
                count += 1
                if not cursor.next():
                    break
        return count

    def _create(self, chunk: int) -> bytearray:
        """A new chunk, holding the keys of its range indexed alone until now."""
        entries = self._chunks[chunk] = bytearray(_EMPTY)
        if not self._any_sparse:
            return entries
        base = chunk * CHUNK_KEYS
        cursor = self._txn.cursor(db=self._keys_db)
        moved = []
        if cursor.set_range(base.to_bytes(8, "big")):
            for raw_key, raw in cursor:
                key = int.from_bytes(raw_key, "big")
                if key >= base + CHUNK_KEYS:
                    break
                try:
                    _set_at(entries, key - base, _sparse_entry(key, raw))
                except CodecError:
                    self.damaged += 1
                moved.append(bytes(raw_key))
        for raw_key in moved:
            self._txn.delete(raw_key, db=self._keys_db)
        return entries

    def _chunk(self, chunk: int) -> bytearray | None:
        if chunk in self._chunks:
            return self._chunks[chunk]
        raw = self._txn.get(chunk.to_bytes(8, "big"), db=self._index_db)
        entries: bytearray | None = None
        if raw is not None:
            try:
                entries = bytearray(_checked(chunk, raw)[:CHUNK_BYTES])
            except CodecError:
                self.damaged += 1
                entries = bytearray(_EMPTY)
                self._dirty.add(chunk)
                self.dropped += list(_all(chunk, raw))
        self._chunks[chunk] = entries
        return entries

    def get(self, key: int) -> int:
        """The entry of ``key`` as this transaction has it (0: none)."""
        chunk, pos = divmod(key, CHUNK_KEYS)
        entries = self._chunk(chunk)
        if entries is not None:
            entry = entry_at(entries, pos)
            if entry:
                return entry
        return self._sparse_get(key)

    def _sparse_get(self, key: int) -> int:
        if not self._any_sparse:
            return 0
        raw = self._txn.get(key.to_bytes(8, "big"), db=self._keys_db)
        if raw is None:
            return 0
        try:
            return _sparse_entry(key, raw)
        except CodecError:
            self.damaged += 1
            return 0

    def set(self, key: int, entry: int) -> int:
        """Point ``key`` at ``entry``; the entry it had (0: none)."""
        chunk, pos = divmod(key, CHUNK_KEYS)
        entries = self._chunk(chunk)
        if entries is None and chunk in self._dense:
            entries = self._create(chunk)
        if entries is not None:
            old = entry_at(entries, pos)
            _set_at(entries, pos, entry)
            self._dirty.add(chunk)
            if not old and self._any_sparse:
                old = self._sparse_get(key)
                if old:
                    self._txn.delete(key.to_bytes(8, "big"), db=self._keys_db)
        else:
            old = self._sparse_get(key)
            check = xxhash.xxh3_64_intdigest(_U64.pack(entry), key)
            self._txn.put(key.to_bytes(8, "big"), _SPARSE.pack(entry, check), db=self._keys_db)
            self._any_sparse = True
        if not old:
            self.added += 1
        return old

    def flush(self) -> None:
        """Write the changed chunks."""
        for chunk in sorted(self._dirty):
            entries = self._chunks[chunk]
            assert entries is not None
            raw = bytes(entries) + _U64.pack(_sum(chunk, bytes(entries)))
            self._txn.put(chunk.to_bytes(8, "big"), raw, db=self._index_db)
        self._dirty.clear()
