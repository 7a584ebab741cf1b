"""The store's directory: taking its lock, telling a store from a foreign
directory, finishing an interrupted init, orphan temp files.

A store is a directory that holds FORMAT (the marker), blobs/, log/ and LOCK
(FORMAT.md, section 1). ``open_store`` makes one, or checks one, and takes the
writer lock; ``check_store`` checks one for a reader and changes nothing. An
init interrupted at any point leaves only what ``_init_leftover`` accepts, so a
directory that holds anything else is foreign: refused, never written into.
At open, ``missing_dirs`` judges a blobs/ or log/ that is gone by the invariant
``_init_store`` keeps. Every sweeper deletes a temp file through
``remove_orphan_temp``.
"""

from __future__ import annotations

import fcntl
import os
import stat
import time

from . import _filekinds, _filesystems, _fsio, _log
from . import _format as F
from . import _names as N
from ._problems import Problem
from ._recovered import Recovered, damage
from .errors import BlobCacheError, CorruptionError, LockedError


def open_store(root: str, *, trust_filesystem: bool = False) -> tuple[int, bool]:
    """Create or check the store directory, then take the store's lock, shared;
    return its fd (``_fsio.unlock`` releases it) and whether no other handle had
    the store open then (so ``STATE`` may be older than the log: see ``_held``).

    :param trust_filesystem: skip the refusal of NFS, SMB, FUSE and the like.
    :raises UnsafeFilesystemError: ``root`` is (or would be made) on a file
        system where flock or fsync may not hold (nothing is made or changed).
    :raises BlobCacheError: ``root`` is not a directory, or is a non-empty
        directory that is not a blobcache store (nothing is written into it).
    :raises LockedError: blobcache 0.1's writer holds the store alone.
    :raises PermissionError: the store (or its parent) may not be read or written.
    """
    exists = _exists(root)
    parent = root if exists else _existing_ancestor(root)
    if not trust_filesystem:
        # Before anything is made or changed: a refused store stays as it was.
        _filesystems.require_trusted(root, parent)
    if not exists:
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
    # Shared: any number of handles, in any processes, write at once. Held
    # exclusively only for an instant by a probe (`_maintenance.writer_running`)
    # and by blobcache 0.1's one writer.
    # Exclusive first, if nobody has the store open, then shared (two opens that
    # both find themselves alone that way are harmless: see _held._settle).
    fd = _fsio.lock_file(lock_path)
    alone = fd is not None
    if fd is not None:
        fcntl.flock(fd, fcntl.LOCK_SH)
    else:
        fd = _fsio.lock_file(lock_path, shared=True)
    for _ in range(LOCK_ATTEMPTS):
        if fd is not None:
            break
        # `blobcache stats | gc | verify` take it exclusively for an instant, to
        # tell whether any handle is open: wait that out, not a real holder.
        time.sleep(LOCK_RETRY_SECONDS)
        fd = _fsio.lock_file(lock_path, shared=True)
    if fd is None:
        raise LockedError(lock_path)
    try:
        # A missing blobs/ or log/ is recovery's to judge (see missing_dirs),
        # not made here unseen; one of the wrong kind is refused there too.
        logdir = os.path.join(root, F.LOG_DIR)
        if os.path.isdir(logdir) and not os.path.islink(logdir):
            _fsio.fsync_dir(logdir)
    except BaseException:
        _fsio.unlock(fd)
        raise
    return fd, alone


# How long an open waits out an exclusive holder of LOCK before LockedError:
# 50 x 2 ms, far longer than a probe holds it, far shorter than a user waits.
LOCK_ATTEMPTS = 50
LOCK_RETRY_SECONDS = 0.002


def handles_open(root: str) -> bool:
    """Whether some handle has the store open for writing (holds ``LOCK``): asked
    by taking it exclusively for an instant (a writer opening meanwhile waits
    that out: ``LOCK_ATTEMPTS``)."""
    lock = os.path.join(root, F.LOCK_NAME)
    try:
        fd = _filekinds.open_regular(lock, unlisted=True)  # a FIFO there must not hang us
    except FileNotFoundError:
        return False
    try:
        return not _fsio.try_lock(fd)  # a lock we take is released by the close
    finally:
        os.close(fd)


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
    if content not in F.MARKERS_READ:
        raise BlobCacheError(
            f"{marker} says {content[:40]!r}, not {F.MARKER_CONTENT!r}: this store was "
            "written by another blobcache format version, or the file is damaged"
        )
    return True


def marker_is_current(root: str) -> bool:
    """Whether the store's marker says this version's format (REQUIRES: ``has_marker``)."""
    with open(os.path.join(root, F.MARKER_NAME), "rb") as f:
        return f.read(len(F.MARKER_CONTENT) + 1) == F.MARKER_CONTENT


def upgrade_marker(root: str) -> None:
    """Say this version's format in the marker, durably, before anything of it is
    written: a version that reads only an older format then refuses the store at
    open instead of misreading it (or, for format 2's, meeting a record it does
    not know midway)."""
    _fsio.write_file_atomically(root, F.MARKER_NAME, F.MARKER_CONTENT, replacing=True)


def _exists(path: str) -> bool:
    """``os.path.exists``, but for a permission error, which is raised, not taken for "missing"."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return False
    return True


def refuse_untrusted(root: str) -> None:
    """``open_store``'s refusal alone, for a caller about to make a store at
    ``root`` in another process (the demo's writer): the sentence comes here,
    before anything is made, not from the child.

    :raises UnsafeFilesystemError: see ``_filesystems.require_trusted``.
    """
    _filesystems.require_trusted(root, root if _exists(root) else _existing_ancestor(root))


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


def missing_dirs(result: Recovered, blobs: str, logdir: str, *, salvage: bool) -> list[str]:
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
        damage(
            result,
            logdir,
            f"the log {'directory is missing' if logdir in missing else 'has no segment'}, yet "
            f"{F.BLOBS_DIR}/ holds values: every small value and every delete record went "
            "with it (a deleted key would come back)",
            salvage=salvage,
        )
    elif blobs in missing and logdir not in missing and not _log_is_new(logdir):
        damage(
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
