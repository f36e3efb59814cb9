"""Forgetting a store's node tier: what ``clear_cache`` does to the RAM side of a store."""

from __future__ import annotations

import os
import warnings

from ..errors import NodeTierWarning
from .place import memory_root, tier_directory
from .tier import NodeTier
from .users import gate, remove_if_unused

__all__ = ["forget"]


def forget(store_path: str | os.PathLike[str], where: str | os.PathLike[str] | None) -> None:
    """Empty the node tier of the store at ``store_path``, or remove it if nobody uses it.

    Processes still using it then serve none of its entries (it records no store generation
    until a process opens the store anew) and read what they miss from the disk tier.

    Parameters
    ----------
    store_path : path-like
        The store.
    where : path-like or None
        The memory file system directory of node tiers (None: ``/dev/shm``).
    """
    root, _ = memory_root(where)
    if root is None:
        return
    directory = tier_directory(store_path, root)
    if not directory.is_dir():
        return
    with gate(directory, blocking=False) as held:
        if held and remove_if_unused(directory):
            return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NodeTierWarning)  # the budget is its users'
        tier = NodeTier.open(store_path, 1 << 20, where=root)
    if tier is not None:
        tier.clear()
        tier.close()
