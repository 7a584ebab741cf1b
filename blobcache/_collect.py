"""What ``blobcache gc`` does to a store from outside, possibly beside a live writer.

A writer process holds ``LOCK``. Without it, ``gc`` opens the store as the
writer and runs ``BlobCache.gc()`` (janitor and log compaction). With it held,
``gc`` works from a ``readonly=True`` snapshot and removes only what no writer
can still need, each after fsyncing the record that makes it garbage (from this
process: the page cache is shared, so our fsync makes the writer's record
durable) and, when that record is a version, reading it back against its
checksum (a damaged one keeps every older version, reported): versions below
their key's live record; the directories of keys whose live record is in the
log (deleted, or shrunk into the log), holding the key directory's flock
exclusively, which the writer holds shared while a version goes in
(``_writes.Writes._in_key_dir``), and the fan-out directories that leaves empty;
temp files no writer holds an flock on (``_storedir.remove_orphan_temp``). The
log is the writer's: compaction waits for its gc() or an offline one. Files
and directories vanish under this meanwhile (the writer's own gc() and
compaction): each step takes that as "already collected", never as an error.

It walks the store's files and probes its writer lock with ``_maintenance``'s
helpers, which ``stats`` and ``verify`` share (that module imports nothing of
this one).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from . import _format as F
from . import _fsio, _keydir, _mapping, _storedir
from . import _names as N
from ._janitor import GcResult
from ._keydir import Record
from ._maintenance import store_dirs, store_files, version_files, writer_running
from ._problems import Problem
from ._stats import Inventory
from .cache import BlobCache
from .errors import CorruptionError, LockedError


@dataclass
class GcReport:
    """What ``blobcache gc`` removed (or, with ``dry_run``, would remove)."""

    path: str
    dry_run: bool
    beside_writer: bool  # a writer held the lock: only versions and temp files
    removed: list[str] = field(default_factory=list)  # paths, or what would go
    result: GcResult = field(default_factory=GcResult)
    # Damage that kept files: a live version failing its check keeps the older ones.
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def collect(
    path: str, *, dry_run: bool = False, salvage: bool = False, trust_filesystem: bool = False
) -> GcReport:
    """The janitor, and log compaction when no handle has the store open.

    With ``salvage`` the store is opened as ``BlobCache(path, salvage=True)``: the
    log is rewritten without its damaged records. That needs the store to
    itself: an open handle anywhere raises ``LockedError``.

    :raises UnsafeFilesystemError: the store is on NFS, SMB, FUSE or the like and
        not ``trust_filesystem`` (raised by the writer's open, before the lock is
        probed: so a gc beside a writer there is refused too). A ``dry_run``
        removes nothing, so it runs there.
    """
    path = os.path.abspath(path)
    _storedir.check_store(path)  # a gc never creates a store
    if salvage and dry_run:
        raise ValueError("salvage rewrites the log: it cannot be a dry run")
    if not dry_run and writer_running(path) and salvage:
        lock = os.path.join(path, F.LOCK_NAME)
        raise LockedError(
            lock,
            f"the store is already open for writing by other handles (a shared lock on {lock}); "
            "salvage rewrites the log and needs the store to itself: close them first",
        )
    if not dry_run and not writer_running(path):
        # Nobody has the store open: a handle of our own, compaction included.
        # (Handles opening meanwhile write beside it, as beside any other.)
        try:
            cache = BlobCache(path, salvage=salvage, trust_filesystem=trust_filesystem)
        except LockedError:
            if salvage:
                raise
        else:
            with cache:
                before = set(e.path for e in store_files(path))
                result = cache.gc()
            removed = sorted(before - set(e.path for e in store_files(path)))
            return GcReport(path, False, False, removed, result)
    return _collect_beside_writer(path, dry_run=dry_run)


def _collect_beside_writer(path: str, *, dry_run: bool) -> GcReport:
    """Remove superseded versions and unheld temp files only (see the module doc);
    with ``dry_run`` and no writer, also list what an offline gc would remove.

    Never a version at or above its key's live record in our snapshot: a writer
    only ever moves a key's live record up, so what is below ours is below its.
    A file or directory that vanishes meanwhile was collected by the writer's
    own gc() (or replaced by its compaction): already done, never an error.
    """
    beside = writer_running(path)
    report = GcReport(path, dry_run, beside)
    log_synced = False

    def sync_log() -> None:
        """fsync the log once, before removing what a record there supersedes.

        That record was read whole and checked against its checksum by our
        snapshot's open, and nothing rewrites a log record in place: the fsync
        makes durable the very bytes that were checked. (If compaction moved it
        meanwhile, the writer wrote it from its own checked copy and fsynced it
        before the input went.)
        """
        nonlocal log_synced
        if not log_synced:
            _sync_log(path)
            log_synced = True

    with BlobCache(path, readonly=True) as cache:
        inventory = cache._inventory()
        live = {os.path.dirname(r.path): r for r in _live_versions(inventory)}
        in_log: dict[str, int | None] = {}  # keydir -> its key's record in the log, read once
        sound: dict[str, bool] = {}  # keydir -> its live version may stand alone, checked once

        def log_bound(keydir: str) -> int | None:
            if keydir not in in_log:
                in_log[keydir] = _live_seq_of_dir(inventory, keydir)
            return in_log[keydir]

        found = sorted(version_files(os.path.join(path, F.BLOBS_DIR)), key=lambda v: v[1].path)
        for keydir, record in found:
            newer = live.get(keydir)
            bound = newer.seq if newer is not None else log_bound(keydir)
            if bound is None:  # unattributable (reported by open), or a key gone
                if dry_run and not beside and newer is None:
                    _count(report, record.path, record.length)  # a deleted key's directory
                continue
            if record.seq >= bound:
                continue
            # Never delete the last durable copy: the newer record first.
            if newer is not None:
                if keydir not in sound:
                    sound[keydir] = _stands_alone(keydir, newer, report, sync=not dry_run)
                if not sound[keydir]:
                    continue
            if not dry_run and (newer is None or N.is_batch_version(newer.path)):
                sync_log()  # a batch's version counts only with its record there
            if dry_run or _remove_version(keydir, record):
                _count(report, record.path, record.length)
        if dry_run and not beside:
            report.result.bytes_reclaimed += cache.stats().log_stale_bytes
        for keydir in [] if dry_run else _key_dirs(os.path.join(path, F.BLOBS_DIR)):
            bound = None if keydir in live else log_bound(keydir)
            if bound is not None:
                _remove_key_dir(keydir, bound, sync_log, report)
    for entry in list(store_files(path)):
        if N.is_temp_name(entry.name):
            if dry_run:
                report.removed.append(entry.path)
                report.result.temps_removed += 1
                continue
            size = _storedir.remove_orphan_temp(entry.path)
            if size is not None:
                report.removed.append(entry.path)
                report.result.temps_removed += 1
                report.result.bytes_reclaimed += size
    return report


def _live_versions(inventory: Inventory) -> list[Record]:
    """The version file of every key whose live value is in one, in the snapshot."""
    records = []
    for seq, path in inventory.live_versions:
        name = N.parse_version_name(os.path.basename(path))
        assert name is not None and name.seq == seq, "recovery admits only version names"
        records.append(Record(seq, path, name.length, name.checksum))
    return records


def _stands_alone(keydir: str, live: Record, report: GcReport, *, sync: bool) -> bool:
    """Whether ``live``, the version of ``keydir`` that supersedes the others there,
    may be the only one: it reads back whole and matches its checksum, and (with
    ``sync``) it is fsynced with its key file and directory entry.

    A power cut can leave a version never fsynced (a crashed writer's, or "os"
    durability) with its name and size but not its bytes: the older version is
    what the writer falls back to then, so it stays. That damage is reported.
    False, silently, when ``live`` is gone: superseded since our snapshot and
    collected by the writer, whose own gc() has this directory in hand.
    """
    try:
        _mapping.map_version(live, check=True).release()
        if sync:
            _fsio.fsync_path(os.path.join(keydir, F.KEY_FILE_NAME))
            _fsio.fsync_path(live.path)
            _fsio.fsync_dir(keydir)
    except FileNotFoundError:
        return False
    except CorruptionError as damage:
        if os.path.exists(live.path):
            note = f"{damage.detail}; the older versions of this key are kept"
            report.problems.append(str(Problem(damage.path, note)))
        return False
    return True


def _sync_log(path: str) -> None:
    """fsync every log segment there is now. One gone meanwhile was replaced by
    the writer's compaction, which fsyncs its output and the log directory
    before it deletes an input."""
    for entry in store_files(os.path.join(path, F.LOG_DIR)):
        if entry.name.endswith(F.SEGMENT_SUFFIX):
            with contextlib.suppress(FileNotFoundError):
                _fsio.fsync_path(entry.path)


def _remove_version(keydir: str, record: Record) -> bool:
    """Remove a superseded version durably; False if the writer's gc() was first.

    REQUIRES: what supersedes it is durable."""
    try:
        _fsio.unlink(record.path)
    except FileNotFoundError:
        return False
    with contextlib.suppress(FileNotFoundError):  # the writer's gc() took the directory since
        _fsio.fsync_dir(keydir)
    return True


def _count(report: GcReport, path: str, length: int) -> None:
    report.removed.append(path)
    report.result.files_removed += 1
    report.result.bytes_reclaimed += length


def _key_dirs(blobs: str) -> list[str]:
    """Every ``blobs/ab/cd/<hash>`` directory there is now (not a symbolic link to one)."""
    return sorted(
        e.path
        for entries in store_dirs(blobs, levels=2)
        for e in entries
        if N.is_key_dir_name(e.name) and e.is_dir(follow_symlinks=False)
    )


def _remove_key_dir(
    keydir: str, bound: int, sync_log: Callable[[], None], report: GcReport
) -> None:
    """Remove the directory of a key whose live record (``bound``) is in the log,
    a put or a delete, and then its fan-out directories if they are empty.

    It holds the directory exclusively (the writer holds it shared while a
    version goes in, see ``_writes.Writes._in_key_dir``, and while it creates a temp
    file there) and rescans it under that lock: a version at or above ``bound``,
    or a temp file, means the writer has put the key again since our snapshot,
    and the directory stays. So does one without its key file: the writer's put
    may have made it anew (after its own gc() removed the old one) and not yet
    published the key file.
    """
    try:
        held = _fsio.lock_dir(keydir, exclusive=True, wait=False)
    except FileNotFoundError:
        return
    if held is None:
        return  # a version is going in right now
    try:
        scan = _keydir.scan_key_dir(keydir)
        if (
            scan.key is None
            or scan.temps
            or scan.unusable
            or any(r.seq >= bound for r in scan.records)
        ):
            return
        sync_log()  # the record that makes this directory garbage is durable first
        for record in scan.records:
            with contextlib.suppress(FileNotFoundError):
                _fsio.unlink(record.path)
                _count(report, record.path, record.length)
        _fsio.fsync_dir(keydir)  # the versions are gone for good before the key file goes
        key_file = os.path.join(keydir, F.KEY_FILE_NAME)
        with contextlib.suppress(FileNotFoundError):
            _fsio.unlink(key_file)
            report.removed.append(key_file)
            report.result.files_removed += 1
        directory = keydir
        for _ in range(3):  # the key directory, then its two fan-out directories
            try:
                _fsio.rmdir(directory)
            except FileNotFoundError:
                pass
            except OSError:
                break  # not empty: other keys, or a file of the writer's
            else:
                report.removed.append(directory)
                report.result.dirs_removed += 1
            # A parent gone meanwhile was removed by the writer's gc() once
            # empty, and that made ours durable with it.
            with contextlib.suppress(FileNotFoundError):
                _fsio.fsync_dir(os.path.dirname(directory))
            directory = os.path.dirname(directory)
    finally:
        _fsio.unlock(held)


def _live_seq_of_dir(inventory: Inventory, keydir: str) -> int | None:
    """The sequence number of the live record (or kept delete) of the key whose
    directory is ``keydir``, when that record is in the log; None if unknown."""
    try:
        key = _keydir.read_key_file(keydir)
    except (OSError, CorruptionError):
        return None
    return inventory.record_seqs.get(key)


__all__ = ["GcReport", "collect"]
