"""The ``blobcache`` command (also ``python -m blobcache``)."""

from __future__ import annotations

import argparse

from ._demo import run_demo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="blobcache", description="Maintain and try out blobcache stores."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="write artifacts, SIGKILL the writer mid-put, reopen and show nothing acked is lost",
    )
    demo.add_argument("path", nargs="?", help="store directory (default: a new temp directory)")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return run_demo(args.path)
    parser.error(f"unknown command {args.command}")
    return 2
