"""The stores behind Hyrax 0.9+'s ``DataCache``: one per data set and field set, opened on use.

A data set's store is named by the data set's identity and the field names of its samples
(:mod:`spillcache.hyrax.identity`). The fields are known from the config's data requests, or
from the first sample inserted; samples of other fields go to another store. Without a
``cache_dir`` the stores are private temporary directories, reused by this process. Each
friendly name also has a RAM slot: the part of the RAM keys that tells its entries apart.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import forksafe
from ..cache import SpillCache
from ..config import CacheSettings
from .identity import dataset_identity, expected_fields, store_name

__all__ = ["DatasetEntry", "DatasetStores"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class DatasetEntry:
    """One friendly name's data set, its identity, its RAM slot and (in this process) its store."""

    dataset: Any
    identity: dict[str, Any]
    length: int
    slot: int
    store: SpillCache | None = None


class DatasetStores:
    """The data sets of one ``DataCache`` and their stores.

    Parameters
    ----------
    config : Mapping
        The Hyrax configuration: its data requests may tell each data set's fields.
    settings : CacheSettings
        The cache keys of ``config["data_set"]``.
    datasets : Mapping
        Friendly name -> data set instance.

    Attributes
    ----------
    entries : dict
        Friendly name -> :class:`DatasetEntry`, for those used in this process (read without
        a lock; :meth:`entry` adds them).
    enabled : bool
        Whether stores may open (``use_cache``; cleared when caching is switched off).
    """

    def __init__(
        self, config: Mapping[str, Any], settings: CacheSettings, datasets: Mapping[str, Any]
    ) -> None:
        self.settings = settings
        self.enabled = settings.use_cache
        self._datasets = datasets
        # Fields per friendly name: from the config's data requests until the first insert.
        self._fields: dict[str, tuple[str, ...] | None] = {
            name: expected_fields(config, name, dataset) for name, dataset in datasets.items()
        }
        self._temporary: dict[str, Path] = {}
        self._init_process_state()

    def _init_process_state(self) -> None:
        self._new_locks()
        self._slots = itertools.count()
        self.entries: dict[str, DatasetEntry] = {}
        self._held: list[SpillCache] = []
        self._finalizer = weakref.finalize(self, _release_all, self._held)
        forksafe.register(self._before_fork, self._after_fork_in_parent, self._after_fork_in_child)

    def __getstate__(self) -> dict[str, Any]:
        # For spawn/forkserver DataLoader workers: stores reopen by path.
        keep = ("settings", "enabled", "_datasets", "_fields", "_temporary")
        return {k: self.__dict__[k] for k in keep}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_process_state()

    def entry(self, name: str) -> DatasetEntry:
        """``name``'s entry, made on first use.

        Raises
        ------
        KeyError
            If there is no data set of that name.
        """
        entry = self.entries.get(name)
        if entry is not None:
            return entry
        dataset = self._datasets.get(name)
        if dataset is None:
            raise KeyError(
                f"no data set named {name!r} in this DataCache (it has {sorted(self._datasets)})"
            )
        identity = dataset_identity(dataset, fingerprint=self.settings.cache_fingerprint)
        with self._lock:
            if name not in self.entries:
                self.entries[name] = DatasetEntry(
                    dataset, identity, identity["len"], next(self._slots)
                )
            return self.entries[name]

    def store(
        self, name: str, entry: DatasetEntry, fields: tuple[str, ...] | None
    ) -> SpillCache | None:
        """``name``'s store for ``fields`` (``None``: the fields known), opened on first use.

        ``None`` while the fields are not known, and when :attr:`enabled` is false.
        """
        known = self._fields.get(name)
        if entry.store is not None and (fields is None or fields == known):
            return entry.store
        if fields is None and known is None:
            return None  # nothing inserted yet and the config does not tell the fields
        with self._opening:
            if fields is not None and fields != self._fields.get(name):
                self._switch_fields(name, entry, fields)
            if entry.store is None and self.enabled:
                entry.store = self._open(name, entry)
            return entry.store

    def open_stores(self) -> list[SpillCache]:
        """The stores open in this process, one per data set that has one."""
        with self._lock:
            return [e.store for e in self.entries.values() if e.store is not None]

    def close(self) -> None:
        """Release every store (idempotent; also at garbage collection); they reopen on use."""
        with self._opening:
            self._finalizer()
            with self._lock:
                for entry in self.entries.values():
                    entry.store = None
            self._held.clear()
            self._finalizer = weakref.finalize(self, _release_all, self._held)

    def _switch_fields(self, name: str, entry: DatasetEntry, fields: tuple[str, ...]) -> None:
        """Another field set is another store (caller holds ``_opening``)."""
        if entry.store is not None:
            logger.warning(
                "data set %r: samples with fields %s, not %s; they go to another store",
                name,
                list(fields),
                list(self._fields.get(name) or ()),
            )
            with self._lock:
                entry.store = None
                entry.slot = next(self._slots)  # its RAM entries are of the other fields
        self._fields[name] = fields
        self._temporary.pop(name, None)

    def _open(self, name: str, entry: DatasetEntry) -> SpillCache:
        fields = self._fields[name]
        assert fields is not None
        stem = store_name(entry.identity, fields)
        root = self.settings.cache_dir
        path = Path(root) / stem if root is not None else self._temporary.get(name)
        # A disk-only store that keeps the caller's objects: the RAM tier here holds samples,
        # and Hyrax never changes one it inserted. Another cache of this process opening the
        # same path shares its environment and writer (one LMDB environment per process).
        store = SpillCache(
            path,
            ram_budget=0,
            disk_budget=self.settings.cache_disk_budget,
            fingerprint=stem.rsplit("-", 1)[1],
            copy=False,
        )
        if root is None:
            self._temporary[name] = store.path
        self._held.append(store)
        logger.info("data set %r: store %s", name, store.path)
        return store

    # -- fork ------------------------------------------------------------------------------------

    def _before_fork(self) -> None:
        self._lock.acquire()

    def _after_fork_in_parent(self) -> None:
        self._lock.release()

    def _after_fork_in_child(self) -> None:
        self._new_locks()

    def _new_locks(self) -> None:
        self._lock = threading.Lock()  # the entries
        self._opening = threading.Lock()  # opening and switching stores


def _release_all(held: list[SpillCache]) -> None:
    for store in held:
        store.close()
    held.clear()
