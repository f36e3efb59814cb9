"""Tests of spillcache.budget and spillcache.footprint.

Budget parsing, memory and disk totals, sample byte counts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from spillcache.budget import (
    _cgroup_limit,
    _memory_limit,
    _slurm_limit,
    filesystem_size,
    memory_limit,
    parse_budget,
)
from spillcache.footprint import sample_nbytes

KIB, MIB, GIB, TIB = 1024, 1024**2, 1024**3, 1024**4
SRC = Path(__file__).resolve().parents[1] / "src"


# --- parse_budget ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (1024, 1024),
        (np.int64(4096), 4096),
        ("0", 0),
        ("1024", 1024),
        ("10B", 10),
        ("512MiB", 512 * MIB),
        ("4GB", 4_000_000_000),
        ("4gb", 4_000_000_000),
        ("1.5GiB", 3 * GIB // 2),
        ("100 KiB", 100 * KIB),
        ("  7 mb ", 7_000_000),
        ("2 TiB", 2 * TIB),
        ("3TB", 3 * 1000**4),
        (".5KiB", 512),
        ("1.5KB", 1500),
        ("0.29KB", 290),  # exact decimal arithmetic: 0.29 * 1000 is 289.99999999999997 in floats
        ("0.0001KB", 0),  # a tenth of a byte rounds down
        ("1.0000001KiB", 1024),
    ],
)
def test_parse_budget_sizes(value: object, expected: int) -> None:
    result = parse_budget(value, name="ram_budget")
    assert result == expected
    assert type(result) is int


def test_parse_budget_percentages_of_total() -> None:
    def total() -> int:
        return 1000

    assert parse_budget("25%", name="ram_budget", total=total) == 250
    assert parse_budget("12.5 %", name="ram_budget", total=total) == 125
    assert parse_budget("100%", name="ram_budget", total=total) == 1000
    assert parse_budget("0.01%", name="ram_budget", total=total) == 0
    assert parse_budget("33%", name="ram_budget", total=lambda: 10) == 3


def test_parse_budget_calls_total_only_for_percentages() -> None:
    def total() -> int:
        raise AssertionError("total() called for a plain size")

    assert parse_budget("1KiB", name="disk_budget", total=total) == 1024


def test_parse_budget_message_for_a_non_size() -> None:
    with pytest.raises(ValueError) as info:
        parse_budget("lots", name="ram_budget")
    assert str(info.value) == (
        "ram_budget='lots' is not a size; use bytes (int), a string like '512MiB' or '4GB', "
        "or a percentage like '25%'"
    )


@pytest.mark.parametrize(
    "value",
    [
        "lots",
        "-1GiB",
        -5,
        "1.5",
        "1.5B",
        "",
        "   ",
        "0%",
        "150%",
        "-5%",
        "%",
        "5%KB",
        "4G",
        "5 XB",
        "1e9",
        "1,024",
        "-5MiB",
    ],
)
def test_parse_budget_rejects_with_the_argument_name(value: object) -> None:
    with pytest.raises(ValueError, match=r"^disk_budget=") as info:
        parse_budget(value, name="disk_budget", total=lambda: 1000)
    assert repr(value) in str(info.value)


@pytest.mark.parametrize("value", [1.5, 1024.0, True, False, None, float("nan"), b"1024", [1024]])
def test_parse_budget_rejects_other_types_with_type_error(value: object) -> None:
    # One rule (#14): a wrong type is a TypeError (it was a ValueError before).
    with pytest.raises(TypeError, match=r"^disk_budget=") as info:
        parse_budget(value, name="disk_budget", total=lambda: 1000)
    assert repr(value) in str(info.value)


@pytest.mark.parametrize("value", ["-5MiB", "-1", "- 2 GiB", "-5%"])
def test_parse_budget_negative_strings_say_negative(value: str) -> None:
    with pytest.raises(ValueError, match="is negative"):
        parse_budget(value, name="ram_budget", total=lambda: 1000)


def test_parse_budget_percentage_without_total() -> None:
    with pytest.raises(ValueError, match=r"^ram_budget='25%' .*'512MiB'"):
        parse_budget("25%", name="ram_budget")


# --- memory_limit --------------------------------------------------------------------------------


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_takes_the_tightest_of_the_group_and_its_ancestors(tmp_path: Path) -> None:
    proc = tmp_path / "proc_cgroup"
    _write(proc, "0::/user.slice/job.scope\n")
    root = tmp_path / "cgroup"
    _write(root / "user.slice/job.scope/memory.max", "max\n")
    _write(root / "user.slice/job.scope/memory.high", "max\n")
    _write(root / "user.slice/memory.max", f"{3 * GIB}\n")
    assert _cgroup_limit(proc, root) == 3 * GIB
    _write(root / "user.slice/job.scope/memory.high", f"{2 * GIB}\n")
    assert _cgroup_limit(proc, root) == 2 * GIB


def test_cgroup_v2_unlimited(tmp_path: Path) -> None:
    proc = tmp_path / "proc_cgroup"
    _write(proc, "0::/\n")
    _write(tmp_path / "cgroup/memory.max", "max\n")
    assert _cgroup_limit(proc, tmp_path / "cgroup") is None


def test_cgroup_v1_memory_controller(tmp_path: Path) -> None:
    proc = tmp_path / "proc_cgroup"
    _write(proc, "5:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/\n")
    root = tmp_path / "cgroup"
    limit_file = root / "memory/docker/abc/memory.limit_in_bytes"
    _write(limit_file, f"{GIB}\n")
    _write(root / "memory/memory.limit_in_bytes", "9223372036854771712\n")  # v1's "no limit"
    _write(root / "cpu,cpuacct/docker/abc/memory.limit_in_bytes", "1\n")  # not the memory one
    assert _cgroup_limit(proc, root) == GIB
    limit_file.write_text("9223372036854771712\n")
    assert _cgroup_limit(proc, root) is None


def test_cgroup_v1_seen_from_inside_a_container(tmp_path: Path) -> None:
    # Without a cgroup namespace the path is the host's, but only the mount root exists.
    proc = tmp_path / "proc_cgroup"
    _write(proc, "4:memory:/kubepods/pod1/abc\n")
    _write(tmp_path / "cgroup/memory/memory.limit_in_bytes", f"{512 * MIB}\n")
    assert _cgroup_limit(proc, tmp_path / "cgroup") == 512 * MIB


def test_cgroup_without_files(tmp_path: Path) -> None:
    assert _cgroup_limit(tmp_path / "missing", tmp_path) is None
    proc = tmp_path / "proc_cgroup"
    _write(proc, "0::/a/b\n\n")
    assert _cgroup_limit(proc, tmp_path / "cgroup") is None


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"SLURM_MEM_PER_NODE": "4096"}, 4 * GIB),
        ({"SLURM_MEM_PER_NODE": "0"}, None),  # --mem=0: all the node's memory
        ({"SLURM_MEM_PER_NODE": "4G"}, None),  # not SLURM's format: ignored
        ({"SLURM_MEM_PER_CPU": "1000", "SLURM_CPUS_ON_NODE": "4"}, 4000 * MIB),
        ({"SLURM_MEM_PER_CPU": "1000", "SLURM_CPUS_PER_TASK": "2"}, 2000 * MIB),
        ({"SLURM_MEM_PER_CPU": "1000"}, 1000 * MIB),
        (
            {
                "SLURM_MEM_PER_CPU": "1000",
                "SLURM_CPUS_ON_NODE": "8",
                "SLURM_CPUS_PER_TASK": "2",
                "SLURM_STEP_TASKS_PER_NODE": "4",
            },
            2000 * MIB,
        ),
        ({"SLURM_MEM_PER_NODE": "8192", "SLURM_STEP_TASKS_PER_NODE": "2(x3),4"}, 2 * GIB),
    ],
)
def test_slurm_share(environ: dict[str, str], expected: int | None) -> None:
    assert _slurm_limit(environ) == expected


def test_memory_limit_is_the_smallest(tmp_path: Path) -> None:
    proc = tmp_path / "proc_cgroup"
    _write(proc, "0::/job\n")
    root = tmp_path / "cgroup"
    _write(root / "job/memory.max", f"{6 * GIB}\n")

    def limit(physical: int | None, environ: dict[str, str]) -> int:
        return _memory_limit(physical=physical, proc_cgroup=proc, cgroup_root=root, environ=environ)

    slurm = {"SLURM_MEM_PER_NODE": str(5 * 1024)}
    assert limit(8 * GIB, {}) == 6 * GIB
    assert limit(4 * GIB, {}) == 4 * GIB
    assert limit(8 * GIB, slurm) == 5 * GIB
    assert limit(None, {}) == 6 * GIB
    with pytest.raises(OSError, match="memory"):
        _memory_limit(physical=None, proc_cgroup=tmp_path / "missing", cgroup_root=root, environ={})


def test_memory_limit_of_this_process() -> None:
    physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert 0 < memory_limit() <= physical


# --- filesystem_size ------------------------------------------------------------------------------


def test_filesystem_size_of_a_path_yet_to_be_created(tmp_path: Path) -> None:
    expected = shutil.disk_usage(tmp_path).total
    assert expected > 0
    assert filesystem_size(tmp_path / "store" / "not" / "yet") == expected
    assert filesystem_size(str(tmp_path)) == expected
    (tmp_path / "file").write_bytes(b"x")
    assert filesystem_size(tmp_path / "file") == expected


# --- sample_nbytes -------------------------------------------------------------------------------


def fresh(text: str) -> str:
    """A new str object (a literal would be a shared constant)."""
    return "".join([text[:1], text[1:]])


def test_singletons_and_small_ints_count_nothing() -> None:
    for value in (None, True, False, np.True_, 0, 1, -5, 256, "", "x", "\xe9", b"", b"x", ()):
        assert sample_nbytes(value) == 0, value
    assert sample_nbytes(int("257")) == 32
    assert sample_nbytes(int("-6")) == 32
    assert sample_nbytes(float("0.5")) == 32
    assert sample_nbytes(chr(0x3B1)) > 0  # one character beyond Latin-1: not cached


def test_strings_shared_with_other_samples_count_nothing() -> None:
    key = fresh("object_id")
    assert sample_nbytes([key]) == sample_nbytes([None]) + 64  # 58 bytes, rounded to 64
    others = [key] * 100  # e.g. the same dict key in a hundred other samples
    assert sample_nbytes([key]) == sample_nbytes([None])
    del others


def test_containers() -> None:
    empty_dict = sample_nbytes({})
    assert empty_dict == sys.getsizeof({})
    small = {fresh("ab"): None, fresh("cd"): None}
    # dict object + its key table (rounded up) + two 51-byte strings in 64-byte blocks
    assert (
        sample_nbytes(small)
        == empty_dict + (sys.getsizeof(small) - empty_dict + 15) // 16 * 16 + 128
    )
    assert sample_nbytes([]) == 64  # 56 bytes, rounded
    assert sample_nbytes([None] * 2) == 64 + 16  # object + separately allocated item array
    assert sample_nbytes((None, None, None)) == 64
    large = bytes(1000)
    assert sample_nbytes(large) == (sys.getsizeof(large) + 8 + 15) // 16 * 16  # plain malloc


def test_repeated_and_cyclic_references_count_once() -> None:
    item = [fresh("abc") + "def"]
    assert sample_nbytes([item, item, item]) == sample_nbytes([item, None, None])
    cycle: list[object] = []
    cycle.append(cycle)
    same_size: list[object] = []
    same_size.append(None)
    assert sample_nbytes(cycle) == sample_nbytes(same_size)


def test_deep_nesting_does_not_recurse() -> None:
    nested: list[object] = []
    for _ in range(100_000):
        nested = [nested]
    assert sample_nbytes(nested) == 100_000 * (64 + 16) + 64


def test_numpy_arrays() -> None:
    array = np.zeros(MIB, np.uint8)
    alone = sample_nbytes(array)
    assert MIB < alone < MIB + 8 * KIB
    # Two views of one array: the buffer counts once, each view adds only its object.
    both = sample_nbytes({"head": array[:10], "tail": array[10:]})
    assert alone < both < alone + 2 * KIB
    assert sample_nbytes([array, array[::2]]) < alone + 2 * KIB
    # Two arrays: two buffers.
    assert sample_nbytes([array, array.copy()]) > 2 * MIB


def test_tensor_views_share_one_storage() -> None:
    tensor = torch.zeros(MIB // 4)
    alone = sample_nbytes(tensor)
    assert MIB < alone < MIB + 8 * KIB
    views = sample_nbytes((tensor[:10], tensor[10:]))
    assert alone < views < alone + 2 * KIB
    assert sample_nbytes([tensor, tensor.view(2, -1)]) < alone + KIB
    assert sample_nbytes([tensor, tensor.clone()]) > 2 * MIB


def test_numpy_view_of_a_tensor_counts_the_tensor_storage_once() -> None:
    tensor = torch.zeros(MIB // 4)
    array = tensor.numpy()
    alone = sample_nbytes(array)
    assert MIB < alone < MIB + 8 * KIB  # the memory is the tensor's, kept alive by the array
    assert sample_nbytes({"tensor": tensor, "array": array}) < alone + KIB
    assert sample_nbytes([array, array[:5], torch.from_numpy(array[5:].copy())]) > 2 * MIB


def test_tensor_counts_more_than_getsizeof_says() -> None:
    tensor = torch.zeros(4)
    assert sys.getsizeof(tensor) < 100
    assert sample_nbytes(tensor) > 400  # Python object, TensorImpl, StorageImpl, buffer


def test_unknown_objects_count_as_getsizeof_says() -> None:
    value = np.float32(1.5)
    assert sample_nbytes(value) == 32
    assert sample_nbytes(np.str_("hello")) >= sys.getsizeof(np.str_("hello"))


# The accuracy check runs in a fresh interpreter: its RssAnon must grow only by the samples.
# Each mix builds samples the way decoding does (fresh arrays, tensors wrapping a copied numpy
# array or cloned, strings and numbers made from bytes), keeps them all alive (freeing one mix
# would leave holes the next one reuses without growing RssAnon) and compares the growth to
# the sum of sample_nbytes.
_ACCURACY_SCRIPT = textwrap.dedent(
    """
    import ctypes, gc, json, struct, sys
    import numpy as np
    import torch
    from spillcache.footprint import ENTRY_OVERHEAD, sample_nbytes

    def rss_anon():
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no RssAnon")

    # Return the warm-up's garbage to the OS (glibc only).
    trim = getattr(ctypes.CDLL(None), "malloc_trim", lambda pad: 0)

    rng = np.random.default_rng(0)
    F1M = rng.random((512, 512), dtype=np.float32)
    F4K = rng.random(1024, dtype=np.float32)
    B1K = rng.random(1024) > 0.5
    T12K = torch.rand(3, 32, 32)
    F64 = rng.random(16, dtype=np.float32)
    T64 = torch.from_numpy(F64)
    PACK = struct.Struct("<qd")

    def text(i, width):
        return str(b"%0*d" % (width, i), "utf-8")

    def numbers(i):
        return PACK.unpack(PACK.pack(100_000 + i, i + 0.5))

    def key(raw):  # a dict key decoded afresh for each sample
        return str(raw, "ascii")

    def hyrax(i, flux):
        return {"image": {"flux": flux, "mask": B1K.copy()}, "object_id": text(i, 12),
                "label": i % 10, "ra": numbers(i)[1]}

    MIXES = {
        "1MiB tensors": (48, lambda i: {"image": torch.from_numpy(F1M.copy()), "label": i}),
        "hyrax numpy": (8000, lambda i: hyrax(i, F4K.copy())),
        "hyrax numpy view of tensor": (4000, lambda i: hyrax(i, T64.repeat(64).numpy())),
        "tiny": (60_000, lambda i: dict(zip(("a", "b", "name"), (*numbers(i), text(i, 6))))),
        "tiny, keys decoded": (
            30_000, lambda i: {key(b"a"): numbers(i)[0], key(b"bb"): numbers(i)[1],
                               key(b"name"): text(i, 6)}),
        "(tensor 3x32x32, int)": (2500, lambda i: (T12K.clone(), numbers(i)[0])),
        "(tensor 16, int)": (30_000, lambda i: (torch.from_numpy(F64.copy()), numbers(i)[0])),
        "(tensor 16 cloned, int)": (30_000, lambda i: (T64.clone(), numbers(i)[0])),
    }

    def settle():
        gc.collect()
        trim(0)

    results = {}
    alive = []
    for name, (n, make) in MIXES.items():
        warm = [make(i) for i in range(500)]
        for sample in warm:
            sample_nbytes(sample)
        del warm, sample
        keep = [None] * n
        alive.append(keep)
        settle()
        base = rss_anon()
        counted = 0
        for i in range(n):
            sample = make(i)
            counted += sample_nbytes(sample)
            keep[i] = sample
        del sample
        results[name] = [counted / (rss_anon() - base), counted // n, counted]

    # The RAM tier's own records for entries whose values exist already (sketch excluded:
    # it is sized once, separately).
    from spillcache.ram import RamTier

    n = 100_000
    values = [i + 0.5 for i in range(n)]
    tier = RamTier(1 << 40)
    tier.admit(0, values[0], 1)
    settle()
    base = rss_anon()
    for i in range(1, n):
        tier.admit(int.from_bytes((i + 1000).to_bytes(8, "little"), "little"), values[i], 5000 + i)
    results["ENTRY_OVERHEAD"] = [ENTRY_OVERHEAD * n / (rss_anon() - base), ENTRY_OVERHEAD, 0]
    print(json.dumps(results))
    """
)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_sample_nbytes_matches_resident_memory() -> None:
    path = os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=path)
    done = subprocess.run(
        [sys.executable, "-c", _ACCURACY_SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    total = sum(counted for _, _, counted in results.values())
    assert 100 * MIB < total < 300 * MIB  # large enough for page-level noise not to matter
    off = {name: ratio for name, (ratio, _, _) in results.items() if not 0.9 <= ratio <= 1.1}
    assert not off, f"counted / RssAnon growth outside 0.9-1.1: {off}; all: {results}"
