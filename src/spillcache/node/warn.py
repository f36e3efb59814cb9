"""The node tier's one warning per cause: it degrades (smaller, or off) instead of failing."""

from __future__ import annotations

import threading
import warnings

from ..errors import NodeTierWarning

__all__ = ["warn_once"]

_warned: set[tuple[str, str]] = set()
_lock = threading.Lock()


def warn_once(where: str, cause: str, message: str) -> None:
    """Warn ``message`` the first time this process sees ``cause`` for the tier ``where``.

    Parameters
    ----------
    where : str
        The tier (its directory or store path).
    cause : str
        A short name of the cause (``"full"``, ``"small"``, ...).
    message : str
        What happened and what to do; names the store, since it may come from any thread.
    """
    with _lock:
        if (where, cause) in _warned:
            return
        _warned.add((where, cause))
    warnings.warn(message, NodeTierWarning, stacklevel=3)
