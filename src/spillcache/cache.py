"""SpillCache: a RAM tier of decoded samples in front of a persistent LMDB store."""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
import threading
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from . import forksafe
from .budget import check_ram_budget, filesystem_size, memory_limit, parse_budget
from .closing import Closing
from .codec import Encoding, decode, decode_sized, replicate, replicator, snapshot
from .counters import CORRUPT, DISK_HITS, MISSES, PUTS, RAM_HITS, Counters
from .disk import TierOptions, Value, open_tier
from .errors import CodecError, SpillCacheWarning
from .flight import SingleFlight
from .footprint import ENTRY_OVERHEAD, sample_nbytes
from .indices import MAX_KEY, check_key
from .loading import Misses
from .overtaking import Overtaking
from .ram import RamTier
from .settings import (
    COPY,
    ON_MISMATCH,
    RAM_BUDGET,
    READAHEAD,
    OnMismatch,
    check_store_arguments,
)
from .shared import FIELDS
from .stats import CacheStats
from .userwarn import warn

__all__ = ["SpillCache"]


class SpillCache(Closing):
    """A two-tier sample cache: decoded samples in RAM, everything in an LMDB store on disk.

    Every ``put`` is written through to the store (committed within a second, by a background
    writer), so the next run starts warm; hot samples also stay decoded in RAM up to
    ``ram_budget`` bytes. Safe to use from several threads, across ``fork`` and in ``spawn``-ed
    processes (it pickles as its path and settings).

    Parameters
    ----------
    path : str, os.PathLike or None
        Directory of the store. ``None``: a private temporary store, deleted at :meth:`close`.
        A store is created only in a missing or empty directory; a directory holding anything
        else raises :class:`~spillcache.errors.StoreError` and is never modified.
    ram_budget : int or str
        Bytes of decoded samples kept in RAM: an int, ``"512MiB"``, ``"4GB"``, ``"1.5GiB"`` or
        ``"25%"`` (of the memory this process may use: the cgroup or SLURM limit when lower than
        the physical RAM). ``0`` turns the RAM tier off.
    disk_budget : int, str or None
        Size the store's data file never exceeds: a put that would take it past is refused
        (counted in ``stats().rejected``), for all processes using the store together (same
        units; ``"25%"`` is of the store's file system). ``None``: no cap, but refuse puts that
        would leave the file system with less than max(1 GiB, 5 %) free (at most half of it).
    fingerprint : str or None
        Identity of the data. A store recorded with another fingerprint (or another format
        version) is handled per ``on_mismatch``. ``None`` accepts any fingerprint.
    on_mismatch : {"rebuild", "error"}
        ``"rebuild"`` empties a mismatching or damaged store (one transaction, warns once);
        ``"error"`` raises :class:`~spillcache.errors.FingerprintMismatch`.
    copy : bool
        ``True`` (default): every ``get`` returns new tensors and arrays, safe to modify, and
        ``put`` takes a snapshot (the sample may change once it returns). ``False``: the cache
        holds the caller's objects: RAM hits return them, and the writer thread copies a large
        put sample to disk after ``put`` returned — faster, for callers that never modify a
        sample they put or get (that would change what the cache stores or serves).
    readahead : bool
        Let the OS read ahead when the store is read from disk: good for samples of tens of KiB
        and more; turn off for tiny samples in a store much larger than RAM.
    allow_remote_fs : bool
        Allow a store on a network file system (NFS, Lustre, CIFS, ...). LMDB's locks and
        memory maps are not coherent there, so a store on one is refused unless you set this.
    """

    def __init__(  # noqa: PLR0913 - the store's settings, each a keyword
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        ram_budget: int | str = RAM_BUDGET,
        disk_budget: int | str | None = None,
        fingerprint: str | None = None,
        on_mismatch: OnMismatch = ON_MISMATCH,
        copy: bool = COPY,
        readahead: bool = READAHEAD,
        allow_remote_fs: bool = False,
    ) -> None:
        check_store_arguments(
            path,
            on_mismatch=on_mismatch,
            fingerprint=fingerprint,
            flags={"copy": copy, "readahead": readahead, "allow_remote_fs": allow_remote_fs},
        )
        ram_bytes = parse_budget(ram_budget, name="ram_budget", total=memory_limit)
        check_ram_budget(ram_bytes)
        # Every argument is checked before a temporary store is made: none is left behind.
        where = Path(tempfile.gettempdir()) if path is None else Path(path).expanduser()
        disk_bytes = (
            None
            if disk_budget is None
            else parse_budget(disk_budget, name="disk_budget", total=lambda: filesystem_size(where))
        )
        temporary = path is None
        root = Path(tempfile.mkdtemp(prefix="spillcache-")) if path is None else where
        self._ram_budget = ram_bytes
        self._copy = copy
        self._fingerprint = fingerprint
        self._closed = False
        self._parent_block: Path | None = None
        self._init_process_state()
        forksafe.register(self._before_fork, self._after_fork_in_parent, self._after_fork_in_child)
        try:
            # Shared with every other object on this store in this process (one LMDB
            # environment per process); ``_generation`` is what this object's data is under.
            self._disk, self._generation = open_tier(
                root,
                TierOptions(
                    fingerprint=fingerprint,
                    on_mismatch=on_mismatch,
                    budget=disk_bytes,
                    readahead=readahead,
                    allow_remote_fs=allow_remote_fs,
                    temporary=temporary,
                ),
            )
        except BaseException:
            if temporary:
                shutil.rmtree(root, ignore_errors=True)
            raise
        self._counters = Counters(self._disk)
        self._finalizer = weakref.finalize(self, self._disk.release)

    def _init_process_state(self) -> None:
        self._lock = threading.Lock()
        self._ram = RamTier(self._ram_budget)
        self._admits: bool | None = None  # learnt at first use: see _may_admit
        self._reads = Overtaking()
        self._warned: set[str] = set()
        self._flights = SingleFlight(copy=self._copy)

    # -- pickling --------------------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        # The RAM tier, locks and the environment stay behind: the other process reopens the
        # store by path. A temporary store stays owned by the process that made it.
        # Unpickled in the process that pickled it (or a deep copy), it shares the tier. A
        # DataLoader worker that unpickles it counts its requests into our block, and finds
        # what we put so far committed.
        block = self._counters.own_block()
        if not self.closed:
            self._disk.commit()
        return {
            "_ram_budget": self._ram_budget,
            "_copy": self._copy,
            "_fingerprint": self._fingerprint,
            "_generation": self._generation,
            "_closed": self._closed,
            "_disk": self._disk,
            "_parent_block": block,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_process_state()
        self._counters = Counters(self._disk, self._parent_block)
        forksafe.register(self._before_fork, self._after_fork_in_parent, self._after_fork_in_child)
        # Unpickling the tier made this object one of its users.
        self._finalizer = weakref.finalize(self, self._disk.release)
        if self._closed:
            self._finalizer()

    # -- properties ------------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        """Directory of the store."""
        return self._disk.path

    @property
    def ram_budget(self) -> int:
        """RAM tier budget in bytes."""
        return self._ram_budget

    @property
    def disk_budget(self) -> int | None:
        """Disk budget in bytes (``None``: no cap)."""
        return self._disk.budget

    @property
    def fingerprint(self) -> str | None:
        """The fingerprint the store was opened with."""
        return self._fingerprint

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed or self._disk.closed

    def _current(self) -> bool:
        """Whether the store still holds this object's data (raises if closed).

        Not once another object on the same store in this process emptied it for other data:
        this one then serves what it misses from its source and stores nothing more.
        """
        if self._closed:
            raise ValueError(f"the cache at {str(self.path)!r} is closed")
        if self._generation == self._disk.view.current:
            return True
        self._warn_once(
            "stale",
            f"the store at {str(self.path)!r} was emptied for other data by another cache "
            "object of this process: this cache stores nothing more in it and serves what it "
            "does not hold in RAM from its source",
        )
        return False

    # -- the mapping -----------------------------------------------------------------------------

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
        # Only a process that admits what it reads needs to know whether a put overtook the
        # read; the others (RAM off, DataLoader workers) skip that bookkeeping.
        admits = False
        counters = self._counters  # incremented inline: Counters.add is a call more per hit
        if self._ram_budget:
            with self._lock:
                value, copier = self._ram.lookup(k)
                if value is not None:
                    counters.values[RAM_HITS] += 1
                    if counters.watching:
                        counters.report(RAM_HITS)
                else:
                    admits = self._may_admit() and self._ram.may_take(k)
                    if admits:
                        self._reads.start(k)
            if value is not None:
                # Every entry admitted with copy=True has its copier; with copy=False none.
                return value if copier is None else copier(value)
            if admits:
                return self._admitting_read(k)
        # A disk hit not admitted (RAM off, DataLoader workers): _read inlined, and the
        # generation read as an attribute, not the property: three calls less on this hit.
        view = self._disk.view
        try:
            value = self._disk.read(k, decode) if self._current() else None
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
        copier = replicator(value.plan) if self._copy else None  # outside the lock: it compiles
        with self._lock:
            overtaken = self._reads.done(k)
            self._counters.add(DISK_HITS)
            admitted = not overtaken and self._ram.admit(k, value.sample, nbytes, copier=copier)
        # The RAM tier now owns the sample; the caller gets its own copy.
        return value.copy() if admitted and self._copy else value.sample

    def _found_corrupt(self, k: int, exc: CodecError) -> None:
        """Count and warn about the corrupt entry under ``k``, served as a miss."""
        with self._lock:
            self._counters.add(CORRUPT)
        self._warn_once(
            "corrupt",
            f"a corrupt entry (key {k}) in the store at {str(self.path)!r} was ignored and "
            f"will be replaced by the next put ({exc}); further ones are only counted",
        )

    # -- the miss hook ---------------------------------------------------------------------------

    def get_or_load(
        self, key: object, load: Callable[[int], Any], *, source: str | None = None
    ) -> Any:
        """The sample under ``key``; on a miss, ``load(key)``, cached and returned.

        Each key is loaded once per cache object, however many threads ask (single flight):
        a caller that finds ``key`` being loaded, by another thread or by a preload, waits for
        that load and gets its sample (a copy, unless ``copy=False``); if that load fails, the
        caller loads it itself. A load a stopped preload could no longer store is stored by
        the first caller that gets its sample. In a DataLoader worker, what was loaded is
        committed before the call returns: the samples a worker hands out are in the store
        before its siblings can ask for them.

        Parameters
        ----------
        key : int, numpy integer or 0-d integer tensor
            A non-negative integer.
        load : callable
            ``load(key)`` returns the sample to cache (``dataset[key]``); called only on a miss.
        source : str or None
            What error messages call the source, e.g. ``"dataset"``: the sample of key 5 is
            then ``dataset[5]`` (see ``put``'s ``name``).

        Returns
        -------
        object
            As :meth:`get` returns it, or the loaded sample.

        Raises
        ------
        TypeError
            If ``load`` returns ``None`` (a cache cannot tell it from a miss), or a sample that
            cannot be stored; whatever ``load`` raises propagates, and nothing is cached.
        """
        k = key if type(key) is int and 0 <= key <= MAX_KEY else check_key(key)
        stamp = self._counters.values[PUTS]
        sample = self.get(k)
        if sample is None:
            sample = self._request(stamp, source).load(k, load)
            self._hand_out()
        return sample

    def get_or_load_many(
        self,
        keys: Sequence[object],
        load_many: Callable[[list[int]], Sequence[Any]],
        *,
        source: str | None = None,
    ) -> list[Any]:
        """The samples under ``keys``, in order: hits from the cache, the misses in one call.

        ``load_many(missed)`` gets each missed key once, however often it appears in ``keys``
        (each position gets its own copy, unless ``copy=False``), and without the keys other
        threads or a preload are loading: those loads are waited for, as in
        :meth:`get_or_load`.

        Parameters
        ----------
        keys : sequence of int
            Non-negative integers.
        load_many : callable
            ``load_many(missed)`` returns their samples, in the same order (a data set's
            ``__getitems__``).
        source : str or None
            As for :meth:`get_or_load`.

        Raises
        ------
        TypeError
            If ``load_many`` returns ``None`` for a key, or a sample that cannot be stored.
        ValueError
            If ``load_many`` returns another number of samples than it was given keys.
        """
        ks = [k if type(k) is int and 0 <= k <= MAX_KEY else check_key(k) for k in keys]
        stamp = self._counters.values[PUTS]
        samples = [self.get(k) for k in ks]
        if self._request(stamp, source).load_many(ks, samples, load_many):
            self._hand_out()
        return samples

    def get_or_reserve(self, key: object) -> Any | None:
        """The sample under ``key``, the sample of a load of it in progress, or ``None``.

        For callers that load and :meth:`put` samples themselves (Hyrax's ``try_fetch``
        followed by ``insert_into_cache``): ``None`` reserves ``key`` for the caller, until
        :meth:`release`; meanwhile a preload skips it and nobody waits for it.
        """
        k = key if type(key) is int and 0 <= key <= MAX_KEY else check_key(key)
        stamp = self._counters.values[PUTS]
        sample = self.get(k)
        return sample if sample is not None else self._request(stamp, None).load(k, None)

    def release(self, key: object) -> None:
        """End the reservation of ``key`` by :meth:`get_or_reserve`, if any."""
        self._flights.release(check_key(key))

    def _request(self, stamp: int, source: str | None) -> Misses:
        """The misses of a request that began when this process had made ``stamp`` puts."""
        return Misses(
            self,
            self._flights,
            functools.partial(self._reread, since=stamp),
            copy=self._copy,
            source=source,
        )

    def _hand_out(self) -> None:
        """In a DataLoader worker: commit this request's puts before its samples leave.

        The main process gets a batch only after the worker returned it, so every sample
        it got is in the store before it can ask any worker for it again (next epoch).
        """
        if torch.utils.data.get_worker_info() is not None:
            self.commit()

    def _reread(self, key: int, since: int) -> Any | None:
        """The sample under ``key`` for a second look right after a counted miss, or None.

        ``since`` is the count of puts taken before the miss: if no put landed in this process
        since, the look is skipped (a disk read saved: see "One miss hook" in design.rst); puts of
        other processes are not waited for anyway (single flight is per process).  Counts
        nothing and admits nothing: the miss was this request's count.  A corrupt entry is
        None without a second warning or count (the miss that found it counted it).
        """
        if self._counters.values[PUTS] == since:
            return None
        with self._lock:
            value = self._ram.peek(key)
        if value is not None:
            return replicate(value) if self._copy else value
        try:
            return self._read(key, decode)
        except CodecError:
            return None

    def _read(self, key: int, reader: Callable[[memoryview | bytes], Any]) -> Any | None:
        """``reader`` of the value under ``key``; None if missing or this object's data is gone."""
        if not self._current():
            return None
        value = self._disk.read(key, reader)
        return value if self._generation == self._disk.generation else None

    def put(
        self, key: object, sample: object, *, evict: bool = True, name: str | None = None
    ) -> bool:
        """Store ``sample`` under ``key`` (overwriting), in RAM if it fits and on disk.

        Parameters
        ----------
        key : int, numpy integer or 0-d integer tensor
            A non-negative integer.
        sample : object
            Nested dicts (str or int keys), lists and tuples of torch tensors, numpy arrays and
            scalars, Python int/float/bool/str/bytes and None. Not ``None`` itself (a ``get``
            could not tell it from a miss).
        evict : bool
            ``False``: the RAM tier takes the sample only into free space (what a background
            fill should do: never push out what training uses).
        name : str or None
            What error messages call the sample, e.g. ``"dataset[5]"`` (the message then reads
            ``cannot encode dataset[5]['meta']: ...``); ``None``: ``"sample 5"`` for key 5.

        Returns
        -------
        bool
            Whether the sample is cached: in RAM, or on its way to disk (``False`` when the
            RAM tier declined it and the disk tier is full).

        Raises
        ------
        TypeError
            For an unsupported leaf, naming its path inside the sample.
        """
        k = check_key(key)
        if sample is None:
            raise TypeError(
                f"cannot put None under key {k}: a cache cannot store None, which get() returns "
                "for a miss; store a sample (an empty dict if there is nothing to store)"
            )
        self._current()  # raises if closed, warns once if stale (then write() refuses)
        encoding = Encoding(sample, name=f"sample {k}" if name is None else name)
        admits = self._may_admit()
        fits = False
        if admits:
            # The tier holds at least the tensors' bytes: a compact copy, or with copy=False the
            # sample itself, views and what they keep alive (a view into a data-set-wide array
            # counts that whole array). Enough for would_admit to turn most candidates down
            # before they are copied and measured (with copy=False a tensor the sample holds
            # twice counts twice here, once when measured: such a sample may be turned down
            # near the margin; it is still stored on disk).
            least = encoding.array_bytes + ENTRY_OVERHEAD
            with self._lock:
                fits = self._ram.would_admit(k, least, evict=evict)
        copied = fits and self._copy
        value: Value
        if self._copy:
            # The caller may change the sample once put returns: store and keep a snapshot.
            buffer = self._disk.buffer(encoding.size, keep=copied)
            value, kept = snapshot(encoding, sample, buffer, keep=copied)
        else:
            # The caller leaves the sample unchanged: the writer thread copies a large one,
            # off the training thread (docs/design.rst, "copy=False").
            value, kept = encoding, sample
        # Unless the writer needs it, the layout (numpy views of the sample's tensors) goes
        # before the write, not after: faster (docs/design.rst, "Buffer pool").
        copier = replicator(encoding.plan) if copied else None
        del encoding
        nbytes = sample_nbytes(kept) + ENTRY_OVERHEAD if fits else 0
        on_disk = self._disk.write(k, value, self._generation)
        with self._lock:
            self._counters.add(PUTS)
            self._counters.publish()  # with the disk tier's counters: a put may be rejected
            self._reads.put(k)
            if fits:
                return self._ram.admit(k, kept, nbytes, evict=evict, copier=copier) or on_disk
            if admits:
                # The private copy would be thrown away; an older value must go all the same.
                self._ram.discard(k)
        return on_disk

    def _may_admit(self) -> bool:
        """Whether this process adds samples to its RAM tier.

        DataLoader workers do not: per-worker RAM tiers would hold up to ``num_workers + 1``
        budgets, or, split, each serve only ``1 / num_workers`` of the hits. Workers read what
        the main process had in RAM when they were forked (copy-on-write: the sample data is
        not copied) and otherwise the LMDB pages in the OS page cache, which all processes share.
        """
        admits = self._admits
        if admits is None:
            admits = self._admits = self._ram_budget > 0 and not self._counters.worker
        return admits

    # -- for a preloader and for the probes of a data set ---------------------------------------

    @property
    def flights(self) -> SingleFlight:
        """The loads in progress on this cache object (in this process), one per key.

        :meth:`get_or_load` claims, joins and lands them; a preloader claims the keys it loads
        here too (``flights.claim(key, by_preload=True)``), so that each key is loaded once.
        It also holds the preload counters of this cache object.
        """
        return self._flights

    def where(self, key: int) -> Literal["ram", "disk"] | None:
        """The tier holding ``key``, or ``None``; counts no request and records no access.

        For a preloader, which must not disturb the statistics or the RAM tier's policy.
        """
        with self._lock:
            if key in self._ram:
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
        copier = replicator(value.plan) if value is not None and admits and self._copy else None
        with self._lock:
            overtaken = self._reads.done(key)
            if value is None:
                return None
            return (
                admits
                and not overtaken
                and self._ram.admit(key, value.sample, nbytes, evict=False, copier=copier)
            )

    def get_meta(self, name: str) -> bytes | None:
        """The store's metadata record ``name`` (e.g. a data set's probe digests), or ``None``."""
        return self._disk.get_meta(name) if self._current() else None

    def set_meta(self, name: str, value: bytes) -> None:
        """Record ``value`` as the store's metadata ``name``, committed with what was put so far."""
        if self._current():
            self._disk.set_meta(name, value)

    def reset(self, reason: str) -> None:
        """Empty both tiers (the store in one transaction), warning once with ``reason``.

        For a check that found the store holding other data than its fingerprint says (a data
        set's probe digests differ).
        """
        self._current()
        with self._lock:
            self._ram.clear()
        self._generation = self._disk.reset(reason, self._fingerprint)

    def __contains__(self, key: object) -> bool:
        k = check_key(key)
        with self._lock:
            if k in self._ram:
                return True
        return self._current() and self._disk.contains(k)

    def __len__(self) -> int:
        self._current()
        return len(self._disk)

    def stats(self) -> CacheStats:
        """A snapshot of the counters and the store's size.

        The counters are those of this process plus those of the DataLoader workers it
        started (any start method, running or exited); a worker counts itself only. The RAM
        figures are this process's (workers keep no RAM tier of their own).
        """
        with self._lock:
            counters = dict(zip(FIELDS, self._counters.snapshot(), strict=True))
            ram = {"ram_bytes": self._ram.nbytes, "ram_items": len(self._ram)}
        workers = self._counters.workers()
        if workers is not None:
            counters = {name: counters[name] + workers[name] for name in FIELDS}
        return CacheStats(
            **counters,
            **ram,
            disk_items=len(self._disk) if not self.closed else 0,
            disk_bytes=self._disk.file_bytes(),
        )

    def commit(self) -> None:
        """Make every put so far visible to other processes (committed, not synced).

        What :meth:`flush` does without waiting for the disk: a DataLoader worker calls it
        before handing out a batch it loaded, so that no sibling loads those samples again.
        """
        self._disk.commit()
        with self._lock:
            self._counters.publish()  # a failed commit counts write errors

    def flush(self) -> None:
        """Commit every queued write and sync the store to disk."""
        if not self._closed:
            self._disk.flush()

    def close(self) -> None:
        """Commit, sync and close the store (delete it if temporary); empty the RAM tier.

        Idempotent. Later calls of ``get``/``put`` raise ``ValueError``. The store stays open
        for the other objects of this process on it, if any: the last one closes it.
        """
        self._closed = True
        self._finalizer()
        with self._lock:  # no request publishes into the worker's slot meanwhile
            self._counters.close()
            self._ram.clear()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"ram_budget={self._ram_budget}"
        return f"SpillCache({str(self.path)!r}, {state})"

    def _warn_once(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            warn(message, SpillCacheWarning)

    # -- fork ------------------------------------------------------------------------------------

    def _before_fork(self) -> None:
        self._lock.acquire()

    def _after_fork_in_parent(self) -> None:
        self._lock.release()

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self._admits = None  # a DataLoader worker does not admit
