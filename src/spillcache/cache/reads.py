"""Reads of :class:`~spillcache.cache.SpillCache`: a RAM hit, a disk hit, admission, promotion."""

from __future__ import annotations

from typing import Any, Literal

from ..codec import decode, decode_sized, replicator
from ..counters import DISK_HITS, MISSES, RAM_HITS
from ..errors import CodecError
from ..footprint import ENTRY_OVERHEAD
from ..indices import MAX_KEY, check_key
from .state import CacheState

__all__ = ["Reads"]


class Reads(CacheState):
    """The read methods of :class:`~spillcache.cache.SpillCache`."""

    def get(self, key: object) -> Any | None:
        """The sample stored under ``key``, or ``None``.

        Parameters
        ----------
        key : int, numpy integer or 0-d integer tensor
            A non-negative integer.

        Returns
        -------
        object or None
            An equal copy of what was put (same container and leaf types). ``None`` on a miss,
            including an entry found corrupt (counted in ``stats().corrupt``).
        """
        # The usual key, an int in range, skips the call: a RAM hit takes a few microseconds.
        k = key if type(key) is int and 0 <= key <= MAX_KEY else check_key(key)
        if self._node.shared:
            return self._node.get(k)
        # Only a process that admits what it reads needs to know whether a put overtook the
        # read; the others (RAM off, DataLoader workers) skip that bookkeeping.
        admits = False
        counters = self._counters  # incremented inline: Counters.add is a call more per hit
        if self._ram_budget:
            # acquire/release, not ``with``: the with statement's two special-method lookups and
            # its __exit__(None, None, None) call cost 1,000 instructions of a 4 KiB hit.
            lock = self._lock
            lock.acquire()
            try:
                value, copier = self._ram.lookup(k)
                if value is not None:
                    counters.values[RAM_HITS] += 1
                    if counters.watching:
                        counters.report(RAM_HITS)
                else:
                    admits = self._may_admit() and self._ram.may_take(k)
                    if admits:
                        self._reads.start(k)
            finally:
                lock.release()
            if value is not None:
                # Every entry admitted with copy=True has its copier; with copy=False none.
                return value if copier is None else copier(value)
            # A lone process: another one attached the node tier? Shared from the next request.
            self._node.joined()
            if admits:
                return self._admitting_read(k)
        return self._disk_get(k)

    def _disk_get(self, k: int) -> Any | None:
        """The disk part of :meth:`get` for a read not admitted (RAM off, DataLoader workers).

        Also the node link's, when a shared process has no node tier after all. ``_read``
        inlined, and the generation read as an attribute, not the property: three calls less.
        """
        counters = self._counters
        view = self._disk.view
        try:
            # _current inlined: called only if this object is closed or its data may be gone.
            current = (self._generation == view.current and not self._closed) or self._current()
            value = self._disk.read(k, decode) if current else None
        except CodecError as exc:
            self._found_corrupt(k, exc)
            value = None
        if value is not None and self._generation != view.current:
            value = None  # emptied for another object's data during the read
        field = MISSES if value is None else DISK_HITS
        with self._lock:
            counters.values[field] += 1
            if counters.watching:
                counters.report(field)
        return value

    def _admitting_read(self, k: int) -> Any | None:
        """The disk tier's part of :meth:`get` for a key the RAM tier may take: read, admit."""
        try:
            # The footprint and copier the RAM tier needs come with the sample.
            value = self._read(k, decode_sized)
        except CodecError as exc:
            self._found_corrupt(k, exc)
            value = None
        except BaseException:
            with self._lock:
                self._reads.done(k)
            raise
        if value is None:
            with self._lock:
                self._reads.done(k)
                self._counters.add(MISSES)
            return None
        nbytes = value.nbytes + ENTRY_OVERHEAD
        # Outside the lock: it compiles. The footprint bounds each tensor's bytes.
        copier = replicator(value.plan, value.nbytes) if self._copy else None
        with self._lock:
            overtaken = self._reads.done(k)
            self._counters.add(DISK_HITS)
            admitted = not overtaken and self._ram.admit(k, value.sample, nbytes, copier=copier)
        # The RAM tier now owns the sample; the caller gets its own copy.
        return value.copy() if admitted and self._copy else value.sample

    def where(self, key: int) -> Literal["ram", "disk"] | None:
        """The tier holding ``key``, or ``None``; counts no request and records no access.

        For a preloader, which must not disturb the statistics or the RAM tier's policy.
        """
        with self._lock:
            if key in self._ram:
                return "ram"
        if self._node.contains(key):
            return "ram"
        return "disk" if self._current() and self._disk.contains(key) else None

    def promote(self, key: int) -> bool | None:
        """Copy ``key`` from disk into free RAM, counting nothing (a warm restart's preload).

        Returns
        -------
        bool or None
            Whether it now is in RAM (never evicting for it); ``None`` if the entry is missing
            or unreadable.
        """
        if self._node.shared:
            return self._node.promote(key)
        with self._lock:
            self._reads.start(key)
        try:
            value = self._read(key, decode_sized)
        except CodecError:
            value = None
        except BaseException:
            with self._lock:
                self._reads.done(key)
            raise
        admits = value is not None and self._may_admit()
        nbytes = value.nbytes + ENTRY_OVERHEAD if value is not None and admits else 0
        copier = None
        if value is not None and admits and self._copy:
            copier = replicator(value.plan, value.nbytes)
        with self._lock:
            overtaken = self._reads.done(key)
            if value is None:
                return None
            return (
                admits
                and not overtaken
                and self._ram.admit(key, value.sample, nbytes, evict=False, copier=copier)
            )

    def __contains__(self, key: object) -> bool:
        k = check_key(key)
        with self._lock:
            if k in self._ram:
                return True
        return self._node.contains(k) or (self._current() and self._disk.contains(k))
