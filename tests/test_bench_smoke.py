"""The benchmark suite runs end to end in its tiny mode and writes its tables (no timing checks).

Optional contenders (MONAI, diskcache) are left out with ``--no-peers`` so that the test does
the same work whether or not they are installed, and checks that they are reported as skipped.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

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


def test_compare_runs_both_trees_and_reports_every_figure(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from benchmarks import compare

    src = str(REPO / "src")
    argv = ["compare", "--old", src, "--new", src, "--quick", "--rounds", "1"]
    monkeypatch.setattr(sys, "argv", argv)
    chosen = compare.FIGURES[::2]  # one of each kind: RAM hit, disk hit, fill
    monkeypatch.setattr(compare, "FIGURES", chosen)
    calls: list[str] = []
    measure = compare.measure

    def counted(tree: Path, figure: str, *args: int) -> float:
        calls.append(figure)
        return measure(tree, figure, *args)

    monkeypatch.setattr(compare, "measure", counted)
    compare.main()
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")][1:]
    assert [r.split("|")[1].strip() for r in rows] == [f for f, _, _ in chosen]
    assert len(calls) == 2 * len(rows)  # each figure once per tree in the one round
    for row in rows:
        old, new, ratio = (float(c.replace(",", "")) for c in row.split("|")[2:5])
        assert old > 0 and new > 0 and ratio == pytest.approx(new / old, rel=0.01, abs=0.001)
