"""Clean shutdown: Ctrl-C, exit without close() and garbage collection keep the store whole.

After each: ``verify`` passes, every entry is exact, and nothing put before a ``flush`` (or, at
a normal exit, before the exit) is lost. ``SPILLCACHE_LONG=1`` repeats the Ctrl-C runs 10 times.
"""

from __future__ import annotations

import gc
import os
import random
import re
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import lmdb
import pytest

from reliability import (
    check_store,
    forkserver,
    make_sample,
    popen_python,
    read_report,
    run_python,
    scaled,
)
from spillcache import SpillCache
from spillcache.admin import verify
from spillcache.disk import live_tier

# A training script filling the store until Ctrl-C: the store path is argv[1]; it prints how
# many keys are flushed, resuming where the store left off.
_FILL_UNTIL_INTERRUPTED = """
    import sys
    from reliability import make_sample
    from spillcache import SpillCache

    cache = SpillCache(sys.argv[1], ram_budget="1MiB", fingerprint="fp")
    key = len(cache)
    print("start", key, flush=True)
    while True:
        cache.put(key, make_sample(key))
        key += 1
        if key % 20 == 0:
            cache.flush()
            print("flushed", key, flush=True)
"""

# The same with DataLoader workers doing the puts; Ctrl-C reaches the whole process group.
_LOADER_UNTIL_INTERRUPTED = """
    import sys
    from torch.utils.data import DataLoader
    from reliability import SlowSource
    from spillcache import CachedDataset

    if __name__ == "__main__":
        ds = CachedDataset(SlowSource(100_000), sys.argv[1], ram_budget="1MiB", fingerprint="fp")
        loader = DataLoader(ds, batch_size=None, num_workers=2, shuffle=False)
        for sample in loader:
            print("got", int(sample["meta"]["key"]), flush=True)
"""


_WORKER_GONE = ("resource_sharer", "exited unexpectedly")


def _interrupt_after(
    code: str, path: Path, lines: int, rng: random.Random, *, group: bool
) -> list[str]:
    """Run ``code`` until it printed ``lines`` more lines, then Ctrl-C it; return its output."""
    process = popen_python(code, str(path), new_session=group)
    assert process.stdout is not None
    out = [process.stdout.readline() for _ in range(lines)]
    assert all(out), f"the script died early: {process.communicate(timeout=60)}"
    time.sleep(rng.uniform(0.0, 0.3))  # land anywhere: in a put, a commit, a flush
    if group:
        os.killpg(process.pid, signal.SIGINT)
    else:
        process.send_signal(signal.SIGINT)
    rest, err = process.communicate(timeout=60)  # a hang at exit fails here
    # With group=True the workers get the Ctrl-C too: the main process may then see it as a
    # worker gone while handing over a batch (torch's fd sharer or its worker watchdog).
    endings = ("KeyboardInterrupt",) + (_WORKER_GONE if group else ())
    assert any(ending in err for ending in endings), err
    assert process.returncode in (1, -signal.SIGINT, 128 + signal.SIGINT), err
    return [line for line in out + rest.splitlines() if line.strip()]


def test_ctrl_c_during_a_fill_keeps_everything_put(tmp_path: Path) -> None:
    rng = random.Random()
    path = tmp_path / "store"
    for _run in range(scaled(2, 10)):
        out = _interrupt_after(_FILL_UNTIL_INTERRUPTED, path, 3, rng, group=False)
        # A Ctrl-C inside print() can leave "flushed" without its number: such lines say nothing.
        flushed = max(
            int(m[1]) for line in out if (m := re.fullmatch(r"flushed (\d+)", line.strip()))
        )
        assert verify(path).ok
        present = check_store(path, flushed + 100, fingerprint="fp")
        # Puts happen in key order and the exit commits what is queued: no holes.
        assert present == set(range(len(present)))
        assert len(present) >= flushed
    assert len(present) > 60  # each run resumed where the last one stopped


def test_ctrl_c_of_a_dataloader_with_workers(tmp_path: Path) -> None:
    path = tmp_path / "store"
    out = _interrupt_after(_LOADER_UNTIL_INTERRUPTED, path, 40, random.Random(), group=True)
    # A line cut short by the Ctrl-C has no number: only whole lines count.
    received = {int(line.split()[1]) for line in out if re.fullmatch(r"got \d+", line)}
    assert verify(path).ok
    present = check_store(path, max(received) + 100, fingerprint="fp")
    # A worker puts a sample before handing it over, and commits at its exit.
    assert received <= present, sorted(received - present)[:10]


@pytest.mark.parametrize(
    "ending",
    [
        pytest.param("", id="end-of-script"),
        pytest.param("sys.exit(3)", id="sys-exit"),
        pytest.param("raise RuntimeError('boom')", id="uncaught-exception"),
    ],
)
def test_exit_without_close_commits_what_was_put(tmp_path: Path, ending: str) -> None:
    path = tmp_path / "store"
    result = run_python(
        f"""
        import sys
        from reliability import make_sample
        from spillcache import SpillCache

        cache = SpillCache(sys.argv[1], ram_budget="1MiB", fingerprint="fp")
        for key in range(300):  # no flush, no close: the exit must commit the queue
            cache.put(key, make_sample(key))
        {ending}
        """,
        str(path),
    )
    if ending.startswith("raise"):
        assert "RuntimeError: boom" in result.stderr
    else:
        assert result.returncode == (3 if ending else 0), result.stderr
    assert verify(path).ok
    assert check_store(path, 300, fingerprint="fp") == set(range(300))


def test_worker_process_exit_without_close_commits(tmp_path: Path) -> None:
    # multiprocessing children (DataLoader workers) end with os._exit and skip atexit.
    path = tmp_path / "store"
    result = tmp_path / "result.json"
    process = forkserver().Process(
        target=_fill_without_close, kwargs={"path": str(path), "result": str(result)}
    )
    process.start()
    process.join(60)
    assert process.exitcode == 0, read_report(result)
    assert check_store(path, 300, fingerprint="fp") == set(range(300))


_ALIVE_UNTIL_EXIT: list[SpillCache] = []


def _fill_without_close(*, path: str, result: str) -> None:
    cache = SpillCache(path, ram_budget="1MiB", fingerprint="fp")
    # Referenced until the process ends, as a DataLoader worker's data set is.
    _ALIVE_UNTIL_EXIT.append(cache)
    for key in range(300):
        cache.put(key, make_sample(key))
    Path(result).write_text("{}")


def _our_transactions(path: Path) -> list[str]:
    """Reader-table rows of this process that hold a read transaction open."""
    env = lmdb.open(str(path), max_dbs=2, readonly=True, lock=True)
    try:
        rows = [line.split() for line in env.readers().splitlines()[1:]]
    finally:
        env.close()
    return [" ".join(r) for r in rows if r and int(r[0]) == os.getpid() and r[-1] != "-"]


def _writer_threads(path: Path) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"spillcache-writer:{path.name}"]


def test_garbage_collection_of_an_unclosed_cache(tmp_path: Path) -> None:
    path = tmp_path / f"{tmp_path.name}-store"

    def fill_and_forget() -> None:
        cache = SpillCache(path, ram_budget="1MiB", fingerprint="fp")
        holder: dict[str, object] = {"cache": cache}
        holder["self"] = holder  # a reference cycle: only the cycle collector frees it
        for key in range(300):  # no flush: the queue is not empty when it is collected
            cache.put(key, make_sample(key))
        cache.get(5)  # and a read transaction has been used

    fill_and_forget()
    gc.collect()
    assert live_tier(path) is None
    assert _writer_threads(path) == []
    assert _our_transactions(path) == []
    assert verify(path).ok
    assert check_store(path, 300, fingerprint="fp") == set(range(300))


def test_after_close_nothing_of_ours_touches_the_store(tmp_path: Path) -> None:
    path = tmp_path / f"{tmp_path.name}-store"
    cache = SpillCache(path, ram_budget="1MiB", fingerprint="fp")
    for key in range(300):
        cache.put(key, make_sample(key))
    assert cache.get(299) is not None
    cache.close()
    assert _writer_threads(path) == []
    assert _our_transactions(path) == []
    size, mtime = (path / "data.mdb").stat().st_size, (path / "data.mdb").stat().st_mtime_ns
    with pytest.raises(ValueError, match="closed"):
        cache.put(300, make_sample(300))
    with pytest.raises(ValueError, match="closed"):
        cache.get(1)
    time.sleep(0.5)  # longer than a commit interval: a stray writer would show
    assert (path / "data.mdb").stat().st_size == size
    assert (path / "data.mdb").stat().st_mtime_ns == mtime
    assert check_store(path, 301, fingerprint="fp") == set(range(300))


def _interrupt_entering_conditions(frame: Any, event: str, arg: object) -> Any:
    """A tracer raising KeyboardInterrupt as a Condition entered by spillcache returns.

    What a Ctrl-C does when it is handled in that gap: the lock is held, the block never
    entered, and ``__exit__`` never runs.
    """
    if (
        event == "return"
        and frame.f_code is threading.Condition.__enter__.__code__
        and "spillcache" in frame.f_back.f_code.co_filename
    ):
        raise KeyboardInterrupt
    return _interrupt_entering_conditions


def test_a_ctrl_c_as_a_lock_is_taken_never_hangs_the_exit(tmp_path: Path) -> None:
    cache = SpillCache(tmp_path / "store", ram_budget="1MiB", fingerprint="fp")
    interrupted: list[int] = []

    def train_then_exit() -> None:
        sys.settrace(_interrupt_entering_conditions)
        try:
            for key in range(20):
                cache.put(key, make_sample(key))
                cache.flush()
        except KeyboardInterrupt:
            interrupted.append(key)
        finally:
            sys.settrace(None)
            cache.close()  # what the exit hooks do after a Ctrl-C: it takes the locks again

    # A thread, so that a lock left held fails the test instead of hanging it.
    thread = threading.Thread(target=train_then_exit, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "close() hung on a lock a KeyboardInterrupt left held"
    assert interrupted == []  # no Python frame between taking a lock and entering its block
    assert check_store(tmp_path / "store", 20, fingerprint="fp") == set(range(20))
