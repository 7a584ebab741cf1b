"""Opening a store: rebuild the index from the files (``_storedir`` took the lock).

The one rule (DESIGN.md): for each key, the record with the highest sequence
number wins, wherever it lies (a log segment or a blob version file); a delete
record that wins means "deleted". Recovery checks names, sizes, key files and
every log record's checksum, reports every file it cannot use with its path,
and falls back to the newest usable version of that key. What it found is a
``_recovered.Recovered``.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import logging
import os
import stat

from . import _clock, _dirbook, _filekinds, _fsio, _keydir, _log, _snapshot
from . import _format as F
from . import _names as N
from ._index import (
    IN_A_FILE,
    MAX_SEGMENT_NUMBER,
    Deleted,
    Mapped,
    Values,
    codec_of,
    pack,
    segment_of,
    seq_of,
    size_of,
)
from ._keydir import KeyDirScan, Record
from ._problems import Problem, stray
from ._recovered import Recovered, damage
from ._storedir import missing_dirs, remove_orphan_temp
from .errors import CorruptionError

log = logging.getLogger("blobcache")


def recover(
    root: str,
    *,
    salvage: bool = False,
    readonly: bool = False,
    bound: tuple[int, int] | None = None,
) -> Recovered:
    """Scan every key directory and the log; keep, per key, the highest-numbered record.

    Other processes may be writing meanwhile: a file that vanishes (compaction,
    the janitor) raises FileNotFoundError (the caller reads again), and a torn
    tail of the active segment is only noted (``SegmentRead.cut``), for the
    writer to cut under the append flock. With ``readonly`` no file is changed
    (no temp file or replaced segment removed).
    """
    result = Recovered(readonly=readonly, bound=bound, now=_clock.now_ms())
    blobs = os.path.join(root, F.BLOBS_DIR)
    blob_live: dict[N.Key, Record] = {}
    # Building the index makes an object or two per record and frees none: the
    # cyclic garbage collector would scan them over and over (30% of an open of
    # a million keys) for nothing.
    collecting = gc.isenabled()
    gc.disable()
    try:
        try:
            _recover_into(result, root, blobs, blob_live, salvage=salvage, snapshot=not salvage)
        except _snapshot.Unusable as exc:
            # Crash and trust policy: the snapshot only ever saves time. Whatever
            # the reason it cannot stand for the log, the log is read whole.
            removed = result.temps_removed  # (temp files the first reading removed)
            result = Recovered(readonly=readonly, bound=bound, now=result.now)
            result.temps_removed = removed
            blob_live = {}
            _recover_into(result, root, blobs, blob_live, salvage=salvage, snapshot=False)
            why = f"index snapshot not used: {exc}; the log was replayed whole"
            result.snapshot = ("damaged: " if exc.damaged else "stale: ") + str(exc)
            if exc.damaged:
                result.problems.append(Problem(_snapshot.path_of(root), why))
            else:
                log.info("blobcache: %s: %s", _snapshot.path_of(root), why)
    finally:
        if collecting:
            gc.enable()
    for problem in result.problems:
        log.warning("blobcache: %s", problem)
    return result


def _recover_into(
    result: Recovered,
    root: str,
    blobs: str,
    blob_live: dict[N.Key, Record],
    *,
    salvage: bool,
    snapshot: bool,
) -> None:
    logdir = os.path.join(root, F.LOG_DIR)
    for directory in (blobs, logdir):
        if os.path.lexists(directory):
            _require_dir(directory)  # not a link, a FIFO... of that name
    missing = missing_dirs(result, blobs, logdir, salvage=salvage)
    # The log first, then the key directories: a version's file is named before
    # its record is written, so every record read here finds its file listed
    # (unless a newer record superseded it and it was collected). The other way
    # round, a b- file committed between the listing and the reading of its
    # record (its segment sealed meanwhile, so read whole) would be missed, and
    # the follower, starting after that record, would never apply it.
    snap = _snapshot.load(root) if snapshot and logdir not in missing else None
    values: dict[N.Key, bytes | None]
    meta: dict[N.Key, int]
    if logdir in missing:
        values, meta = {}, {}
    elif snap is not None:
        values, meta = _replay_after(logdir, result, snap)
        result.snapshot = "loaded"
    else:
        # No snapshot is no damage (a process killed before its first close, a
        # store of an older blobcache): not a problem, only slower; stats say so.
        values, meta = _replay_log(logdir, result, salvage=salvage)
    if blobs not in missing:
        if snap is None:
            problems = result.problems
            to_scan = _dirbook.key_dirs(
                blobs,
                lambda path, _rel, depth: _dirbook.listed(path, depth, problems),
                result.empty_fanouts,
            )
        else:
            # The directories its book vouches for are stat'ed, not listed (_dirbook).
            walk = _dirbook.Walk(blobs, snap.book, result.problems, result.empty_fanouts)
            for keydir, key, record in walk.vouched:
                _admit_key(result, keydir, key, record, [record], blob_live)
            to_scan = walk.scan
            result.book, result.book_misses = snap.book, walk.misses
        # The keys of the directories the snapshot knows: their key files go unread.
        known = (
            {
                N.key_hash(*N.encode_key(key)): key
                for key in (*(f[0] for f in snap.files), *(t[0] for t in snap.tombstones))
            }
            if snap is not None and to_scan
            else {}
        )
        for keydir in to_scan:
            scan = _keydir.scan_key_dir(keydir, known.get(os.path.basename(keydir)))
            _admit(result, scan, blob_live)
    if snap is not None:
        _thaw_for_files(result, snap, blob_live, values, meta)
    # A segment without a header yet (a writer killed right after creating it)
    # has no records, so replay never counted its live bytes: zero, not missing.
    for number in result.segment_total:
        result.segment_live.setdefault(number, 0)
    _commit_batches(result, blob_live)
    _merge(result, blob_live, values, meta)
    if not result.readonly:
        for directory in missing:
            _fsio.makedirs(root, directory)
        _remove_root_temps(root, result)


def _remove_root_temps(root: str, result: Recovered) -> None:
    """Delete the temp files in the store directory no writer holds: an index
    snapshot's (its temp file lives while the snapshot is built, for its mtime:
    _dirbook), the marker's at an upgrade, REMOTE's, left by a process killed
    while it wrote one."""
    with os.scandir(root) as entries:
        temps = [
            e.path for e in entries if N.is_temp_name(e.name) and e.is_file(follow_symlinks=False)
        ]
    for path in temps:
        if remove_orphan_temp(path) is not None:
            result.temps_removed += 1


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
    _replay_segments(logdir, result, numbers, values, meta, salvage=salvage)
    _check_no_gap(logdir, listed, floor, result, salvage=salvage)
    replaced = [n for n in listed if n < floor] if not result.readonly else []
    if replaced:
        _remove_replaced(os.path.dirname(logdir), logdir, replaced)
    return values, meta


def _replay_after(
    logdir: str, result: Recovered, snap: _snapshot.Snapshot
) -> tuple[dict[N.Key, bytes | None], dict[N.Key, int]]:
    """``_replay_log`` through the index snapshot: what it covers is taken from
    it (its keys left in ``result.cold``, loaded as they are looked up), and only
    the records after it are read, by the same rule.

    :raises _snapshot.Unusable: it does not fit the log as it is now.
    """
    listed = _segment_numbers(logdir, result)
    floor = _compacted_floor(logdir, listed)
    covered = [c.number for c in snap.segments]
    if (
        not covered
        or covered[-1] != snap.segment
        or [n for n in listed if n <= snap.segment] != covered
        or floor > snap.segment
    ):
        raise _snapshot.Unusable("the log's segments are not those it covers (compacted since?)")
    bound = result.bound
    if bound is not None and (bound[0], bound[1]) < (snap.segment, snap.offset):
        raise _snapshot.Unusable("it covers more of the log than was appended")
    inodes: dict[int, int] = {}
    maps = _snapshot.map_segments(logdir, snap, inodes)
    cold = _snapshot.Cold(snap, maps)
    values: dict[N.Key, bytes | None] = {}
    meta: dict[N.Key, int] = {}
    now = result.now
    for c in snap.segments:
        result.segment_total[c.number] = c.total
        result.segment_live[c.number] = c.live
        if c.number != snap.segment:
            path = os.path.join(logdir, _log.segment_name(c.number))
            result.segments.append(
                _log.SegmentRead(
                    path,
                    c.number,
                    compacted=bool(c.flags & F.SEGMENT_FLAG_COMPACTED),
                    end=c.end,
                    size=c.end,
                    head=c.head,
                    inode=inodes[c.number],
                )
            )
    # Deletes the key directories need (older versions may lie there), as replay
    # leaves them: None, and among the deletes for _merge.
    for key, seq, segment, size in snap.tombstones:
        values[key] = None
        meta[key] = pack(seq, segment, 0, size)
        result.log_deletes.append(key)
    for key, seq in snap.pins:
        result.pin_says[key] = seq
    for _key, seq, expires, codec, note_segment, note_size in snap.files:
        # (segment 0: its note was never booked live, as a fresh version's: _merge)
        result.noted[seq] = (expires, note_segment, note_size, codec)
    result.blob_over_log.update(snap.blob_over_log)
    # Values that expire or are pinned: loaded now (the expiry heap and the pins
    # hold every one); one expired since reads as a delete, as replay reads it.
    for key, value, packed, expires in cold.take_all(eager_only=True):
        meta[key] = packed
        if expires and expires <= now:
            values[key] = None
            result.log_deletes.append(key)
            result.segment_live[segment_of(packed)] -= size_of(packed)
        else:
            values[key] = value
            if expires:
                result.expiry[key] = expires
    result.max_seq = max(result.max_seq, snap.max_seq)
    numbers = [n for n in listed if n >= snap.segment]
    _replay_segments(
        logdir,
        result,
        numbers,
        values,
        meta,
        salvage=False,
        since=(snap.segment, snap.offset),
        inodes=inodes,
    )
    # A pin record read after the snapshot: its key's value is loaded, as the
    # pins are (_merge pins only keys it holds; the review found the pin lost).
    for key in result.pin_says:
        if key not in meta:
            found = cold.take(key)
            if found is not None:
                values[key], meta[key], _ = found
    # A record read after the snapshot supersedes the key's record in it (or, if
    # older, is not live: the snapshot's stays).
    live = result.segment_live
    for key in list(meta):
        found = cold.take(key)
        if found is None:
            continue
        value, packed, _expires = found
        if seq_of(packed) >= seq_of(meta[key]):
            newer = meta[key]
            if values[key] is not None:
                live[segment_of(newer)] -= size_of(newer)
            values[key], meta[key] = value, packed
        else:
            live[segment_of(packed)] -= size_of(packed)
    _check_no_gap(logdir, listed, floor, result, salvage=False)
    result.cold = cold
    last = result.segments[-1]
    if last.number == snap.segment and last.end == snap.offset:
        result.snapshot_mark = (snap.segment, snap.offset, snap.max_seq)
    return values, meta


def _replay_segments(
    logdir: str,
    result: Recovered,
    numbers: list[int],
    values: dict[N.Key, bytes | None],
    meta: dict[N.Key, int],
    *,
    salvage: bool,
    since: tuple[int, int] | None = None,
    inodes: dict[int, int] | None = None,
) -> None:
    """Replay segments ``numbers`` (in force, oldest first; the last is the
    active one) into ``values`` and ``meta`` by the one rule, and note each in
    ``result``. ``since``: (segment, offset) an index snapshot covers up to: that
    segment is read from there on; ``inodes``: the files the snapshot checked."""
    now = result.now  # what has expired is read as deleted
    for number in numbers:
        active = number == numbers[-1]
        path = os.path.join(logdir, _log.segment_name(number))
        base = since[1] if since is not None and number == since[0] else 0
        inode = None if inodes is None else inodes.get(number)
        info, data = _read_from(path, number, base, inode, active=active, salvage=salvage)
        # Only in the active segment, as listed (one sealed since the bound was
        # read holds whole records past it; a COMPACTED one is another file).
        bound = result.bound
        if bound is not None and bound[0] == number and active and not info.compacted:
            data = data[: max(bound[1] - base, 0 if base else F.SEGMENT_HEADER.size)]
        if data:
            seen = _log.replay(
                data,
                info,
                values,
                meta,
                result.segment_live,
                result.log_deletes,
                result.expiry,
                result.noted,
                result.pin_says,
                now=now,
                active=active,
                salvage=salvage,
                base=base,
            )
            result.max_seq = max(result.max_seq, seen)
        elif base:
            info.end = base  # nothing after the snapshot: its total stands
        result.segments.append(info)
        if data or not base:
            result.segment_total[number] = info.end - F.SEGMENT_HEADER.size if data else 0
        result.problems.extend(info.problems)
        if result.readonly:
            result.torn_bytes += info.cut  # a writer counts what it cuts (_held._cut)


def _read_from(
    path: str, number: int, base: int, inode: int | None, *, active: bool, salvage: bool
) -> tuple[_log.SegmentRead, bytes]:
    """A segment's bytes from ``base`` on (all of it, header checked, for 0).
    ``inode``: the file checked against the snapshot, if it was.

    :raises FileNotFoundError: it is another file now (a compaction in another
        process replaced it since it was checked): the caller reads again.
    """
    if not base:
        info, data = _log.read_segment(path, number, active=active, salvage=salvage)
        if inode is not None and info.inode != inode:
            raise FileNotFoundError(errno.ENOENT, "segment replaced while read", path)
        return info, data
    with os.fdopen(_filekinds.open_regular(path), "rb") as f:
        head = f.read(F.SEGMENT_HEADER.size)
        st = os.fstat(f.fileno())
        if inode is not None and st.st_ino != inode:
            raise FileNotFoundError(errno.ENOENT, "segment replaced while read", path)
        flags = _log.header_flags(head)
        if flags is None:
            raise _snapshot.Unusable(f"segment {number}'s header is not what it was")
        data = os.pread(f.fileno(), max(st.st_size - base, 0), base)
    info = _log.SegmentRead(path, number, size=st.st_size, inode=st.st_ino)
    info.compacted = bool(flags & F.SEGMENT_FLAG_COMPACTED)
    info.head = _log.header_size(head)
    return info, data


def _thaw_for_files(
    result: Recovered,
    snap: _snapshot.Snapshot,
    blob_live: dict[N.Key, Record],
    values: dict[N.Key, bytes | None],
    meta: dict[N.Key, int],
) -> None:
    """Before ``_merge``: load from the snapshot the keys that have a version
    file, so the one rule weighs them; and check the snapshot accounts for
    every version numbered within what it covers.

    :raises _snapshot.Unusable: a version file it cannot account for (one whose
        key it says nothing of, numbered below its highest: a delete it dropped
        may have superseded it), or one it names that is gone.
    """
    cold = result.cold
    assert cold is not None
    known = {key: seq for key, seq, *_ in snap.files}
    for key, record in blob_live.items():
        if known.get(key) == record.seq:
            continue  # the version it names (so none of its entries is of that key)
        if key not in meta:
            found = cold.take(key)
            if found is not None:
                values[key], meta[key], _ = found
        if record.seq > snap.max_seq or key in meta:
            continue
        seen = known.get(key)
        if seen is None or record.seq < seen:
            raise _snapshot.Unusable(f"it does not account for the version {record.path}")
    for key in known:
        if key not in blob_live and key not in meta:
            raise _snapshot.Unusable(f"a version it names of {key!r} is gone")


def _remove_replaced(root: str, logdir: str, numbers: list[int]) -> None:
    """Delete the segments a COMPACTED one replaced (its compaction was killed
    before it deleted them), unless a compaction is running in another process:
    then they are its to delete (it lists them as inputs too)."""
    held = _fsio.lock_file(os.path.join(root, F.COMPACT_NAME))
    if held is None:
        return
    try:
        for number in numbers:
            with contextlib.suppress(FileNotFoundError):
                _fsio.unlink(os.path.join(logdir, _log.segment_name(number)))
        _fsio.fsync_dir(logdir)
    finally:
        _fsio.unlock(held)


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
    :raises FileNotFoundError: the listing changed meanwhile (a live writer
        rolled or compacted): the caller reads again.
    """
    gaps: list[tuple[int, int]] = []
    expected = floor or 1
    for info in result.segments:
        if info.number > expected:
            gaps.append((expected, info.number - 1))
        expected = info.number + 1
    if not gaps:
        return
    if _segment_numbers(logdir, Recovered(readonly=True)) != listed:
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
    problem = damage(result, path, why, salvage=salvage)
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
                result.problems.append(stray(entry.path))
            elif (kind := _filekinds.entry_kind(entry)) is not None:
                # A directory never held a segment's bytes: a stray. A link, a
                # FIFO or a device might stand in for one.
                if number is not None and kind != "a directory" and not result.readonly:
                    raise _not_a_segment(entry.path, kind)
                result.problems.append(
                    Problem(entry.path, _filekinds.misplaced(kind, "a regular file"))
                )
            elif number is not None:
                if number > MAX_SEGMENT_NUMBER:  # never written: see LogWriter._roll
                    raise CorruptionError(
                        entry.path, f"segment number {number} is above {MAX_SEGMENT_NUMBER}"
                    )
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


def _compacted_floor(logdir: str, numbers: list[int]) -> int:
    """The number of the newest segment whose header says COMPACTED, or 0."""
    for number in reversed(numbers):
        path = os.path.join(logdir, _log.segment_name(number))
        with os.fdopen(_filekinds.open_regular(path), "rb") as f:
            flags = _log.header_flags(f.read(F.SEGMENT_HEADER.size))
        if flags is not None and flags & F.SEGMENT_FLAG_COMPACTED:
            return number
    return 0


def _commit_batches(result: Recovered, blob_live: dict[N.Key, Record]) -> None:
    """For each key whose newest version is one of a batch (a b- name): its
    newest version the log commits (a b- one its record notes, or any v- one).

    Crash policy: a batch's versions are named before its records are written,
    in one write: after a crash either every record is whole and noted, or
    none counts (``_log.replay``), so its b- versions all count, or none.
    The log is read before the key directories: a b- file whose record came
    after the reading is taken for uncommitted here, and applied by the
    follower when it reads that record.
    """
    for key, records in result.batch_versions.items():
        live = next(
            (r for r in records if not N.is_batch_version(r.path) or r.seq in result.noted), None
        )
        if live is None:
            blob_live.pop(key, None)
        else:
            blob_live[key] = live
        if records[0] is not live:  # a batch never committed: garbage
            result.dirty.add(os.path.dirname(records[0].path))


def _merge(
    result: Recovered,
    blob_live: dict[N.Key, Record],
    values: dict[N.Key, bytes | None],
    meta: dict[N.Key, int],
) -> None:
    """Highest sequence number wins, across the two layouts. ``values`` and
    ``meta``, the log's newest records, become the index."""
    files: dict[N.Key, Mapped] = {}
    last = result.segments[-1].number if result.segments else 1
    for key, record in blob_live.items():
        newest = meta.get(key)
        if newest is None or seq_of(newest) < record.seq:
            if newest is not None:
                value = values.pop(key)
                result.expiry.pop(key, None)
                if value is not None:
                    result.segment_live[segment_of(newest)] -= size_of(newest)
                # A version found at open may never have been made durable:
                # compaction must fix that before it drops the log record.
                result.blob_over_log[key] = os.path.dirname(record.path)
                # What the key falls back to if that version fails its check.
                codec = codec_of(value) if value is not None else F.CODEC_RAW
                result.log_under_blob[key] = (seq_of(newest), value, codec)
            note = result.noted.get(record.seq)
            expires = note[0] if note is not None else 0  # a version's expiry: in its record
            if expires and expires <= result.now:
                # Expired: the key is absent, as after a delete of that number,
                # which compaction keeps while the directory holds versions.
                meta.pop(key, None)
                result.blob_over_log.pop(key, None)
                result.log_under_blob.pop(key, None)
                result.deleted[key] = Deleted(record.seq, last, 0)
                result.dirty.add(os.path.dirname(record.path))
                continue
            if expires:
                result.expiry[key] = expires
            pinned = result.pin_says.get(key, 0) >= record.seq
            if note is not None and (expires or pinned or N.is_batch_version(record.path)):
                # The record this file counts by is live too (compaction keeps it).
                _, segment, size, _codec = note
                if segment:  # (0: the snapshot's, of a note booked stale: _snapshotwrite)
                    result.segment_live[segment] = result.segment_live.get(segment, 0) + size
                    result.notes[key] = (segment, size)
            # A typed file is always a b- one: its codec is in its record.
            files[key] = Mapped(record, note[3] if note is not None else F.CODEC_RAW)
            meta[key] = pack(record.seq, IN_A_FILE, 0, 0)
        else:  # superseded by a log record: the whole key directory is garbage
            result.dirty.add(os.path.dirname(record.path))
    for key in set(result.log_deletes):
        if key in files or values.get(key, b"") is not None:
            continue  # put again after this delete (or expired in a file, above)
        del values[key]
        dead = meta.pop(key)
        if key in result.dir_of:  # older versions there: compaction keeps the delete
            result.deleted[key] = Deleted(seq_of(dead), segment_of(dead), size_of(dead))
            result.dirty.add(result.dir_of[key])
    # Invariant: no None is left, since each delete that won was dropped above.
    result.values = Values(values, files)  # type: ignore[arg-type]
    result.meta = meta
    # A pin applies to the key's live record if its say is not older.
    result.pins = {
        key for key, seq in result.pin_says.items() if key in meta and seq >= seq_of(meta[key])
    }


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
    live = scan.live
    _admit_key(result, scan.path, scan.key, live, scan.records, blob_live)
    # A directory holding no version but entries that are not ours (reported)
    # is left whole for a human, as one whose key is unreadable.
    if (live is None and not scan.foreign) or len(scan.records) > 1 or scan.unusable:
        result.dirty.add(scan.path)


def _admit_key(
    result: Recovered,
    keydir: str,
    key: N.Key,
    live: Record | None,
    records: list[Record],
    blob_live: dict[N.Key, Record],
) -> None:
    """Note key directory ``keydir`` of ``key``, whose newest usable version is
    ``live`` (of ``records``). Called alone for a directory the snapshot's book
    vouches for (its key file and that one version: nothing else to sort out)."""
    result.key_dirs.add(keydir)
    result.dir_of[key] = keydir
    if live is not None:
        result.max_seq = max(result.max_seq, live.seq)
        blob_live[key] = live
        if N.is_batch_version(live.path):  # counts only with its record: _commit_batches
            result.batch_versions[key] = records
