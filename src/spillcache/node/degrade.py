"""How a node tier degrades instead of failing: a lower budget, and one warning per cause."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
from pathlib import Path

import lmdb

from .attach import Attached
from .warn import warn_once

__all__ = ["drop_stale", "failed", "make_room", "shrink", "too_small", "untaint", "warn_sizes"]

logger = logging.getLogger(__name__)

# Out of room although the accounting says otherwise (a full tmpfs, or LMDB's free pages too
# fragmented for a value): the budget drops to this share of what is held, for every process.
_SHRINK_NUM, _SHRINK_DEN = 7, 8


# A full map (not file system) frees this many times the failed value's bytes, at least.
_ROOM_FACTOR = 2


def make_room(attached: Attached, rand: random.Random, nbytes: int) -> None:
    """The map is full although the accounting allows more: evict, keep the budget.

    Free pages pinned by a reader's snapshot, or in runs too short for an ``nbytes`` value,
    are what fills a map before the budget. Random residents go, twice the value's bytes or
    an eighth of what is held, so that later admissions find pages; the budget stays, since
    pins end and runs merge (lowering it for good collapsed a nearly empty tier to nothing).
    """
    ledger = attached.ledger
    with contextlib.suppress(lmdb.Error), ledger.env.begin(write=True) as txn:
        account = ledger.account(txn)
        goal = account.nbytes - max(_ROOM_FACTOR * nbytes, account.nbytes // _SHRINK_DEN)
        ledger.evict_to(txn, account, goal, rand)
    logger.info("node RAM tier %s: its map is full; residents evicted", attached.directory)


def shrink(attached: Attached, rand: random.Random, why: str) -> None:
    """The file system is full although the accounting allows more: lower the budget for all.

    Another program took the room, and it may not come back: the budget drops below what is
    held (random residents go), so that later admissions reuse the pages they free instead
    of asking the file system for new ones.
    """
    ledger = attached.ledger
    with contextlib.suppress(lmdb.Error), ledger.env.begin(write=True) as txn:
        account = ledger.account(txn)
        account.budget = min(account.budget, account.nbytes * _SHRINK_NUM // _SHRINK_DEN)
        ledger.evict_to(txn, account, account.budget, rand)
    logger.info("node RAM tier %s: %s; budget lowered", attached.directory, why)


def drop_stale(attached: Attached, key: bytes) -> None:
    """A put's transaction failed: the older value of ``key`` must not outlive the put.

    Its removal is a transaction of its own, which a full map can fail too; then the put is
    counted in the stamps' taints, and the tier serves nothing until an admission empties it.
    """
    ledger = attached.ledger
    try:
        with ledger.env.begin(write=True) as txn:
            ledger.drop(txn, key)
        return
    except lmdb.Error:
        pass
    try:
        with ledger.env.begin(write=True):  # taints change under the writer lock only
            attached.stamps.taint(1)
    except lmdb.Error:
        attached.stamps.taint(1)  # no lock to be had: a lost count (a race) is the lesser harm
    logger.warning(
        "node RAM tier %s: a stale entry could not be removed; emptying", attached.directory
    )


def untaint(attached: Attached, count: int) -> None:
    """The tier was emptied in a transaction that began with ``count`` taints: take them off."""
    if count:
        with contextlib.suppress(lmdb.Error), attached.ledger.env.begin(write=True):
            attached.stamps.taint(-count)


def failed(attached: Attached, rand: random.Random, store: str, exc: lmdb.Error) -> None:
    """An admission failed: shrink on a full file system, and warn once either way."""
    directory = str(attached.directory)
    if getattr(exc, "errno", None) == errno.ENOSPC or os.strerror(errno.ENOSPC) in str(exc):
        shrink(attached, rand, str(exc))
        warn_once(
            directory,
            "full",
            f"the node RAM tier of the store at {store!r} ran out of room in {directory!r} "
            f"({exc}); it keeps what it holds and admits only in place of residents from "
            "now on. Give the memory file system more room (docker run --shm-size) or "
            "ram_budget less",
        )
    else:
        warn_once(directory, "error", f"the node RAM tier of the store at {store!r}: {exc}")


def too_small(store: str, root: Path, budget: int) -> str:
    """The warning of a memory file system too small for any tier."""
    return (
        f"no node RAM tier for the store at {store!r}: {str(root)!r} has too little free space "
        f"for even 1 MiB of the {budget} bytes asked (the tier takes at most half of it). "
        "In a container, give it more: docker run --shm-size=..."
    )


def warn_sizes(store: str, asked: int, attached: Attached) -> None:
    """Warn once if the tier has another budget than ``asked`` (another opener's, or smaller)."""
    params = attached.params
    if params.asked != asked:
        warn_once(
            store,
            "budget",
            f"the node RAM tier of the store at {store!r} was opened with a budget of "
            f"{params.asked} bytes by another process on this node; {asked} asked here is "
            "ignored (ram_budget is per node)",
        )
    elif params.budget < asked:
        warn_once(
            store,
            "small",
            f"the node RAM tier of the store at {store!r} holds {params.budget} bytes, not the "
            f"{asked} asked: that is what half the free space of "
            f"{str(attached.directory.parent)!r} allows (docker run --shm-size=...)",
        )
