"""Warnings attributed to the user's line: the first frame outside spillcache and torch's loader.

``warnings.warn(stacklevel=N)`` with a fixed ``N`` points at the right line from one call path
only; spillcache warns from many depths (a store opened by ``SpillCache``, by ``CachedDataset``,
lazily by ``DataCache``; a corrupt entry read by ``get``, by ``ds[i]`` inside a ``DataLoader``).
"""

from __future__ import annotations

import os
import sys
import warnings

import torch.utils.data

__all__ = ["warn"]

_OURS = os.path.dirname(os.path.abspath(__file__)) + os.sep
# A DataLoader without workers calls the data set from its own frames: skip them too.
_LOADER = os.path.dirname(os.path.abspath(torch.utils.data.__file__)) + os.sep


def warn(message: str, category: type[Warning]) -> None:
    """Warn, attributing the warning to the first caller outside spillcache and the loader.

    In a background thread (the store's writer, the preload) no user frame exists: the warning
    points at the thread's start, so such messages must name the store's path and the setting.
    """
    warnings.warn(message, category, stacklevel=_stacklevel())


def _stacklevel() -> int:
    """The ``stacklevel`` that makes a ``warnings.warn`` in our caller's caller name user code."""
    # Level 1 is warn() (the frame calling warnings.warn), 2 its caller, and so on.
    frame = sys._getframe(2)
    level = 2
    while frame.f_back is not None and frame.f_code.co_filename.startswith((_OURS, _LOADER)):
        frame = frame.f_back
        level += 1
    return level
