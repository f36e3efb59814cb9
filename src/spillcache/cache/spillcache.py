"""SpillCache: a RAM tier of decoded samples in front of a persistent LMDB store.

This module opens, pickles, forks, reports and closes it; its reads, miss hook and puts are its
base classes (:mod:`.reads`, :mod:`.misses`, :mod:`.puts`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import weakref
from pathlib import Path
from typing import Any

from .. import forksafe
from ..budget import check_ram_budget, filesystem_size, memory_limit, parse_budget
from ..closing import Closing
from ..counters import Counters
from ..disk import TierOptions, open_tier
from ..flight import SingleFlight
from ..nodelink import Hooks, NodeLink, weakly
from ..overtaking import Overtaking
from ..ram import RamTier
from ..settings import (
    COPY,
    ON_MISMATCH,
    RAM_BUDGET,
    READAHEAD,
    OnMismatch,
    check_store_arguments,
)
from ..shared import FIELDS
from ..stats import CacheStats
from .misses import MissHook

__all__ = ["SpillCache"]


class SpillCache(MissHook, Closing):
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
        Let the OS read ahead when the store is read from disk. Keep it on: a sample read from
        disk brings its whole pack (64 KiB to 1 MiB) into memory, which ``False`` makes the
        kernel fetch page by page.
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
        self._node = self._link(fresh=True)
        if self._node.shared:  # a DDP rank: its RAM tier is the node's
            self._ram = RamTier(0)
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
            self._node.share()  # before the commit: another process hits what we held
            self._disk.commit()
        return {
            "_ram_budget": self._ram_budget,
            "_copy": self._copy,
            "_fingerprint": self._fingerprint,
            "_generation": self._generation,
            "_closed": self._closed,
            "_disk": self._disk,
            "_parent_block": block,
            "_node_where": self._node.where,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        where = state.pop("_node_where", None)
        self.__dict__.update(state)
        self._init_process_state()
        self._counters = Counters(self._disk, self._parent_block)
        self._node = self._link(fresh=False, where=where)
        if self._node.shared:  # a process unpickled on the node shares its RAM tier
            self._ram = RamTier(0)
        forksafe.register(self._before_fork, self._after_fork_in_parent, self._after_fork_in_child)
        # Unpickling the tier made this object one of its users.
        self._finalizer = weakref.finalize(self, self._disk.release)
        if self._closed:
            self._finalizer()

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
        self._node.reset(self._generation)

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
        node = self._node.stats()
        if node is not None:
            ram |= {"node_items": node.items, "node_bytes": node.nbytes, "node_budget": node.budget}
        return CacheStats(
            **counters,
            **ram,
            disk_items=len(self._disk) if not self.closed else 0,
            disk_bytes=self._disk.file_bytes(),
        )

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
        self._node.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"ram_budget={self._ram_budget}"
        return f"SpillCache({str(self.path)!r}, {state})"

    # -- fork ------------------------------------------------------------------------------------

    def _before_fork(self) -> None:
        self._node.forking()  # a DataLoader worker: the RAM tier becomes the node's
        self._lock.acquire()

    def _after_fork_in_parent(self) -> None:
        self._lock.release()
        self._node.forked_parent()

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self._admits = None  # a DataLoader worker does not admit
        self._node.forked_child()
        if self._node.shared:  # the parent's local tier is not this process's to serve
            self._ram = RamTier(0)

    # -- the node tier (nodelink.py) -------------------------------------------------------------

    def _link(self, *, fresh: bool, where: str | None = None) -> NodeLink:
        me = weakref.proxy(self)  # the link must not keep its cache object alive
        hooks = Hooks(
            read=weakly(self._read),
            generation=lambda: me._generation,
            count=weakly(self._count),
            corrupt=weakly(self._found_corrupt),
            fallback=weakly(self._disk_get),
            drop_local=weakly(self._drop_local),
            commit=self._disk.commit,
            learn=self._disk.learn_spec,
        )
        budget = 0 if self.closed else self._ram_budget
        link = NodeLink(
            self.path, budget, hooks, fresh=fresh, where=where, keep_puts=not self._copy
        )
        weakref.finalize(self, link.close)
        return link

    def _count(self, *fields: int) -> None:
        with self._lock:
            for field in fields:
                self._counters.add(field)

    def _drop_local(self) -> list[int]:
        """Turn the process-local RAM tier off (the node tier serves instead); its keys."""
        with self._lock:
            ram, self._ram = self._ram, RamTier(0)
        return list(ram.keys())
