"""The preload: a background fill that follows the sampler and adapts to the storage."""

from .engine import (
    Flight,
    Preloader,
    SingleFlight,
    Threads,
    check_threads,
)
from .order import preview_order

__all__ = [
    "Flight",
    "Preloader",
    "SingleFlight",
    "Threads",
    "check_threads",
    "preview_order",
]
