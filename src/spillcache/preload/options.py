"""What a cache wrapper tells its preload: the source to load from, and the preload's settings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..settings import THREADS, Threads
from ..stats import CacheStats
from ..summary import StatsLogger

__all__ = ["PreloadOptions"]


@dataclass(frozen=True, kw_only=True)
class PreloadOptions:
    """How to preload (see :class:`~spillcache.preload.Preloader`).

    Attributes
    ----------
    load : callable
        ``load(index)`` returns the sample (``dataset[index]``).
    length : int
        Length of the data set (indices outside it are counted as errors and skipped).
    stats : callable
        Returns the cache's statistics (for the progress bar and TensorBoard).
    progress : bool
        Show a tqdm progress bar on stderr.
    threads : int or "auto"
        Loads in flight: a fixed count, or tuned to the storage between 1 and
        :data:`~spillcache.settings.AUTO_MAX_THREADS`.
    summary : StatsLogger or None
        Where to log scalars, every ``summary.every`` processed indices.
    load_many : callable or None
        ``load_many(indices)`` returns their samples, in order (a batched source's
        ``__getitems__``): each load thread then loads several indices per call.
    """

    load: Callable[[int], object]
    length: int
    stats: Callable[[], CacheStats]
    progress: bool
    threads: Threads = THREADS
    summary: StatsLogger | None = None
    load_many: Callable[[list[int]], list[Any]] | None = None
