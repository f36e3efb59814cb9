"""Markdown tables and PNG plots of a suite run (see :mod:`benchmarks.run`).

``python -m benchmarks.report DIR`` renders ``DIR/README.md`` and the plots again from
``DIR/results.json`` (after a change to this module, without measuring again).
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

MIB = 2**20


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _verdict(ok: bool | None) -> str:
    return {True: "met", False: "**missed**", None: "-"}[ok]


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def targets_table(rows: list[dict[str, Any]]) -> str:
    return _table(
        ["target", "measured", "verdict", "note"],
        [[r["target"], _fmt(r["measured"], 3), _verdict(r["ok"]), r.get("note", "")] for r in rows],
    )


def _warm_section(name: str, data: dict[str, Any]) -> str:
    payload = data["payload_bytes"]
    rows = []
    for m in data["measured"]:
        rate = statistics.median(m["rates"])
        disk = m["disk_bytes"]
        fill_rate = data["n"] / m["fill_seconds"] if m["fill_seconds"] > 0 else None
        rows.append(
            [
                m["name"],
                m["kind"],
                _fmt(rate, 0),
                _fmt(rate * payload / 1e9),
                _fmt(m["p50_us"], 1),
                _fmt(m["p99_us"], 1),
                _fmt(fill_rate, 0) if disk is not None else "-",
                _fmt(disk / (data["n"] * payload)) if disk is not None else "-",
                str(m["epoch_samples"]),
            ]
        )
    text = [
        f"### Warm epochs: {data['label']} ({data['n']} samples, "
        f"{payload / 1024:.0f} KiB of tensors each)",
        "",
        _table(
            [
                "contender",
                "kind",
                "samples/s",
                "GB/s",
                "p50 µs",
                "p99 µs",
                "put samples/s",
                "disk / tensor bytes",
                "samples per timed epoch",
            ],
            rows,
        ),
    ]
    text += [f"\n- skipped: {line}" for line in data["skipped"]]
    return "\n".join(text)


def _memory_section(data: dict[str, Any]) -> str:
    rows = []
    for r in data["results"]:
        live = r.get("live_growth")
        rows.append(
            [
                r["contender"],
                _fmt(r["peak_growth"] / MIB, 0),
                _fmt(r["end_growth"] / MIB, 0),
                "n/a" if live is None else _fmt(live / MIB, 0),
                _fmt(r["accounted"] / MIB, 0) if "accounted" in r else "-",
                _fmt(r["peak_growth"] / r["budget"]),
            ]
        )
    budget = data["budget"] / MIB
    text = [
        f"### Anonymous memory, {data['label']}: budget {budget:.0f} MiB, data 3x the budget",
        "",
        _table(
            [
                "contender",
                "peak growth MiB",
                "end growth MiB",
                "live end growth MiB",
                "accounted MiB",
                "peak / budget",
            ],
            rows,
        ),
    ]
    text += [f"\n- skipped: {line}" for line in data["skipped"]]
    return "\n".join(text)


def markdown(results: dict[str, Any], images: list[str]) -> str:
    meta = results["meta"]
    m = meta["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    load = "/".join(f"{x:.1f}" for x in meta["load_start"])
    load_end = "/".join(f"{x:.1f}" for x in meta["load_end"])
    parts = [
        "# spillcache benchmarks",
        "",
        f"Measured {meta['date']} with `{meta['command'].strip()}` "
        f"({meta['seconds'] / 60:.1f} min) on {m['cpu']}, {m['cores']} cores, "
        f"{m['ram_gib']} GiB RAM, {m['system']}; {versions}. Load average (1/5/15 min) "
        f"{load} at the start, {load_end} at the end: other jobs shared the cores.",
        "",
        "Ratios are medians over interleaved rounds (each round times every contender once, "
        "in rotated order); rates are medians over the rounds. Per-hit latencies come from one "
        "extra epoch. See `benchmarks/` for the exact workloads.",
        "",
        "## Targets (issue 5)",
        "",
        targets_table(results["targets"]),
        "",
        "## Warm epochs",
        "",
        "Kinds: *floor* = the least work that returns the same sample (no cache can do less), "
        "*spillcache*, *peer* = what users would use instead, *baseline* = no cache / Hyrax's "
        "current dict. The disk tier is timed with `ram_budget=0`, the RAM tier with a budget "
        "holding everything. MONAI `CacheDataset` returns its cached objects themselves unless "
        "a random transform follows the cache, in which case it deep-copies them.",
        "",
    ]
    parts += [_warm_section(name, data) + "\n" for name, data in results["warm"].items()]
    parts += ["## Warm epochs vs RAM budget", ""]
    for name, points in results["sweep"].items():
        label = results["warm"][name]["label"]
        parts += [
            f"### {label}: shuffled warm epochs, samples/s",
            "",
            _table(
                ["RAM budget / data", "spillcache", "RAM hit rate", "MONAI CacheDataset"],
                [
                    [
                        f"{p['fraction']:.0%}",
                        _fmt(p["spillcache"], 0),
                        f"{p['ram_hit_rate']:.0%}",
                        _fmt(p["monai"], 0),
                    ]
                    for p in points
                ],
            ),
            "",
            "MONAI's `CacheDataset(cache_rate=...)` has no disk tier: what it did not cache is "
            "regenerated by the transform (here, the synthetic source).",
            "",
        ]
    parts += ["## Memory", ""]
    parts += [_memory_section(data) + "\n" for data in results["memory"].values()]
    parts += [
        "One process per contender; growth of `RssAnon` over a baseline taken after imports. "
        "*Live* growth is measured after `malloc_trim(0)`: glibc keeps memory that was freed "
        "(e.g. encoded values that waited in the write queue) for reuse, and counts it as "
        "resident until then.",
        "",
    ]
    sk = results["skew"]
    parts += [
        "## RAM hit rates, data 3x the budget",
        "",
        _table(
            ["access", "RAM hit rate / (budget/data), per warm epoch"],
            [
                [
                    "skewed (20 % of indices carry 80 % of the weight)",
                    ", ".join(f"{x:.2f}" for x in sk["skewed"]),
                ],
                ["skewed, admit until full (a bounded dict)", f"{sk['admit_until_full']:.2f}"],
                ["shuffled", ", ".join(f"{x:.2f}" for x in sk["shuffled"])],
                ["sequential", ", ".join(f"{x:.2f}" for x in sk["sequential"])],
            ],
        ),
        "",
    ]
    put = results["put_path"]
    first = results["first_epoch"]
    parts += [
        "## First epoch",
        "",
        f"Source: 2 ms per 1 MiB sample; {put['n']} samples, RAM budget a third of the data. "
        "What filling the cache adds to the epoch (medians of "
        f"{len(put['ratios']['dataset'])} interleaved rounds; the epoch ends with its last "
        "sample, while the writer may still be committing: the final flush is not counted). "
        "The floor is the least a two-tier cache does with that budget: one copy of each "
        "sample while the copies fit it, and a thread appending every sample's tensor bytes "
        "to a fresh file (no encoding, no index). The snapshot floor also copies every other "
        "sample into a recycled buffer before handing it over, as a `put` after which the "
        "caller may change the sample must (`copy=True`).",
        "",
        _table(
            ["first epoch through", "added time"],
            [[label, f"{put['overheads'][run]:+.1%}"] for run, label in put["labels"].items()],
        ),
        "",
        _table(
            ["contender", f"first epoch of {first['n']} samples, s"],
            [[name, f"{s:.2f}"] for name, s in first["seconds"].items()],
        ),
    ]
    parts += [f"\n- skipped: {line}" for line in first["skipped"]]
    pre = results["preload"]
    parts += ["", "## Preload: first epoch vs threads", ""]
    if "skipped" in pre:
        parts.append(f"- skipped: {pre['skipped']}")
    else:
        threads = list(next(iter(pre["seconds"].values())))
        parts += [
            f"Shuffled first epoch of {pre['n']} samples, seconds; `none` = no preload.",
            "",
            _table(
                ["source", *threads],
                [
                    [name, *(f"{row[t]:.2f}" for t in threads)]
                    for name, row in pre["seconds"].items()
                ],
            ),
        ]
    if images:
        parts += ["", "## Plots", ""] + [f"![{name}]({name})" for name in images]
    return "\n".join(parts) + "\n"


def plots(results: dict[str, Any], out: Path, log: Callable[[str], None]) -> list[str]:
    """Write the PNG plots into ``out``; return their file names (none without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        log(f"plots skipped: matplotlib is not installed ({exc}); pip install 'spillcache[bench]'")
        return []
    colors = {
        "floor": "0.6",
        "spillcache": "tab:blue",
        "peer": "tab:orange",
        "baseline": "tab:green",
    }
    written = []

    warm = results["warm"]
    fig, axes = plt.subplots(1, len(warm), figsize=(7 * len(warm), 6), squeeze=False)
    for ax, data in zip(axes[0], warm.values(), strict=True):
        measured = sorted(data["measured"], key=lambda m: statistics.median(m["rates"]))
        rates = [statistics.median(m["rates"]) for m in measured]
        ax.barh([m["name"] for m in measured], rates, color=[colors[m["kind"]] for m in measured])
        ax.set_xscale("log")
        ax.set_xlabel("warm samples/s (log scale)")
        ax.set_title(data["label"])
    fig.tight_layout()
    fig.savefig(out / "warm_epochs.png", dpi=90)
    written.append("warm_epochs.png")

    fig, axes = plt.subplots(1, len(warm), figsize=(7 * len(warm), 6), squeeze=False)
    for ax, data in zip(axes[0], warm.values(), strict=True):
        measured = sorted(data["measured"], key=lambda m: m["p50_us"])
        names = [m["name"] for m in measured]
        ax.barh(names, [m["p99_us"] for m in measured], color="0.8", label="p99")
        ax.barh(names, [m["p50_us"] for m in measured], color="tab:blue", label="p50")
        ax.set_xscale("log")
        ax.set_xlabel("µs per hit (log scale)")
        ax.set_title(data["label"])
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=90)
    written.append("latency.png")

    sweep = results["sweep"]
    fig, axes = plt.subplots(1, len(sweep), figsize=(6 * len(sweep), 4.5), squeeze=False)
    for ax, (name, points) in zip(axes[0], sweep.items(), strict=True):
        xs = [100 * p["fraction"] for p in points]
        ax.plot(xs, [p["spillcache"] for p in points], "o-", label="spillcache (RAM + disk)")
        if any(p["monai"] for p in points):
            ax.plot(xs, [p["monai"] for p in points], "s-", label="MONAI CacheDataset")
        by = {m["name"]: statistics.median(m["rates"]) for m in warm[name]["measured"]}
        for peer in ("MONAI LMDBDataset", "MONAI PersistentDataset", "diskcache"):
            if peer in by:
                ax.axhline(by[peer], linestyle="--", linewidth=1, color="0.5")
                ax.annotate(peer, (xs[0], by[peer]), fontsize=7, va="bottom")
        ax.set_yscale("log")
        ax.set_xlabel("RAM budget, % of the data")
        ax.set_ylabel("warm samples/s (log scale)")
        ax.set_title(warm[name]["label"])
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "ram_budget.png", dpi=90)
    written.append("ram_budget.png")

    mem = results["memory"]
    fig, axes = plt.subplots(1, len(mem), figsize=(6 * len(mem), 4.5), squeeze=False)
    for ax, data in zip(axes[0], mem.values(), strict=True):
        names = [r["contender"] for r in data["results"]]
        ax.bar(names, [r["peak_growth"] / MIB for r in data["results"]], color="tab:blue")
        budget = data["budget"] / MIB
        ax.axhline(budget, color="k", linewidth=1, label="budget")
        ax.axhline(1.25 * budget + 64, color="r", linestyle="--", label="1.25 x budget + 64 MiB")
        ax.set_ylabel("peak RssAnon growth, MiB")
        ax.set_title(f"{data['label']}, data = 3 x budget")
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "memory.png", dpi=90)
    written.append("memory.png")

    pre = results["preload"]
    if "seconds" in pre:
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for name, row in pre["seconds"].items():
            ax.plot(list(row), list(row.values()), "o-", label=name)
        ax.set_xlabel("preload threads ('none': no preload)")
        ax.set_ylabel(f"first epoch of {pre['n']} samples, s")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "preload.png", dpi=90)
        written.append("preload.png")
    plt.close("all")
    return written


def main(argv: list[str] | None = None) -> int:
    (directory,) = argv or sys.argv[1:]
    out = Path(directory)
    results = json.loads((out / "results.json").read_text())
    images = plots(results, out, print)
    (out / "README.md").write_text(markdown(results, images))
    return 0


if __name__ == "__main__":
    sys.exit(main())
