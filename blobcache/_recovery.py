"""Opening a store: take the lock, then rebuild the index from the files.

The one rule (DESIGN.md): for each key, the record with the highest sequence
number wins, wherever it lies (a log segment or a blob version file); a delete
record that wins means "deleted". Recovery checks names, sizes, key files and
every log record's checksum, reports every file it cannot use with its path,
and falls back to the newest usable version of that key.
"""

from __future__ import annotations

import errno
import gc
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field

from . import _filekinds, _fsio, _keydir, _log
from . import _format as F
from . import _names as N
from ._index import IN_A_FILE, Deleted, Mapped, Values, pack, segment_of, seq_of, size_of
from ._keydir import KeyDirScan, Record
from ._problems import Problem
from .errors import BlobCacheError, CorruptionError, LockedError

log = logging.getLogger("blobcache")


@dataclass
class Recovered:
    """What open found: the index, the highest sequence number, and what needs the janitor."""

    values: Values = field(default_factory=lambda: Values({}, {}))  # the index (see _index)
    meta: dict[N.Key, int] = field(default_factory=dict)
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
    :raises PermissionError: the store (or its parent) may not be read or written.
    """
    if not _exists(root):
        parent = _existing_ancestor(root)
        _fsio.makedirs(parent, root)
    if not has_marker(root):
        _init_store(root)
    # A process killed between a create or rename and the fsync of its
    # directory leaves an entry that exists but may not survive a power cut:
    # the store directory itself, FORMAT, a new log segment, a compacted
    # segment about to replace its inputs. Every open makes the store's own
    # entries durable before anything relies on them (three fsyncs of
    # directories, clean but for such leftovers). The first two come before
    # LOCK is created: so LOCK never outlives a power cut that FORMAT does not
    # (an init interrupted at any point leaves nothing but its temp files).
    _fsio.fsync_dir(os.path.dirname(root))
    _fsio.fsync_dir(root)
    lock_path = os.path.join(root, F.LOCK_NAME)
    fd = _fsio.lock_file(lock_path)
    if fd is None:
        raise LockedError(lock_path)
    try:
        # A missing blobs/ or log/ is recovery's to judge (see _missing_dirs),
        # not made here unseen; one of the wrong kind is refused there too.
        logdir = os.path.join(root, F.LOG_DIR)
        if os.path.isdir(logdir) and not os.path.islink(logdir):
            _fsio.fsync_dir(logdir)
    except BaseException:
        _fsio.unlock(fd)
        raise
    return fd


def check_store(root: str) -> None:
    """Check, changing nothing, that ``root`` is a store (for ``readonly=True``).

    :raises BlobCacheError: ``root`` is missing, not a directory, or not a store.
    :raises PermissionError: the store (or its parent) may not be read.
    """
    if not _exists(root):
        raise BlobCacheError(f"there is no store at {root}: the directory does not exist")
    if not has_marker(root):
        raise BlobCacheError(f"{root} has no {F.MARKER_NAME} file, so it is not a blobcache store")
    # A reader never opens LOCK, but it must not call a store fine that no
    # writer can open (nor `blobcache stats` hang on a FIFO there).
    _filekinds.require_regular(os.path.join(root, F.LOCK_NAME))


def has_marker(root: str) -> bool:
    """Whether ``root`` holds this format's marker.

    :raises BlobCacheError: ``root`` is not a directory, or its marker is another
        format version's (or damaged, or no regular file).
    :raises PermissionError: ``root`` or its marker may not be read: never taken
        for "no marker", which would call another user's store foreign.
    """
    try:
        mode = os.stat(root).st_mode
    except FileNotFoundError:
        mode = 0  # a symbolic link to nowhere
    if not stat.S_ISDIR(mode):
        raise BlobCacheError(f"{root} is not a directory; a store needs a directory of its own")
    marker = os.path.join(root, F.MARKER_NAME)
    try:
        fd = _filekinds.open_regular(marker, unlisted=True)
    except FileNotFoundError:
        return False
    try:
        content = os.read(fd, len(F.MARKER_CONTENT) + 1)
    finally:
        os.close(fd)
    if content != F.MARKER_CONTENT:
        raise BlobCacheError(
            f"{marker} says {content[:40]!r}, not {F.MARKER_CONTENT!r}: this store was "
            "written by another blobcache format version, or the file is damaged"
        )
    return True


def _exists(path: str) -> bool:
    """``os.path.exists``, but for a permission error, which is raised, not taken for "missing"."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return False
    return True


def _existing_ancestor(path: str) -> str:
    parent = os.path.dirname(path)
    while not _exists(parent):
        parent = os.path.dirname(parent)
    return parent


def _init_store(root: str) -> None:
    """Make an empty directory a store: make blobs/ and log/, then publish the
    marker, each durably.

    Invariant: a store with FORMAT has both directories (stores initialised by
    blobcache up to 0.1.0, git e5dfd61, made them after FORMAT, at the open
    that published it: an interrupted init there leaves FORMAT alone).
    Refuses, before anything is written or removed, a directory holding anything
    but what an interrupted init leaves (``_init_leftover``): a cache must never
    write into, or later gc, a user's files. Inits of one directory in several
    processes take turns on an flock of the directory itself, so a temp file
    that someone holds while we hold that flock is no init's: it is foreign.
    """
    # First without the flock, so that a foreign directory is refused without
    # waiting on a lock its owner might hold.
    _leftover_temps(root, check_locks=False)
    held = _fsio.lock_dir(root, exclusive=True)
    assert held is not None, "lock_dir waits for the lock"
    try:
        if has_marker(root):
            return  # another process's init finished while we waited
        for path in _leftover_temps(root, check_locks=True):
            remove_orphan_temp(path, directory_held=True)
        for name in _STORE_DIRS:
            _fsio.makedirs(root, os.path.join(root, name), sync=False)
        _fsio.fsync_dir(root)  # both directories are durable before FORMAT can be
        _fsio.write_file_atomically(root, F.MARKER_NAME, F.MARKER_CONTENT, directory_held=True)
    finally:
        _fsio.unlock(held)


def _leftover_temps(root: str, *, check_locks: bool) -> list[str]:
    """The temp files an interrupted init left in ``root``, for removal.

    :raises BlobCacheError: ``root`` holds anything else (and nothing was changed).
    """
    temps: list[str] = []
    foreign: list[str] = []
    with os.scandir(root) as entries:
        for entry in entries:
            if not _init_leftover(entry, check_locks=check_locks):
                foreign.append(entry.name)
            elif N.is_temp_name(entry.name):
                temps.append(entry.path)
    if foreign:
        foreign.sort()
        raise BlobCacheError(
            f"{root} is not empty and has no {F.MARKER_NAME} file, so it is not a blobcache "
            f"store (it holds {foreign[:3]}{'...' if len(foreign) > 3 else ''}); nothing was "
            "changed in it: pick an empty or new directory"
        )
    return temps


def _init_leftover(entry: os.DirEntry[str], *, check_locks: bool) -> bool:
    """Whether ``entry`` of a directory without FORMAT is what an interrupted
    init may leave there (FORMAT.md, section 1), nothing else:

    * a temp file of the marker: a regular file named ``.tmp-<hex16>`` holding a
      prefix of the marker, or zeros (written but not fsynced when the power
      went), held by no one;
    * an empty ``blobs/`` or ``log/`` (made, with nothing in it yet, before FORMAT);
    * an empty ``LOCK`` held by no one. This version never leaves one
      (``open_store`` makes FORMAT durable before it creates LOCK), but earlier
      ones could: an open killed after the rename of FORMAT, then a power cut
      after the next open created LOCK.

    With ``check_locks`` False (before the directory's flock is ours) a temp
    file's flock is not asked: a concurrent init holds its own.
    """
    if entry.name in _STORE_DIRS:
        return _empty_store_dir(entry.path)
    if entry.name == F.LOCK_NAME:
        want, check_locks = b"", True
    elif _is_marker_temp_name(entry.name):
        want = F.MARKER_CONTENT
    else:
        return False
    try:
        if _filekinds.entry_kind(entry) is not None:
            return False
        fd = _filekinds.open_regular(entry.path)
    except FileNotFoundError:
        return True  # gone since the listing: a concurrent init renamed its temp file
    except (OSError, CorruptionError):
        return False  # unreadable, or swapped for no regular file: not ours
    try:
        data = os.read(fd, len(want) + 1)
        free = not check_locks or _fsio.try_lock(fd)  # the close releases our lock
    finally:
        os.close(fd)
    prefix = data == want[: len(data)] or not data.strip(b"\0")
    return free and len(data) <= len(want) and prefix


_HEX_DIGITS = frozenset("0123456789abcdef")


def _is_marker_temp_name(name: str) -> bool:
    """Whether ``name`` is one ``N.temp_name`` makes (other tools' ``.tmp-*`` rarely are)."""
    digits = name[len(F.TEMP_PREFIX) :]
    return (
        N.is_temp_name(name)
        and len(digits) == F.TEMP_RANDOM_HEX_DIGITS
        and _HEX_DIGITS.issuperset(digits)
    )


_STORE_DIRS = (F.BLOBS_DIR, F.LOG_DIR)


def _empty_store_dir(path: str) -> bool:
    """Whether ``path`` is an empty directory (not a link to one)."""
    return not os.path.islink(path) and os.path.isdir(path) and not os.listdir(path)


def remove_orphan_temp(path: str, *, directory_held: bool = False) -> int | None:
    """Delete a temp file that no writer holds (its flock is free); return its size.

    Returns None, deleting nothing, while a writer holds it or may be about to:
    a temp file is unlocked for a moment after its create, so this looks at its
    flock only while holding its directory against creators
    (``_fsio.sweeping_temps``), and leaves it for a later sweep when the
    directory is busy. Every sweeper (recovery, the janitor, ``blobcache gc``)
    comes through here. ``directory_held``: the caller holds the directory's
    flock exclusively already (the janitor, in the writer's process: a second
    flock there, on another open file description, would conflict with its own).

    A temp file is never a record, so removing it needs no fsync: if it comes
    back after a power cut it is still an orphan.

    REQUIRES: the listing that found ``path`` showed a regular file (a FIFO or
    a device is never opened, see ``_filekinds.open_regular``).
    :raises CorruptionError: it was swapped for something else since the listing.
    """
    with _fsio.sweeping_temps(os.path.dirname(path), held=directory_held) as free:
        if not free:
            return None  # a writer is creating a temp file there, or the directory went
        try:
            fd = _filekinds.open_regular(path)
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
    logdir = os.path.join(root, F.LOG_DIR)
    for directory in (blobs, logdir):
        if os.path.lexists(directory):
            _require_dir(directory)  # not a link, a FIFO... of that name
    missing = _missing_dirs(result, blobs, logdir, salvage=salvage)
    if blobs not in missing:
        for keydir in iter_key_dirs(blobs, result.problems, result.empty_fanouts):
            _admit(result, _keydir.scan_key_dir(keydir), blob_live)
    values, meta = ({}, {}) if logdir in missing else _replay_log(logdir, result, salvage=salvage)
    # A segment without a header yet (a writer killed right after creating it)
    # has no records, so replay never counted its live bytes: zero, not missing.
    for number in result.segment_total:
        result.segment_live.setdefault(number, 0)
    _merge(result, blob_live, values, meta)
    if not result.readonly:
        for directory in missing:
            _fsio.makedirs(root, directory)


def _missing_dirs(result: Recovered, blobs: str, logdir: str, *, salvage: bool) -> list[str]:
    """Which of blobs/ and log/ are missing, once sure that nothing was lost with
    them (or ``salvage``); the writer makes them afterwards.

    A crash never loses either in a store with FORMAT (see ``_init_store``),
    except in one initialised by blobcache up to 0.1.0: FORMAT without both,
    which holds nothing. So one missing beside the other holding something is
    damage: what was in it could have been any key's newest record. One missing
    beside the other empty is reported (what it held cannot be known).

    :raises CorruptionError: one is missing while the other holds something,
        unless ``salvage``: then that is reported in ``problems``.
    """
    missing = [d for d in (blobs, logdir) if not os.path.lexists(d)]
    # Segment 1 is made at the first open, before any put: a log without a
    # segment beside values is as damaged as no log at all.
    if blobs not in missing and os.listdir(blobs) and not _has_segment(logdir):
        _damage(
            result,
            logdir,
            f"the log {'directory is missing' if logdir in missing else 'has no segment'}, yet "
            f"{F.BLOBS_DIR}/ holds values: every small value and every delete record went "
            "with it (a deleted key would come back)",
            salvage=salvage,
        )
    elif blobs in missing and logdir not in missing and not _log_is_new(logdir):
        _damage(
            result,
            blobs,
            f"the directory of large values is missing, yet {F.LOG_DIR}/ holds records: "
            "every value kept in a file went with it (a key would roll back to an older "
            "value in the log)",
            salvage=salvage,
        )
    elif len(missing) == 1:
        # The other is empty: whatever the lost one held cannot be told (this
        # version makes both before FORMAT), so say it went, and go on.
        (lost,) = missing
        other = F.LOG_DIR if lost == blobs else F.BLOBS_DIR
        result.problems.append(
            Problem(lost, f"missing beside an empty {other}/: whatever it held is gone; made anew")
        )
    return missing


def _has_segment(logdir: str) -> bool:
    try:
        return any(_log.parse_segment_name(n) is not None for n in os.listdir(logdir))
    except FileNotFoundError:
        return False


def _log_is_new(logdir: str) -> bool:
    """Whether log/ holds at most what a store's first open makes: segment 1,
    its header only."""
    names = os.listdir(logdir)
    first = _log.segment_name(1)
    return not names or (
        names == [first] and os.path.getsize(os.path.join(logdir, first)) <= F.SEGMENT_HEADER.size
    )


def _damage(result: Recovered, path: str, why: str, *, salvage: bool) -> Problem:
    """Raise for damage that may have lost records, or with ``salvage`` report it.

    :raises CorruptionError: unless ``salvage``.
    """
    if not salvage:
        raise CorruptionError(path, f"{why}; open with salvage=True to open with what is left")
    problem = Problem(path, f"{why}: opened with what is left")
    result.problems.append(problem)
    return problem


def _require_dir(path: str) -> None:
    """``path`` (``blobs/``, ``log/``) is a directory, not a symbolic link to one.

    :raises CorruptionError: it is something else: the store cannot be read.
    :raises FileNotFoundError: it is missing (a reader beside an init reads again).
    """
    mode = os.lstat(path).st_mode
    if not stat.S_ISDIR(mode):
        raise CorruptionError(path, _filekinds.misplaced(_filekinds.kind_of(mode), "a directory"))


def _replay_log(
    logdir: str, result: Recovered, *, salvage: bool
) -> tuple[dict[N.Key, bytes | None], dict[N.Key, int]]:
    """Read every segment still in force, oldest first; return each key's newest
    record as the index holds it (value, and meta): a delete's value is None.

    Segments numbered below the newest COMPACTED one were replaced by it (a
    compaction that crashed before deleting its inputs): they are deleted unread,
    once the others were read and found whole. This loop runs once per record at
    every open, so it is kept flat.
    """
    listed = _segment_numbers(logdir, result)
    floor = _compacted_floor(logdir, listed)
    numbers = [n for n in listed if n >= floor]
    values: dict[N.Key, bytes | None] = {}
    meta: dict[N.Key, int] = {}
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
                values,
                meta,
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
    _check_no_gap(logdir, listed, floor, result, salvage=salvage)
    replaced = [n for n in listed if n < floor] if not result.readonly else []
    for number in replaced:
        _fsio.unlink(os.path.join(logdir, _log.segment_name(number)))
    if replaced:
        _fsio.fsync_dir(logdir)
    return values, meta


def _check_no_gap(
    logdir: str, listed: list[int], floor: int, result: Recovered, *, salvage: bool
) -> None:
    """Check that the segments in force (``result.segments``) run without a gap
    from the COMPACTED ``floor``, or 1, to the active one.

    Invariant (LogWriter.roll, _compaction): numbers are used one after the
    other and a compaction's output takes its highest input's number, so a gap
    is a lost segment. Any key could have had its newest record there: a
    deleted key would come back, an overwritten one roll back.

    :raises CorruptionError: a segment is missing, unless ``salvage``: then it is
        reported, on the segment after the gap too, so ``gc()`` rewrites the log.
    :raises FileNotFoundError: ``readonly`` and the listing changed meanwhile
        (a live writer rolled or compacted): the caller reads again.
    """
    gaps: list[tuple[int, int]] = []
    expected = floor or 1
    for info in result.segments:
        if info.number > expected:
            gaps.append((expected, info.number - 1))
        expected = info.number + 1
    if not gaps:
        return
    if result.readonly and _segment_numbers(logdir, Recovered(readonly=True)) != listed:
        raise FileNotFoundError(errno.ENOENT, "log segments came or went while read", logdir)
    names = ", ".join(
        _log.segment_name(a) if a == b else f"{_log.segment_name(a)} to {_log.segment_name(b)}"
        for a, b in gaps
    )
    why = (
        f"log segments missing ({names}): any key may have had its newest record there, "
        "so a deleted key could come back or an overwritten one roll back (blobcache up "
        "to 0.1.0, git e5dfd61, left a gap of one segment, losing nothing, when a "
        "compaction was interrupted)"
    )
    path = os.path.join(logdir, _log.segment_name(gaps[0][0]))
    problem = _damage(result, path, why, salvage=salvage)
    after = next(s for s in result.segments if s.number > gaps[0][1])
    after.problems.append(problem)


def _segment_numbers(logdir: str, result: Recovered) -> list[int]:
    """The numbers of the segments in ``logdir``; temp files go, strays are reported.

    :raises CorruptionError: a writer found a segment's name on something other
        than a regular file or a directory (see ``_not_a_segment``).
    """
    numbers = []
    with os.scandir(logdir) as entries:
        for entry in entries:
            number = _log.parse_segment_name(entry.name)
            temp = N.is_temp_name(entry.name)
            if number is None and not temp:
                result.problems.append(_stray(entry.path))
            elif (kind := _filekinds.entry_kind(entry)) is not None:
                # A directory never held a segment's bytes: a stray. A link, a
                # FIFO or a device might stand in for one.
                if number is not None and kind != "a directory" and not result.readonly:
                    raise _not_a_segment(entry.path, kind)
                result.problems.append(
                    Problem(entry.path, _filekinds.misplaced(kind, "a regular file"))
                )
            elif number is not None:
                numbers.append(number)
            elif not result.readonly and remove_orphan_temp(entry.path) is not None:
                result.temps_removed += 1  # a compaction output never published
    return sorted(numbers)


def _not_a_segment(path: str, kind: str) -> CorruptionError:
    """A writer cannot go on past a segment it cannot read: the records there may
    be the newest of their keys, with numbers it would hand out again; and
    writing new segments it would meet the name ("File exists")."""
    return CorruptionError(
        path,
        f"{kind} where the log keeps a segment: blobcache never follows or reads it, and "
        "cannot know which records it holds; put the segment file itself there, or move "
        "it away (its records are lost then), and open again",
    )


def _stray(path: str) -> Problem:
    return Problem(path, "stray entry: not a name blobcache writes")


def _compacted_floor(logdir: str, numbers: list[int]) -> int:
    """The number of the newest segment whose header says COMPACTED, or 0."""
    for number in reversed(numbers):
        path = os.path.join(logdir, _log.segment_name(number))
        with os.fdopen(_filekinds.open_regular(path), "rb") as f:
            flags = _log.header_flags(f.read(F.SEGMENT_HEADER.size))
        if flags is not None and flags & F.SEGMENT_FLAG_COMPACTED:
            return number
    return 0


def _merge(
    result: Recovered,
    blob_live: dict[N.Key, Record],
    values: dict[N.Key, bytes | None],
    meta: dict[N.Key, int],
) -> None:
    """Highest sequence number wins, across the two layouts. ``values`` and
    ``meta``, the log's newest records, become the index."""
    files: dict[N.Key, Mapped] = {}
    for key, record in blob_live.items():
        newest = meta.get(key)
        if newest is None or seq_of(newest) < record.seq:
            if newest is not None:
                value = values.pop(key)
                if value is not None:
                    result.segment_live[segment_of(newest)] -= size_of(newest)
                # A version found at open may never have been made durable:
                # compaction must fix that before it drops the log record.
                result.blob_over_log[key] = os.path.dirname(record.path)
                # What the key falls back to if that version fails its check.
                result.log_under_blob[key] = (seq_of(newest), value)
            files[key] = Mapped(record)
            meta[key] = pack(record.seq, IN_A_FILE, 0)
        else:  # superseded by a log record: the whole key directory is garbage
            result.dirty.add(os.path.dirname(record.path))
    for key in set(result.log_deletes):
        if key in files or values[key] is not None:
            continue  # put again after this delete
        del values[key]
        dead = meta.pop(key)
        if key in result.dir_of:  # older versions there: compaction keeps the delete
            result.deleted[key] = Deleted(seq_of(dead), segment_of(dead), size_of(dead))
            result.dirty.add(result.dir_of[key])
    # Invariant: no None is left, since each delete that won was dropped above.
    result.values = Values(values, files)  # type: ignore[arg-type]
    result.meta = meta


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
    """The directories in ``path`` whose names pass ``name_ok``; anything else
    there, a symbolic link to a directory too, is reported and never entered."""
    out: list[str] = []
    with os.scandir(path) as entries:
        for entry in entries:
            if not name_ok(entry.name):
                problems.append(_stray(entry.path))
            elif entry.is_dir(follow_symlinks=False):
                out.append(entry.path)
            else:
                kind = _filekinds.kind_of(entry.stat(follow_symlinks=False).st_mode)
                problems.append(Problem(entry.path, _filekinds.misplaced(kind, "a directory")))
    return out


def _admit(result: Recovered, scan: KeyDirScan, blob_live: dict[N.Key, Record]) -> None:
    result.max_seq = max(result.max_seq, scan.max_seq)
    result.problems.extend(scan.problems)
    for temp in scan.temps if not result.readonly else []:
        if remove_orphan_temp(temp) is not None:
            result.temps_removed += 1
    if scan.key is None:
        if scan.records or scan.unusable or scan.foreign:
            return  # versions without a readable key, or not ours: reported, left for a human
        result.dirty.add(scan.path)  # a put crashed before its key file: garbage
        return
    result.key_dirs.add(scan.path)
    result.dir_of[scan.key] = scan.path
    live = scan.live
    if live is not None:
        blob_live[scan.key] = live
    # A directory holding no version but entries that are not ours (reported)
    # is left whole for a human, as one whose key is unreadable.
    if (live is None and not scan.foreign) or len(scan.records) > 1 or scan.unusable:
        result.dirty.add(scan.path)
