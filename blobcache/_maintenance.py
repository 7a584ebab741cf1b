"""What ``blobcache stats`` and ``blobcache verify`` read of a store, possibly
beside a live writer, and the walk of the store's directories they share with
``blobcache gc`` (``_collect``, which imports this module, never the reverse).

Both read the store through a ``readonly=True`` snapshot, which holds no lock
and changes no file, and then walk its files on disk. A writer may run
meanwhile: a file its own gc() or compaction removes under the walk was
garbage, and is skipped, never reported.
"""

from __future__ import annotations

import datetime
import heapq
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from . import _format as F
from . import _log, _mapping, _storedir
from . import _names as N
from ._keydir import Record
from ._problems import Problem
from .cache import BlobCache
from .errors import CorruptionError


class Progress:
    """A one-line progress bar on stderr, shown only on a terminal and only for
    work that lasts more than a moment (drawn at most ten times a second)."""

    DELAY = 0.5  # seconds before the bar first appears

    def __init__(self, label: str, total: int, *, enabled: bool | None = None) -> None:
        self.label, self.total, self.done = label, max(total, 1), 0
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.start = self.drawn = time.monotonic()

    def advance(self, amount: int = 1) -> None:
        self.done += amount
        now = time.monotonic()
        if self.enabled and now - self.start > self.DELAY and now - self.drawn > 0.1:
            self.drawn = now
            share = min(self.done / self.total, 1.0)
            bar = "#" * int(share * 30)
            sys.stderr.write(f"\r{self.label} [{bar:<30}] {share:4.0%}")
            sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled and self.drawn != self.start:
            sys.stderr.write("\r" + " " * (len(self.label) + 40) + "\r")
            sys.stderr.flush()


def store_dirs(top: str, *, levels: int = 4) -> Iterator[list[os.DirEntry[str]]]:
    """The entries of ``top`` and of every directory below it, at most ``levels``
    down, whose name is one blobcache gives a directory (``log``, ``blobs``, fan-out,
    key directory): never through a symbolic link, never into a stray directory
    (whose ``.tmp-*`` files are someone else's). One removed meanwhile is skipped."""
    stack = [(top, 0)]
    while stack:
        path, level = stack.pop()
        try:
            with os.scandir(path) as listing:
                entries = list(listing)
        except FileNotFoundError:
            continue
        yield entries
        if level < levels:
            stack.extend(
                (e.path, level + 1)
                for e in entries
                if _is_store_dir_name(e.name) and e.is_dir(follow_symlinks=False)
            )


def _is_store_dir_name(name: str) -> bool:
    return name in (F.LOG_DIR, F.BLOBS_DIR) or N.is_fanout_name(name) or N.is_key_dir_name(name)


def store_files(root: str) -> Iterator[os.DirEntry[str]]:
    """Every regular file in the store's directories under ``root`` (see
    ``store_dirs``); a symbolic link, a FIFO, a device is none (open reports them)."""
    for entries in store_dirs(root):
        yield from (e for e in entries if e.is_file(follow_symlinks=False))


def version_files(blobs: str) -> Iterator[tuple[str, Record]]:
    """(key directory, record) of every version file under ``blobs``."""
    for entry in store_files(blobs):
        name = N.parse_version_name(entry.name)
        if name is not None:
            record = Record(name.seq, entry.path, name.length, name.checksum)
            yield os.path.dirname(entry.path), record


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).isoformat()


@dataclass
class StoreStats:
    """What ``blobcache stats`` reports; sizes in bytes."""

    path: str
    keys: int
    live_bytes: int
    file_bytes: int  # sum of file sizes
    disk_bytes: int  # blocks held by files, as du counts them
    reclaimable_bytes: int  # superseded versions, stale log records, temp files
    versions: int
    superseded_versions: int
    segments: int
    temp_files: int
    largest: list[tuple[str, int]]  # (repr of key, bytes), largest first
    oldest_write: str | None  # ISO 8601, UTC: modification times of data files
    newest_write: str | None
    writer_running: bool
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def store_stats(path: str, *, top: int = 5, salvage: bool = False) -> StoreStats:
    """Count what the store holds, from a read-only snapshot and a walk of its files
    (with ``salvage``, past damaged log records, as ``BlobCache(salvage=True)``)."""
    with BlobCache(path, readonly=True, salvage=salvage) as cache:
        summary = cache.stats()
        inventory = cache._inventory()
        sizes = inventory.sizes
        live_files = {p for _, p in inventory.live_versions}
        problems = [str(p) for p in cache.problems]
    largest = heapq.nlargest(top, sizes, key=lambda kv: kv[1])
    file_bytes = disk_bytes = superseded = superseded_bytes = versions = segments = temps = 0
    temp_bytes = 0
    times: list[float] = []
    for entry in store_files(os.path.abspath(path)):
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        file_bytes += st.st_size
        disk_bytes += st.st_blocks * 512
        if N.parse_version_name(entry.name) is not None:
            versions += 1
            times.append(st.st_mtime)
            if entry.path not in live_files:
                superseded += 1
                superseded_bytes += st.st_size
        elif _log.parse_segment_name(entry.name) is not None:
            segments += 1
            times.append(st.st_mtime)
        elif N.is_temp_name(entry.name):
            temps += 1
            temp_bytes += st.st_size
    return StoreStats(
        path=os.path.abspath(path),
        keys=summary.keys,
        live_bytes=summary.live_bytes,
        file_bytes=file_bytes,
        disk_bytes=disk_bytes,
        reclaimable_bytes=superseded_bytes + summary.log_stale_bytes + temp_bytes,
        versions=versions,
        superseded_versions=superseded,
        segments=segments,
        temp_files=temps,
        largest=[(repr(k), n) for k, n in largest],
        oldest_write=_iso(min(times, default=None)),
        newest_write=_iso(max(times, default=None)),
        writer_running=writer_running(path),
        problems=problems,
    )


def writer_running(path: str) -> bool:
    """Whether a process holds the store's lock (this one does not take it)."""
    return _storedir.handles_open(path)


def verify(path: str, *, progress: Callable[[str, int], Progress] = Progress) -> list[Problem]:
    """Read every byte the store holds and check every checksum.

    Open checks each log record's checksum, each key file and each version's
    name and size; then every version file, live or superseded, is read whole
    and its checksum compared with its name. A file the writer removes while
    this runs is skipped (it was garbage). Returns every problem found.
    """
    # salvage: report every damaged log record instead of stopping at the first
    # (a reader never rewrites anything, so salvage changes nothing on disk).
    with BlobCache(path, readonly=True, salvage=True) as cache:
        problems = list(cache.problems)
        torn = cache.stats().torn_bytes_at_open
    if torn and not writer_running(path):  # with a writer it may be mid-append
        segments = sorted(e.path for e in store_files(os.path.join(path, F.LOG_DIR)))
        problems.append(
            Problem(
                segments[-1] if segments else os.path.join(path, F.LOG_DIR),
                f"{torn} bytes after the last good record of the active segment: a write "
                "torn by a crash, or damage (the next open cuts them)",
            )
        )
    blobs = os.path.join(path, F.BLOBS_DIR)
    found = list(version_files(blobs))
    bar = progress("verify", sum(r.length for _, r in found))
    for _, record in found:
        try:
            _mapping.map_version(record, check=True).release()
        except CorruptionError as exc:
            if os.path.exists(record.path):
                problems.append(Problem(exc.path, exc.detail))
        bar.advance(record.length)
    bar.finish()
    return problems


__all__ = ["Progress", "StoreStats", "store_stats", "verify"]
