"""The node RAM tier (spillcache.node): one tier per store per node, shared by real processes.

Processes are real (multiprocessing's spawn context, so nothing is inherited, and fork where
fork is the point), file systems are real tmpfs mounts (root only, as in CI), and assertions are
on values. Values are bytes that name their key, so a wrong or torn value is detected.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import random
import signal
import subprocess
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lmdb
import pytest

from spillcache.node import NodeTier, NodeTierWarning
from spillcache.node.ledger import Ledger
from spillcache.node.place import PREFIX, footprint

SPAWN = mp.get_context("spawn")
KIB = 1 << 10
MIB = 1 << 20
BATCH = 10  # keys a worker loads between two steps of the others (see cache_loop)


def value_of(key: int, size: int) -> bytes:
    """``size`` bytes that name ``key`` throughout (size a multiple of 8)."""
    return key.to_bytes(8, "little") * (size // 8)


def assert_value(key: int, value: bytes | None) -> None:
    assert value is not None
    assert len(value) % 8 == 0 and value == value_of(key, len(value)), f"key {key}: wrong bytes"


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mount tmpfs file systems of given sizes; unmount them afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs the tests as root)")
    mounted: list[Path] = []

    def make(size: str) -> Path:
        point = tmp_path / f"shm{len(mounted)}"
        point.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(point)
        return point

    try:
        yield make
    finally:
        for point in mounted:
            subprocess.run(["umount", "-l", str(point)], check=True)


@pytest.fixture
def shm(mount: Callable[[str], Path]) -> Path:
    """A roomy memory file system of the test's own (not the machine's /dev/shm)."""
    return mount("256m")


def tier_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.name.startswith(PREFIX))


def open_tier(store: Path, budget: int, shm: Path) -> NodeTier:
    tier = NodeTier.open(store, budget, where=shm)
    assert tier is not None
    return tier


# -- worker bodies (module level: spawned processes import them) ---------------------------------


def reader(store: str, budget: int, shm: str, keys: Any, results: Any) -> None:
    tier = open_tier(Path(store), budget, Path(shm))
    results.put("ready")
    while (key := keys.get()) is not None:
        results.put(tier.get(key))
    tier.close()


def admitter(store: str, budget: int, shm: str, seed: int, count: int) -> tuple[int, list[int]]:
    """Admit ``count`` random keys; the tier's bytes after each admit."""
    tier = open_tier(Path(store), budget, Path(shm))
    rng = random.Random(seed)
    over = []
    admitted = 0
    for _ in range(count):
        key = rng.randrange(2000)
        tier.record(key)
        tier.record(key)
        admitted += tier.admit(key, value_of(key, rng.choice([3 * KIB, 8 * KIB, 40 * KIB])))
        stats = tier.stats()
        if stats.nbytes > stats.budget:
            over.append(stats.nbytes)
    tier.close()
    return admitted, over


def cache_loop(
    opened: tuple[str, int, str], passes: list[list[int]], size: int, step: Any, out: Any
) -> None:
    """What a cache does with each key: get, and admit on a miss. Hit rate per pass, to ``out``.

    Batch by batch in step with the other processes (``step``, a barrier), as DataLoader
    workers run: the main process takes their batches in turn and lets none run more than a
    few batches ahead, so the tier sees each pass's keys interleaved, not one worker's passes
    after the other's.
    """
    store, budget, shm = opened
    tier = open_tier(Path(store), budget, Path(shm))
    rates = []
    for keys in passes:
        hits = 0
        for start in range(0, len(keys), BATCH):
            step.wait(60)
            for key in keys[start : start + BATCH]:
                value = tier.get(key)
                if value is None:
                    tier.admit(key, value_of(key, size))
                else:
                    assert_value(key, value)
                    hits += 1
        rates.append(hits / len(keys))
    tier.close()
    out.put(rates)


def admit_forever(store: str, budget: int, shm: str, started: Any) -> None:
    tier = open_tier(Path(store), budget, Path(shm))
    rng = random.Random(os.getpid())
    started.set()
    while True:
        key = rng.randrange(500)
        tier.record(key)
        tier.record(key)
        tier.record(key)
        tier.admit(key, value_of(key, rng.choice([1 * KIB, 5 * KIB, 64 * KIB, 200 * KIB])))


def open_and_hang(stores: list[str], shm: str, started: Any) -> None:
    for store in stores:
        tier = open_tier(Path(store), 4 * MIB, Path(shm))
        tier.admit(1, value_of(1, 4 * KIB))
    started.set()
    time.sleep(600)


def open_admit_close(store: str, budget: int, shm: str) -> None:
    tier = open_tier(Path(store), budget, Path(shm))
    tier.admit(7, value_of(7, 4 * KIB))
    tier.close()


# -- sharing ------------------------------------------------------------------------------------


def test_an_admitted_value_is_a_hit_in_another_process_when_admit_returns(
    tmp_path: Path, shm: Path
) -> None:
    keys, results = SPAWN.Queue(), SPAWN.Queue()
    child = SPAWN.Process(target=reader, args=(str(tmp_path), 8 * MIB, str(shm), keys, results))
    child.start()
    try:
        tier = open_tier(tmp_path, 8 * MIB, shm)
        assert results.get(timeout=60) == "ready"
        for key, size in ((3, 4 * KIB), (4, MIB), (5, 64)):
            keys.put(key)
            assert results.get(timeout=60) is None  # not there yet
            assert tier.admit(key, value_of(key, size))
            keys.put(key)  # sent only after admit returned
            got = results.get(timeout=60)
            assert got is not None and len(got) == size
            assert_value(key, got)
        keys.put(None)
        child.join(60)
        assert child.exitcode == 0
        tier.close()
    finally:
        child.kill()


def test_a_forked_child_reattaches_and_shares_with_its_parent(tmp_path: Path, shm: Path) -> None:
    tier = open_tier(tmp_path, 8 * MIB, shm)
    assert tier.admit(1, value_of(1, 4 * KIB))
    global _inherited
    _inherited = tier
    child = mp.get_context("fork").Process(target=_child_reads_and_admits, daemon=True)
    child.start()  # the child uses the tier it inherited
    child.join(30)
    assert child.exitcode == 0
    assert_value(2, tier.get(2))
    assert tier.problems() == []
    directory = Path(tier.stats().directory)
    tier.close()
    assert not directory.exists()


_inherited: NodeTier | None = None


def _child_reads_and_admits() -> None:
    tier = _inherited
    assert tier is not None
    assert_value(1, tier.get(1))
    assert tier.admit(2, value_of(2, 8 * KIB))
    tier.close()


def _child_overwrites() -> None:
    tier = _inherited
    assert tier is not None
    tier.discard(1)
    for key in range(10, 30):  # reuses the pages key 1 had, unless a reader still pins them
        tier.admit(key, value_of(key, 64 * KIB))
    tier.close()


def test_a_fork_waits_until_no_thread_reads_the_tier(tmp_path: Path, shm: Path) -> None:
    global _inherited
    tier = _inherited = open_tier(tmp_path, 4 * MIB, shm)
    expected = value_of(1, 64 * KIB)
    assert tier.admit(1, expected)
    inside, seen = threading.Event(), []

    def read_slowly() -> None:
        with tier.view(1) as raw:
            inside.set()
            time.sleep(0.5)
            seen.append(bytes(raw) if raw is not None else None)

    reader_thread = threading.Thread(target=read_slowly)
    reader_thread.start()
    assert inside.wait(10)
    # Daemonic: a child that hangs (a gate inherited shut) must not hang the test run too.
    child = mp.get_context("fork").Process(target=_child_overwrites, daemon=True)
    child.start()  # forks only once the reader is out: the child then cannot disturb it
    child.join(30)
    reader_thread.join()
    assert child.exitcode == 0
    assert seen == [expected]
    assert tier.get(1) is None and tier.problems() == []
    tier.close()


def test_clear_empties_the_tier_for_every_handle(tmp_path: Path, shm: Path) -> None:
    first, second = open_tier(tmp_path, 4 * MIB, shm), open_tier(tmp_path, 4 * MIB, shm)
    for key in range(10):
        assert first.admit(key, value_of(key, 8 * KIB))
    second.clear()
    assert [first.get(key) for key in range(10)] == [None] * 10
    assert first.stats().items == first.stats().nbytes == 0
    assert first.problems() == []
    assert first.admit(3, value_of(3, 8 * KIB))
    assert_value(3, second.get(3))
    first.close()
    second.close()


def test_a_later_opener_adopts_the_first_budget_with_one_warning(tmp_path: Path, shm: Path) -> None:
    first = open_tier(tmp_path, 8 * MIB, shm)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        second = open_tier(tmp_path, 16 * MIB, shm)
        third = open_tier(tmp_path, 32 * MIB, shm)
    assert [type(w.message) for w in caught] == [NodeTierWarning]
    assert "per node" in str(caught[0].message)
    assert second.stats().budget == third.stats().budget == 8 * MIB
    for tier in (first, second, third):
        tier.close()


# -- budget and policy ---------------------------------------------------------------------------


def test_the_budget_holds_while_three_processes_admit(tmp_path: Path, shm: Path) -> None:
    budget = 2 * MIB
    tier = open_tier(tmp_path, budget, shm)  # holds it open, and checks it after
    with SPAWN.Pool(3) as pool:
        results = pool.starmap(
            admitter, [(str(tmp_path), budget, str(shm), seed, 800) for seed in range(3)]
        )
    assert all(over == [] for _, over in results), "bytes over the budget after an admit"
    assert sum(admitted for admitted, _ in results) > 200  # evictions made room again and again
    stats = tier.stats()
    assert 0 < stats.nbytes <= budget
    assert tier.problems() == []
    data = Path(stats.directory) / "data.mdb"
    assert data.stat().st_size <= budget + budget // 4 + MIB
    tier.close()


def hold_the_writer_lock(directory: str, held: Any, release: Any) -> None:
    """Another process in the middle of an admission: a write transaction of the tier's LMDB
    environment stays open."""
    with lmdb.open(directory, max_dbs=5) as env:
        txn = env.begin(write=True)
        held.set()
        release.wait(120)
        txn.abort()  # changes nothing (a commit could record this environment's map size)


def test_an_offer_that_loses_to_its_victims_waits_for_no_writer(tmp_path: Path, shm: Path) -> None:
    """Misses of every process offer their value; in a full tier most lose, and deciding that
    must not queue behind another process's admission (the writer lock is the node's one)."""
    tier = open_tier(tmp_path, 2 * MIB, shm)
    key, size = 0, footprint(4 * KIB, 4096)
    while tier.stats().nbytes + size <= tier.stats().budget:  # full of hot residents
        for _ in range(6):
            tier.record(key)
        assert tier.admit(key, value_of(key, 4 * KIB))
        key += 1
    held, release = SPAWN.Event(), SPAWN.Event()
    directory = tier.stats().directory
    child = SPAWN.Process(target=hold_the_writer_lock, args=(directory, held, release))
    child.start()
    try:
        assert held.wait(60)
        offered: list[bool] = []
        cold = threading.Thread(target=lambda: offered.append(tier.admit(9999, b"c" * 4096)))
        cold.start()
        cold.join(30)  # without the read-only decision: blocked until the child lets go
        assert offered == [False]
    finally:
        release.set()
        child.join(60)
    assert child.exitcode == 0
    assert tier.admit(key + 1, value_of(key + 1, 4 * KIB)) is False  # cold: still declined
    assert tier.problems() == []
    tier.close()


def two_process_rates(store: Path, shm: Path, passes: list[list[int]]) -> list[float]:
    """Run ``passes`` split between two processes (every other key, as DataLoader workers)."""
    size = 4000  # one 4 KiB page each
    entries = 100
    budget = entries * (4096 + 128)
    shares = [[keys[i::2] for keys in passes] for i in range(2)]
    step, out = SPAWN.Barrier(2), SPAWN.Queue()
    children = [
        SPAWN.Process(
            target=cache_loop, args=((str(store), budget, str(shm)), share, size, step, out)
        )
        for share in shares
    ]
    for child in children:
        child.start()
    try:
        rates = [out.get(timeout=120) for _ in children]
        for child in children:
            child.join(60)
            assert child.exitcode == 0
    finally:
        for child in children:
            child.kill()
    return [(a + b) / 2 for a, b in zip(*rates, strict=True)]


def test_a_skewed_stream_from_two_processes_hits_above_its_share(tmp_path: Path, shm: Path) -> None:
    keys = list(range(300))  # budget: 100 of them
    rng = random.Random(1)
    hot = rng.sample(keys, 60)  # 20 % of the keys draw 80 % of the weight
    weights = [16.0 if k in hot else 1.0 for k in keys]
    passes = [keys] + [rng.choices(keys, weights, k=len(keys)) for _ in range(8)]
    rates = two_process_rates(tmp_path, shm, passes)
    warm = sum(rates[-4:]) / 4
    assert warm >= 1.5 * (100 / 300), rates


@pytest.mark.parametrize("order", ["sequential", "shuffled"])
def test_uniform_passes_from_two_processes_hit_their_share(
    tmp_path: Path, shm: Path, order: str
) -> None:
    keys = list(range(300))
    rng = random.Random(2)
    passes = [keys] + [
        keys if order == "sequential" else rng.sample(keys, len(keys)) for _ in range(5)
    ]
    rates = two_process_rates(tmp_path, shm, passes)
    assert min(rates[1:]) >= 0.9 * (100 / 300), rates


def test_values_just_over_whole_pages_are_accounted_near_their_size(
    tmp_path: Path, shm: Path
) -> None:
    size = 16 * KIB + 64  # a 16 KiB tensor and its header: 5 pages if stored whole
    tier = open_tier(tmp_path, 100 * 16 * KIB, shm)
    for key in range(150):
        tier.admit(key, value_of(key, size))
    resident = [key for key in range(150) if tier.get(key, record=False) is not None]
    assert len(resident) == tier.stats().items >= 95  # whole values: 79 fit
    for key in resident:
        assert_value(key, tier.get(key))
        with tier.view(key) as raw:
            assert raw is not None
            assert_value(key, bytes(raw))
    assert tier.problems() == []
    tier.discard(resident[0])
    assert tier.get(resident[0]) is None and tier.problems() == []
    assert tier.admit(resident[0], value_of(resident[0], 8 * KIB))  # the same key, another size
    assert_value(resident[0], tier.get(resident[0]))
    tier.clear()
    assert tier.stats().items == 0 and tier.problems() == []
    tier.close()


# -- failures -----------------------------------------------------------------------------------


def test_kill_9_while_admitting_leaves_the_tier_consistent(tmp_path: Path, shm: Path) -> None:
    budget = 4 * MIB
    tier = open_tier(tmp_path, budget, shm)  # keeps the tier alive across the kills
    for round_ in range(3):
        started = SPAWN.Event()
        child = SPAWN.Process(target=admit_forever, args=(str(tmp_path), budget, str(shm), started))
        child.start()
        assert started.wait(60)
        time.sleep(0.2 + 0.15 * round_)
        os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
        child.join()
        assert tier.problems() == []
        stats = tier.stats()
        assert stats.items > 0 and stats.nbytes <= budget
    served = {}
    for key in range(500):
        value = tier.get(key, record=False)
        if value is not None:
            assert_value(key, value)
            served[key] = len(value)
    assert len(served) == tier.stats().items
    # The write lock a killed writer may have held is usable again.
    key, size = next(iter(served.items()))
    tier.discard(key)
    assert tier.get(key) is None
    assert tier.admit(1000, value_of(1000, size))
    assert tier.problems() == []
    tier.close()


def test_a_too_small_memory_file_system_turns_the_tier_off_with_one_warning(
    tmp_path: Path, mount: Callable[[str], Path]
) -> None:
    small = mount("4m")  # Docker's /dev/shm is 64 MiB; this is smaller still
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert NodeTier.open(tmp_path, 64 * MIB, where=small) is None
        assert NodeTier.open(tmp_path, 64 * MIB, where=small) is None
    assert [type(w.message) for w in caught] == [NodeTierWarning]
    assert "--shm-size" in str(caught[0].message)
    assert tier_dirs(small) == []


def test_a_small_memory_file_system_shrinks_the_tier_with_one_warning(
    tmp_path: Path, mount: Callable[[str], Path]
) -> None:
    small = mount("16m")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tier = open_tier(tmp_path, 64 * MIB, small)
        for key in range(200):
            tier.admit(key, value_of(key, 64 * KIB))
    assert [type(w.message) for w in caught] == [NodeTierWarning]
    stats = tier.stats()
    assert MIB <= stats.budget <= 8 * MIB and 0 < stats.nbytes <= stats.budget
    assert tier.problems() == []
    tier.close()


def test_a_full_memory_file_system_stops_admits_without_a_crash(
    tmp_path: Path, mount: Callable[[str], Path]
) -> None:
    fs = mount("16m")
    tier = open_tier(tmp_path, 4 * MIB, fs)
    for key in range(20):
        assert tier.admit(key, value_of(key, 64 * KIB))
    with open(fs / "filler", "wb") as filler, contextlib.suppress(OSError):
        while True:  # fill the file system to the last page
            filler.write(b"\0" * 64 * KIB)
            filler.flush()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for key in range(20, 400):
            tier.admit(key, value_of(key, (1 + key % 5) * 32 * KIB))
    assert [type(w.message) for w in caught] == [NodeTierWarning]
    assert "ran out of room" in str(caught[0].message)
    assert tier.problems() == []
    for key in range(400):
        value = tier.get(key)
        if value is not None:
            assert_value(key, value)
    assert tier.stats().items > 0
    tier.close()
    assert tier_dirs(fs) == []


def test_leftovers_of_a_killed_sole_user_are_reclaimed_at_the_next_open(
    tmp_path: Path, shm: Path
) -> None:
    stores = [tmp_path / "a", tmp_path / "b"]
    started = SPAWN.Event()
    child = SPAWN.Process(target=open_and_hang, args=([str(s) for s in stores], str(shm), started))
    child.start()
    assert started.wait(60)
    os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
    child.join()
    assert len(tier_dirs(shm)) == 2  # left behind
    tier = open_tier(stores[0], 4 * MIB, shm)
    assert tier.stats().items == 0  # a's leftovers were replaced by a fresh tier
    assert tier.get(1) is None
    assert tier_dirs(shm) == [Path(tier.stats().directory)]  # b's were removed
    tier.close()
    assert tier_dirs(shm) == []


def test_the_last_process_to_close_frees_the_memory(tmp_path: Path, shm: Path) -> None:
    tier = open_tier(tmp_path, 4 * MIB, shm)
    directory = Path(tier.stats().directory)
    child = SPAWN.Process(target=open_admit_close, args=(str(tmp_path), 4 * MIB, str(shm)))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    assert directory.is_dir()  # this process still uses it
    assert_value(7, tier.get(7))
    tier.close()
    assert not directory.exists()
    assert tier_dirs(shm) == []


def test_no_memory_file_system_means_no_tier_and_one_warning(tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert NodeTier.open(tmp_path / "store", MIB, where=tmp_path) is None
        assert NodeTier.open(tmp_path / "store", MIB, where=tmp_path) is None
    assert [type(w.message) for w in caught] == [NodeTierWarning]
    assert "not a tmpfs" in str(caught[0].message)


# -- puts, stamps and generations ---------------------------------------------------------------


def putter(store: str, budget: int, shm: str, key: int, value: bytes | None) -> None:
    """Another process's put of ``key`` (``None``: a put the tier declines, dropping the old)."""
    tier = open_tier(Path(store), budget, Path(shm))
    tier.put(key, value)
    tier.close()


def test_an_admission_read_before_another_process_put_the_key_is_declined(
    tmp_path: Path, shm: Path
) -> None:
    """The cross-process stale-admission race, step by step: miss, their put, our admission."""
    tier = open_tier(tmp_path, 8 * MIB, shm)
    new, old = b"new!" * 1024, value_of(3, 4 * KIB)
    for theirs in (new, None):  # their put admitted, or declined (only the old value goes)
        assert tier.put(3, old)
        tier.discard(3)
        got, stamp = tier.fetch(3, bytes)  # our miss; we now read `old` from the disk tier
        assert got is None
        child = SPAWN.Process(target=putter, args=(str(tmp_path), 8 * MIB, str(shm), 3, theirs))
        child.start()
        child.join(60)
        assert child.exitcode == 0
        assert not tier.admit(3, old, stamp=stamp)  # after their put returned: declined
        assert tier.get(3) == theirs
        assert tier.problems() == []
    _, stamp = tier.fetch(3, bytes)
    assert tier.admit(3, old, stamp=stamp)  # nothing put since the miss: admitted
    tier.close()


def fail_once(monkeypatch: pytest.MonkeyPatch, error: lmdb.Error) -> None:
    """The tier's next insert raises ``error`` (the transaction aborts), later ones work."""
    insert = Ledger.insert

    def failing(self: Ledger, *args: Any) -> None:
        monkeypatch.setattr(Ledger, "insert", insert)
        raise error

    monkeypatch.setattr(Ledger, "insert", failing)


@pytest.mark.parametrize(
    "error", [lmdb.MapFullError("full"), lmdb.DiskError("ENOSPC")], ids=["map-full", "disk"]
)
def test_a_put_whose_transaction_fails_leaves_no_older_value(
    tmp_path: Path, shm: Path, monkeypatch: pytest.MonkeyPatch, error: lmdb.Error
) -> None:
    tier = open_tier(tmp_path, 8 * MIB, shm)
    for key in range(4):
        assert tier.put(key, value_of(key, 4 * KIB))
    budget = tier.stats().budget
    fail_once(monkeypatch, error)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NodeTierWarning)
        assert not tier.put(2, b"new!" * 1024)
    assert tier.get(2) is None  # the older value went with the failed put
    assert tier.fetch(2, bytes)[0] is None and not tier.contains(2)
    assert tier.problems() == []
    if isinstance(error, lmdb.MapFullError):  # pins and fragments pass: the budget stays
        assert tier.stats().budget == budget
    assert tier.put(2, b"new!" * 1024)
    assert tier.get(2) == b"new!" * 1024
    tier.close()


def test_a_stale_value_that_cannot_be_removed_is_never_served(
    tmp_path: Path, shm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full map fails the put and the removal after it: the tier serves nothing until an
    admission empties it, in every process."""
    tier = open_tier(tmp_path, 8 * MIB, shm)
    for key in range(4):
        assert tier.put(key, value_of(key, 4 * KIB))
    fail_once(monkeypatch, lmdb.MapFullError("full"))
    monkeypatch.setattr(Ledger, "remove", raises(lmdb.MapFullError("full")))
    assert not tier.put(2, b"new!" * 1024)
    monkeypatch.undo()
    other = open_tier(tmp_path, 8 * MIB, shm)  # another handle: its own mapping of the tier
    for handle in (tier, other):
        assert [handle.get(k) for k in range(4)] == [None] * 4
        assert not handle.contains(0)
        with handle.view(0) as seen:
            assert seen is None
    got, stamp = other.fetch(5, bytes)  # a miss, then an admission after it: emptied
    assert got is None and other.admit(5, value_of(5, 4 * KIB), stamp=stamp)
    assert [tier.get(k) for k in range(4)] == [None] * 4
    assert_value(5, tier.get(5))
    assert tier.stats().items == 1 and tier.problems() == []
    other.close()
    tier.close()


def raises(error: Exception) -> Callable[..., None]:
    def fail(*args: Any) -> None:
        raise error

    return fail


def test_a_tier_serves_and_takes_only_the_generation_it_holds(tmp_path: Path, shm: Path) -> None:
    tier = open_tier(tmp_path, 8 * MIB, shm)
    tier.adopt(b"g1", force=False)  # a new tier takes the first generation offered
    assert tier.put(1, value_of(1, 4 * KIB), generation=b"g1")
    tier.adopt(b"g2", force=False)  # a later process of another generation changes nothing
    assert tier.fetch(1, bytes, generation=b"g1")[0] == value_of(1, 4 * KIB)
    got, stamp = tier.fetch(1, bytes, generation=b"g2")
    assert got is None and not tier.admit(1, b"x" * 64, stamp=stamp, generation=b"g2")
    assert not tier.put(2, b"y" * 64, generation=b"g2")
    tier.adopt(b"g2", force=True)  # the store was rebuilt: the tier is emptied for g2
    assert tier.stats().items == 0
    assert tier.fetch(1, bytes, generation=b"g1") == (None, -1)
    assert tier.put(2, b"y" * 64, generation=b"g2")
    tier.clear()  # a cleared store: no generation matches until one is adopted by force
    assert tier.fetch(2, bytes, generation=b"g2") == (None, -1)
    tier.close()


def test_joins_count_the_processes_that_attached(tmp_path: Path, shm: Path) -> None:
    tier = open_tier(tmp_path, 8 * MIB, shm)
    before = tier.joins()
    child = SPAWN.Process(target=open_admit_close, args=(str(tmp_path), 8 * MIB, str(shm)))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    assert tier.joins() == before + 1
    tier.close()


def test_a_fork_while_another_thread_takes_the_gate_leaves_the_child_no_hold_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A DataLoader forks its second worker while its first worker's fork hook opens the tier
    in a thread: the fork lands just after that thread's flock of the gate. The child must not
    keep the parent's hold (a flock belongs to the open file, which the child shares): it
    would then wait for itself at its first open of the tier, and every worker with it."""
    import fcntl

    from spillcache.node import users

    directory = tmp_path / "tier"
    taken, forked = threading.Event(), threading.Event()
    flock = fcntl.flock

    def flock_then_wait(fd: int, operation: int) -> None:
        flock(fd, operation)
        if operation == fcntl.LOCK_EX and not taken.is_set():  # the thread's gate, locked
            taken.set()
            assert forked.wait(60)

    monkeypatch.setattr(fcntl, "flock", flock_then_wait)

    def take_the_gate() -> None:
        with users.gate(directory) as held:
            assert held

    thread = threading.Thread(target=take_the_gate)
    thread.start()
    assert taken.wait(60)
    pid = os.fork()
    if pid == 0:  # the child: once the parent let go, the gate is free
        code = 1
        try:
            deadline = time.monotonic() + 10
            while code and time.monotonic() < deadline:
                with users.gate(directory, blocking=False) as held:
                    code = 0 if held else 1
                time.sleep(0.01)
        finally:
            os._exit(code)
    forked.set()
    thread.join(60)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the forked child kept the parent's gate"
