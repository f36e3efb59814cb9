"""Issue #14: errors, warnings and logging in the user's words; the command line never crashes.

Every test names the mechanism it checks; the CLI is run as a real subprocess.
"""

from __future__ import annotations

import collections
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import xxhash
from torch.utils.data import DataLoader

import spillcache
import spillcache.budget
import spillcache.cli
import spillcache.demo
import spillcache.errors
from packed import replace_record
from spillcache import (
    CachedDataset,
    DataCache,
    FingerprintMismatch,
    SpillCache,
    SpillCacheWarning,
    StoreError,
    clear_cache,
    copy_cache,
)
from spillcache.cli import _parser
from spillcache.codec import FORMAT_VERSION, decode, digest, encode
from spillcache.errors import CodecError
from spillcache.probes import probe_digest


class Source(torch.utils.data.Dataset[Any]):
    """Deterministic samples; ``bad`` maps indices to what they return instead."""

    def __init__(self, n: int = 8, bad: dict[int, Any] | None = None) -> None:
        self.n = n
        self.bad = bad or {}
        self.down = False

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Any:
        if self.down:
            raise OSError("nfs down")
        if i in self.bad:
            return self.bad[i]
        return {"x": torch.full((4,), float(i)), "id": f"obj-{i}"}


class Provider:
    def __len__(self) -> int:
        return 8

    def resolve_data(self, idx: int) -> dict[str, int]:
        return {"x": idx}


def _line_of(marker: str) -> int:
    """The line of this file holding ``marker`` (a comment at the end of the call)."""
    for number, line in enumerate(Path(__file__).read_text().splitlines(), 1):
        if line.rstrip().endswith(marker) and "_line_of" not in line:
            return number
    raise AssertionError(marker)


def _cli(*args: str, env_home: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    if env_home is not None:
        env["HOME"] = str(env_home)
    return subprocess.run(
        [sys.executable, "-m", "spillcache", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


# -- 1. errors name the sample -------------------------------------------------------------------


def test_an_unsupported_value_names_the_data_set_index(tmp_path: Path) -> None:
    ds = CachedDataset(Source(bad={5: {"meta": np.longdouble(1)}}), tmp_path / "s", probes=0)
    with ds, pytest.raises(TypeError) as caught:
        next(iter(DataLoader(torch.utils.data.Subset(ds, [5]), batch_size=1)))
    assert str(caught.value).startswith("cannot encode dataset[5]['meta']: ")


def test_a_source_returning_none_names_the_index(tmp_path: Path) -> None:
    with CachedDataset(Source(bad={3: None}), tmp_path / "s", probes=0) as ds:
        with pytest.raises(TypeError, match=r"the data set returned None for index 3 "):
            ds[3]
        assert 3 not in ds.cache


def test_a_put_of_none_names_the_key(tmp_path: Path) -> None:
    with SpillCache(tmp_path / "s") as cache, pytest.raises(TypeError, match="under key 7"):
        cache.put(7, None)


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (np.longdouble(1.5), "long double"),
        (np.clongdouble(1), "long double"),
        (np.zeros(2, dtype=np.longdouble), "long double"),
        (torch.nn.Parameter(torch.ones(2)), "a subclass of torch.Tensor"),
        (np.ma.masked_array([1, 2]), "a subclass of numpy.ndarray"),
        (collections.OrderedDict(a=1), "a subclass of dict"),
        (np.void(b"ab"), "numpy scalar type numpy.void"),
        (np.zeros(2, dtype=object), "object arrays"),
    ],
    ids=lambda v: type(v).__name__,
)
def test_the_supported_list_never_contradicts_the_refused_type(value: object, says: str) -> None:
    with pytest.raises(TypeError) as caught:
        encode({"v": value})
    message = str(caught.value)
    assert says in message
    # Before #14: "(supported: ..., torch.Tensor, numpy.ndarray, numpy scalars, ...)" for all.
    assert "numpy scalars, int" not in message


def test_a_probe_mismatch_reads_as_one_sentence(tmp_path: Path) -> None:
    path = tmp_path / "s"
    CachedDataset(Source(), path).close()
    changed = Source(bad={7: {"x": torch.zeros(4), "id": "new"}})
    with pytest.raises(FingerprintMismatch) as caught:
        CachedDataset(changed, path, on_mismatch="error")
    assert str(caught.value) == (
        f"the store at {str(path)!r} was filled with other data: sample 7 of Source differs from "
        "what this store was filled with (the data changed); open it with "
        "on_mismatch='rebuild' to empty and refill it, or clear it with "
        f"`spillcache clear {path}`"
    )


# -- 2. warnings point at the user's line --------------------------------------------------------


def test_warnings_raised_in_the_callers_thread_point_at_its_line(tmp_path: Path) -> None:
    path = tmp_path / "s"
    CachedDataset(Source(), path, fingerprint="a").close()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = CachedDataset(Source(), path, fingerprint="b")  # rebuild warning here
    ds.close()
    (rebuilt,) = [w for w in caught if issubclass(w.category, SpillCacheWarning)]
    assert (rebuilt.filename, rebuilt.lineno) == (__file__, _line_of("# rebuild warning here"))


def test_a_warning_inside_a_dataloader_points_at_the_training_loop(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with CachedDataset(Source(), path, probes=0) as ds:
        ds[2]
    replace_record(path, 2, lambda record: record[:-1] + bytes([record[-1] ^ 0x10]))
    with CachedDataset(Source(), path, probes=0) as ds:
        loader = DataLoader(torch.utils.data.Subset(ds, [2]), batch_size=1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            batches = list(loader)  # corrupt entry warning here
    assert len(batches) == 1
    (corrupt,) = [w for w in caught if issubclass(w.category, SpillCacheWarning)]
    assert "corrupt entry (key 2)" in str(corrupt.message)
    assert (corrupt.filename, corrupt.lineno) == (
        __file__,
        _line_of("# corrupt entry warning here"),
    )


def test_preload_warnings_from_its_threads_name_the_store(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = Source(bad={4: {"bad": object()}})
    with (
        caplog.at_level(logging.WARNING, logger="spillcache"),
        CachedDataset(source, tmp_path / "s", probes=0) as ds,
    ):
        ds.start_preload()
        assert ds.wait_preload(timeout=60)
    (failed,) = [r for r in caplog.records if "preloading index" in r.getMessage()]
    assert "index 4 failed with TypeError" in failed.getMessage()
    assert f"not cached in the store at {tmp_path / 's'}, " in failed.getMessage()


# -- 3. a probe that cannot load -----------------------------------------------------------------


def test_a_probe_that_cannot_load_serves_the_store_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with CachedDataset(Source(), path) as ds:
        expected = [ds[i] for i in range(len(ds))]
    source = Source()
    source.down = True
    with pytest.warns(SpillCacheWarning, match="could not be checked") as caught:
        ds = CachedDataset(source, path)
    with ds:
        message = str(caught[0].message)
        assert "Source[0] raised OSError: nfs down" in message and "probes=0" in message
        assert [ds[i]["id"] for i in range(len(ds))] == [e["id"] for e in expected]
        assert ds.stats().probe_errors == 1 and ds.stats().misses == 0


def test_a_probe_that_cannot_load_with_on_mismatch_error_names_the_ways_out(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s"
    CachedDataset(Source(), path).close()
    source = Source()
    source.down = True
    with pytest.raises(FingerprintMismatch) as caught:
        CachedDataset(source, path, on_mismatch="error")
    message = str(caught.value)
    assert "loading probe sample Source[0] raised OSError: nfs down" in message
    assert "fingerprint=" in message and "probes=0" in message
    assert isinstance(caught.value.__cause__, OSError)


def test_a_fresh_store_with_the_source_down_still_raises_the_source_error(
    tmp_path: Path,
) -> None:
    source = Source()
    source.down = True
    with pytest.raises(OSError, match="nfs down"):
        CachedDataset(source, tmp_path / "s")


# -- 4. one rule for bad values ------------------------------------------------------------------

ONE_RULE: list[tuple[str, dict[str, object], type[Exception]]] = [
    ("copy", {"copy": "no"}, TypeError),
    ("readahead", {"readahead": 1}, TypeError),
    ("on_mismatch", {"on_mismatch": 1}, TypeError),
    ("on_mismatch", {"on_mismatch": "ignore"}, ValueError),
    ("ram_budget", {"ram_budget": "-5MiB"}, ValueError),
    ("ram_budget", {"ram_budget": 2.5}, TypeError),
    ("disk_budget", {"disk_budget": "-1"}, ValueError),
    ("probes", {"probes": "2"}, TypeError),
    ("probes", {"probes": -1}, ValueError),
    ("progress", {"progress": "yes"}, TypeError),
    ("preload", {"preload": "yes"}, TypeError),
    ("preload_threads", {"preload_threads": 2.5}, TypeError),
    ("preload_threads", {"preload_threads": 0}, ValueError),
    ("preload_threads", {"preload_threads": "fast"}, ValueError),
    ("log_every", {"log_every": 0}, ValueError),
    ("log_every", {"log_every": 1.5}, TypeError),
]


@pytest.mark.parametrize(("name", "kwargs", "error"), ONE_RULE, ids=repr)
def test_wrong_types_raise_type_error_and_wrong_values_value_error(
    tmp_path: Path, name: str, kwargs: dict[str, object], error: type[Exception]
) -> None:
    with pytest.raises(error, match=name) as caught:
        CachedDataset(Source(), tmp_path / "s", **kwargs)  # type: ignore[arg-type]
    assert type(caught.value) is error
    assert list(tmp_path.iterdir()) == []


def test_a_ram_budget_above_the_memory_limit_warns_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spillcache.budget, "_warned_ram_budget", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        SpillCache(tmp_path / "a", ram_budget=10**30).close()  # too big a budget here
        SpillCache(tmp_path / "b", ram_budget=10**30).close()
        SpillCache(tmp_path / "c", ram_budget="1MiB").close()
    (warned,) = [w for w in caught if "ram_budget=" in str(w.message)]
    assert "more than the" in str(warned.message)
    assert (warned.filename, warned.lineno) == (__file__, _line_of("# too big a budget here"))


# -- 5. indices ----------------------------------------------------------------------------------

NOT_INDICES = [True, False, np.True_, torch.tensor([4]), torch.tensor(True), torch.tensor(1.0), 1.0]
INDICES = [2, np.int64(2), np.uint8(2), torch.tensor(2), torch.tensor(2, dtype=torch.int8)]


@pytest.mark.parametrize("index", NOT_INDICES, ids=repr)
def test_non_integer_indices_raise_type_error_everywhere(tmp_path: Path, index: object) -> None:
    with CachedDataset(Source(), tmp_path / "ds") as ds, pytest.raises(TypeError, match="ind"):
        ds[index]  # type: ignore[index]
    with SpillCache(tmp_path / "sc") as cache, pytest.raises(TypeError, match="key"):
        cache.get(index)
    hyrax = DataCache({"data_set": {"cache_dir": str(tmp_path / "h")}}, Provider())
    with hyrax:
        for call in (hyrax.try_fetch, lambda i: hyrax.insert_into_cache(i, {"x": 1})):
            with pytest.raises(TypeError, match="DataCache indices") as caught:
                call(index)
            assert isinstance(caught.value, RuntimeError)  # what Hyrax's DataCache raised


@pytest.mark.parametrize("index", INDICES, ids=repr)
def test_integer_indices_are_accepted_everywhere(tmp_path: Path, index: object) -> None:
    with CachedDataset(Source(), tmp_path / "ds") as ds:
        assert ds[index]["id"] == "obj-2"  # type: ignore[index]
    hyrax = DataCache({"data_set": {"cache_dir": str(tmp_path / "h")}}, Provider())
    with hyrax:
        hyrax.insert_into_cache(index, {"x": 2})  # type: ignore[arg-type]
        assert hyrax.try_fetch(index) == {"x": 2}  # type: ignore[arg-type]


def test_the_preload_counts_non_integer_indices_as_errors(tmp_path: Path) -> None:
    with CachedDataset(Source(), tmp_path / "s", probes=0) as ds:
        ds.start_preload([True, torch.tensor([3]), 1, torch.tensor(2)])
        assert ds.wait_preload(timeout=60)
        stats = ds.stats()
        assert (stats.preload_errors, stats.preload_loads) == (2, 2)
        assert sorted(i for i in range(8) if i in ds.cache) == [1, 2]


# -- 6. ~ in paths -------------------------------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    return home


def test_tilde_is_expanded_in_every_path(home: Path) -> None:
    with CachedDataset(Source(), "~/cache/x") as ds:
        assert ds.cache.path == home / "cache" / "x"
        ds[1]
    hyrax = DataCache({"data_set": {"cache_dir": "~/hyrax"}}, Provider())
    with hyrax:
        hyrax.insert_into_cache(1, {"x": 1})
        assert hyrax.cache is not None and hyrax.cache.path.parent == home / "hyrax"
    assert [p.name for p in copy_cache("~/cache/x", "~/copy")] == ["copy"]
    assert (home / "copy" / "data.mdb").is_file()
    assert [p.name for p in clear_cache("~/copy")] == ["copy"]
    assert not (home.parent / "~").exists()
    result = _cli("info", "~/cache/x", env_home=home)
    assert result.returncode == 0 and str(home / "cache" / "x") in result.stdout


# -- 7. IterableDataset --------------------------------------------------------------------------


class Stream(torch.utils.data.IterableDataset[int]):
    def __iter__(self) -> Any:
        return iter(range(3))


class SizedStream(Stream):
    def __len__(self) -> int:
        return 3


@pytest.mark.parametrize("stream", [Stream, SizedStream])
def test_an_iterable_dataset_is_refused_with_the_reason(tmp_path: Path, stream: type) -> None:
    with pytest.raises(TypeError, match="IterableDataset: CachedDataset supports only map-style"):
        CachedDataset(stream(), tmp_path / "s")
    assert list(tmp_path.iterdir()) == []


# -- 8. round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("copy", [True, False])
@pytest.mark.parametrize("ram_budget", ["64MiB", 0])
def test_requires_grad_survives_the_cache(tmp_path: Path, copy: bool, ram_budget: object) -> None:
    weights = torch.randn(3, requires_grad=True)
    big = torch.randn(70_000, requires_grad=True)  # copied through numpy, not clone()
    with SpillCache(tmp_path / "s", ram_budget=ram_budget, copy=copy) as cache:  # type: ignore[arg-type]
        cache.put(1, {"w": weights, "big": big, "i": torch.arange(2)})
        cache.flush()
        for _ in range(2):  # from disk (or RAM), then from RAM where it was admitted
            got = cache.get(1)
            assert got["w"].requires_grad and got["big"].requires_grad
            assert got["w"].is_leaf and got["big"].is_leaf
            assert not got["i"].requires_grad
            assert torch.equal(got["w"].detach(), weights.detach())


# Made by encode() at b032dad, before the "r" tag: a float tensor with requires_grad=True (its
# flag was dropped then), int16, bfloat16, a big-endian float64 array, a str and an int.
OLD_VALUE = bytes.fromhex(
    "53504c43010000005100000044060000007301000000777407666c6f61743332017301000000697405696e74"
    "31360173020000006266740862666c6f61743136017302000000626561033c66380273020000006964737301"
    "0000006e69020000000000000003000000000000000200000000000000010000000000000002000000000000"
    "0005000000000000000300000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000000c03f000000c00000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000010002000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000803f004000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000f03f00000000"
    "000000406f626a2d37f58396ea19fec67f"
)


def test_values_written_before_the_requires_grad_tag_decode_as_they_did() -> None:
    for _ in range(3):  # interpreted, then by the generated decoder
        old = decode(OLD_VALUE)
        assert isinstance(old, dict) and list(old) == ["w", "i", "bf", "be", "id", "n"]
        assert torch.equal(old["w"], torch.tensor([1.5, -2.0])) and not old["w"].requires_grad
        assert torch.equal(old["i"], torch.arange(3, dtype=torch.int16))
        assert torch.equal(old["bf"], torch.tensor([1.0, 2.0], dtype=torch.bfloat16))
        assert old["be"].dtype == np.dtype("<f8") and old["be"].tolist() == [[1.0, 2.0]]
        assert (old["id"], old["n"]) == ("obj-7", 3)
    # And a sample without a tensor that requires grad still encodes to the same bytes.
    sample = dict(decode(OLD_VALUE))  # type: ignore[call-overload]
    sample["be"] = sample["be"].astype(">f8")
    assert encode(sample) == OLD_VALUE


def test_probe_digests_match_stores_written_before_the_tag() -> None:
    # A store filled at b032dad recorded digests of values like OLD_VALUE, whose "w" tensor
    # required grad: reopening it must not take the new "r" tag for changed data.
    sample = {
        "w": torch.tensor([1.5, -2.0], requires_grad=True),
        "i": torch.arange(3, dtype=torch.int16),
        "bf": torch.tensor([1.0, 2.0], dtype=torch.bfloat16),
        "be": np.array([[1.0, 2.0]], dtype=">f8"),
        "id": "obj-7",
        "n": 3,
    }
    assert probe_digest(sample) == digest(OLD_VALUE)
    assert sample["w"].requires_grad  # the sample itself is left alone


def test_a_value_claiming_an_integer_tensor_requires_grad_is_invalid() -> None:
    value = bytearray(encode(torch.arange(3, dtype=torch.int32)))
    at = value.index(b"t\x05int32")
    value[at : at + 1] = b"r"
    value[-8:] = xxhash.xxh3_64_intdigest(bytes(value[:-8])).to_bytes(8, "little")
    with pytest.raises(CodecError, match="cannot require grad"):
        decode(bytes(value))


@pytest.mark.parametrize("ram_budget", ["64MiB", 0])
def test_big_endian_arrays_come_back_native_endian(tmp_path: Path, ram_budget: object) -> None:
    # FITS data are big-endian; torch cannot use non-native byte order.
    image = np.arange(12, dtype=">f4").reshape(3, 4)
    with SpillCache(tmp_path / "s", ram_budget=ram_budget) as cache:  # type: ignore[arg-type]
        cache.put(0, {"image": image})
        cache.flush()
        for _ in range(2):
            got = cache.get(0)["image"]
            assert got.dtype == np.dtype("=f4") and got.dtype.isnative
            assert np.array_equal(got, image)
            assert torch.from_numpy(got).sum().item() == 66.0


# -- 9. logging ----------------------------------------------------------------------------------


def test_store_events_are_logged_once_each(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "s"
    with caplog.at_level(logging.DEBUG, logger="spillcache"):
        with CachedDataset(Source(), path, fingerprint="a") as ds:
            for _ in range(3):
                for i in range(len(ds)):
                    ds[i]
        CachedDataset(Source(), path, fingerprint="a").close()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            CachedDataset(Source(), path, fingerprint="b").close()
        copy_cache(path, tmp_path / "copy")
        clear_cache(tmp_path / "copy")
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert info == [
        f"created the store at {path} (entries: 0)",
        f"opened the store at {path} (entries: 8)",
        f"emptying the store at {str(path)!r}: it holds format {FORMAT_VERSION}, fingerprint "
        f"'a', expected format {FORMAT_VERSION}, fingerprint 'b'",
        f"opened the store at {path} (entries: 0)",
        f"copied the store at {path} to {tmp_path / 'copy'}",
        f"deleted the store at {tmp_path / 'copy'}",
    ]
    # Nothing per sample: 24 requests and 8 puts added no record.
    assert len(caplog.records) < 12


def test_a_budget_refusal_is_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="spillcache"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with SpillCache(tmp_path / "s", disk_budget=1) as cache:
            for i in range(50):
                cache.put(i, {"x": torch.zeros(1000)})
                cache.flush()
            assert cache.stats().rejected > 0
    refusals = [r for r in caplog.records if "refuses new entries" in r.getMessage()]
    assert len(refusals) == 1 and "disk_budget of 1 byte;" in refusals[0].getMessage()


# -- 10. the command line ------------------------------------------------------------------------


def test_cli_version() -> None:
    result = _cli("--version")
    assert (result.returncode, result.stdout) == (0, f"spillcache {spillcache.__version__}\n")


def test_cli_every_argument_has_help() -> None:
    parser = _parser()
    (commands,) = [a for a in parser._actions if a.dest == "command"]
    parsers = [parser, *commands.choices.values()]  # type: ignore[union-attr]
    assert len(parsers) == 6
    for each in parsers:
        for action in each._actions:
            assert action.help, f"{each.prog} {action.dest}"


@pytest.mark.parametrize(
    "args",
    [
        ["demo", "--samples", "0"],
        ["demo", "--samples", "many"],
        ["demo", "--epochs", "-1"],
        ["demo", "--latency-ms", "nan"],
        ["info"],
        ["frobnicate"],
        [],
    ],
    ids=" ".join,
)
def test_cli_bad_arguments_are_one_line_and_exit_2(args: list[str]) -> None:
    result = _cli(*args)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and "error: " in result.stderr
    assert "Traceback" not in result.stderr and "usage:" not in result.stderr


def test_cli_a_missing_path_does_not_exist(tmp_path: Path) -> None:
    for command in ("info", "verify", "clear"):
        result = (
            _cli(command, "--yes", str(tmp_path / "nope"))
            if command == "clear"
            else (_cli(command, str(tmp_path / "nope")))
        )
        assert result.returncode == 2, command
        assert result.stderr == f"spillcache: error: {str(tmp_path / 'nope')!r} does not exist\n"


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda p: p.write_text("x"), "is a file, not a spillcache store"),
        (lambda p: (p.mkdir(), (p / "model.pt").write_text("w")), "it holds 'model.pt'"),
        (lambda p: p.mkdir(), "it is empty"),
    ],
    ids=["file", "other-files", "empty"],
)
def test_cli_a_non_store_says_why(tmp_path: Path, make: Any, why: str) -> None:
    target = tmp_path / "t"
    make(target)
    result = _cli("info", str(target))
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert "not a spillcache store" in result.stderr and why in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("raised", "status", "says"),
    [
        ("ZeroDivisionError('division by zero')", 1, "error: ZeroDivisionError: division by zero"),
        ("KeyboardInterrupt()", 130, "interrupted"),
        ("PermissionError(13, 'Permission denied')", 2, "error: [Errno 13] Permission denied"),
    ],
    ids=["bug", "ctrl-c", "os-error"],
)
def test_cli_any_other_failure_is_one_line_without_a_traceback(
    tmp_path: Path, raised: str, status: int, says: str
) -> None:
    with SpillCache(tmp_path / "s") as cache:
        cache.put(0, {"x": 1})
    code = (
        "import sys, spillcache.cli as cli\n"
        "def fail(path):\n"
        f"    raise {raised}\n"
        "cli.cache_info = fail\n"
        "sys.exit(cli.main(sys.argv[1:]))\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    result = subprocess.run(
        [sys.executable, "-c", code, "info", str(tmp_path / "s")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert result.returncode == status
    assert result.stderr.splitlines() == [f"spillcache: {says}"]


# -- 11. the demo --------------------------------------------------------------------------------


def test_the_demo_shows_warm_epochs_preload_and_a_second_run(tmp_path: Path) -> None:
    lines: list[str] = []
    reports = spillcache.demo.run_demo(
        samples=40, sample_kib=4, latency=0.002, epochs=2, path=tmp_path / "s", echo=lines.append
    )
    assert [(r.run, r.epoch) for r in reports] == [(1, 1), (1, 2), (2, 1), (3, 1)]
    cold, warm, reused, preloaded = reports
    assert cold.miss_rate > 0.9 and warm.miss_rate == 0 and reused.miss_rate == 0
    assert reused.disk_hit_rate == 1.0  # the second run starts from the store on disk
    assert preloaded.what == "fresh store + preload"
    assert (tmp_path / "s" / "data.mdb").is_file()  # --path keeps the store
    again = spillcache.demo.run_demo(
        samples=40, sample_kib=4, latency=0.002, epochs=1, path=tmp_path / "s", echo=lines.append
    )
    assert again[0].what == "warm: a past run's store" and again[0].miss_rate == 0


# -- 12. one module of errors (#16) --------------------------------------------------------------


def test_every_exception_and_warning_is_defined_in_errors() -> None:
    for name in spillcache.errors.__all__:
        cls = getattr(spillcache.errors, name)
        assert cls.__module__ == "spillcache.errors", name
        if name in spillcache.__all__:
            assert getattr(spillcache, name) is cls, name
    assert spillcache.errors.__all__ == sorted(spillcache.errors.__all__)


def test_a_fingerprint_mismatch_is_a_store_error(tmp_path: Path) -> None:
    SpillCache(tmp_path / "s", fingerprint="a").close()
    try:
        SpillCache(tmp_path / "s", fingerprint="b", on_mismatch="error")
    except StoreError as exc:  # since #16: the store cannot be used as asked
        caught: StoreError = exc
    assert type(caught) is FingerprintMismatch
    assert "on_mismatch='rebuild'" in str(caught)
    CachedDataset(Source(), tmp_path / "d").close()
    with pytest.raises(StoreError) as probed:  # a probe's mismatch too
        CachedDataset(Source(bad={7: {"x": 0}}), tmp_path / "d", on_mismatch="error")
    assert type(probed.value) is FingerprintMismatch


def test_cli_a_fingerprint_mismatch_is_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # `main` catches StoreError (which a mismatch is since #16) where it caught both.
    mismatch = FingerprintMismatch(str(tmp_path / "s"), "fingerprint 'a'", "fingerprint 'b'")

    def fail(path: object) -> None:
        raise mismatch

    SpillCache(tmp_path / "s").close()
    monkeypatch.setattr(spillcache.cli, "cache_info", fail)
    assert spillcache.cli.main(["info", str(tmp_path / "s")]) == 2
    assert capsys.readouterr().err == f"spillcache: error: {mismatch}\n"
