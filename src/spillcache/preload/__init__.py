"""The preload: a background fill that follows the sampler and adapts to the storage."""

from .engine import (
    Flight,
    Preloader,
    SingleFlight,
    StatsLogger,
    SummaryWriterLike,
    Threads,
    check_log_every,
    check_threads,
)
from .order import preview_order

__all__ = [
    "Flight",
    "Preloader",
    "SingleFlight",
    "StatsLogger",
    "SummaryWriterLike",
    "Threads",
    "check_log_every",
    "check_threads",
    "preview_order",
]
