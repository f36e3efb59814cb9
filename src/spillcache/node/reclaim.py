"""Finding and removing node tiers that crashed runs left on a memory file system.

A run killed with SIGKILL (or by the OOM killer) never closes its tier, so its directory stays
in ``/dev/shm`` and holds memory until someone removes it. Any process opening a node tier
first sweeps the memory file system: a tier directory whose ``users.lock`` no live process
holds (and whose gate nobody holds at this moment) is left over, whichever store it served.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from .place import PREFIX
from .users import gate, remove_if_unused

__all__ = ["reclaim"]

logger = logging.getLogger(__name__)


def reclaim(root: Path) -> list[Path]:
    """Remove every unused node tier directory under ``root``.

    Parameters
    ----------
    root : Path
        A memory file system directory.

    Returns
    -------
    list of Path
        The directories removed.
    """
    removed = []
    with contextlib.suppress(OSError):
        for entry in root.iterdir():
            if entry.name.startswith(PREFIX) and entry.is_dir() and _reclaim_one(entry):
                removed.append(entry)
                logger.info("removed %s, a node RAM tier left by a run that ended", entry)
    return removed


def _reclaim_one(directory: Path) -> bool:
    with gate(directory, blocking=False) as held:
        return held and remove_if_unused(directory)
