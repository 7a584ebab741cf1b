"""The ``blobcache`` command (also ``python -m blobcache``): demo, gc, stats, verify.

Exit status, for every command:

* 0: it ran. ``gc`` and ``stats`` print damage they found but exit 0: the
  damage is ``verify``'s to judge. Files vanishing under ``gc`` beside a live
  writer (its own gc() and compaction remove them) are normal, not failures.
* 1: only ``verify``, when it found a problem (each printed with its path).
* 2: the command could not run: a missing, foreign or unreadable directory, a
  bad argument, a damaged log, an I/O or permission error, a ``gc`` (or
  ``demo``) writing on NFS, SMB, FUSE or the like; one line on stderr says what.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from . import _collect, _remotegc
from . import _maintenance as M
from ._demo import run_demo
from ._remote import Remote
from .errors import BlobCacheError, CorruptionError, UnsafeFilesystemError


def _size(n: int) -> str:
    if n < 1024:
        return f"{n:,} B"
    value = n / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:,.1f} {unit}"
        value /= 1024
    return f"{value:,.1f} TiB"


def _emit(as_json: bool, data: dict[str, Any], lines: list[str]) -> None:
    if as_json:
        json.dump(data, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write("\n".join(lines) + "\n")


def _stats(path: str, as_json: bool, salvage: bool) -> int:
    s = M.store_stats(path, salvage=salvage)
    lines = [
        f"store       {s.path}" + ("  (a writer has it open)" if s.writer_running else ""),
        f"keys        {s.keys:,}",
        f"live        {_size(s.live_bytes)}",
        f"on disk     {_size(s.disk_bytes)} in blocks, {_size(s.file_bytes)} in file sizes",
        f"reclaimable {_size(s.reclaimable_bytes)} (blobcache gc)",
        f"versions    {s.versions:,} ({s.superseded_versions:,} superseded)",
        f"segments    {s.segments:,}",
        f"temp files  {s.temp_files:,}",
        f"writes      {s.oldest_write or '-'} .. {s.newest_write or '-'}",
    ]
    lines += [f"largest     {key} {_size(n)}" for key, n in s.largest]
    lines += [f"problem     {p}" for p in s.problems]
    _emit(as_json, s.as_dict(), lines)
    return 0


def _verify(path: str, as_json: bool) -> int:
    problems = M.verify(path)
    data = {"path": path, "ok": not problems, "problems": [str(p) for p in problems]}
    lines = [str(p) for p in problems] or [f"{path}: every checksum matches"]
    _emit(as_json, data, lines)
    return 1 if problems else 0


def _gc(path: str, as_json: bool, dry_run: bool, salvage: bool, trust_filesystem: bool) -> int:
    report = _collect.collect(
        path, dry_run=dry_run, salvage=salvage, trust_filesystem=trust_filesystem
    )
    r = report.result
    verb = "would remove" if dry_run else "removed"
    lines = [f"{verb} {p}" for p in report.removed]
    lines += [f"problem {p}" for p in report.problems]
    lines.append(
        f"{verb} {r.files_removed:,} files, {r.temps_removed:,} temp files, "
        f"{r.dirs_removed:,} directories; compacted {r.segments_compacted:,} log segments; "
        f"{_size(r.bytes_reclaimed)} reclaimed"
    )
    if report.beside_writer:
        lines.append(
            "a writer has the store open: superseded versions and temp files only; "
            "deleted keys' directories and the log wait for its gc() or a gc without it"
        )
    _emit(as_json, report.as_dict(), lines)
    return 0


def _remote_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--remote",
        metavar="URL",
        help="also collect a remote tier's garbage: superseded records and blobs no record "
        "names, older than --grace (credentials from AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY, or the client's other sources)",
    )
    command.add_argument("--endpoint", help="the S3-compatible server's URL (with --remote)")
    command.add_argument("--region", help="the bucket's region (with --remote)")
    command.add_argument(
        "--allow-http", action="store_true", help="allow a plain http:// endpoint (with --remote)"
    )
    command.add_argument(
        "--grace",
        type=float,
        default=_remotegc.DEFAULT_GRACE_SECONDS,
        help="seconds an object must be old to go (with --remote; default %(default).0f)",
    )


def _gc_remote(args: argparse.Namespace) -> int:
    if args.path is not None:
        code = _gc(args.path, args.json, args.dry_run, args.salvage, args.trust_filesystem)
        if code:
            return code
    options: dict[str, Any] = {}
    if args.endpoint:
        options["endpoint"] = args.endpoint
    if args.region:
        options["region"] = args.region
    if args.allow_http:
        options["client_options"] = {"allow_http": True}
    _remotegc.check_grace(args.grace)  # before anything is asked of the remote
    remote = Remote(args.remote, options)
    remote.check(create=False)
    r = _remotegc.collect(remote, grace=args.grace, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    lines = [f"{verb} {remote.url}/{p}" for p in r.removed]
    lines.append(
        f"{remote.url}: {verb} {r.records_deleted:,} superseded records, stubbed "
        f"{r.records_stubbed:,}, {r.blobs_deleted:,} blobs; {_size(r.bytes_freed)} freed"
    )
    _emit(args.json, {"remote": remote.url, **r.as_dict()}, lines)
    return 0


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
    commands = {
        "gc": "remove superseded versions, deleted keys and orphaned temp files; "
        "compact the log when no process has the store open",
        "stats": "keys, live bytes, bytes on disk, what gc would reclaim",
        "verify": "read everything and check every checksum; exit status 1 on a problem",
    }
    for name, text in commands.items():
        command = sub.add_parser(name, help=text, description=text)
        if name == "gc":
            command.add_argument("path", nargs="?", help="store directory (optional with --remote)")
            _remote_arguments(command)
        else:
            command.add_argument("path", help="store directory")
        command.add_argument("--json", action="store_true", help="machine-readable output")
        if name == "gc":
            mode = command.add_mutually_exclusive_group()
            mode.add_argument(
                "--dry-run", action="store_true", help="list what would go, remove nothing"
            )
            mode.add_argument("--salvage", action="store_true", help=_SALVAGE_GC)
            command.add_argument("--trust-filesystem", action="store_true", help=_TRUST_GC)
        if name == "stats":
            command.add_argument("--salvage", action="store_true", help=_SALVAGE_STATS)
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            return run_demo(args.path)
        if args.command == "stats":
            return _stats(args.path, args.json, args.salvage)
        if args.command == "verify":
            return _verify(args.path, args.json)
        if args.remote is not None:
            return _gc_remote(args)
        remote_only = [
            f"--{n.replace('_', '-')}" for n in ("endpoint", "region") if getattr(args, n)
        ]
        remote_only += ["--allow-http"] * args.allow_http
        remote_only += ["--grace"] * (args.grace != _remotegc.DEFAULT_GRACE_SECONDS)
        if remote_only:
            parser.error(f"{', '.join(remote_only)} need --remote")
        if args.path is None:
            parser.error("gc needs a store directory, or --remote")
        return _gc(args.path, args.json, args.dry_run, args.salvage, args.trust_filesystem)
    except BlobCacheError as exc:
        print(f"blobcache {args.command}: {exc}{_hint(exc, args.command)}", file=sys.stderr)
        return 2
    except (TypeError, ValueError) as exc:  # a bad argument (a remote URL, a grace)
        print(f"blobcache {args.command}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # permission denied, an I/O error: say which file
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"blobcache {args.command}: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2


_SALVAGE_GC = (
    "open the store with salvage=True: read the log past damaged records and rewrite "
    "it without them (they are lost; `blobcache verify` lists them first); needs "
    "no process to have the store open"
)
_SALVAGE_STATS = "count past damaged log records (salvage=True); changes nothing"
_TRUST_GC = (
    "write even on NFS, SMB, FUSE and the like (trust_filesystem=True), for a file "
    "system known to honour flock and fsync"
)


def _hint(exc: BlobCacheError, command: str) -> str:
    """What to run, for a library message that names an option of ``BlobCache``."""
    if isinstance(exc, CorruptionError) and "salvage=True" in exc.detail:
        return (
            " (from the command line: `blobcache verify PATH` lists every damaged record, "
            "`blobcache gc --salvage PATH` rewrites the log without them)"
        )
    if isinstance(exc, UnsafeFilesystemError) and command == "gc":
        return " (from the command line: `blobcache gc --trust-filesystem PATH`)"
    return ""
