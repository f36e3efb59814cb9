"""How a preload stops: at once, but only once no thread of it will touch the store again.

:func:`stop` closes the preload's store guard (:mod:`.guard`), which waits for the threads
using the store right now (they never block long) and keeps every later use out; a load stuck
in user code finishes on its own daemon thread, and its sample goes to a training thread
waiting for it, never to the store. At interpreter exit, every running preload is stopped
before the stores close.
"""

from __future__ import annotations

import atexit
import contextlib
import threading
import weakref
from typing import Protocol

from .run import PreloadRun

__all__ = ["stop", "stop_at_exit"]

# stop() waits this long for the coordinator to notice.
_STOP_JOIN_SECONDS = 0.5


class _Stoppable(Protocol):
    def stop(self) -> None: ...


_live: weakref.WeakSet[_Stoppable] = weakref.WeakSet()


def stop(run: PreloadRun, coordinator: threading.Thread | None) -> None:
    """Stop the preload of ``run``; return once no thread of it will touch the store.

    ``coordinator``: its coordinator thread, if started (joined for a moment by the first
    call). Idempotent.
    """
    with run.cond:
        first = run.life.stop()
    # Every call waits here, not only the first: a second stop() (a second Ctrl-C, the exit
    # hook) must not return while the first still waits for a thread in the store.
    run.guard.close()
    if first and coordinator is not None and coordinator is not threading.current_thread():
        coordinator.join(_STOP_JOIN_SECONDS)
    with run.cond:
        run.life.finish()


def stop_at_exit(preloader: _Stoppable) -> None:
    """Have ``preloader.stop()`` called at interpreter exit, if it is still alive then."""
    _live.add(preloader)


@atexit.register
def _stop_all() -> None:
    """Stop running preloads before the stores close at exit (atexit runs this one first)."""
    for preloader in list(_live):
        with contextlib.suppress(Exception):
            preloader.stop()
