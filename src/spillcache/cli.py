"""The ``spillcache`` command: info, verify, clear, copy and demo."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .admin import cache_info, clear_cache, copy_cache, find_stores, verify
from .demo import run_demo
from .disk import store_files_size
from .errors import StoreError

__all__ = ["main"]


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _info(args: argparse.Namespace) -> int:
    infos = [cache_info(store) for store in find_stores(args.path)]
    if args.json:
        rows = [
            {
                "path": str(i.path),
                "items": i.items,
                "disk_bytes": i.disk_bytes,
                "fingerprint": i.fingerprint,
                "format_version": i.format_version,
                "created": i.created.isoformat() if i.created else None,
            }
            for i in infos
        ]
        print(json.dumps(rows, indent=2))
        return 0
    for i in infos:
        created = i.created.strftime("%Y-%m-%d %H:%M:%S UTC") if i.created else "unknown"
        print(f"{i.path}")
        print(f"  items        {i.items}")
        print(f"  disk         {_human(i.disk_bytes)}")
        print(f"  fingerprint  {i.fingerprint!r}")
        print(f"  format       {i.format_version}")
        print(f"  created      {created}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    faults = 0
    for store in find_stores(args.path):
        try:
            report = verify(store)
        except StoreError as exc:
            print(f"{store}: DAMAGED: {exc}")
            faults += 1
            continue
        status = "ok" if report.ok else f"{len(report.bad_keys)} BAD"
        print(f"{store}: {report.entries} entries, {status}")
        if report.bad_keys:
            shown = ", ".join(str(k) for k in report.bad_keys[:20])
            print(f"  bad keys: {shown}{' ...' if len(report.bad_keys) > 20 else ''}")
            faults += len(report.bad_keys)
    return 1 if faults else 0


def _clear(args: argparse.Namespace) -> int:
    stores = find_stores(args.path)
    size = sum(store_files_size(s) for s in stores)
    if not args.yes:
        if not sys.stdin.isatty():
            print("refusing to delete without confirmation: pass --yes", file=sys.stderr)
            return 2
        answer = input(f"delete {len(stores)} store(s), {_human(size)}, at {args.path}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing deleted")
            return 1
    removed = clear_cache(args.path, force=args.force)
    print(f"deleted {len(removed)} store(s), {_human(size)}")
    return 0


def _copy(args: argparse.Namespace) -> int:
    for target in copy_cache(args.src, args.dst):
        print(f"{target}: {_human(store_files_size(target))}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    run_demo(
        samples=args.samples,
        sample_kib=args.sample_kib,
        latency=args.latency_ms / 1e3,
        epochs=args.epochs,
        path=args.path,
    )
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spillcache",
        description="Inspect, verify, copy and clear spillcache stores, or run the demo.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="describe a store (or every store in a cache directory)")
    info.add_argument("path")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(run=_info)
    check = sub.add_parser("verify", help="decode every entry; exit 1 on any fault")
    check.add_argument("path")
    check.set_defaults(run=_verify)
    clear = sub.add_parser("clear", help="delete a store (or every store in a cache directory)")
    clear.add_argument("path")
    clear.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    clear.add_argument(
        "--force",
        action="store_true",
        help="clear stores that processes hold open too (they stop writing to them)",
    )
    clear.set_defaults(run=_clear)
    copy = sub.add_parser(
        "copy", help="write a compacted copy of a store (or cache directory); safe while in use"
    )
    copy.add_argument("src")
    copy.add_argument("dst", help="a new or empty directory")
    copy.set_defaults(run=_copy)
    demo = sub.add_parser("demo", help="three epochs over a slow data set 3x the RAM budget")
    demo.add_argument("--samples", type=int, default=1200, help="data set size (default 1200)")
    demo.add_argument(
        "--sample-kib", type=int, default=128, help="image KiB per sample (default 128)"
    )
    demo.add_argument(
        "--latency-ms", type=float, default=10.0, help="source cost per sample (default 10 ms)"
    )
    demo.add_argument("--epochs", type=int, default=3, help="epochs (default 3)")
    demo.add_argument("--path", default=None, help="store directory (default: temporary)")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = _parser().parse_args(argv)
    try:
        return int(args.run(args))
    except StoreError as exc:
        print(f"spillcache: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
