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

__all__ = ["failed", "shrink", "too_small", "warn_sizes"]

logger = logging.getLogger(__name__)

# Out of room although the accounting says otherwise (a full tmpfs, or LMDB's free pages too
# fragmented for a value): the budget drops to this share of what is held, for every process.
_SHRINK_NUM, _SHRINK_DEN = 7, 8


def shrink(attached: Attached, rand: random.Random, why: str) -> None:
    """Out of room although the accounting allows more: lower the budget for everyone.

    Free pages too fragmented for a value, or held by a reader, fill LMDB's map before the
    accounted bytes reach the budget; a full file system fails a write. Either way the
    budget drops below what is held (random residents go), so that later admissions reuse
    the pages they free instead of asking for new ones.
    """
    ledger = attached.ledger
    with contextlib.suppress(lmdb.Error), ledger.env.begin(write=True) as txn:
        account = ledger.account(txn)
        account.budget = min(account.budget, account.nbytes * _SHRINK_NUM // _SHRINK_DEN)
        while account.nbytes > account.budget:
            ledger.remove(txn, account, ledger.draw(txn, account, rand)[0])
        ledger.save(txn, account)
    logger.info("node RAM tier %s: %s; budget lowered", attached.directory, why)


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
