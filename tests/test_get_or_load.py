"""SpillCache's miss hook: get_or_load, its batched form and the reservation of Hyrax's fetch."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from spillcache import SpillCache

TIMEOUT = 30.0


def sample(k: int) -> dict[str, Any]:
    return {"x": torch.full((4,), float(k)), "k": k}


class Gated:
    """A load that blocks in key ``slow`` until released, counting its calls."""

    def __init__(self, slow: int, *, fail_first: bool = False) -> None:
        self.slow = slow
        self.fail_first = fail_first
        self.calls: list[int] = []
        self.entered = threading.Event()
        self.gate = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, k: int) -> dict[str, Any]:
        with self._lock:
            self.calls.append(k)
            first = len(self.calls) == 1
        if k == self.slow and first:
            self.entered.set()
            assert self.gate.wait(TIMEOUT)
            if self.fail_first:
                raise OSError("the source is down")
        return sample(k)


def waiters(cache: SpillCache, key: int) -> int:
    flight = cache.flights._flights.get(key)
    return 0 if flight is None else flight.waiters


def wait_until(condition: Any) -> None:
    event = threading.Event()
    for _ in range(int(TIMEOUT / 0.01)):
        if condition():
            return
        event.wait(0.01)
    raise AssertionError("timed out")


def test_concurrent_misses_load_once_and_each_caller_gets_its_own_copy(tmp_path: Path) -> None:
    load = Gated(5)
    got: list[Any] = []
    with SpillCache(tmp_path / "s") as cache:
        threads = [
            threading.Thread(target=lambda: got.append(cache.get_or_load(5, load)))
            for _ in range(4)
        ]
        threads[0].start()
        assert load.entered.wait(TIMEOUT)
        for t in threads[1:]:
            t.start()
        wait_until(lambda: waiters(cache, 5) == 3)
        load.gate.set()
        for t in threads:
            t.join(TIMEOUT)
        assert load.calls == [5]
        assert len(got) == 4 and all(g["k"] == 5 for g in got)
        assert len({id(g["x"]) for g in got}) == 4  # copy=True: nobody shares a tensor
        assert cache.get_or_load(5, load)["k"] == 5 and load.calls == [5]  # now a hit
        assert cache.flights._flights == {}


def test_a_failing_load_raises_for_its_caller_and_a_waiter_loads_itself(tmp_path: Path) -> None:
    load = Gated(5, fail_first=True)
    got: list[Any] = []
    failed: list[BaseException] = []

    def owner() -> None:
        try:
            cache.get_or_load(5, load)
        except OSError as exc:
            failed.append(exc)

    with SpillCache(tmp_path / "s") as cache:
        first = threading.Thread(target=owner)
        first.start()
        assert load.entered.wait(TIMEOUT)
        waiter = threading.Thread(target=lambda: got.append(cache.get_or_load(5, load)))
        waiter.start()
        wait_until(lambda: waiters(cache, 5) == 1)
        load.gate.set()
        first.join(TIMEOUT)
        waiter.join(TIMEOUT)
        assert [str(e) for e in failed] == ["the source is down"]
        assert got[0]["k"] == 5 and load.calls == [5, 5]  # the waiter's own load
        assert 5 in cache and cache.flights._flights == {}


def test_a_load_returning_none_is_refused_naming_the_key(tmp_path: Path) -> None:
    with SpillCache(tmp_path / "s") as cache:
        with pytest.raises(TypeError, match=r"returned None for index 3 \(dataset\[3\]\)"):
            cache.get_or_load(3, lambda k: None, source="dataset")
        with pytest.raises(TypeError, match=r"returned None for index 4 \(dataset\[4\]\)"):
            cache.get_or_load_many([1, 4], lambda ks: [sample(1), None], source="dataset")
        assert 3 not in cache and 4 not in cache
        assert cache.flights._flights == {}  # no claim left behind
        assert cache.get_or_load(3, sample)["k"] == 3


def test_the_batched_form_loads_each_miss_once_in_one_call(tmp_path: Path) -> None:
    calls: list[list[int]] = []

    def load_many(keys: list[int]) -> list[dict[str, Any]]:
        calls.append(list(keys))
        return [sample(k) for k in keys]

    with SpillCache(tmp_path / "s") as cache:
        cache.put(7, sample(7))
        batch = cache.get_or_load_many([4, 2, 4, 7], load_many, source="dataset")
        assert [b["k"] for b in batch] == [4, 2, 4, 7]
        assert calls == [[4, 2]]  # the misses, each once; the hit from the cache
        assert batch[0]["x"] is not batch[2]["x"]  # each position its own copy
        assert cache.get_or_load_many([2, 4], load_many) and calls == [[4, 2]]
        assert cache.get_or_load_many([], load_many) == [] and calls == [[4, 2]]


def test_the_batched_form_waits_for_a_load_in_progress(tmp_path: Path) -> None:
    load = Gated(2)
    calls: list[list[int]] = []

    def load_many(keys: list[int]) -> list[dict[str, Any]]:
        calls.append(list(keys))
        return [sample(k) for k in keys]

    got: list[Any] = []
    with SpillCache(tmp_path / "s") as cache:
        single = threading.Thread(target=lambda: cache.get_or_load(2, load))
        single.start()
        assert load.entered.wait(TIMEOUT)
        batch = threading.Thread(
            target=lambda: got.extend(cache.get_or_load_many([1, 2, 3], load_many))
        )
        batch.start()
        wait_until(lambda: waiters(cache, 2) == 1)
        load.gate.set()
        single.join(TIMEOUT)
        batch.join(TIMEOUT)
        assert [g["k"] for g in got] == [1, 2, 3]
        assert calls == [[1, 3]] and load.calls == [2]


def test_a_load_a_stopped_preload_left_uncached_is_stored_by_its_waiter(tmp_path: Path) -> None:
    got: list[Any] = []
    with SpillCache(tmp_path / "s") as cache:
        flight = cache.flights.claim(5, by_preload=True)
        assert flight is not None
        waiter = threading.Thread(target=lambda: got.append(cache.get_or_load(5, Gated(-1))))
        waiter.start()
        wait_until(lambda: waiters(cache, 5) == 1)
        cache.flights.land(flight, sample(5), stored=False)  # a stopped preload's load
        waiter.join(TIMEOUT)
        assert got[0]["k"] == 5
        assert 5 in cache  # adopted: not loaded again
        assert cache.flights.counters()["preload_waits"] == 1


def test_a_reservation_keeps_the_preload_off_until_released(tmp_path: Path) -> None:
    with SpillCache(tmp_path / "s") as cache:
        assert cache.get_or_reserve(6) is None
        assert cache.flights.claim(6, by_preload=True) is None  # reserved: a preload skips it
        assert cache.get_or_reserve(6) is None  # nobody waits for a reservation
        cache.put(6, sample(6))
        cache.release(6)
        flight = cache.flights.claim(6, by_preload=True)
        assert flight is not None
        cache.flights.cancel(flight)
        assert cache.get_or_reserve(6)["k"] == 6
