"""The ``spillcache`` command: info, verify, clear, copy and demo."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from . import __version__
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


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, naming the command and its ``--help``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _count(minimum: int) -> Callable[[str], int]:
    """An argparse type: an int of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is less than {minimum}")
        return value

    return parse


def _milliseconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a duration (0 or more)")
    return value


_STORE_PATH = "a store, or a directory whose entries are all stores (such as a Hyrax cache_dir)"


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="spillcache",
        description="Inspect, verify, copy and clear spillcache stores, or run the demo.",
    )
    parser.add_argument("--version", action="version", version=f"spillcache {__version__}")
    sub = parser.add_subparsers(
        dest="command",
        required=True,
        metavar="COMMAND",
        parser_class=_Parser,
        help="what to do (each has its own --help)",
    )
    info = sub.add_parser("info", help="describe a store (or every store in a cache directory)")
    info.add_argument("path", help=_STORE_PATH)
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(run=_info)
    check = sub.add_parser("verify", help="decode every entry; exit 1 on any fault")
    check.add_argument("path", help=_STORE_PATH)
    check.set_defaults(run=_verify)
    clear = sub.add_parser("clear", help="delete a store (or every store in a cache directory)")
    clear.add_argument("path", help=_STORE_PATH)
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
    copy.add_argument("src", help=_STORE_PATH)
    copy.add_argument("dst", help="a new or empty directory")
    copy.set_defaults(run=_copy)
    demo = sub.add_parser(
        "demo", help="warm epochs, a preload and a second run over a slow data set 3x the RAM"
    )
    demo.add_argument(
        "--samples", type=_count(1), default=1200, help="data set size (default 1200)"
    )
    demo.add_argument(
        "--sample-kib", type=_count(1), default=128, help="image KiB per sample (default 128)"
    )
    demo.add_argument(
        "--latency-ms",
        type=_milliseconds,
        default=10.0,
        help="source cost per sample (default 10 ms)",
    )
    demo.add_argument(
        "--epochs", type=_count(1), default=3, help="epochs of the first run (default 3)"
    )
    demo.add_argument("--path", default=None, help="store directory (default: temporary)")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status.

    Errors are one line on stderr, never a traceback: exit status 2 for bad arguments and for
    paths that are not stores (or cannot be written), 1 for any other failure, 130 on Ctrl-C.
    """
    args = _parser().parse_args(argv)
    try:
        return int(args.run(args))
    except (StoreError, OSError) as exc:  # FingerprintMismatch is a StoreError
        print(f"spillcache: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("spillcache: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a command line shows what failed, not where in the code
        print(f"spillcache: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
