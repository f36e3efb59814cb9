"""What a tier reports: the entries it refused or lost, counted, and store events, warned once."""

from __future__ import annotations

import logging

from ..errors import SpillCacheWarning
from ..userwarn import warn

__all__ = ["Events"]

logger = logging.getLogger(__name__)


class Events:
    """A tier's counters of refused and failed writes, and its warnings, one per kind.

    Attributes
    ----------
    rejected : int
        Entries refused (full, read-only, stale store) or dropped from the queue.
    write_errors : int
        Entries a storage fault kept from being stored.

    The counters change under the tier's lock.
    """

    def __init__(self) -> None:
        self.rejected = 0
        self.write_errors = 0
        self._warned: set[str] = set()

    def warn_once(self, kind: str, message: str) -> None:
        """Warn with ``message`` and log it, unless this tier warned of ``kind`` before."""
        if kind not in self._warned:
            self._warned.add(kind)
            # Also logged: rebuilds (with their reason) and budget refusals are store events.
            logger.info("%s", message)
            warn(message, SpillCacheWarning)

    def renewed(self) -> Events:
        """The events of a forked child: the counts go on, its warnings are its own."""
        events = Events()
        events.rejected, events.write_errors = self.rejected, self.write_errors
        return events
