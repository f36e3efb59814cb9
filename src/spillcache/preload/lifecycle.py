"""The lifecycle of a preload: one state, changed under the preload's condition variable.

::

    NEW --start()--> RUNNING --order used up--> EXHAUSTED --threads gone--> DONE
                        |                           |
                        +--failure / full cache-----+--> ENDING --threads gone--> DONE
    any state but STOPPED --stop()--> STOPPING --stop() returns / coordinator ends--> STOPPED
    (NEW and DONE go straight to STOPPED)

Load threads take new indices only while RUNNING. EXHAUSTED and ENDING both let them finish
the sample at hand; they differ only in that a full cache is reported (once) when it ends a
preload that was RUNNING or EXHAUSTED, not one that was already ending. ``wait()`` returns in
DONE and STOPPED.
"""

from __future__ import annotations

import enum
import threading

__all__ = ["Lifecycle", "State"]


class State(enum.Enum):
    """Where a preload is in its life."""

    #: Built, not started.
    NEW = "new"
    #: Load threads take indices from the order.
    RUNNING = "running"
    #: The order is used up: load threads end after the sample at hand.
    EXHAUSTED = "exhausted"
    #: A failure or a full cache ends the preload early; load threads end likewise.
    ENDING = "ending"
    #: ``stop()`` was called and waits until no thread of the preload uses the store.
    STOPPING = "stopping"
    #: The coordinator ended on its own: every load thread is gone.
    DONE = "done"
    #: Stopped: ``stop()`` returned, or the coordinator ended after a ``stop()``.
    STOPPED = "stopped"


_ALIVE = frozenset({State.RUNNING, State.EXHAUSTED, State.ENDING, State.STOPPING})
_FINISHED = frozenset({State.DONE, State.STOPPED})
_STOPPED = frozenset({State.STOPPING, State.STOPPED})
_ENDS_EARLY = frozenset({State.RUNNING, State.EXHAUSTED})


class Lifecycle:
    """The state of one preload and its transitions.

    Every transition is made with ``cond`` held and wakes its waiters (the coordinator, and
    :meth:`wait`). The properties may be read without it.

    Parameters
    ----------
    cond : threading.Condition
        The preload's condition variable.
    state : State
        The state to start from (``STOPPED`` for the copy of a preload in a forked child).
    """

    def __init__(self, cond: threading.Condition, state: State = State.NEW) -> None:
        self._cond = cond
        self.state = state

    @property
    def takes_work(self) -> bool:
        """Whether load threads take more indices from the order."""
        return self.state is State.RUNNING

    @property
    def running(self) -> bool:
        """Whether the preload is started and not yet finished."""
        return self.state in _ALIVE

    @property
    def finished(self) -> bool:
        """Whether the preload is done or stopped (what :meth:`wait` waits for)."""
        return self.state in _FINISHED

    @property
    def stopped(self) -> bool:
        """Whether ``stop()`` was called."""
        return self.state in _STOPPED

    def start(self) -> None:
        """NEW to RUNNING (caller holds ``cond``); a second start raises ``RuntimeError``."""
        if self.state is not State.NEW:
            raise RuntimeError("a Preloader starts only once")
        self._enter(State.RUNNING)

    def exhaust(self) -> None:
        """The order is used up (caller holds ``cond``)."""
        if self.state is State.RUNNING:
            self._enter(State.EXHAUSTED)

    def end_early(self) -> bool:
        """A failure or a full cache ends the preload (caller holds ``cond``).

        Returns whether this ended it: False if it was ending or stopping already.
        """
        ends = self.state in _ENDS_EARLY
        self._enter(State.ENDING if ends else self.state)
        return ends

    def stop(self) -> bool:
        """``stop()`` was called (caller holds ``cond``); whether it was the first call."""
        first = not self.stopped
        if self.state in (State.NEW, State.DONE):
            self._enter(State.STOPPED)
        elif first:
            self._enter(State.STOPPING)
        return first

    def finish(self) -> None:
        """The coordinator ended, or ``stop()`` returns (caller holds ``cond``)."""
        if self.state is State.STOPPING:
            self._enter(State.STOPPED)
        elif self.state in _ALIVE:
            self._enter(State.DONE)

    def wait(self, timeout: float | None) -> bool:
        """Wait (without holding ``cond``) until finished; False if ``timeout`` expired."""
        with self._cond:
            return self._cond.wait_for(lambda: self.finished, timeout)

    def _enter(self, state: State) -> None:
        self.state = state
        self._cond.notify_all()
