"""CachedDataset: any map-style data set, served through a SpillCache."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch.utils.data

from .cache import SpillCache
from .closing import Closing
from .hosting import PreloadHost, preload_stats
from .indices import check_index
from .loading import not_none
from .preload import Preloader, PreloadOptions
from .probes import SampleProbes
from .settings import (
    COPY,
    LOG_EVERY,
    ON_MISMATCH,
    RAM_BUDGET,
    READAHEAD,
    THREADS,
    OnMismatch,
    Threads,
    check_log_every,
    check_threads,
)
from .sources import MapDataset, check_dataset, default_fingerprint
from .stats import CacheStats
from .summary import StatsLogger, SummaryWriterLike

__all__ = ["CachedDataset", "default_fingerprint"]


class CachedDataset(Closing, torch.utils.data.Dataset[Any]):
    """A map-style data set whose samples are loaded once and then served from a SpillCache.

    ``ds[i]`` returns the cached sample, or loads ``dataset[i]``, caches it and returns it.
    Works as the data set of a ``DataLoader`` with worker processes (it pickles as the wrapped
    data set plus the store's path and settings).

    .. important::
       The wrapped data set must return the same sample for the same index every time. Put
       random augmentation in ``transform``: it runs on every returned sample *after* the cache,
       so each epoch draws new random values. Caching an augmented sample would freeze one
       random draw forever.

    Parameters
    ----------
    dataset : map-style data set
        Anything with ``__getitem__(int)`` and ``__len__``.
    path : str, os.PathLike or None
        Store directory (see :class:`SpillCache`); ``None``: a temporary store.
    ram_budget, disk_budget, on_mismatch, copy, readahead
        As for :class:`SpillCache`.
    fingerprint : str or None
        Identity of the data. ``None`` (default): :func:`default_fingerprint` plus a check of
        ``probes`` sample digests on reopening; pass a string to vouch for the data yourself
        (no sample is re-loaded to check).
    transform : callable or None
        Applied to every returned sample, after the cache.
    probes : int
        How many samples (spread over the index range) to digest and re-check on reopening when
        no fingerprint is given; ``0`` turns the check off.
    preload : bool
        Start :meth:`start_preload` (in index order) once the data set is built.
    preload_threads : int or "auto"
        Loads the preload keeps in flight: ``"auto"`` (default) tunes the count to the storage
        (between 1 and 64); an int fixes it.
    progress : bool or None
        Show a progress bar while preloading; ``None`` (default): when stderr is a terminal.
    summary_writer : SummaryWriter, str, os.PathLike or None
        A ``tensorboardX.SummaryWriter`` (or a log directory for a new one) to log the cache's
        statistics to, every ``log_every`` requests and while preloading, from this process.
    log_every : int
        See ``summary_writer``.

    Raises
    ------
    FingerprintMismatch
        With ``on_mismatch="error"``, when the store holds other data.
    NondeterministicDataError
        When a probed index loads differently twice.
    """

    def __init__(  # noqa: PLR0913 - SpillCache's settings plus the data set's
        self,
        dataset: MapDataset,
        path: str | os.PathLike[str] | None = None,
        *,
        ram_budget: int | str = RAM_BUDGET,
        disk_budget: int | str | None = None,
        fingerprint: str | None = None,
        transform: Callable[[Any], Any] | None = None,
        probes: int = 2,
        on_mismatch: OnMismatch = ON_MISMATCH,
        copy: bool = COPY,
        readahead: bool = READAHEAD,
        preload: bool = False,
        preload_threads: Threads = THREADS,
        progress: bool | None = None,
        summary_writer: SummaryWriterLike | str | os.PathLike[str] | None = None,
        log_every: int = LOG_EVERY,
    ) -> None:
        check_dataset(dataset)
        _check_options(transform, probes)
        self.preload_threads: Threads = check_threads(preload_threads)
        _check_flags(progress, preload)
        check_log_every(log_every)
        self.progress = progress
        self.dataset = dataset
        self.transform = transform
        self._len = len(dataset)
        self._preload = PreloadHost()
        self._summary: StatsLogger | None = None
        self._probe_errors = 0
        vouched = fingerprint is not None
        self.cache = SpillCache(
            path,
            ram_budget=ram_budget,
            disk_budget=disk_budget,
            fingerprint=fingerprint if vouched else default_fingerprint(dataset),
            on_mismatch=on_mismatch,
            copy=copy,
            readahead=readahead,
        )
        try:
            if summary_writer is not None:
                self._summary = StatsLogger(summary_writer, log_every)
                self._summary.follow(self.stats)
            if not vouched and probes and self._len:
                load = functools.partial(_load_one, dataset)
                checked = SampleProbes(
                    self.cache, load, type(dataset).__name__, self._len, on_mismatch
                )
                self._probe_errors = checked.check(probes)
            if preload:
                self.start_preload()
        except BaseException:
            self.close()
            raise

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> Any:
        sample = self.cache.get_or_load(
            self._normalize(index), self.dataset.__getitem__, source="dataset"
        )
        if self._summary is not None:
            self._summary.tick(self.stats)
        return sample if self.transform is None else self.transform(sample)

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        """The samples of ``indices``, in order: what a ``DataLoader`` asks for per batch.

        Hits come from the cache; the misses are loaded in one call of the wrapped data set's
        ``__getitems__`` if it has one (else one ``dataset[i]`` each) and cached. A miss that
        another thread or the preload is loading is waited for, not loaded again.

        Parameters
        ----------
        indices : sequence of int
            Indices of this data set (negative ones count from the end).

        Raises
        ------
        ValueError
            If the wrapped ``__getitems__`` returns a different number of samples.
        """
        keys = [self._normalize(index) for index in indices]
        samples = self.cache.get_or_load_many(
            keys, functools.partial(_load_many, self.dataset), source="dataset"
        )
        if self._summary is not None:
            for _ in keys:
                self._summary.tick(self.stats)
        if self.transform is not None:
            samples = [self.transform(sample) for sample in samples]
        return samples

    # -- preload ---------------------------------------------------------------------------------

    def start_preload(self, order: object = None) -> None:
        """Load the samples ``order`` will ask for into the cache, in the background.

        Returns at once. Indices already cached are skipped (after a restart, samples on disk
        are only copied into free RAM); the others are loaded by up to ``preload_threads``
        threads and cached as they complete, the RAM tier taking only free space. Training
        that asks for a sample being preloaded waits for that load rather than starting its
        own, and the preload skips what training is loading: each sample is loaded once.
        A preload already running is stopped first.

        Parameters
        ----------
        order : None, iterable of int, sampler or DataLoader
            The order training will draw in. ``None``: ``0 .. len - 1``. A sampler is
            previewed without changing what it will yield: ``SequentialSampler``,
            ``DistributedSampler`` (call ``set_epoch`` first), ``RandomSampler``,
            ``SubsetRandomSampler``, ``WeightedRandomSampler`` with an explicit
            ``generator`` (previewed from a copy of its state), a ``BatchSampler`` of one of
            those, or the ``DataLoader`` that uses it. Other samplers get a warning and index
            order.

        Raises
        ------
        ValueError
            If the cache is closed.
        """
        if self.cache.closed:
            raise ValueError("the cache is closed; cannot preload")
        batched = callable(getattr(self.dataset, "__getitems__", None))
        options = PreloadOptions(
            # Not bound methods: see preload_stats.
            load=functools.partial(_load_one, self.dataset),
            load_many=functools.partial(_load_many, self.dataset) if batched else None,
            length=self._len,
            threads=self.preload_threads,
            progress=sys.stderr.isatty() if self.progress is None else self.progress,
            stats=functools.partial(preload_stats, self.cache, self._probe_errors),
            summary=self._summary,
        )
        self._preload.start(self.cache, order, options)

    def wait_preload(self, timeout: float | None = None) -> bool:
        """Wait for the preload to finish; False if ``timeout`` seconds passed first.

        True at once when no preload runs (none started, done, or stopped).

        Raises
        ------
        RuntimeError
            If the preload broke down (e.g. iterating ``order`` raised). Samples whose load
            raised do not count: they are skipped and counted in ``stats().preload_errors``.
        """
        return self._preload.wait(timeout)

    def stop_preload(self) -> None:
        """Stop the preload without waiting for loads in progress, however slow.

        Queued loads are cancelled; a load running in user code finishes on its own thread
        and its sample is handed to a training thread waiting for it, if any, which caches
        it; with nobody waiting, it is dropped. What was cached stays cached.
        """
        self._preload.stop()

    @property
    def preloading(self) -> bool:
        """Whether a preload is running in this process."""
        return self._preload.running

    @property
    def preloader(self) -> Preloader | None:
        """The current or last preload (its ``limit``, ``in_flight``, ``processed``, ...)."""
        return self._preload.preloader

    def stats(self) -> CacheStats:
        """The cache's statistics with this data set's preload counters."""
        return preload_stats(self.cache, self._probe_errors)

    def _normalize(self, index: object) -> int:
        return check_index(index, self._len, "CachedDataset")

    # -- resources -------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the preload and close the cache (commits what is queued)."""
        self.stop_preload()
        self.cache.close()
        if self._summary is not None:
            self._summary.close()

    # -- pickling (DataLoader workers under spawn) -------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        # Threads, locks and the TensorBoard writer stay in this process; a worker process
        # starts with no preload and logs nothing.
        state = self.__dict__.copy()
        state.update(_preload=PreloadHost(), _summary=None)
        if self._summary is not None:
            self._summary.watch()  # spawned workers may count requests from now on
        return state

    def __repr__(self) -> str:
        return (
            f"CachedDataset({type(self.dataset).__name__}, len={self._len}, cache={self.cache!r})"
        )


def _check_options(transform: object, probes: object) -> None:
    if transform is not None and not callable(transform):
        raise TypeError(f"transform must be callable or None, not {type(transform).__name__}")
    if isinstance(probes, bool) or not isinstance(probes, int):
        raise TypeError(f"probes={probes!r} is not an int; use a non-negative int (0 = off)")
    if probes < 0:
        raise ValueError(f"probes={probes!r} is invalid; use a non-negative int (0 = off)")


def _check_flags(progress: object, preload: object) -> None:
    if progress is not None and not isinstance(progress, bool):
        raise TypeError(f"progress={progress!r} is invalid; use True, False or None")
    if not isinstance(preload, bool):
        raise TypeError(f"preload={preload!r} is invalid; use True or False")


def _load_one(dataset: Any, i: int) -> Any:
    """``dataset[i]``, refusing None (which a cache cannot tell from a miss)."""
    return not_none(dataset[i], i, "dataset")


def _load_many(dataset: Any, keys: list[int]) -> list[Any]:
    """``dataset[k]`` for each of ``keys``, in one call of its ``__getitems__`` if any."""
    if not keys:
        return []
    many = getattr(dataset, "__getitems__", None)
    if not callable(many):
        return [_load_one(dataset, k) for k in keys]
    samples = list(many(list(keys)))
    if len(samples) != len(keys):
        raise ValueError(
            f"{type(dataset).__name__}.__getitems__ returned {len(samples)} samples "
            f"for {len(keys)} indices; it must return one sample per index, in order"
        )
    return [not_none(sample, k, "dataset") for k, sample in zip(keys, samples, strict=True)]
