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
import fcntl
import os
import secrets

from . import _format
from .errors import BlobCacheError


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
    """fsync a file by path: used by ``sync()`` for files written in "os" mode."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
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


def create_exclusive(path: str, *, readable: bool = False) -> int:
    """Create a new file for writing and return its descriptor (fails if it exists)."""
    mode = os.O_RDWR if readable else os.O_WRONLY
    return os.open(path, mode | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)


def open_lock_file(path: str) -> int:
    """Open (creating if needed) a file whose only purpose is to be flocked."""
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)


def try_lock(fd: int) -> bool:
    """Take an exclusive flock without waiting; False when someone else holds it.

    flock locks belong to the open file description, so a second ``open`` of the
    same file in this very process conflicts too: that is what makes a second
    writer handle in one process fail like one in another process.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def lock_dir(path: str, *, exclusive: bool, wait: bool = True) -> int | None:
    """Open directory ``path`` and flock it; return the descriptor (closing it
    unlocks), or None when ``wait`` is False and another holder has it.

    The writer holds a key directory shared while it puts a version in it;
    ``blobcache gc`` in another process holds it exclusively while it removes
    the directory of a deleted key, so the two never interleave.

    :raises FileNotFoundError: ``path`` does not exist (any more).
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(
            fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB)
        )
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def temp_name() -> str:
    """A fresh temp file name; 64 random bits make a clash practically impossible."""
    return _format.TEMP_PREFIX + secrets.token_hex(_format.TEMP_RANDOM_HEX_DIGITS // 2)


def open_temp(directory: str, *, readable: bool = False) -> tuple[int, str]:
    """Create and flock a temp file in ``directory``; return (fd, path).

    The flock says "a writer is producing this": the janitor deletes only temp
    files it can lock itself, so no age guess is needed. It is released when the
    descriptor is closed, after the rename.

    Between the create and the flock the file is unlocked, and a janitor
    (``blobcache gc`` beside the writer) may take it as an orphan: it holds the
    lock then (ours fails), or has already unlinked it (ours succeeds on a file
    with no name, whose rename would fail). Either way the file is the
    janitor's: leave it and create another. Once ours is held and the file has
    its name, no janitor can take it.
    """
    while True:
        path = os.path.join(directory, temp_name())
        fd = create_exclusive(path, readable=readable)
        try:
            if try_lock(fd) and os.fstat(fd).st_nlink > 0:
                return fd, path
        except BaseException:
            os.close(fd)
            discard(path)
            raise
        os.close(fd)


def write_file_atomically(directory: str, name: str, data: bytes, *, sync: bool = True) -> str:
    """Publish ``directory/name`` holding ``data``, all or nothing; return its path.

    temp file + write + fsync + rename + fsync(directory): after a power cut the
    name either does not exist or holds every byte. On an error nothing is left:
    neither the temp file nor, if the directory fsync failed, the name. With ``sync=False`` both
    fsyncs are the caller's to do (before it promises anything about power loss);
    a process crash still leaves all or nothing.
    """
    path = os.path.join(directory, name)
    fd, tmp = open_temp(directory)
    try:
        pwrite_all(fd, data, 0)
        if sync:
            fsync_file(fd)
        rename(tmp, path)
    except BaseException:
        os.close(fd)
        discard(tmp)
        raise
    os.close(fd)
    if sync:
        try:
            fsync_dir(directory)
        except BaseException:
            # The caller sees a failure, so the name must not be found later (by
            # this process or, after a process crash, the next): take it back.
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
