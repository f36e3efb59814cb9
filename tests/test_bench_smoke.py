"""The benchmark suite runs end to end in its tiny mode and writes its tables (no timing checks).

Optional contenders (MONAI, diskcache) are left out with ``--no-peers`` so that the test does
the same work whether or not they are installed, and checks that they are reported as skipped.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import run  # noqa: E402

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/status").exists(), reason="the memory section reads /proc (Linux only)"
)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    assert run.main(["--quick", "--no-peers", "--no-plots", "--out", str(out)]) == 0
    return out


def test_quick_run_writes_every_section(quick_run: Path) -> None:
    text = (quick_run / "README.md").read_text()
    for heading in (
        "## Targets (issue 5)",
        "### Warm epochs: 1 MiB cut-outs",
        "### Warm epochs: 4 KiB samples",
        "## Warm epochs vs RAM budget",
        "### Anonymous memory, 1 MiB cut-outs",
        "## RAM hit rates, data 3x the budget",
        "## First epoch",
        "## Preload: first epoch vs threads",
    ):
        assert heading in text
    assert "| spillcache disk tier | spillcache |" in text
    assert "| raw LMDB, one copy per tensor | floor |" in text


def test_quick_run_reports_left_out_peers_as_skipped(quick_run: Path) -> None:
    results = json.loads((quick_run / "results.json").read_text())
    for workload in results["warm"].values():
        names = {m["name"] for m in workload["measured"]}
        assert not any(name.startswith("MONAI") or name == "diskcache" for name in names)
        assert (
            len(workload["skipped"]) == 5
        )  # two CacheDataset set-ups, Persistent, LMDB, diskcache
        assert all("left out (--no-peers)" in line for line in workload["skipped"])
    assert "- skipped: monai.data left out (--no-peers)" in (quick_run / "README.md").read_text()


def test_quick_run_results_are_complete_and_consistent(quick_run: Path) -> None:
    results = json.loads((quick_run / "results.json").read_text())
    for workload in results["warm"].values():
        for measured in workload["measured"]:
            assert len(measured["rates"]) == run.QUICK.rounds
            assert all(rate > 0 for rate in measured["rates"])
            assert 0 < measured["p50_us"] <= measured["p99_us"]
    for data in results["memory"].values():
        spill = next(r for r in data["results"] if r["contender"] == "spillcache")
        # The RAM tier never accounts for more than its budget.
        assert 0 < spill["accounted"] <= data["budget"]
    skew = results["skew"]
    assert len(skew["skewed"]) == run.QUICK.skew_epochs
    targets = {row["target"] for row in results["targets"]}
    assert "skewed access: RAM hit rate >= 1.5 x budget/data" in targets
    assert any(t.startswith("disk tier >= 0.5 x raw-LMDB") for t in targets)
    # Without MONAI the comparison with it is reported as not measured, not as passed.
    monai_rows = [r for r in results["targets"] if "MONAI" in r["target"]]
    assert monai_rows and all(r["measured"] is None and r["ok"] is None for r in monai_rows)


def test_batched_benchmark_runs_and_batches(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from benchmarks import batched

    monkeypatch.setattr(sys, "argv", ["batched", "--quick"])
    batched.main()
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    # set-up, source calls per item, batched, seconds per item, batched
    calls = {r.split("|")[1].strip(): r.split("|")[2:4] for r in rows[1:]}
    assert [int(c) for c in calls["0 workers"]] == [128, 4]
    assert [int(c) for c in calls["2 workers"]] == [128, 4]


def test_compare_runs_both_trees_in_turn_and_reports_the_figure(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from benchmarks import compare

    src = str(REPO / "src")
    rounds: list[dict[str, list[float]]] = []
    measure = compare.measure

    def counted(*args: Any) -> dict[str, list[float]]:
        rounds.append(measure(*args))
        return rounds[-1]

    monkeypatch.setattr(compare, "measure", counted)
    argv = ["--old", src, "--new", src, "--quick", "--rounds", "1", "--only", "RAM hit, 4 KiB"]
    compare.main([*argv, "--json", str(tmp_path / "run.json")])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")][1:]
    assert [r.split("|")[1].strip() for r in rows] == ["RAM hit, 4 KiB (µs)"]
    # Each round: one child per tree, each asked for the quick setting's 3 timed passes.
    assert [{k: len(v) for k, v in r.items()} for r in rounds] == [{"old": 3, "new": 3}]
    cells = rows[0].split("|")
    old, new, ratio = (float(c.replace(",", "")) for c in cells[2:5])
    assert old > 0 and new > 0
    paired = [
        statistics.median(n / o for n, o in zip(r["new"], r["old"], strict=True)) for r in rounds
    ]
    assert ratio == pytest.approx(statistics.median(paired), abs=0.001)
    low, high = (float(x) for x in cells[5].split("-"))
    assert low == pytest.approx(min(paired), abs=0.001)
    assert high == pytest.approx(max(paired), abs=0.001)
    # The kept passes tabulate again, here with the medians of each tree's passes.
    compare.main(["--replay", str(tmp_path / "run.json"), "--stat", "median"])
    (again,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| R")]
    medians = [statistics.median(rounds[0][t]) for t in ("new", "old")]
    assert float(again.split("|")[4]) == pytest.approx(medians[0] / medians[1], abs=0.001)


@pytest.mark.parametrize("kind", ["ram", "disk", "admit", "fill", "item", "batch", "epoch_copy"])
def test_every_compare_figure_measures_positive_passes(tmp_path: Path, kind: str) -> None:
    from benchmarks import compare, compare_child

    passes = compare_child.KINDS[kind](tmp_path, 64, 8)
    values = [next(passes) for _ in range(3)]
    passes.close()
    assert all(v > 0 for v in values)
    kinds = {f.kind for f in compare.FIGURES}
    assert kinds == set(compare_child.KINDS)


def test_space_reports_the_pages_of_each_layout(tmp_path: Path) -> None:
    from benchmarks import space

    rows = space.run([4096], quick=True)
    (row,) = [r for r in rows if not r.shuffled]
    assert row.n == space.entries(4096, quick=True)
    assert row.layouts["raw"].overflow == 2 * row.n  # 4 KiB + header: two overflow pages each
    # Format 2: the 64 samples (265 KB) in packs of 64 KiB or more, fitted to their last page.
    assert 1 < row.layouts["spillcache"].entries <= 265_000 // 65_536
    assert row.ratio("raw") > 2 > row.ratio("packed")
    text = space.report(rows)
    assert "| spillcache | key |" in text and "| 4 KiB | key |" in text


def test_scale_reports_every_entry_count(tmp_path: Path) -> None:
    from benchmarks import scale

    text = scale.main(["--quick", "--entries", "200", "400", "--dir", str(tmp_path)])
    rows = [line for line in text.splitlines() if line.startswith("| ")][1:]
    assert [r.split("|")[1].strip() for r in rows] == ["200", "400"]
    assert all(float(c.replace(",", "")) > 0 for r in rows for c in r.split("|")[5:19])


def test_preload_ramp_reports_auto_against_every_fixed_count(tmp_path: Path) -> None:
    from benchmarks import preload

    out = tmp_path / "preload.md"
    argv = ["--quick", "--seconds", "0.2", "--fixed", "1", "4", "--epoch-n", "20"]
    text = preload.main([*argv, "--out", str(out)])
    assert out.read_text() == text
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| storage |"))
    assert "| auto / best | auto / 1 | auto / 4 | auto peak threads | peak / best |" in header
    assert "| fewest within 5% | peak / fewest | auto final |" in header
    rows = [
        line.split("|")[1:-1] for line in lines if line.startswith("| ") and " s | new |" in line
    ]
    assert sorted(r[0].strip() for r in rows) == sorted(preload.STORAGE_KEYS.values())
    for row in rows:
        best = int(row[4].split()[0])
        assert best in (1, 4)
        ratios = [float(c.strip(" *")) for c in row[5:8]]
        assert all(r > 0 for r in ratios) and ratios[0] == ratios[1 + (best == 4)]
        assert 2 <= int(row[8]) <= 64  # auto's peak threads
        fewest = int(row[10])  # the fewest threads within 5 % of the best count's rate
        assert fewest in (1, 4) and fewest <= best
        assert float(row[11].strip(" *")) == pytest.approx(int(row[8]) / fewest, abs=0.01)
    (epoch,) = [line for line in lines if line.startswith("| new | ")]
    assert "4: " in epoch  # the fixed count the 20-sample epoch compares with
    assert "load average" in text


def test_compare_ratios_pair_passes_and_verdicts_follow_the_figures_direction() -> None:
    from benchmarks import compare

    time_figure = compare.FIGURES[0]
    rate_figure = next(f for f in compare.FIGURES if f.higher_is_better)
    got = {"new": [1.0, 5.0, 6.0], "old": [4.0, 2.0, 5.0]}
    assert compare.ratio(time_figure, got, "paired") == pytest.approx(1.2)  # of 0.25, 2.5, 1.2
    assert compare.ratio(time_figure, got, "median") == pytest.approx(5 / 4)
    assert compare.ratio(time_figure, got, "best") == pytest.approx(1 / 2)  # least times
    assert compare.ratio(rate_figure, got, "best") == pytest.approx(6 / 5)  # most puts/s
    assert compare.verdict(time_figure, 1.04, 0.03) == "**worse 4.0%**"
    assert compare.verdict(time_figure, 1.02, 0.03) == "ok"
    assert compare.verdict(rate_figure, 0.96, 0.03) == "**worse 4.2%**"
    assert compare.verdict(rate_figure, 1.10, 0.03) == "ok"


def test_ramhit_reports_both_sizes_against_the_hand_written_floor(tmp_path: Path) -> None:
    from benchmarks import ramhit

    settings = ramhit.measure(3, quick=True)
    assert [s.label for s in settings] == ["4 KiB", "1 MiB"]
    for s in settings:
        assert len(s.hit_us) == len(s.floor_us) == 3  # one pass of each per repetition
        assert all(t > 0 for t in s.hit_us + s.floor_us)
    # The floor returns what a hit returns: an equal sample in new containers, a fresh tensor.
    samples = {1: ramhit.sample(1, 8)}
    copy = ramhit.floor_copy(samples, 1)
    assert copy["meta"] == samples[1]["meta"] and copy["meta"] is not samples[1]["meta"]
    assert copy["image"].equal(samples[1]["image"])
    assert copy["image"].data_ptr() != samples[1]["image"].data_ptr()
    text = ramhit.main(["--quick", "--out", str(tmp_path / "ramhit.md")])
    rows = [line for line in text.splitlines() if line.startswith("| ")][1:]
    assert [r.split("|")[1].strip() for r in rows] == ["4 KiB", "1 MiB"]
    assert (tmp_path / "ramhit.md").read_text() == text + "\n"
