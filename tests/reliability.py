"""Shared pieces of the reliability tests (crash, corruption, disk full, stress, shutdown).

Worker processes run functions of this module: ``multiprocessing`` children started through a
forkserver that has imported it (and torch) once, so that a kill loop or a stress run does not
pay two seconds of ``import torch`` per process.

``SPILLCACHE_LONG=1`` switches kill counts and durations from the CI setting to the long
setting run by hand (see :func:`scaled`).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import multiprocessing.context
import multiprocessing.forkserver
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from helpers import assert_sample_equal
from spillcache import CachedDataset, SpillCache
from spillcache.budget import parse_budget
from spillcache.cache import reads as cache_reads
from spillcache.disk import env as env_module

LONG = os.environ.get("SPILLCACHE_LONG") == "1"
TESTS = Path(__file__).resolve().parent


def scaled(short: int, long: int) -> int:
    """``short`` in CI, ``long`` when run by hand with SPILLCACHE_LONG=1."""
    return long if LONG else short


# -- deterministic samples ------------------------------------------------------------------------

# Sides of the flux image by ``key % 5``: 4 B to 127 KiB, so that values live both inside LMDB's
# B-tree leaves and on overflow pages of their own.
_SIDES = (1, 4, 16, 64, 178)


def make_sample(key: int, version: int = 0) -> dict[str, Any]:
    """A Hyrax-style sample whose every byte follows from ``(key, version)``."""
    rng = np.random.default_rng([key, version])
    side = _SIDES[key % len(_SIDES)]
    flux = rng.standard_normal((1, side, side), dtype=np.float32)
    return {
        "image": {"flux": torch.from_numpy(flux), "mask": flux[0] > 0},
        "meta": {
            "object_id": np.str_(f"obj-{key:06d}"),
            "key": key,
            "version": version,
            "label": np.int64(key % 10),
        },
    }


def check_sample(key: int, value: Any, version: int | None = None) -> None:
    """Assert ``value`` is exactly ``make_sample(key, v)``.

    ``v`` is the version the value claims, which must be ``version`` if given. A value of another
    key, a torn or mixed value, or any flipped byte fails.
    """
    assert isinstance(value, dict), f"key {key}: got a {type(value).__name__}"
    claimed = value["meta"]["version"]
    if version is not None:
        assert claimed == version, f"key {key}: version {claimed}, expected {version}"
    assert_sample_equal(value, make_sample(key, claimed), f"key {key}")


def check_store(path: Path, keys: int, *, fingerprint: str | None = None) -> set[int]:
    """Read every key of the store at ``path`` from disk; each must be absent or exactly right.

    Returns the keys present. Opens with ``on_mismatch="error"``: a store that would be rebuilt
    (thrown away) fails instead.
    """
    present: set[int] = set()
    with SpillCache(path, ram_budget=0, fingerprint=fingerprint, on_mismatch="error") as cache:
        for key in range(keys):
            value = cache.get(key)
            if value is not None:
                check_sample(key, value)
                present.add(key)
        stats = cache.stats()
        assert stats.corrupt == 0, f"{stats.corrupt} corrupt entries"
        assert stats.disk_items == len(present)
    return present


def fill(path: Path, keys: range, *, fingerprint: str | None = None) -> None:
    """Put ``make_sample(k)`` for every ``k`` in ``keys`` and close."""
    with SpillCache(path, ram_budget=0, fingerprint=fingerprint) as cache:
        for key in keys:
            cache.put(key, make_sample(key))


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    """Create the directory ``root`` holding ``files`` (relative name -> content)."""
    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)


def store_with(files: dict[str, bytes]) -> Callable[[Path], None]:
    """A maker of a 2-entry store that also holds ``files`` (not a store any more)."""

    def make(root: Path) -> None:
        fill(root, range(2))
        write_tree(root, files)

    return make


# -- processes ------------------------------------------------------------------------------------


def forkserver() -> multiprocessing.context.ForkServerContext:
    """The forkserver context, preloaded with this module (and so torch and spillcache).

    Children still import what they need if the server was started earlier without the
    preload: callers must not assume a child is running before it says so (:func:`started`).
    """
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    # Python 3.11's forkserver ignores the sys.path it is handed: without PYTHONPATH the preload
    # fails silently and every child pays seconds of ``import torch`` before it runs.
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(TESTS), *sys.path])
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved
    return ctx


def started(result: Path) -> Path:
    """The file a worker reporting to ``result`` creates as soon as it runs."""
    return result.with_suffix(".started")


def run_python(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter that can import the test helpers."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def popen_python(code: str, *args: str, new_session: bool = False) -> subprocess.Popen[str]:
    """Start ``code`` in a fresh interpreter with pipes on stdin, stdout and stderr.

    ``new_session``: in a process group of its own, which ``os.killpg`` reaches as a whole
    (as Ctrl-C in a terminal reaches a script and its DataLoader workers).
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=new_session,
    )


@contextlib.contextmanager
def _reported(result: Path) -> Iterator[dict[str, Any]]:
    """Collect a worker's figures and write them (or its traceback) to ``result`` as JSON.

    A worker killed on purpose writes nothing; one that failed leaves its traceback for the
    test to show.
    """
    started(result).touch()
    report: dict[str, Any] = {"wrong": [], "errors": []}
    try:
        yield report
    except BaseException:
        report["errors"].append(traceback.format_exc())
    # A worker playing "full disk" (limit_file_size) must still be able to report.
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    tmp = result.with_suffix(".tmp")
    tmp.write_text(json.dumps(report))
    os.replace(tmp, result)


def read_report(result: Path) -> dict[str, Any]:
    """The JSON report a worker wrote (``{}`` if it wrote none)."""
    return json.loads(result.read_text()) if result.exists() else {}


def crash_writer(*, path: str, seed: int, keys: int, flushed_log: str, result: str) -> None:
    """Fill the store like a training run would, until killed.

    Two threads (a "loader" and a "preload" thread, in opposite orders) get each key and, on a
    miss, load ``make_sample(key)`` from a slow source (10 ms) and put it; a fifth of the hits
    are overwritten; every value read is checked. After each ``flush`` the keys put so far are
    appended to ``flushed_log``: they must survive any later kill. A tiny initial map makes the
    map grow while kills land.
    """
    env_module._INITIAL_MAP_SIZE = 1 << 20
    rng = random.Random(seed)
    log_fd = os.open(flushed_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    with (
        _reported(Path(result)),
        SpillCache(path, ram_budget="256KiB", fingerprint="crash", on_mismatch="error") as cache,
    ):
        order = list(range(keys))
        rng.shuffle(order)
        log_lock = threading.Lock()

        def work(sequence: list[int], flush_every: int) -> None:
            put: list[int] = []
            while True:
                for key in sequence:
                    value = cache.get(key)
                    if value is None:
                        time.sleep(0.01)
                    elif rng.random() < 0.8:
                        check_sample(key, value)
                        continue
                    cache.put(key, make_sample(key))
                    put.append(key)
                    if len(put) >= flush_every:
                        cache.flush()
                        with log_lock:
                            os.write(log_fd, (" ".join(map(str, put)) + "\n").encode())
                        put.clear()

        preload = threading.Thread(target=work, args=(order[::-1], 40), daemon=True)
        preload.start()
        work(order, 25)


# Stress keys: 0..63 are written by everyone, private keys by one thread each.
SHARED_KEYS = 64


def verdict(key: int, value: Any, version: int | None = None) -> str | None:
    """What is wrong with ``value`` as the value of ``key`` (see :func:`check_sample`), or None."""
    try:
        check_sample(key, value, version)
    except AssertionError as exc:
        return str(exc)
    return None


def private_key(worker: int, thread: int, i: int) -> int:
    """The ``i``-th key owned by ``thread`` of stress ``worker``."""
    return 1000 + (worker * 100 + thread) * 8 + i


def any_key(rng: random.Random) -> int:
    """A shared key or a private key of any stress thread (4 workers x 4 threads)."""
    return rng.choice(
        [
            rng.randrange(SHARED_KEYS),
            private_key(rng.randrange(4), rng.randrange(4), rng.randrange(8)),
        ]
    )


def stress_worker(
    *,
    path: str,
    seed: int,
    worker: int,
    threads: int,
    seconds: float,
    ram_budget: str,
    result: str,
    copy: bool = True,
) -> None:
    """Random get/put/flush/contains from ``threads`` threads until ``seconds`` have passed.

    Keys ``0..63`` are shared: every thread of every process overwrites them with random
    versions, so any version is right but it must be a whole, exact one. Each thread also owns
    8 private keys that only it writes: a ``get`` by the owner must return the last version it
    put (read-your-writes), even while other threads read the same keys. With ``copy=False``
    the writer thread copies the large samples put (none is changed after its put).
    """
    sys.setswitchinterval(1e-4)  # more thread interleavings per second than the default 5 ms
    deadline = time.monotonic() + seconds
    with (
        _reported(Path(result)) as report,
        SpillCache(path, ram_budget=ram_budget, fingerprint="stress", copy=copy) as cache,
    ):
        counts: dict[str, int] = {"get": 0, "put": 0, "flush": 0, "contains": 0}
        final: dict[int, int] = {}
        counts_lock = threading.Lock()

        def work(thread: int) -> None:
            rng = random.Random(seed * 1000 + thread)
            own = [private_key(worker, thread, i) for i in range(8)]
            latest: dict[int, int] = {}
            done = dict.fromkeys(counts, 0)
            wrong: list[str | None] = []
            while time.monotonic() < deadline:
                roll = rng.random()
                if roll < 0.45:
                    key = rng.choice([rng.randrange(SHARED_KEYS), rng.choice(own), any_key(rng)])
                    value = cache.get(key)
                    if value is not None or key in latest:
                        wrong.append(verdict(key, value, latest.get(key)))
                    done["get"] += 1
                elif roll < 0.65:
                    key = rng.choice(own)
                    latest[key] = latest.get(key, 0) + 1
                    cache.put(key, make_sample(key, latest[key]))
                    wrong.append(verdict(key, cache.get(key), latest[key]))
                    done["put"] += 1
                    done["get"] += 1
                elif roll < 0.9:
                    key = rng.randrange(SHARED_KEYS)
                    cache.put(key, make_sample(key, rng.randrange(1000)))
                    done["put"] += 1
                elif roll < 0.99:
                    cache.__contains__(any_key(rng))
                    done["contains"] += 1
                else:
                    cache.flush()
                    done["flush"] += 1
            report["wrong"].extend(w for w in wrong if w is not None)
            with counts_lock:
                for name, n in done.items():
                    counts[name] += n
                final.update(latest)

        def guarded(thread: int) -> None:
            try:
                work(thread)
            except BaseException:
                report["errors"].append(traceback.format_exc())

        pool = [threading.Thread(target=guarded, args=(t,)) for t in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        report["counts"] = counts
        report["latest"] = final
        report["ram_ok"] = cache.stats().ram_bytes <= parse_budget(ram_budget, name="ram_budget")


def stress_reader(*, path: str, seed: int, seconds: float, result: str) -> None:
    """Only read (get, contains, len) while the stress workers write: every value must be whole."""
    deadline = time.monotonic() + seconds
    rng = random.Random(seed)
    with (
        _reported(Path(result)) as report,
        SpillCache(path, ram_budget="512KiB", fingerprint="stress") as cache,
    ):
        counts = {"get": 0, "len": 0}
        while time.monotonic() < deadline:
            key = any_key(rng)
            value = cache.get(key)
            if value is not None and (bad := verdict(key, value)) is not None:
                report["wrong"].append(bad)
            counts["get"] += 1
            if rng.random() < 0.01:
                assert 0 <= len(cache) <= SHARED_KEYS + 4 * 4 * 8
                counts["len"] += 1
        report["counts"] = counts


def limit_file_size(limit: int | None) -> None:
    """Make writes of this process past ``limit`` bytes of a file fail (EFBIG), as on a full disk.

    Stands in for a full file system where none can be mounted.
    """
    if limit is not None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))


def probe_store(
    *, path: str, on_mismatch: str, keys: int, result: str, file_size_limit: int | None = None
) -> None:
    """Open the store and get keys ``0..keys-1``; report what was raised, read and warned.

    Run in a child process for stores damaged on purpose, so that a SIGBUS fails the test
    instead of killing the test run.
    """
    limit_file_size(file_size_limit)
    with _reported(Path(result)) as report, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with SpillCache(path, ram_budget=0, on_mismatch=on_mismatch) as cache:  # type: ignore[arg-type]
                values = [cache.get(key) for key in range(keys)]
                report["values"] = [
                    "absent" if v is None else verdict(k, v) or "ok" for k, v in enumerate(values)
                ]
                report["corrupt"] = cache.stats().corrupt
        except Exception as exc:
            report["raised"] = f"{type(exc).__module__}.{type(exc).__qualname__}"
            report["message"] = str(exc)
        report["warnings"] = [str(w.message) for w in caught]


def in_child(target: Callable[..., None], **kwargs: Any) -> dict[str, Any]:
    """Run ``target(**kwargs, result=...)`` in a forkserver child; return its report.

    Fails if the child died (a signal such as SIGBUS or SIGSEGV, or a hang past 120 s).
    """
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        process = forkserver().Process(target=target, kwargs={**kwargs, "result": str(result)})
        process.start()
        process.join(120)
        if process.exitcode is None:
            process.kill()
            process.join()
            raise AssertionError(f"{target.__name__} hung")
        assert process.exitcode == 0, f"{target.__name__} died: exit code {process.exitcode}"
        return read_report(result)


class SlowSource(torch.utils.data.Dataset[dict[str, Any]]):
    """``make_sample(i)`` for ``i < n``; counts its loads."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.loads = 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        self.loads += 1
        return make_sample(i)


def full_disk_trainer(*, path: str, samples: int, file_size_limit: int | None, result: str) -> None:
    """Two epochs of a CachedDataset on a file system that fills up; report what happened.

    ``file_size_limit``: see :func:`limit_file_size`.
    """
    limit_file_size(file_size_limit)
    with _reported(Path(result)) as report, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        source = SlowSource(samples)
        # A budget above the file system's size: the writes, not the budget, hit the limit.
        with CachedDataset(source, path, ram_budget=0, disk_budget="1TiB", fingerprint="fp") as ds:
            stored_first: set[int] = set()
            report["reloaded"] = []  # stored after epoch 1, loaded again in epoch 2
            for epoch in range(2):
                for i in range(samples):
                    before = source.loads
                    if (bad := verdict(i, ds[i], 0)) is not None:
                        report["wrong"].append(f"epoch {epoch}: {bad}")
                    if epoch and (
                        source.loads - before > 1 or (source.loads > before and i in stored_first)
                    ):
                        report["reloaded"].append((i, source.loads - before))
                    if i % 10 == 9:
                        ds.cache.flush()
                ds.cache.flush()
                if not epoch:
                    report["stored_after_first"] = ds.cache.stats().disk_items
                    report["loads_first"] = source.loads
                    stored_first = {k for k in range(samples) if k in ds.cache}
                    report["stored_first_keys"] = len(stored_first)
            stats = ds.cache.stats()
        report["write_errors"] = stats.write_errors
        report["rejected"] = stats.rejected
        report["corrupt"] = stats.corrupt
        report["loads"] = source.loads
        report["warnings"] = [f"{w.category.__name__}: {w.message}" for w in caught]


def late_reader(*, path: str, keys: int, ready: str, go: str, result: str) -> None:
    """Open the store while it is small, then read entries written after the map grew."""
    env_module._INITIAL_MAP_SIZE = 1 << 20
    with _reported(Path(result)) as report, SpillCache(path, ram_budget=0) as cache:
        report["before"] = verdict(0, cache.get(0), 0)
        Path(ready).touch()
        wait_for(Path(go).exists, "the writer")
        report["wrong"] = [bad for k in range(keys) if (bad := verdict(k, cache.get(k), 0))]


def concurrent_opener(*, base: str, worker: int, rounds: int, barrier: Any, result: str) -> None:
    """Open a new store ``base/<round>`` at the same moment as the other workers, ``rounds`` times.

    Stands for DDP ranks or DataLoader workers of several jobs creating one store together.
    """
    with _reported(Path(result)) as report:
        for r in range(rounds):
            barrier.wait(60)
            try:
                with SpillCache(Path(base) / f"round{r}", ram_budget=0, fingerprint="f") as cache:
                    cache.put(worker, make_sample(worker))
            except Exception as exc:
                report["errors"].append(f"round {r}: {type(exc).__name__}: {exc}")


def blocked_reader(*, path: str, ready: str) -> None:
    """Open the store, start reading an entry, and hang inside the read transaction.

    Stands for a DataLoader worker killed (``kill -9``) while it decodes a sample: its LMDB
    reader slot stays behind, pinning the pages it could see.
    """

    def hang(value: bytes | bytearray | memoryview) -> object:
        Path(ready).touch()
        while True:
            time.sleep(60)

    # The cache decodes inside the read transaction; a decoder that never returns holds it.
    cache_reads.decode = hang  # type: ignore[assignment]
    with SpillCache(path, ram_budget=0) as cache:
        cache.get(0)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    """Poll ``condition`` until true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)
