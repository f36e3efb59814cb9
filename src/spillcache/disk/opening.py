"""Opening a store: this process's one tier of it, shared by its users."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from ..errors import StoreError
from .filesystem import require_local
from .layout import is_store, not_a_store
from .options import TierOptions
from .tier import TIERS, DiskTier

__all__ = ["inspected", "live_tier", "open_tier"]

logger = logging.getLogger(__name__)


def open_tier(path: str | os.PathLike[str], options: TierOptions) -> tuple[DiskTier, bytes | None]:
    """This process's tier of the store at ``path``, and the generation opened; one more user.

    The tier is shared by every user of the store in this process (LMDB allows one
    environment per file and process) and closes when the last one calls
    :meth:`DiskTier.release`. Each user checks the store's identity for its own
    ``fingerprint`` (a mismatch empties the store for it, per ``on_mismatch``); the
    generation returned is what that user's data is stored under: once it is no longer the
    tier's (another user, or another process, emptied the store), :meth:`DiskTier.write`
    refuses the user's entries and what the store holds is not the user's data. Settings
    (see :class:`~spillcache.disk.options.TierOptions`) apply to the whole tier: the latest
    user's ``budget`` holds, the first user's ``readahead``.
    """
    if not options.allow_remote_fs:
        require_local(Path(path))
    with TIERS.lock:
        tier = TIERS.live_locked(os.path.realpath(path))
        if tier is None:
            # Checked above already.
            tier = DiskTier(path, dataclasses.replace(options, allow_remote_fs=True))
            tier.add_user()
            return tier, tier.generation
        tier.add_user()
    return tier, _join(tier, options)


def _join(tier: DiskTier, options: TierOptions) -> bytes | None:
    """One more user's view of ``tier``, opened already: the generation it stores under."""
    try:
        # Outside the lock: emptying the store waits for the writer thread.
        generation = (
            tier.view.identify(options.fingerprint, options.on_mismatch)
            if options.check_identity
            else tier.generation
        )
    except BaseException:
        tier.release()
        raise
    if options.check_identity and options.budget != tier.budget:
        logger.info("the store at %s now has disk_budget=%s", tier.path, options.budget)
        tier.budget = options.budget
    return generation


@contextlib.contextmanager
def inspected(path: str | os.PathLike[str]) -> Iterator[DiskTier]:
    """The store at ``path`` for inspection: this process's open tier, or a new one."""
    if live_tier(path) is None and not is_store(path):
        raise StoreError(f"{str(path)!r} {not_a_store(path)}")
    # Inspection and copying read one snapshot in one process, which is safe even where
    # sharing a store is not: this is how a store is copied back from shared storage.
    inspection = TierOptions(fingerprint=None, check_identity=False, allow_remote_fs=True)
    tier, _ = open_tier(path, inspection)
    try:
        yield tier
    finally:
        tier.release()


def live_tier(path: str | os.PathLike[str]) -> DiskTier | None:
    """The open tier of this process for the store at ``path``, if any."""
    tier = TIERS.get(os.path.realpath(path))
    return None if tier is None or tier.closed else tier
