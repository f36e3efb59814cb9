"""The lifecycle of a preload: its states and transitions, without threads or a store."""

from __future__ import annotations

import threading

import pytest

from spillcache.preload.lifecycle import Lifecycle, State


def lifecycle(state: State = State.NEW) -> tuple[Lifecycle, threading.Condition]:
    cond = threading.Condition(threading.Lock())
    return Lifecycle(cond, state), cond


def test_a_preload_that_runs_out_of_indices_ends_done() -> None:
    life, cond = lifecycle()
    with cond:
        life.start()
        assert life.takes_work and life.running and not life.finished
        life.exhaust()
        assert not life.takes_work and life.running
        life.finish()
    assert life.state is State.DONE and life.finished and not life.running
    assert life.wait(0)
    with cond, pytest.raises(RuntimeError, match="starts only once"):
        life.start()


def test_a_full_cache_is_reported_once_even_after_the_order_ran_out() -> None:
    life, cond = lifecycle(State.EXHAUSTED)
    with cond:
        assert life.end_early()  # ends it: the full cache is reported
        assert life.state is State.ENDING
        assert not life.end_early()  # ending already: not again


def test_stop_is_first_once_and_finished_only_when_it_returns() -> None:
    life, cond = lifecycle(State.RUNNING)
    with cond:
        assert life.stop()
        assert life.state is State.STOPPING and life.running and life.stopped
        assert not life.stop()  # a second Ctrl-C
        assert not life.end_early()  # a failure meanwhile does not undo the stop
    assert not life.wait(0)
    with cond:
        life.finish()
    assert life.state is State.STOPPED and life.wait(0)


@pytest.mark.parametrize("state", [State.NEW, State.DONE])
def test_stopping_a_preload_that_is_not_running_keeps_it_finished(state: State) -> None:
    life, cond = lifecycle(state)
    with cond:
        assert life.stop()
    assert life.state is State.STOPPED and not life.running and life.wait(0)


def test_wait_wakes_up_when_the_preload_finishes() -> None:
    life, cond = lifecycle(State.RUNNING)
    woke: list[bool] = []
    waiter = threading.Thread(target=lambda: woke.append(life.wait(30.0)))
    waiter.start()
    with cond:
        life.finish()
    waiter.join(30.0)
    assert woke == [True]
