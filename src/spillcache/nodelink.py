"""A cache object's use of its store's node RAM tier (:mod:`spillcache.node`).

A process is *alone* until it shares its store with another process on the node: it then
keeps today's process-local tier of decoded samples (the fastest RAM hit) and only attaches
the node tier. It turns *shared* when the cache is forked or pickled (DataLoader workers),
under ``torchrun`` (``LOCAL_WORLD_SIZE`` > 1: DDP ranks), or when it sees that another process
attached the node tier. A shared process keeps no local tier (its samples would be held twice):
every RAM hit is a node-tier hit, decoded from the tier in place, and every disk hit or put is
offered to the node tier, which all processes then hit. The local tier's residents move into
the node tier when a process turns shared (docs/design.rst, "The node RAM tier").

``SPILLCACHE_NODE_DIR`` names the memory file system directory of node tiers (default
``/dev/shm``); ``off`` turns them off (every process then works as before: alone).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import lmdb
import torch.distributed

from .codec import UnknownSpec, decode
from .counters import DISK_HITS, MISSES, NODE_HITS, RAM_HITS
from .disk.values import Value, readable
from .errors import CodecError, NodeTierWarning
from .node import NO_STAMP, NodeStats, NodeTier
from .node.place import memory_root
from .ownputs import OWN_SHARE, OwnPuts
from .userwarn import warn

__all__ = ["ENV_DIR", "Hooks", "NodeLink", "weakly"]

P = ParamSpec("P")
R = TypeVar("R")

#: The environment variable naming where node tiers live (``off``: nowhere).
ENV_DIR = "SPILLCACHE_NODE_DIR"
_OFF = "off"


def weakly(method: Callable[P, R]) -> Callable[P, R]:
    """``method`` (bound), without keeping its object alive (a cache's hooks: no cycle)."""
    ref = weakref.WeakMethod(method)

    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        bound = ref()
        if bound is None:
            raise ValueError("the cache object of this node tier link is gone")
        return bound(*args, **kwargs)

    return call


def _launched_as_rank() -> bool:
    """Whether this is one of several ranks (torchrun's or SLURM's count, else torch's)."""
    for name in ("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE"):
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value) > 1
    distributed = torch.distributed
    return bool(
        distributed.is_available()
        and distributed.is_initialized()
        and distributed.get_world_size() > 1
    )


def _with_bytes(value: memoryview | bytes) -> tuple[Any, bytes]:
    """A disk reader: the decoded sample and a copy of its value for the node tier."""
    return decode(value), bytes(value)


@dataclass(frozen=True)
class Hooks:
    """What the link needs of its cache object.

    Attributes
    ----------
    read : callable
        ``read(key, reader)``: ``reader`` of the stored value, None if missing or stale.
    generation : callable
        The store generation the cache's data belongs to.
    count : callable
        ``count(*fields)``: count requests (under the cache's lock).
    corrupt : callable
        ``corrupt(key, exc)``: count and warn about a corrupt stored value.
    fallback : callable
        ``fallback(key)``: the disk path of ``get`` without any RAM tier.
    drop_local : callable
        Turn the local RAM tier off; the keys it held.
    commit : callable
        Commit the disk tier's queued writes (visible to every process).
    learn : callable
        ``learn(spec)``: read the structure spec ``spec`` from the store, for the decoder (a
        record in the node tier names its spec by id; CodecError if the store lacks it).
    """

    read: Callable[[int, Callable[[memoryview | bytes], Any]], Any]
    generation: Callable[[], bytes | None]
    count: Callable[..., None]
    corrupt: Callable[[int, CodecError], None]
    fallback: Callable[[int], Any]
    drop_local: Callable[[], list[int]]
    commit: Callable[[], None]
    learn: Callable[[int], None]


@dataclass(frozen=True)
class Pending:
    """A put on its way to the node tier: its value, and whether it replaces a stored one."""

    value: bytes | memoryview
    replaces: bool


class NodeLink:
    """How one cache object uses its store's node tier in this process.

    Parameters
    ----------
    store : Path
        The store directory (names the tier).
    budget : int
        ``ram_budget``: the tier's budget on the node (0: no tier).
    hooks : Hooks
        The cache object's side.
    fresh : bool
        The store was just opened here (its generation is the current one: a tier holding
        another generation is emptied), rather than unpickled from another process.
    where : str or None
        The directory of node tiers (:attr:`where` of the pickling process's link); None:
        ``SPILLCACHE_NODE_DIR``, read now.
    keep_puts : bool
        ``copy=False``: a ``get`` in this process returns the object put here, while the node
        tier holds that put's value (ownputs.py).
    """

    def __init__(  # noqa: PLR0913 - the cache's side, and its settings as keywords
        self,
        store: Path,
        budget: int,
        hooks: Hooks,
        *,
        fresh: bool,
        where: str | None = None,
        keep_puts: bool = False,
    ) -> None:
        #: Where node tiers live ("": ``/dev/shm``; "off": nowhere); travels with a pickle,
        #: since a forkserver's workers do not see the environment of the process using them.
        self.where = os.environ.get(ENV_DIR, "") if where is None else where
        self._store = store
        self._budget = budget
        self._hooks = hooks
        self._fresh = fresh
        self._lock = threading.Lock()
        self._tier: NodeTier | None = None
        self._tried = False
        self._joins = 0
        self._migrate = False
        self._mover: threading.Thread | None = None
        self._own = OwnPuts(budget // OWN_SHARE if keep_puts else 0)
        #: Whether this process serves RAM hits from the node tier (no local tier).
        self.shared = budget > 0 and not fresh
        if fresh and budget > 0 and _launched_as_rank() and self._open() is not None:
            self.shared = True

    # -- the tier ----------------------------------------------------------------------------------

    def _open(self) -> NodeTier | None:
        """This process's handle on the tier, opened at first need; None if there is none."""
        if self._tried:
            return self._tier
        with self._lock:
            if not self._tried:
                if self._budget > 0 and self.where != _OFF:
                    self._tier = self._attach(self.where or None)
                self._tried = True
        return self._tier

    def _attach(self, where: str | None) -> NodeTier | None:
        try:
            tier = NodeTier.open(self._store, self._budget, where=where)
            generation = self._hooks.generation()
            if tier is not None and generation is not None:
                tier.adopt(generation, force=self._fresh)
        except (OSError, lmdb.Error) as exc:
            self._fault(exc)
            return None
        if tier is not None:
            self._joins = tier.joins()
        return tier

    def _fault(self, exc: BaseException) -> None:
        """A storage fault of the tier: this process stops using it, with one warning."""
        tier, self._tier, self._tried = self._tier, None, True
        warn(
            f"the node RAM tier of the store at {str(self._store)!r} failed ({exc}); this "
            "process serves from the disk tier from now on",
            NodeTierWarning,
        )
        if tier is not None:
            tier.close()

    # -- turning shared ----------------------------------------------------------------------------

    def joined(self) -> bool:
        """In a lone process: turn shared (now) if another process attached the tier."""
        tier = self._open()
        if self.shared or tier is None or tier.joins() == self._joins:
            return self.shared
        self.share()
        return True

    def share(self) -> None:
        """Turn shared: the local tier's residents move into the node tier, which serves all."""
        if self._open() is None:
            return
        self.shared = True
        self._migrate = False
        tier = self._tier
        generation = self._hooks.generation()
        for key in self._hooks.drop_local():  # empty from the second call on
            if tier is None:
                return
            try:  # stamped like any read: a put meanwhile (another thread's) wins
                held, stamp = tier.fetch(key, bool, generation=generation, record=False)
            except (OSError, lmdb.Error) as exc:
                self._fault(exc)
                return
            value = None if held or stamp == NO_STAMP else self._hooks.read(key, bytes)
            if value is not None:  # into free space only: declined once the tier is full
                self._offer(key, value, stamp, generation, evict=False)

    def forking(self) -> None:
        """Before a fork (a DataLoader worker): turn shared; the residents move after it.

        Nothing may be read or admitted in a fork hook (the tiers' own hooks may have closed
        them already), so a thread the parent starts after the fork moves them
        (:meth:`forked_parent`); the parent's next request waits for it (:meth:`settle`).
        """
        if self.shared or self._budget == 0:
            return
        usable = self._tier is not None or (
            not self._tried
            and self.where != _OFF
            and memory_root(self.where or None)[0] is not None
        )
        if usable:
            self.shared = True
            self._migrate = True

    def forked_parent(self) -> None:
        """After a fork, in the parent: move the local tier's residents, in a thread."""
        if self._migrate and self._mover is None:
            mover = threading.Thread(
                target=self.share, name=f"spillcache-node:{self._store.name}", daemon=True
            )
            mover.start()  # before it is published: settle() joins only started threads
            self._mover = mover

    def forked_child(self) -> None:
        """In a forked child: the parent moves its residents, not this process."""
        self._lock = threading.Lock()
        self._migrate = False
        self._mover = None
        self._fresh = False
        self._own.clear()  # put by the parent, not by this process

    def settle(self) -> None:
        """Wait until the residents of the local tier have moved (after a fork)."""
        mover = self._mover
        if mover is not None and mover is not threading.current_thread():
            mover.join()
            self._mover = None

    # -- requests ----------------------------------------------------------------------------------

    def get(self, key: int) -> Any | None:
        """A shared process's ``get``: node tier, else disk (offered to the node tier)."""
        if self._mover is not None:
            self.settle()
        tier = self._open()
        if tier is None:
            return self._hooks.fallback(key)
        generation = self._hooks.generation()
        if self._own and (own := self._own_get(tier, key, generation)) is not None:
            return own
        try:
            sample, stamp = tier.fetch(key, decode, generation=generation)
        except CodecError as exc:
            sample, stamp = self._undecoded(tier, key, exc, generation)
        except (OSError, lmdb.Error) as exc:
            self._fault(exc)
            return self._hooks.fallback(key)
        if sample is not None:
            self._hooks.count(RAM_HITS, NODE_HITS)
            return sample
        try:
            got = self._hooks.read(key, _with_bytes)
        except CodecError as exc:
            self._hooks.corrupt(key, exc)
            got = None
        if got is None:
            self._hooks.count(MISSES)
            return None
        self._hooks.count(DISK_HITS)
        sample, value = got
        if stamp != NO_STAMP:
            self._offer(key, value, stamp, generation, evict=True)
        return sample

    def _undecoded(
        self, tier: NodeTier, key: int, exc: CodecError, generation: bytes | None
    ) -> tuple[Any | None, int]:
        """:meth:`get`'s fetch of ``key`` that raised ``exc``: once more if a spec was missing.

        A disk hit offers the store's record to the tier, whose spec it names by id: a process
        that has not read that spec yet learns it from the store. Anything else undecodable
        is damaged in memory: dropped (a miss, read from the store).
        """
        try:
            if isinstance(exc, UnknownSpec):
                try:
                    self._hooks.learn(exc.spec)
                    return tier.fetch(key, decode, generation=generation, record=False)
                except CodecError:
                    pass
            tier.put(key, None)
        except (OSError, lmdb.Error) as fault:
            self._fault(fault)
        return None, NO_STAMP

    def _own_get(self, tier: NodeTier, key: int, generation: bytes | None) -> Any | None:
        """The object this process put under ``key``, if the node tier still holds that put."""
        own = self._own.lookup(key)
        if own is None:
            return None
        try:
            held, stamp = tier.fetch(key, bool, generation=generation)
        except (OSError, lmdb.Error):
            return None  # the usual path meets the fault again, and handles it
        if held and stamp == own[1]:
            self._hooks.count(RAM_HITS, NODE_HITS)
            return own[0]
        self._own.forget(key)
        return None

    def _offer(
        self,
        key: int,
        value: bytes | memoryview,
        stamp: int | None,
        generation: bytes | None,
        *,
        evict: bool,
    ) -> bool:
        tier = self._tier
        if tier is None:
            return False
        try:
            return tier.admit(key, value, stamp=stamp, generation=generation, evict=evict)
        except (OSError, lmdb.Error) as exc:
            self._fault(exc)
            return False

    def before_put(
        self, key: int, value: Value, *, stored: Callable[[int], bool]
    ) -> Pending | None:
        """Before a put's disk write: its value for the node tier (None: no node tier here).

        ``stored(key)``: whether the store holds ``key`` already (then the put is committed
        before the node tier learns of it: see :meth:`after_put`).
        """
        if not (self.shared or self.joined()) or self._open() is None:
            return None
        if self._mover is not None:
            self.settle()
        return Pending(readable(value), stored(key))

    def after_put(
        self, key: int, pending: Pending | None, *, evict: bool, sample: object = None
    ) -> bool:
        """After the disk write: offer the new value, and stamp out older ones everywhere.

        A put that replaces a stored value is committed first: a process that sees the new
        stamp then reads the new value from disk (stamps.py). ``sample``: the object put
        (with ``copy=False``), served to this process while the node tier holds this put.
        """
        self._own.forget(key)
        tier = self._tier
        if pending is None or tier is None:
            return False
        if pending.replaces:
            self._hooks.commit()
        generation = self._hooks.generation()
        try:
            stamp = tier.put_stamped(key, pending.value, generation=generation, evict=evict)
        except (OSError, lmdb.Error) as exc:
            self._fault(exc)
            return False
        if stamp == NO_STAMP:
            return False
        if sample is not None:
            self._own.keep(key, sample, stamp)
        return True

    def promote(self, key: int) -> bool | None:
        """Copy ``key`` from disk into the node tier's free space (a preload); None if missing."""
        if self._open() is None:
            return False
        value = self._hooks.read(key, bytes)
        if value is None:
            return None
        return self._offer(key, value, None, self._hooks.generation(), evict=False)

    def contains(self, key: int) -> bool:
        """Whether the node tier holds ``key`` (for a shared process)."""
        tier = self._tier if self.shared else None
        return tier is not None and tier.contains(key, generation=self._hooks.generation())

    def reset(self, generation: bytes) -> None:
        """The store was emptied for ``generation`` here: so is the node tier."""
        self._own.clear()
        tier = self._open()
        if tier is not None:
            tier.adopt(generation, force=True)

    def stats(self) -> NodeStats | None:
        """What the node tier holds (None: no tier in this process)."""
        self.settle()
        tier = self._tier
        return None if tier is None else tier.stats()

    def close(self) -> None:
        """Stop using the tier (the last process on the node frees it). Idempotent."""
        with self._lock:
            tier, self._tier, self._tried = self._tier, None, True
        self._own.clear()
        if tier is not None:
            tier.close()
