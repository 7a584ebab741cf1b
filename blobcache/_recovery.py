"""Opening a store: take the lock, then rebuild the index from the files.

The one rule (DESIGN.md): for each key, the record with the highest sequence
number wins, wherever it lies (a log segment or a blob version file); a delete
record that wins means "deleted". Recovery checks names, sizes, key files and
every log record's checksum, reports every file it cannot use with its path,
and falls back to the newest usable version of that key.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from . import _blob, _fsio, _log
from . import _format as F
from . import _names as N
from ._blob import KeyDirScan, Problem, Record
from ._index import SEGMENT, SEQ, SIZE, VALUE, BlobEntry, Deleted, Entry
from .errors import BlobCacheError, LockedError

log = logging.getLogger("blobcache")


@dataclass
class Recovered:
    """What open found: the index, the highest sequence number, and what needs the janitor."""

    entries: dict[N.Key, Entry] = field(default_factory=dict)
    max_seq: int = 0
    key_dirs: set[str] = field(default_factory=set)  # dirs with a valid key file
    dirty: set[str] = field(default_factory=set)  # dirs holding something the janitor removes
    empty_fanouts: set[str] = field(default_factory=set)  # fan-out dirs with nothing inside
    dir_of: dict[N.Key, str] = field(default_factory=dict)  # key -> its directory
    deleted: dict[N.Key, Deleted] = field(default_factory=dict)  # deletes compaction keeps
    segments: list[_log.SegmentRead] = field(default_factory=list)  # in force, oldest first
    segment_total: dict[int, int] = field(default_factory=dict)  # record bytes per segment
    segment_live: dict[int, int] = field(default_factory=dict)  # live put bytes per segment
    torn_bytes: int = 0  # cut off the active segment's tail (a crash mid-write)
    log_deletes: list[N.Key] = field(default_factory=list)  # keys of delete records read
    blob_over_log: dict[N.Key, str] = field(default_factory=dict)  # key -> dir, see _merge
    # key -> (seq, value or None for a delete) of the log record its blob beat
    log_under_blob: dict[N.Key, tuple[int, bytes | None]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    temps_removed: int = 0
    readonly: bool = False  # beside a live writer: read, never change a file


def open_store(root: str) -> int:
    """Create or check the store directory, then take the writer lock; return its fd
    (``_fsio.unlock`` releases it).

    :raises BlobCacheError: ``root`` is not a directory, or is a non-empty
        directory that is not a blobcache store (nothing is written into it).
    :raises LockedError: another handle holds the store for writing.
    """
    if not os.path.exists(root):
        parent = _existing_ancestor(root)
        _fsio.makedirs(parent, root)
    if not has_marker(root):
        _init_store(root)
    lock_path = os.path.join(root, F.LOCK_NAME)
    fd = _fsio.lock_file(lock_path)
    if fd is None:
        raise LockedError(lock_path)
    try:
        # A process killed between a create or rename and the fsync of its
        # directory leaves an entry that exists but may not survive a power cut:
        # the store directory itself, FORMAT, a new log segment, a compacted
        # segment about to replace its inputs. Every open makes the store's
        # own entries durable before anything relies on them (five fsyncs of
        # directories, clean but for such leftovers).
        _fsio.fsync_dir(os.path.dirname(root))
        _fsio.fsync_dir(root)
        _fsio.makedirs(root, os.path.join(root, F.BLOBS_DIR))
        _fsio.makedirs(root, os.path.join(root, F.LOG_DIR))
        _fsio.fsync_dir(os.path.join(root, F.LOG_DIR))
    except BaseException:
        _fsio.unlock(fd)
        raise
    return fd


def check_store(root: str) -> None:
    """Check, changing nothing, that ``root`` is a store (for ``readonly=True``).

    :raises BlobCacheError: ``root`` is missing, not a directory, or not a store.
    """
    if not os.path.exists(root):
        raise BlobCacheError(f"there is no store at {root}: the directory does not exist")
    if not has_marker(root):
        raise BlobCacheError(f"{root} has no {F.MARKER_NAME} file, so it is not a blobcache store")


def has_marker(root: str) -> bool:
    """Whether ``root`` holds this format's marker.

    :raises BlobCacheError: ``root`` is not a directory, or its marker is another
        format version's (or damaged).
    """
    if not os.path.isdir(root):
        raise BlobCacheError(f"{root} is not a directory; a store needs a directory of its own")
    marker = os.path.join(root, F.MARKER_NAME)
    if not os.path.exists(marker):
        return False
    with open(marker, "rb") as f:
        content = f.read(len(F.MARKER_CONTENT) + 1)
    if content != F.MARKER_CONTENT:
        raise BlobCacheError(
            f"{marker} says {content[:40]!r}, not {F.MARKER_CONTENT!r}: this store was "
            "written by another blobcache format version, or the file is damaged"
        )
    return True


def _existing_ancestor(path: str) -> str:
    parent = os.path.dirname(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    return parent


def _init_store(root: str) -> None:
    """Make an empty directory a store by publishing the marker durably.

    Refuses a directory holding anything but temp files and LOCK (left by a
    crash during an earlier init): a cache must never write into, or later gc,
    a user's files.
    """
    names = os.listdir(root)
    # LOCK without FORMAT: an earlier init killed before FORMAT was durable.
    foreign = [n for n in names if not N.is_temp_name(n) and n != F.LOCK_NAME]
    if foreign:
        raise BlobCacheError(
            f"{root} is not empty and has no {F.MARKER_NAME} file, so it is not a blobcache "
            f"store (it holds {sorted(foreign)[:3]}...); pick an empty or new directory"
        )
    for name in names:
        if N.is_temp_name(name):
            remove_orphan_temp(os.path.join(root, name))
    _fsio.write_file_atomically(root, F.MARKER_NAME, F.MARKER_CONTENT)


def remove_orphan_temp(path: str) -> int | None:
    """Delete a temp file that no writer holds (its flock is free); return its size.

    Returns None, deleting nothing, while a writer holds it. A temp file is never
    a record, so removing it needs no fsync: if it comes back after a power cut
    it is still an orphan.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None  # its writer renamed or removed it meanwhile
    try:
        if not _fsio.try_lock(fd):
            return None
        size = os.fstat(fd).st_size
        try:
            _fsio.unlink(path)
        except FileNotFoundError:
            return None  # renamed between our open and our lock: published, not orphaned
        return size
    finally:
        os.close(fd)


def recover(root: str, *, salvage: bool = False, readonly: bool = False) -> Recovered:
    """Scan every key directory and the log; keep, per key, the highest-numbered record.

    REQUIRES: the caller holds the writer lock (so no temp file is in use by us),
    or ``readonly``: then no file is changed (no temp file or replaced segment
    removed, no cut reported: a live writer may be mid-append), and a file that
    vanishes meanwhile raises FileNotFoundError (the caller reads again).
    """
    result = Recovered(readonly=readonly)
    blobs = os.path.join(root, F.BLOBS_DIR)
    blob_live: dict[N.Key, Record] = {}
    # Building the index makes an object or two per record and frees none: the
    # cyclic garbage collector would scan them over and over (30% of an open of
    # a million keys) for nothing.
    collecting = gc.isenabled()
    gc.disable()
    try:
        _recover_into(result, root, blobs, blob_live, salvage=salvage)
    finally:
        if collecting:
            gc.enable()
    for problem in result.problems:
        log.warning("blobcache: %s", problem)
    return result


def _recover_into(
    result: Recovered, root: str, blobs: str, blob_live: dict[N.Key, Record], *, salvage: bool
) -> None:
    for keydir in iter_key_dirs(blobs, result.problems, result.empty_fanouts):
        _admit(result, _blob.scan_key_dir(keydir), blob_live)
    latest = _replay_log(os.path.join(root, F.LOG_DIR), result, salvage=salvage)
    _merge(result, blob_live, latest)


def _replay_log(logdir: str, result: Recovered, *, salvage: bool) -> dict[N.Key, Entry]:
    """Read every segment still in force, oldest first; return each key's newest
    record as an entry (a delete as an entry whose ``value`` is None).

    Segments numbered below the newest COMPACTED one were replaced by it (a
    compaction that crashed before deleting its inputs): they are deleted unread.
    This loop runs once per record at every open, so it is kept flat.
    """
    numbers = _segment_numbers(logdir, result)
    floor = _compacted_floor(logdir, numbers)
    replaced = [n for n in numbers if n < floor] if not result.readonly else []
    for number in replaced:
        _fsio.unlink(os.path.join(logdir, _log.segment_name(number)))
    if replaced:
        _fsio.fsync_dir(logdir)
    numbers = [n for n in numbers if n >= floor]
    latest: dict[N.Key, Entry] = {}
    max_seq = result.max_seq
    for number in numbers:
        active = number == numbers[-1]
        info, data = _log.read_segment(
            os.path.join(logdir, _log.segment_name(number)),
            number,
            active=active,
            salvage=salvage,
            readonly=result.readonly,
        )
        if data:
            seen = _log.replay(
                data,
                info,
                latest,
                result.segment_live,
                result.log_deletes,
                active=active,
                salvage=salvage,
            )
            max_seq = max(max_seq, seen)
        result.segments.append(info)
        result.segment_total[number] = info.end - F.SEGMENT_HEADER.size if data else 0
        result.problems.extend(info.problems)
        result.torn_bytes += info.cut
    result.max_seq = max_seq
    return latest


def _segment_numbers(logdir: str, result: Recovered) -> list[int]:
    numbers = []
    with os.scandir(logdir) as entries:
        for entry in entries:
            number = _log.parse_segment_name(entry.name)
            if number is not None and entry.is_file(follow_symlinks=False):
                numbers.append(number)
            elif N.is_temp_name(entry.name):  # a compaction output never published
                if not result.readonly and remove_orphan_temp(entry.path) is not None:
                    result.temps_removed += 1
            else:
                result.problems.append(
                    Problem(entry.path, "stray entry: not a name blobcache writes")
                )
    return sorted(numbers)


def _compacted_floor(logdir: str, numbers: list[int]) -> int:
    """The number of the newest segment whose header says COMPACTED, or 0."""
    for number in reversed(numbers):
        with open(os.path.join(logdir, _log.segment_name(number)), "rb") as f:
            flags = _log.header_flags(f.read(F.SEGMENT_HEADER.size))
        if flags is not None and flags & F.SEGMENT_FLAG_COMPACTED:
            return number
    return 0


def _merge(result: Recovered, blob_live: dict[N.Key, Record], latest: dict[N.Key, Entry]) -> None:
    """Highest sequence number wins, across the two layouts. ``latest`` becomes the index."""
    for key, record in blob_live.items():
        newest = latest.get(key)
        if newest is None or newest[SEQ] < record.seq:
            if newest is not None:
                if newest[VALUE] is not None:
                    result.segment_live[newest[SEGMENT]] -= newest[SIZE]
                # A version found at open may never have been made durable:
                # compaction must fix that before it drops the log record.
                result.blob_over_log[key] = os.path.dirname(record.path)
                # What the key falls back to if that version fails its check.
                result.log_under_blob[key] = (newest[SEQ], newest[VALUE])
            latest[key] = BlobEntry(record)
        else:  # superseded by a log record: the whole key directory is garbage
            result.dirty.add(os.path.dirname(record.path))
    for key in set(result.log_deletes):
        dead = latest[key]
        if dead[VALUE] is not None or type(dead) is BlobEntry:
            continue  # put again after this delete
        del latest[key]
        if key in result.dir_of:  # older versions there: compaction keeps the delete
            result.deleted[key] = Deleted(dead[SEQ], dead[SEGMENT], dead[SIZE])
            result.dirty.add(result.dir_of[key])
    result.entries = latest


def iter_key_dirs(blobs: str, problems: list[Problem], empty: set[str]) -> list[str]:
    """Every ``blobs/ab/cd/<hash>`` directory. Other entries are reported as
    strays; empty fan-out directories (a put killed while making them, say) are
    added to ``empty`` for the janitor."""
    found: list[str] = []
    for level1 in _subdirs(blobs, N.is_fanout_name, problems):
        level2s = _subdirs(level1, N.is_fanout_name, problems)
        if not level2s:
            empty.add(level1)
        for level2 in level2s:
            keydirs = _subdirs(level2, N.is_key_dir_name, problems)
            if not keydirs:
                empty.add(level2)
            found.extend(keydirs)
    return found


def _subdirs(path: str, name_ok: Callable[[str], bool], problems: list[Problem]) -> list[str]:
    out: list[str] = []
    with os.scandir(path) as entries:
        for entry in entries:
            if name_ok(entry.name) and entry.is_dir(follow_symlinks=False):
                out.append(entry.path)
            else:
                problems.append(Problem(entry.path, "stray entry: not a name blobcache writes"))
    return out


def _admit(result: Recovered, scan: KeyDirScan, blob_live: dict[N.Key, Record]) -> None:
    result.max_seq = max(result.max_seq, scan.max_seq)
    result.problems.extend(scan.problems)
    for temp in scan.temps if not result.readonly else []:
        if remove_orphan_temp(temp) is not None:
            result.temps_removed += 1
    if scan.key is None:
        if scan.records or scan.unusable:
            return  # versions without a readable key: reported above, left for a human
        result.dirty.add(scan.path)  # a put crashed before its key file: garbage
        return
    result.key_dirs.add(scan.path)
    result.dir_of[scan.key] = scan.path
    live = scan.live
    if live is not None:
        blob_live[scan.key] = live
    if live is None or len(scan.records) > 1 or scan.unusable:
        result.dirty.add(scan.path)
