"""A store rebuilt under a process that keeps using it: no stale sample served (#12 item 1)."""

from __future__ import annotations

import multiprocessing
import warnings
from pathlib import Path
from typing import Any

import pytest

from spillcache import CachedDataset, SpillCache
from spillcache.disk import inspected

TIMEOUT = 120.0
N = 200


class Versioned:
    """Same class and length whatever the version: only the sample probes tell them apart."""

    def __init__(self, version: int) -> None:
        self.version = version

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"i": i, "v": self.version, "pad": b"x" * 512}


def _open(mode: str, path: str, version: int) -> tuple[Any, Any]:
    """The object to read through (``get``-like) and to put into, for ``version``'s data."""
    if mode == "fingerprint":
        cache = SpillCache(path, ram_budget=0, fingerprint=f"v{version}")
        return cache, cache
    ds = CachedDataset(Versioned(version), path, ram_budget=0)
    return ds, ds.cache


def _read(mode: str, reader: Any, i: int) -> dict[str, Any] | None:
    return reader.get(i) if mode == "fingerprint" else reader[i]


def _job_a(mode: str, path: str, ready: Any, rebuilt: Any, result: Any) -> None:
    """Job A: data version 0, opened first; keeps putting and reading after B's rebuild."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reader, cache = _open(mode, path, 0)
        for i in range(N // 2):
            cache.put(i, Versioned(0)[i])
        cache.flush()
        ready.set()
        assert rebuilt.wait(TIMEOUT)
        for i in range(N // 2, N):  # puts first: the commit must find out, not a read
            cache.put(i, Versioned(0)[i])
        cache.flush()
        wrong = 0
        for i in range(N):  # B's entries are not A's data: A must serve its own
            sample = _read(mode, reader, i)
            wrong += sample is not None and sample["v"] != 0
            cache.put(i, Versioned(0)[i])  # and its puts must not land in B's store
        cache.flush()
        stats = cache.stats()
        cache.close()
    result.put(
        {
            "wrong": wrong,
            "rejected": stats.rejected,
            "stale_warnings": sum("by another process" in str(w.message) for w in caught),
        }
    )


def _count_stale(path: str, result: Any) -> None:
    """A later run: how many entries of the store are version 0's."""
    import pickle

    from spillcache.codec import decode

    stale = []
    with inspected(path) as tier:
        tier.scan(lambda key, value: stale.append(decode(value)["v"] == 0))
    result.put(pickle.dumps((sum(stale), len(stale))))


@pytest.mark.parametrize("mode", ["fingerprint", "probes"])
def test_a_rebuilt_store_never_serves_the_old_data(tmp_path: Path, mode: str) -> None:
    path = str(tmp_path / "s")
    ctx = multiprocessing.get_context("spawn")
    ready, rebuilt, result = ctx.Event(), ctx.Event(), ctx.Queue()
    a = ctx.Process(target=_job_a, args=(mode, path, ready, rebuilt, result))
    a.start()
    try:
        assert ready.wait(TIMEOUT)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "emptying the store ...": expected here
            reader, cache = _open(mode, path, 1)  # job B: other data, rebuilds the store
        for i in range(0, N, 2):
            cache.put(i, Versioned(1)[i])
        cache.flush()
        rebuilt.set()
        report = result.get(timeout=TIMEOUT)
        a.join(TIMEOUT)
        assert a.exitcode == 0
        served = [_read(mode, reader, i) for i in range(N)]
        stale_in_b = sum(s is not None and s["v"] == 0 for s in served)
        cache.close()
    finally:
        if a.is_alive():
            a.kill()
    later = ctx.Process(target=_count_stale, args=(path, result))
    later.start()
    import pickle

    stale_later, entries = pickle.loads(result.get(timeout=TIMEOUT))
    later.join(TIMEOUT)
    assert (report["wrong"], stale_in_b, stale_later) == (0, 0, 0), (report, entries)
    assert entries >= N // 2  # B's puts (and, in probes mode, B's loads) are there
    assert report["rejected"] > 0 and report["stale_warnings"] == 1
