"""What kind of file is at a path, and opening only regular files.

Every open of a store file by its name goes through ``open_regular``, the one
place that decides what such a name may be, and every listing asks
``entry_kind``. Nothing here creates, writes or removes anything: those calls
are ``_fsio``'s, which crash tests record.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable

from .errors import CorruptionError


def open_regular(
    path: str,
    flags: int = os.O_RDONLY,
    *,
    unlisted: bool = False,
    opener: Callable[[str, int], int] = os.open,
) -> int:
    """Open ``path`` only if it is a regular file; return its descriptor.

    A name in the store says nothing about what it is: another program, or a
    user, may have put a symbolic link, a FIFO, a device or a directory there.
    ``O_NOFOLLOW`` refuses a link (else ``path()`` and ``get`` would serve any
    file of the machine, ``/etc/passwd`` say), ``O_NONBLOCK`` keeps the open of a
    FIFO from waiting forever for a writer, and the check is made on the opened
    descriptor, so nothing swapped in after a look slips through. A device is
    not even opened (an open may rewind a tape): callers that list a directory
    skip what the listing shows is no regular file, and ``unlisted`` looks first
    (an ``lstat``) for a name that was not listed, as ``FORMAT`` or ``LOCK``.
    ``opener``: as for the built-in ``open``, called with the path and the flags.

    REQUIRES: ``flags`` neither create nor truncate: a new or cut file changes
    what a crash leaves, so only ``_fsio`` does that, through an ``opener`` of
    its own (``open_lock_file``).

    :raises CorruptionError: ``path`` is something other than a regular file.
    :raises OSError: it cannot be opened (missing, permission denied...).
    """
    assert not flags & (os.O_CREAT | os.O_TRUNC), "a create or truncate is _fsio's: its opener"
    if unlisted:
        require_regular(path)
    try:
        fd = opener(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        kind = _OPEN_REFUSALS.get(exc.errno or 0)
        if kind is None:
            raise
        raise CorruptionError(path, misplaced(kind, "a regular file")) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise CorruptionError(path, misplaced(kind_of(mode), "a regular file"))
    except BaseException:
        os.close(fd)
        raise
    return fd


def require_regular(path: str) -> None:
    """Check, opening nothing (an ``lstat``), that ``path`` is a regular file or missing.

    :raises CorruptionError: it is something else.
    """
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        raise CorruptionError(path, misplaced(kind_of(mode), "a regular file"))


# What a failed open with O_NOFOLLOW | O_NONBLOCK says about the file: ELOOP for
# a symbolic link; EISDIR for a directory opened for writing; ENXIO for a socket.
_OPEN_REFUSALS = {
    errno.ELOOP: "a symbolic link",
    errno.EISDIR: "a directory",
    errno.ENXIO: "a socket",
}


def kind_of(mode: int) -> str:
    """What a file of this ``st_mode`` is, in words ("a symbolic link", "a FIFO"...)."""
    kinds = (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((word for test, word in kinds if test(mode)), "a special file")


def misplaced(kind: str, wanted: str) -> str:
    """The sentence for a name of the store that holds ``kind`` instead of ``wanted``
    ("a regular file", "a directory")."""
    return (
        f"{kind}, where blobcache keeps {wanted}: it never follows, opens or removes "
        "such an entry in its store (move it away if it is not yours)"
    )


def entry_kind(entry: os.DirEntry[str]) -> str | None:
    """None when a listed entry is a regular file, else what it is (see ``kind_of``);
    a symbolic link is one, whatever it points to.

    The listing's file type answers for free in the common case; only an entry
    that is not a regular file costs an ``lstat``.

    :raises FileNotFoundError: the entry was removed since the listing.
    """
    if entry.is_file(follow_symlinks=False):
        return None
    return kind_of(entry.stat(follow_symlinks=False).st_mode)
