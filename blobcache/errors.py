"""The exceptions blobcache raises; all derive from :class:`BlobCacheError`.

Each subclasses the built-in a caller would already catch for the same trouble
(``BlockingIOError`` for a held lock, ``ValueError`` for a closed handle, as a
closed file does), carries the path it is about, and pickles, so it survives
``multiprocessing``.
"""

from __future__ import annotations

import errno


class BlobCacheError(Exception):
    """Base class of every error blobcache raises on purpose."""


class LockedError(BlobCacheError, BlockingIOError):
    """The store is held alone: by blobcache 0.1's single writer (or a program
    holding an exclusive flock on ``LOCK``). Handles of this version share the
    store (any number, in any processes) and never raise this at each other.

    ``path`` is the lock file. Open again once that holder is done. (Also what
    ``blobcache gc --salvage`` raises while any handle has the store open.)
    """

    def __init__(self, path: str, why: str = "") -> None:
        super().__init__(
            errno.EAGAIN,
            why
            or f"the store is held alone by another program (an exclusive lock on {path}: "
            "blobcache 0.1's writer, say); open it again once that program is done",
        )
        self.path = path
        self.why = why

    def __reduce__(self) -> tuple[type[LockedError], tuple[str, str]]:
        return (type(self), (self.path, self.why))

    def __str__(self) -> str:
        return str(self.strerror)


class ClosedError(BlobCacheError, ValueError):
    """The handle was closed; open a new :class:`~blobcache.BlobCache`."""

    def __init__(self, path: str) -> None:
        super().__init__(f"the cache at {path} is closed; open it again to use it")
        self.path = path

    def __reduce__(self) -> tuple[type[ClosedError], tuple[str]]:
        return (type(self), (self.path,))


class ReadOnlyError(BlobCacheError, PermissionError):
    """A write (put, delete, gc, sync) through a handle opened with ``readonly=True``."""

    def __init__(self, path: str) -> None:
        super().__init__(
            errno.EROFS,
            f"the cache at {path} was opened with readonly=True: put, delete, gc and sync "
            "need a handle that holds the writer lock",
        )
        self.path = path

    def __str__(self) -> str:
        return str(self.strerror)

    def __reduce__(self) -> tuple[type[ReadOnlyError], tuple[str]]:
        return (type(self), (self.path,))


class CorruptionError(BlobCacheError):
    """A file of the store does not hold what its name or checksum says.

    ``path`` names the file and ``offset`` the first bad byte where one is known
    (``None`` when the whole file is in question). blobcache never returns bytes
    whose checksum failed; ``blobcache verify`` lists every such file.
    """

    def __init__(self, path: str, message: str, offset: int | None = None) -> None:
        where = path if offset is None else f"{path} at offset {offset}"
        super().__init__(f"{where}: {message}")
        self.path = path
        self.offset = offset
        self.detail = message

    def __reduce__(self) -> tuple[type[CorruptionError], tuple[str, str, int | None]]:
        return (type(self), (self.path, self.detail, self.offset))


class UnsafeFilesystemError(BlobCacheError):
    """The store is on a file system where flock or fsync may not hold (NFS, SMB,
    Lustre, GPFS, FUSE, ...), so it was not opened for writing; nothing was made
    or changed.

    ``path`` is the store and ``filesystem`` the file system's name. Put the
    store on a local file system, open it with ``readonly=True`` (which changes
    nothing), or pass ``trust_filesystem=True`` for one known to honour both.
    """

    def __init__(self, path: str, filesystem: str) -> None:
        super().__init__(
            f"{path} is on {filesystem}, a file system where flock may "
            "not keep a second writer out and fsync may return before the bytes are on "
            "stable storage: writing the store there could corrupt it without a sign, so "
            "it was not opened (nothing was changed). Put it on a local file system, open "
            "it with readonly=True, or pass trust_filesystem=True if this file system is "
            "known to honour flock and fsync (a FUSE file system made for tests, say)"
        )
        self.path = path
        self.filesystem = filesystem

    def __reduce__(self) -> tuple[type[UnsafeFilesystemError], tuple[str, str]]:
        return (type(self), (self.path, self.filesystem))


class BatchError(BlobCacheError):
    """A batch used wrongly: after it ended, from a thread other than its own, or
    opened inside another batch of the same thread. Nothing was changed."""


class CacheFullError(BlobCacheError, ValueError):
    """A put, batch or pin that ``max_bytes`` cannot make room for, because what
    is left to evict is pinned or the operation's own; nothing was changed.
    (A single value larger than ``max_bytes`` raises it too: a ``ValueError``.)"""


class RemoteError(BlobCacheError):
    """The remote tier failed: unreachable, refusing the credentials, a missing
    bucket, or a prefix that is not a remote tier. ``url`` is the remote's (never
    with credentials). What a failed put left is said where it is raised: a
    write-through ``put`` that raises this changed nothing locally."""

    def __init__(self, url: str, why: str) -> None:
        super().__init__(f"{url}: {why}")
        self.url = url
        self.why = why

    def __reduce__(self) -> tuple[type[RemoteError], tuple[str, str]]:
        return (type(self), (self.url, self.why))
