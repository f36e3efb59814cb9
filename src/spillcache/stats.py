"""Counters of a cache, as a plain frozen dataclass."""

from __future__ import annotations

import dataclasses

__all__ = ["CacheStats"]


@dataclasses.dataclass(frozen=True)
class CacheStats:
    """A snapshot of a cache's counters.

    The request counters (hits, misses, puts, rejected, corrupt, write errors) are those of
    the process that asks plus those of the DataLoader workers it started, running or
    exited; the RAM figures are that process's; the disk figures describe the store.

    Attributes
    ----------
    ram_hits, disk_hits, misses : int
        Outcome of every ``get``: served from RAM (the process-local tier or the node tier),
        from the disk tier, or not at all.
    puts : int
        Samples stored with ``put``.
    ram_bytes, ram_items : int
        Accounted bytes and number of samples in the RAM tier (``ram_bytes <= ram_budget``).
    disk_items, disk_bytes : int
        Entries in the store and size of its data file (shared by every process using it).
    rejected : int
        Puts the disk tier refused, before writing them: they would have taken the store past
        ``disk_budget``, or its file system below the free-space floor or past its free space.
    corrupt : int
        Entries that failed their checksum or could not be decoded; each was served as a miss.
    write_errors : int
        Entries lost to a failed write (e.g. the disk filled up during a commit).
    preload_loads : int
        Samples the preload loaded from the data set and cached.
    preload_skips : int
        Indices the preload passed over: already cached, or being loaded by training.
    preload_promotions : int
        Samples the preload copied from the disk tier into free RAM (a warm restart).
    preload_errors : int
        Indices whose preload failed (the load raised, the sample could not be stored, or the
        order held an invalid index); none of them is cached.
    preload_waits : int
        Requests that found their sample being loaded by the preload and waited for that load
        instead of starting their own (each is also counted in ``misses``).
    node_hits : int
        The share of ``ram_hits`` the node tier served (the RAM tier shared by the processes
        of a node: DataLoader workers, DDP ranks); the rest came from this process's own.
    node_items, node_bytes : int
        Entries in the node tier and their accounted bytes, for every process on the node
        (0 where this process has no node tier).
    node_budget : int
        The node tier's budget (0: no node tier in this process).
    probe_errors : int
        1 when a :class:`~spillcache.CachedDataset` served its store unchecked because a probe
        sample could not be loaded from the data set (see ``probes``); else 0.
    """

    ram_hits: int = 0
    disk_hits: int = 0
    misses: int = 0
    puts: int = 0
    ram_bytes: int = 0
    ram_items: int = 0
    disk_items: int = 0
    disk_bytes: int = 0
    rejected: int = 0
    corrupt: int = 0
    write_errors: int = 0
    preload_loads: int = 0
    preload_skips: int = 0
    preload_promotions: int = 0
    preload_errors: int = 0
    preload_waits: int = 0
    probe_errors: int = 0
    node_hits: int = 0
    node_items: int = 0
    node_bytes: int = 0
    node_budget: int = 0

    @property
    def requests(self) -> int:
        """Number of ``get`` calls."""
        return self.ram_hits + self.disk_hits + self.misses

    @property
    def ram_hit_rate(self) -> float:
        """Fraction of ``get`` calls served from RAM (0.0 before any)."""
        return self.ram_hits / self.requests if self.requests else 0.0

    @property
    def hit_rate(self) -> float:
        """Fraction of ``get`` calls served from either tier (0.0 before any)."""
        return (self.ram_hits + self.disk_hits) / self.requests if self.requests else 0.0
