"""What an open handle holds beyond its memory, and its background threads.

Opening takes the store's lock, recovers, and resumes the log (``open_store``);
``Held`` keeps the lock, the active segment and the durability ledger, and lets
go of them at ``close()`` -- or, for a handle dropped without ``close()``, in
its finalizer. Nothing here points back at the handle: its background threads
(``background``) hold only a weak reference, so a dropped handle is collected.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import _format as F
from . import _fsio, _logwriter, _recovered, _recovery, _storedir
from ._ledger import Ledger
from ._logwriter import LogWriter
from ._options import Options
from .errors import BlobCacheError, ClosedError

if TYPE_CHECKING:
    from .cache import BlobCache

log = logging.getLogger("blobcache")

# Bumped in a forked child, so that a handle can tell it was inherited without
# a getpid() system call on every put (see Held.inherited).
_forks = [0]
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _forks.__setitem__(0, _forks[0] + 1))

# How often a reader starts over when the writer removes a file it was reading.
READ_ATTEMPTS = 10


def open_store(path: str, options: Options) -> tuple[Held, _recovered.Recovered]:
    """Open the store at ``path`` as ``options`` say: a writer takes the lock,
    recovers (cutting torn tails, removing orphans) and resumes the log; a
    reader recovers beside a live writer, changing nothing (on any file system:
    see ``Options.trust_filesystem``)."""
    if options.readonly:
        return Held(path, -1, None), _read_beside_writer(path, options.salvage)
    lock_fd = _storedir.open_store(path, trust_filesystem=options.trust_filesystem)
    try:
        recovered = _recovery.recover(path, salvage=options.salvage)
        writer = _open_log(os.path.join(path, F.LOG_DIR), recovered, options)
    except BaseException:
        _fsio.unlock(lock_fd)
        raise
    return Held(path, lock_fd, writer), recovered


def _read_beside_writer(path: str, salvage: bool) -> _recovered.Recovered:
    """Recover without the lock, changing nothing. A live writer may delete a
    segment (compaction) or a version (janitor) between our listing and our
    read: then read again; each attempt sees a newer state."""
    _storedir.check_store(path)
    for _ in range(READ_ATTEMPTS - 1):
        try:
            return _recovery.recover(path, salvage=salvage, readonly=True)
        except FileNotFoundError:
            continue
    return _recovery.recover(path, salvage=salvage, readonly=True)


def _open_log(logdir: str, recovered: _recovered.Recovered, options: Options) -> LogWriter:
    """Resume writing after the last good record of the newest segment, or start one."""
    sync = options.durability == "fsync"
    size = options.segment_bytes
    last = recovered.segments[-1] if recovered.segments else None
    if last is not None and last.damaged_header:  # salvaged: gc() rewrites it
        return LogWriter.create(logdir, last.number + 1, sync=sync, segment_bytes=size)
    if last is None or last.end < F.SEGMENT_HEADER.size:
        if last is not None:  # created by a process that died before its header was durable
            _fsio.unlink(last.path)
            recovered.segments.pop()
            recovered.segment_total.pop(last.number, None)
            recovered.segment_live.pop(last.number, None)
        number = last.number if last is not None else 1
        return LogWriter.create(logdir, number, sync=sync, segment_bytes=size)
    fd = _logwriter.open_active(logdir, last.number, last.end, last.zero_tail)
    if last.end == F.SEGMENT_HEADER.size:
        # Crash policy: a segment with no record may be one whose creator died
        # between writing its header and fsyncing it, the header then only in
        # the page cache. Writing after it (room zero-filled ahead, a record)
        # before it is durable would let a power cut leave a zeroed header with
        # bytes after it: corruption to recovery, not a crashed creation. So
        # it is fsynced first (log/, holding its entry, was at open).
        try:
            _fsio.fsync_file(fd)
        except BaseException:
            os.close(fd)
            raise
    # Records found at open may sit only in the page cache (a crashed "os"
    # writer): unsynced=True makes the next sync() fdatasync them.
    return LogWriter(
        logdir,
        last.number,
        fd,
        last.end,
        sync=sync,
        segment_bytes=size,
        unsynced=True,
        allocated=last.end + last.zero_tail,
    )


class Held:
    """What a handle holds beyond its memory: the store's writer lock, the active
    log segment, the fsyncs it owes, and the signals of its background threads.

    Invariant: nothing here refers to the handle, so its finalizer and its
    threads reach these without keeping a dropped handle alive.
    """

    def __init__(self, path: str, lock_fd: int, writer: LogWriter | None) -> None:
        self.path = path
        self.lock_fd = lock_fd  # -1: readonly, no lock held
        self.writer = writer  # None: readonly
        self.owed = Ledger(path)
        self.stop = threading.Event()  # set once let go: the threads end
        self.compact_wanted = threading.Event()
        self.forks = _forks[0]

    def inherited(self) -> bool:
        """Whether this process is a fork of the one that opened the store."""
        return _forks[0] != self.forks

    def compaction_wanted(self) -> bool:
        """Wait until compaction is asked for; False once let go."""
        self.compact_wanted.wait()
        self.compact_wanted.clear()
        return not self.stop.is_set()

    def every(self, seconds: float) -> Callable[[], bool]:
        """A wait of ``seconds``, False once let go."""
        return lambda: not self.stop.wait(seconds)

    def sync(self) -> None:
        """``BlobCache.sync``: the log, then what "os" owes. REQUIRES: a writer."""
        assert self.writer is not None, "a readonly handle has nothing to sync"
        self.writer.sync()
        self.owed.sync()

    def let_go(self) -> None:
        """Stop the threads; for a writer, sync, close the log and release the lock
        (all of it even when the sync fails, which then raises)."""
        self.stop.set()
        self.compact_wanted.set()
        # Invariant: in a forked child these are the parent's; the child's copy
        # of the lock descriptor was closed at the fork (see _fsio).
        if self.writer is None or self.inherited():
            return
        try:
            self.sync()
        finally:
            try:
                self.writer.close()
            finally:
                _fsio.unlock(self.lock_fd)


def let_go_of_dropped(held: Held) -> None:
    """The finalizer of a handle dropped without ``close()``: let go of the store
    as ``close()`` would. Nobody is left to raise to: a failure is logged."""
    try:
        held.let_go()
    except (OSError, BlobCacheError) as exc:
        log.error("blobcache: closing %s, dropped without close(), failed: %s", held.path, exc)


def start_background(cache: BlobCache, options: Options) -> list[threading.Thread]:
    """The threads of a writing handle, each a ``_background`` loop: compaction
    when asked for; with "os" durability a sync every ``sync_interval``; with a
    ``gc_interval``, a gc that often. A reader changes nothing: none."""
    held = cache._held
    if held.writer is None:
        return []
    loops: list[tuple[str, Callable[[], bool], Callable[[BlobCache], object]]] = [
        ("compaction", held.compaction_wanted, lambda c: c._compact(force=False))
    ]
    if options.durability == "os":
        loops.append(("sync", held.every(options.sync_interval), lambda c: c.sync()))
    if options.gc_interval is not None:
        loops.append(("gc", held.every(options.gc_interval), lambda c: c.gc()))
    me = weakref.ref(cache)
    threads = [
        threading.Thread(
            target=_background, args=(me, wake, work, name), name=f"blobcache-{name}", daemon=True
        )
        for name, wake, work in loops
    ]
    for thread in threads:
        thread.start()
    return threads


def _background(
    cache: weakref.ref[BlobCache],
    wake: Callable[[], bool],
    work: Callable[[BlobCache], object],
    what: str,
) -> None:
    """A background thread: ``work(handle)`` each time ``wake()`` says so, until it
    says stop, the handle is closed, or the handle is gone. A failure is logged and
    tried again next time.

    Invariant: the thread holds the handle only while it works, so a handle the
    program dropped is collected, and its finalizer lets go of the store.
    """
    while wake():
        handle = cache()
        if handle is None:
            return
        try:
            work(handle)
        except ClosedError:
            return
        except (OSError, BlobCacheError) as exc:
            log.error("blobcache: background %s of %s failed: %s", what, handle.directory, exc)
        del handle
