"""The node RAM tier: one byte-budgeted tier of encoded samples per store per node.

Shared by every process on the node that opens the same store (DataLoader workers under any
start method, DDP ranks), on a memory file system. Files, one concept each:

``place.py``
    Where a tier lives (a tmpfs directory named by the store's real path) and its sizes.
``users.py``
    Liveness by ``flock``: who uses a tier, who is first and who is last.
``attach.py``
    Joining a tier (the first user creates it) and leaving it (the last one removes it).
``reclaim.py``
    Removing tiers that crashed runs left behind.
``ledger.py``
    The LMDB environment: entries, slots and the accounting, changed together.
``sketch.py``
    The access frequencies, shared through a mapped file.
``stamps.py``
    Change counters (puts, clears, joins), shared through a mapped file.
``admission.py``
    One admission: its terms, room made by eviction, the insert.
``degrade.py``
    A lower budget instead of a failure, and the warnings.
``tier.py``
    :class:`NodeTier`: reads, puts, admission, generations, fork handling.
``warn.py``
    :class:`NodeTierWarning`, given once per cause.
"""

from __future__ import annotations

from ..errors import NodeTierWarning
from .tier import NO_STAMP, NodeStats, NodeTier

__all__ = ["NO_STAMP", "NodeStats", "NodeTier", "NodeTierWarning"]
