"""The threads of a preload: one coordinator, and load threads up to the limit.

Each load thread takes the next index of the order (:mod:`.claiming`), loads and stores it
(:mod:`.landing`) and starts over: no hand-off between threads per sample. Each pass holds a
slot of :mod:`.concurrency`. The coordinator starts load threads when the limit rises (threads
above it retire after their current pass), refreshes the progress (:mod:`.reporting`), and ends
once the load threads are gone (at once if the preload is stopped).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from .claiming import Claims
from .concurrency import Slot
from .landing import Landing
from .progress import REFRESH_SECONDS
from .reporting import Reporter
from .run import PreloadRun

__all__ = ["Crew"]

# Indices a load thread of the preload asks a batched source (``__getitems__``) for at once.
_BATCH = 32


class Crew:
    """The coordinator thread and the load threads of one preload.

    Parameters
    ----------
    run : PreloadRun
        The preload's shared state.
    claims : Claims
        Where the load threads take their indices.
    landing : Landing
        How they load and store them.
    reporter : Reporter
        What the coordinator refreshes.
    load_many : callable or None
        A batched source's ``__getitems__``: each pass then loads up to 32 indices at once.

    Attributes
    ----------
    coordinator : threading.Thread or None
        The coordinator thread, once started.
    """

    def __init__(
        self,
        run: PreloadRun,
        claims: Claims,
        landing: Landing,
        reporter: Reporter,
        load_many: Callable[[list[int]], list[Any]] | None,
    ) -> None:
        self._run = run
        self._claims = claims
        self._landing = landing
        self._reporter = reporter
        self._load_many = load_many
        self.coordinator: threading.Thread | None = None

    def start(self) -> None:
        """Start the coordinator thread (it starts the load threads)."""
        self.coordinator = threading.Thread(
            target=self._coordinate, name="spillcache-preload", daemon=True
        )
        try:
            self.coordinator.start()
        except BaseException:
            self.coordinator = None
            raise

    # -- the coordinator -------------------------------------------------------------------------

    def _coordinate(self) -> None:
        reporter = self._reporter
        try:
            reporter.open()
            while self._staff():
                reporter.refresh()
            if not self._run.life.stopped:
                reporter.refresh(final=True)
        except Exception as exc:  # the summary writer failed, or a thread did not start
            self._run.abort(exc)
        finally:
            self._end()

    def _end(self) -> None:
        try:
            self._reporter.close()
        finally:
            with self._run.cond:
                self._run.life.finish()  # whatever happened: wait() must return

    def _staff(self) -> bool:
        """Start the load threads the limit allows, or wait a while; False once it ends.

        A preload that ends on its own ends once its load threads are gone; a stopped one at
        once.
        """
        run = self._run
        with run.cond:
            life = run.life
            if life.stopped or (not life.takes_work and not run.pool):
                return False
            spawn = max(0, run.slots.limit - run.pool) if life.takes_work else 0
            run.pool += spawn
            run.peak_threads = max(run.peak_threads, run.pool)
            if not spawn:
                run.cond.wait(REFRESH_SECONDS)
        for _ in range(spawn):
            threading.Thread(target=self._work, name="spillcache-preload-load", daemon=True).start()
        return True

    # -- the load threads ------------------------------------------------------------------------

    def _work(self) -> None:
        try:
            while (slot := self._run.reserve()) is not None:
                self._pass(slot)
        except Exception as exc:  # the order's iterator raised, or a bug
            # Before leaving the pool: once it is empty the coordinator may end, and wait()
            # must then raise.
            self._run.abort(exc)
            self._run.leave()
        except BaseException:
            self._run.leave()
            raise

    def _pass(self, slot: Slot) -> None:
        # Whatever raises (the order's iterator, the store), the slot is given back.
        completed, counter = 0, None
        try:
            if self._load_many is not None:
                batch = self._claims.next_batch(_BATCH)
                completed = self._landing.fill_batch(self._load_many, batch)
            elif (claim := self._claims.next()) is not None:
                counter = self._landing.fill(*claim)
                completed = 1
        finally:
            self._run.release(slot, completed=completed, counter=counter)
