"""Every system call that decides what survives a crash, and nothing else.

No other module calls ``os.fsync``, ``os.rename``, ``os.unlink``, ``os.mkdir`` or
``fcntl.flock`` directly: they call these helpers, by module attribute
(``_fsio.fsync_dir(...)``), so a test can record or fail any of them.

Crash models (DESIGN.md): after ``os.write`` returns the bytes survive a process
crash; only what was fsynced survives power loss, and a directory entry (a
create, rename, unlink or mkdir) is durable only once its directory is fsynced.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import struct
import threading
from collections.abc import Callable, Iterator
from typing import ParamSpec

from . import _filekinds, _names
from .errors import BlobCacheError

_P = ParamSpec("_P")


def fsync_file(fd: int) -> None:
    """Make the file's data and size durable (power loss)."""
    os.fsync(fd)


def fdatasync(fd: int) -> None:
    """Make the file's data durable, and its size when it grew (the log's sync)."""
    os.fdatasync(fd)


def earlier_sync_failed(where: str, error: OSError) -> BlobCacheError:
    """The error every ``sync()`` raises once an fsync of written data failed.

    "fsyncgate": after a failed fsync the kernel may have dropped the dirty pages
    and marked them clean, so a retried fsync can report success for data that
    is gone. Never retry; say so until the store is reopened.
    """
    return BlobCacheError(
        f"an earlier fsync in {where} failed ({error}); data written before it may not "
        "be durable, and a retry could wrongly report success: close and reopen the store"
    )


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """Write every byte of ``data`` at ``offset``.

    ``os.pwrite`` may write less than asked (Linux caps one call near 2 GiB, and
    a signal can cut it short); looping here keeps that from becoming a torn value.
    REQUIRES: ``data`` is flat bytes (a memoryview of format "B", one dimension).
    """
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def copy_range(src_fd: int, dst_fd: int, count: int, offset: int) -> int:
    """Copy up to ``count`` bytes at ``offset`` of one file to the same offset of
    another inside the kernel (no trip through user space; a reflink where the
    file system shares extents); return how many were copied (0: end of source).

    :raises OSError: the kernel cannot copy between these files (EXDEV, ENOSYS,
        EINVAL...): the caller reads and writes instead.
    """
    return os.copy_file_range(src_fd, dst_fd, count, offset, offset)


def truncate(fd: int, size: int) -> None:
    """Cut a file to ``size`` bytes; durable only after an fsync of the file."""
    os.ftruncate(fd, size)


def fsync_path(path: str) -> None:
    """fsync a file by path: used by ``sync()`` for files written in "os" mode.

    :raises CorruptionError: ``path`` is not a regular file (see ``_filekinds.open_regular``).
    """
    fd = _filekinds.open_regular(path)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    """Make the directory's entries durable: creates, renames, unlinks inside it."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rename(src: str, dst: str) -> None:
    """Rename atomically (a crash leaves either name, never neither nor a mix).

    Durable only after ``fsync_dir`` of the directory; the caller does that.
    """
    os.rename(src, dst)


def unlink(path: str) -> None:
    """Remove a file; durable only after ``fsync_dir`` of its directory."""
    os.unlink(path)


def rmdir(path: str) -> None:
    """Remove an empty directory; durable only after ``fsync_dir`` of its parent."""
    os.rmdir(path)


def mkdir(path: str) -> None:
    """Create a directory; durable only after ``fsync_dir`` of its parent."""
    os.mkdir(path, 0o755)


# File modes (before the umask). A version file, a key file or the marker is
# written once through the descriptor that created it and never opened for
# writing again: read-only, so a program writing through ``path(key)`` gets
# EACCES instead of truncating a live value under every mapped view of it (a
# SIGBUS in the reader). Unlinking needs only the directory's permission, so the
# janitor is not hindered. Log segments are reopened to append after a restart.
READ_ONLY = 0o444
WRITABLE = 0o644


def create_exclusive(path: str, *, readable: bool = False, mode: int = READ_ONLY) -> int:
    """Create a new file for writing and return its descriptor (fails if it exists).

    The descriptor may write whatever ``mode`` says: it applies to later opens.
    """
    access = os.O_RDWR if readable else os.O_WRONLY
    return os.open(path, access | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)


def open_lock_file(path: str) -> int:
    """Open (creating if needed) a file whose only purpose is to be flocked.

    :raises CorruptionError: ``path`` is not a regular file (a symbolic link, a FIFO...).
    """
    return _filekinds.open_regular(path, os.O_RDWR, unlisted=True, opener=_open_creating)


def _open_creating(path: str, flags: int) -> int:
    """``os.open``, creating ``path`` if missing: a new directory entry, so made here."""
    return os.open(path, flags | os.O_CREAT, 0o644)


# --- descriptors that carry an flock, and fork ------------------------------------------
#
# An flock belongs to the open file description, which a fork shares: a child
# holding its copy of a locked descriptor keeps the lock alive after the parent
# closes its own, or dies. A forked DataLoader worker would keep the store
# locked after its parent's close() (or SIGKILL), and a key directory locked
# against `blobcache gc`. So every descriptor opened to carry an flock is noted
# here, and a forked child closes its copies at once. Closing a copy releases
# nothing in the parent (LOCK_UN would: it acts on the shared description).
#
# Invariant: an fd in _flocked is open in this process and was opened by
# lock_file, lock_dir or open_temp; each is closed by unlock(). _flocked_lock
# is held from the open to the note, and from the forgetting to the close, and
# across a fork (the before-fork hook takes it): a child never holds a locked
# descriptor that is not in its copy of _flocked. Reentrant: the finalizer of a
# dropped handle (unlock of its lock) may run in a garbage collection that
# starts while this thread holds it.
_flocked: set[int] = set()
_flocked_lock = threading.RLock()


def _flocked_open(opener: Callable[_P, int], *args: _P.args, **kwargs: _P.kwargs) -> int:
    """``opener(*args, **kwargs)``'s descriptor, noted in ``_flocked`` before any
    fork can copy it unnoted (see the invariant above); ``unlock`` closes it."""
    with _flocked_lock:
        fd = opener(*args, **kwargs)
        _flocked.add(fd)
    return fd


def unlock(fd: int) -> None:
    """Close a descriptor returned by ``lock_file``, ``lock_dir`` or ``open_temp``,
    which releases its flock."""
    with _flocked_lock:
        _flocked.discard(fd)
        os.close(fd)


def _close_flocked_in_child() -> None:
    """After a fork, in the child: close the copies of the parent's locked descriptors."""
    for fd in _flocked:
        with contextlib.suppress(OSError):
            os.close(fd)
    _flocked.clear()
    _flocked_lock.release()  # taken by the forking thread before the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_flocked_lock.acquire,
        after_in_parent=_flocked_lock.release,
        after_in_child=_close_flocked_in_child,
    )


def open_flocked(path: str) -> int:
    """``open_lock_file``, noted as a descriptor that carries an flock (closed in
    a forked child; ``unlock`` closes it)."""
    return _flocked_open(open_lock_file, path)


def open_flocked_readonly(path: str) -> int:
    """An existing file opened to read, noted like ``open_flocked``'s (a reader's
    map of ``STATE``: closed in a forked child with the rest).

    :raises FileNotFoundError: there is none.
    """
    return _flocked_open(_filekinds.open_regular, path, os.O_RDONLY, unlisted=True)


def lock_file(path: str, *, shared: bool = False) -> int | None:
    """Open (creating if needed) the file ``path`` and flock it exclusively without
    waiting; return the descriptor (``unlock`` releases it), or None when another
    holder has it (with ``shared``: the lock taken shared, None when someone holds
    it exclusively). The store's lock: see ``try_lock``."""
    fd = open_flocked(path)
    if not try_lock(fd, shared=shared):
        unlock(fd)
        return None
    return fd


def lock_existing(path: str) -> int | None:
    """flock the regular file ``path`` exclusively without waiting and without
    creating it: its descriptor (``unlock`` releases it), or None when another
    holder has it.

    :raises FileNotFoundError: it is not there.
    :raises OSError: it is something else (a link is never followed, a FIFO
        never waited on).
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        if not try_lock(fd):
            os.close(fd)
            return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def try_lock(fd: int, *, shared: bool = False) -> bool:
    """Take an exclusive flock without waiting; False when someone else holds it.

    flock locks belong to the open file description, so a second ``open`` of the
    same file in this very process conflicts too: that is what makes a second
    writer handle in one process fail like one in another process.
    """
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def lock_dir(path: str, *, exclusive: bool, wait: bool = True) -> int | None:
    """Open directory ``path`` and flock it; return the descriptor (``unlock``
    closes it), or None when ``wait`` is False and another holder has it.

    The writer holds a key directory shared while it puts a version in it, and
    any directory shared while it creates a temp file there (``open_temp``);
    ``blobcache gc`` in another process holds it exclusively while it removes
    the directory of a deleted key, and every temp sweeper while it removes
    temp files, so none of these interleave.

    :raises FileNotFoundError: ``path`` does not exist (any more).
    """
    fd = _flocked_open(os.open, path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(
            fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB)
        )
    except BlockingIOError:
        unlock(fd)
        return None
    except BaseException:
        unlock(fd)
        raise
    return fd


def open_temp(
    directory: str, *, readable: bool = False, mode: int = READ_ONLY, directory_held: bool = False
) -> tuple[int, str]:
    """Create and flock a temp file in ``directory``; return (fd, path).

    The flock says "a writer is producing this": a sweeper deletes only temp
    files it can lock itself, so no age guess is needed. It is released when the
    descriptor is closed (``unlock``), after the rename.

    Invariant: no live temp file is ever visible unlocked to a sweeper. Between
    the create and the flock a sweeper in another process (``blobcache gc``)
    would find the new file free and delete it under its writer, so both happen
    while this holds ``directory``'s flock shared, and every sweeper holds it
    exclusively before it tries a temp file's flock (``sweeping_temps``).
    Why not ``O_TMPFILE``, linked in once written: Linux-only, not on every file
    system, and the link needs ``/proc`` or a capability; a fallback for the
    rest would bring the window back. ``directory_held``: the caller holds
    ``directory``'s flock exclusively already (a store's init), which keeps
    sweepers out as well; a second flock here would wait on the caller's own.

    :raises FileNotFoundError: ``directory`` does not exist (any more).
    """
    held = None if directory_held else lock_dir(directory, exclusive=False)
    try:
        path = os.path.join(directory, _names.temp_name())
        fd = _flocked_open(create_exclusive, path, readable=readable, mode=mode)
        try:
            locked = try_lock(fd)
            assert locked, "a temp file just created with O_EXCL cannot be locked by anyone else"
        except BaseException:
            unlock(fd)
            unlink(path)
            raise
    finally:
        if held is not None:
            unlock(held)
    return fd, path


@contextlib.contextmanager
def sweeping_temps(directory: str, *, held: bool = False) -> Iterator[bool]:
    """Hold ``directory`` against temp file creators while a sweeper looks at its
    temp files; yield whether it may (False: a writer is creating one right now,
    or the directory is gone: sweep it later). ``held``: the caller holds the
    directory's flock exclusively already; yield True.

    Invariant: while this yields True, no temp file in ``directory`` is between
    its create and its flock (see ``open_temp``), so a free flock means no
    writer. Never waits: the writer holds a key directory shared for the whole
    write of a version (``_writes.Writes._in_key_dir``), whose temp file is live anyway.
    """
    if held:
        yield True
        return
    try:
        fd = lock_dir(directory, exclusive=True, wait=False)
    except FileNotFoundError:
        fd = None
    try:
        yield fd is not None
    finally:
        if fd is not None:
            unlock(fd)


def write_file_atomically(
    directory: str,
    name: str,
    data: bytes | Callable[[os.stat_result], bytes],
    *,
    sync: bool = True,
    mode: int = READ_ONLY,
    directory_held: bool = False,
    replacing: bool = False,
) -> str:
    """Publish ``directory/name`` holding ``data``, all or nothing; return its path.

    ``data`` may be a function of the temp file's stat, called once the file
    exists (the index snapshot takes the file system's clock from its mtime,
    ``_dirbook``); what it raises is raised, the temp file gone.

    ``replacing``: the name held a file before (the marker upgraded): a failed
    directory fsync leaves the name as it is (old or new content, both whole),
    since taking it back would lose the old one too.

    temp file + write + fsync + rename + fsync(directory): after a power cut the
    name either does not exist or holds every byte. On an error nothing is left:
    neither the temp file nor, if the directory fsync failed, the name. With ``sync=False`` both
    fsyncs are the caller's to do (before it promises anything about power loss);
    a process crash still leaves all or nothing. ``directory_held``: as for ``open_temp``.
    """
    path = os.path.join(directory, name)
    fd, tmp = open_temp(directory, mode=mode, directory_held=directory_held)
    try:
        if callable(data):
            data = data(os.fstat(fd))
        pwrite_all(fd, data, 0)
        if sync:
            fsync_file(fd)
        rename(tmp, path)
    except BaseException:
        unlock(fd)
        discard(tmp)
        raise
    unlock(fd)
    if sync:
        try:
            fsync_dir(directory)
        except BaseException:
            # The caller sees a failure, so the name must not be found later (by
            # this process or, after a process crash, the next): take it back.
            if not replacing:
                discard(path)
            raise
    return path


def discard(path: str) -> None:
    """Best-effort removal of a temp file after a failed write; it is garbage either way."""
    # If this fails too, recovery or the janitor removes the orphaned temp file later.
    with contextlib.suppress(OSError):
        unlink(path)


def makedirs(top: str, path: str, *, sync: bool = True) -> list[str]:
    """Create the missing directories from ``top`` (which exists) down to ``path``.

    With ``sync``, the entry of every directory on the way is made durable by
    fsyncing its parent -- also of those that already existed, since a process
    killed between a mkdir and that fsync leaves a directory that exists but
    may not survive a power cut. Without ``sync``, that is the caller's to do.
    Returns the directories created (outermost first).
    """
    rel = os.path.relpath(path, top)
    created: list[str] = []
    passed: list[str] = []
    current = top
    parts = rel.split(os.sep)
    retries = 3  # `blobcache gc` in another process may remove an empty parent meanwhile
    while len(passed) < len(parts):
        current = os.path.join(current, parts[len(passed)])
        try:
            mkdir(current)
        except FileExistsError:
            passed.append(current)
            continue
        except FileNotFoundError:
            if not retries:
                raise
            retries -= 1
            current, passed, created = top, [], []  # from the top again
            continue
        passed.append(current)
        created.append(current)
    if sync:
        for directory in passed:
            fsync_dir(os.path.dirname(directory))
    return created


# --- byte-range locks: one computation per key ------------------------------------------
#
# memoize's waiters (``_memoize``) lock one byte of the store's LOCK file, at an
# offset its key hashes to: fcntl record locks, which neither touch flock's lock
# on the same file nor write a byte, die with their process, and are waited on
# in the kernel (no spinning, the GIL released). Open file description ("OFD")
# locks where the kernel has them (Linux 3.15 on): classic POSIX record locks
# belong to the process and all go at the first close() of *any* descriptor of
# the file in it, which another handle of the store in this process does.
# Opened through _flocked_open: a forked child closes its copy, which would be
# the parent's very lock owner, and opens its own.
_OFD_WAIT = getattr(fcntl, "F_OFD_SETLKW", None)
_OFD_SET = getattr(fcntl, "F_OFD_SETLK", None)
# struct flock on Linux x86-64 and aarch64: l_type, l_whence (shorts), l_start,
# l_len (off_t), l_pid (0 for OFD locks), padded to 32 bytes.
_FLOCK = struct.Struct("hh4xqqi4x")


def open_range_locks(path: str) -> int:
    """A descriptor of ``path`` (the store's LOCK, which exists) to take
    ``lock_range`` locks on; ``unlock`` closes it, releasing them."""
    return _flocked_open(_filekinds.open_regular, path, os.O_RDWR, unlisted=True)


def lock_range(fd: int, offset: int) -> None:
    """Lock the byte at ``offset`` of ``fd``'s file exclusively, waiting for it.
    REQUIRES: no other thread of this process holds the same byte (an OFD lock
    is the descriptor's: threads sharing one do not exclude each other)."""
    if _OFD_WAIT is None:
        fcntl.lockf(fd, fcntl.LOCK_EX, 1, offset)
        return
    fcntl.fcntl(fd, _OFD_WAIT, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, offset, 1, 0))


def unlock_range(fd: int, offset: int) -> None:
    """Release ``lock_range``'s lock of the byte at ``offset``."""
    if _OFD_SET is None:
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, offset)
        return
    fcntl.fcntl(fd, _OFD_SET, _FLOCK.pack(fcntl.F_UNLCK, os.SEEK_SET, offset, 1, 0))
