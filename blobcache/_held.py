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
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from . import _filekinds, _fsio, _log, _logwriter, _recovered, _recovery, _storedir
from . import _format as F
from ._ledger import Ledger
from ._logwriter import LogWriter
from ._options import Options
from ._problems import Problem
from ._shared import SharedState
from .errors import BlobCacheError, ClosedError

if TYPE_CHECKING:
    from ._follow import Follower
    from ._tier import Tier
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
    """Open the store at ``path`` as ``options`` say: a writer takes the lock
    (shared: other handles write beside it), recovers and attaches to the log
    (``attach``); a reader recovers beside the writers, changing nothing (on any
    file system: see ``Options.trust_filesystem``)."""
    if options.readonly:
        _storedir.check_store(path)
        peeked = SharedState.peek(path)
        # STATE is current only while writers have the store open: after a
        # reboot it may say any old thing, and the log decides.
        live = peeked is not None and _storedir.handles_open(path)
        bound = peeked.bound() if peeked is not None and live else None
        recovered = recover_beside(path, options.salvage, readonly=True, bound=bound)
        return Held(path, -1, None, peeked), recovered
    lock_fd, alone = _storedir.open_store(path, trust_filesystem=options.trust_filesystem)
    state: SharedState | None = None
    try:
        state = SharedState(path)
        bound = None if alone else state.bound()
        # The compactions so far, read before the log is (one meanwhile moves
        # records the index will not know moved: see Garbage.generation).
        generation = state.generation
        recovered = recover_beside(path, options.salvage, readonly=False, bound=bound)
        writer = attach(path, state, recovered, options, alone=alone)
        recovered.generation = state.generation if alone else generation
    except BaseException:
        if state is not None:
            state.close()
        _fsio.unlock(lock_fd)
        raise
    return Held(path, lock_fd, writer, state), recovered


def recover_beside(
    path: str, salvage: bool, *, readonly: bool, bound: tuple[int, int] | None = None
) -> _recovered.Recovered:
    """Recover beside other processes' writers. One may delete a segment
    (compaction) or a version (janitor) between our listing and our read: then
    read again; each attempt sees a newer state."""
    for _ in range(READ_ATTEMPTS - 1):
        try:
            return _recovery.recover(path, salvage=salvage, readonly=readonly, bound=bound)
        except FileNotFoundError:
            continue
    return _recovery.recover(path, salvage=salvage, readonly=readonly, bound=bound)


def attach(
    root: str,
    state: SharedState,
    recovered: _recovered.Recovered,
    options: Options,
    *,
    alone: bool,
) -> LogWriter:
    """Make ``STATE`` agree with the log, under the append flock, and return a
    writer appending where the active segment's last whole record ends.
    ``alone``: no other handle had the store open (``STATE`` may be stale)."""
    logdir = os.path.join(root, F.LOG_DIR)
    with state.locked():
        if not _storedir.marker_is_current(root):
            # Before any record of format 4 is written (a format 1 store: before
            # any segment of format 2 is made): older versions then refuse the
            # store instead of misreading it.
            _storedir.upgrade_marker(root)
        # A cut or an fsync of the active segment that fails here is a trouble:
        # the other processes must not trust each other's fdatasyncs over it.
        with state.troubled_on_failure():
            _settle(root, logdir, state, recovered, alone=alone)
    return LogWriter(
        logdir,
        state,
        sync=options.durability == "fsync",
        segment_bytes=options.segment_bytes,
    )


def _settle(
    root: str, logdir: str, state: SharedState, found: _recovered.Recovered, *, alone: bool
) -> None:
    """Find the active segment's last whole record now (others may have appended
    since recovery read it), cut what follows unless it is zeros, and rebuild
    ``STATE`` if it says otherwise.

    ``alone``: nobody else has the store open, so ``STATE`` may be stale (after a
    power cut its page holds whatever was last written back, any time before):
    the log decides, every whole record counts. Beside live handles ``STATE`` is
    theirs and current: whole records past its ``appended`` are an append that
    died or failed midway (never acknowledged), cut with the torn bytes.

    A segment recovery could not append to gets a successor instead: one with a
    damaged header (salvaged), one of format 1 (the marker is upgraded first),
    one whose header its creator never made durable (made anew).
    REQUIRES: the append flock.
    """
    head = F.SEGMENT_HEADER.size
    with os.scandir(logdir) as entries:  # a directory named like one is a stray (reported)
        numbers = sorted(
            n
            for e in entries
            if (n := _log.parse_segment_name(e.name)) is not None
            and e.is_file(follow_symlinks=False)
        )
    last = found.segments[-1] if found.segments else None
    next_seq = found.max_seq + 1
    if state.magic_ok():
        next_seq = max(next_seq, state.next_seq)
    if not numbers:
        _fresh(logdir, state, 1, next_seq)
        return
    number = numbers[-1]
    path = os.path.join(logdir, _log.segment_name(number))
    resumed = last is not None and last.number == number
    if resumed and last is not None and last.damaged_header:  # salvaged: gc() rewrites it
        _fresh(logdir, state, number + 1, next_seq)
        return
    fd = _filekinds.open_regular(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        base = last.end if resumed and last is not None and last.end >= head else 0
        data = os.pread(fd, size - base, base)
        header = data[:head] if base == 0 else b""
        if base == 0 and _log.header_flags(header) is None:
            # Created by a process that died before its header was durable (a
            # damaged header otherwise: recovery refused or salvaged it).
            if size > head or (size == head and data.strip(b"\0")):
                raise BlobCacheError(f"{path}: the log's active segment has no good header")
            os.close(fd)
            fd = -1
            _fsio.unlink(path)
            found.torn_bytes += size
            found.segment_total.pop(number, None)
            found.segment_live.pop(number, None)
            found.segments[:] = [s for s in found.segments if s.number != number]
            _fresh(logdir, state, number, next_seq)
            return
        record_head = last.head if last is not None and base else _log.header_size(header)
        start = head if base == 0 else 0
        end = start
        for record in _log.iter_records(data, start, record_head, path):
            next_seq = max(next_seq, record.seq + 1)
            end = record.end
        end += base
        live = not alone and state.magic_ok() and state.segment == number
        if live and base <= state.appended < end:
            end = state.appended  # the rest: a dead or failed append, never acknowledged
        rest = data[end - base :]
        # STATE agrees with the log and live processes are using it: their
        # records not yet acknowledged stay so.
        trusted = live and state.appended == end
        # (Compared, not stripped: strip takes 3 ms per MiB of zero-filled room,
        # a compare 0.04 ms, and every writer's open looks at it.)
        if rest != bytes(len(rest)):
            _cut(fd, path, end, len(rest), found, last if resumed else None)
            allocated = end
            trusted = False
        elif trusted and state.allocated >= end:
            allocated = min(state.allocated, size)
        else:
            allocated = size
        if end == head:
            # Crash policy: a segment with no record may be one whose creator died
            # between writing its header and fsyncing it, the header then only in
            # the page cache. Writing after it (room zero-filled ahead, a record)
            # before it is durable would let a power cut leave a zeroed header with
            # bytes after it: corruption to recovery, not a crashed creation. So
            # it is fsynced first (log/, holding its entry, was at open).
            _fsio.fsync_file(fd)
        v1 = record_head == F.RECORD_HEADER_V1.size
        if trusted and not v1:
            state.next_seq = next_seq
            state.allocated = allocated
            state.pending = min(state.pending, allocated)
        else:
            # Rebuilt: the processes that wrote what is there are gone, and their
            # records are what recovery serves anyway: all acknowledged.
            state.reset(next_seq=next_seq, segment=number, appended=end, allocated=allocated)
    finally:
        if fd >= 0:
            os.close(fd)
    if v1:  # a store of format 1: its records go on in a segment of format 2
        _seal_v1(path, end)
        _fresh(logdir, state, number + 1, next_seq)


def _cut(
    fd: int,
    path: str,
    end: int,
    cut: int,
    found: _recovered.Recovered,
    read: _log.SegmentRead | None,
) -> None:
    """Cut a torn tail off the active segment, durably, and report it.

    Crash policy: the cut is made durable before any new record is written after
    it, so a later power cut cannot bring torn bytes back between good records.
    A flipped bit there looks the same (valid records may follow a torn page
    too), so the cut is reported, not only counted: point-in-time recovery.
    """
    _fsio.truncate(fd, end)
    _fsio.fsync_file(fd)
    why = read.why if read is not None and read.end == end and read.why else "a torn record"
    found.torn_bytes += cut
    problem = Problem(
        path,
        f"{why} at offset {end}: cut the segment there ({cut} bytes), as a write torn by a crash",
    )
    log.warning("blobcache: %s", problem)
    found.problems.append(problem)


def _seal_v1(path: str, end: int) -> None:
    fd = _filekinds.open_regular(path, os.O_RDWR)
    try:
        if os.fstat(fd).st_size != end:
            _fsio.truncate(fd, end)
        _fsio.fsync_file(fd)
    finally:
        os.close(fd)


def _fresh(logdir: str, state: SharedState, number: int, next_seq: int) -> None:
    """Start segment ``number`` and point ``STATE`` at it. REQUIRES: the append flock."""
    os.close(_logwriter.create_segment(logdir, number, flags=0))
    head = F.SEGMENT_HEADER.size
    state.reset(next_seq=next_seq, segment=number, appended=head, allocated=head)


class Held:
    """What a handle holds beyond its memory: the store's writer lock, the active
    log segment, the fsyncs it owes, and the signals of its background threads.

    Invariant: nothing here refers to the handle, so its finalizer and its
    threads reach these without keeping a dropped handle alive.
    """

    def __init__(
        self, path: str, lock_fd: int, writer: LogWriter | None, state: SharedState | None
    ) -> None:
        self.path = path
        self.lock_fd = lock_fd  # -1: readonly, no lock held
        self.writer = writer  # None: readonly
        self.state = state  # None: a reader of a store no writer of format 2 opened yet
        self.follower: Follower | None = None  # set by the handle once made
        self.owed = Ledger(path)
        self.stop = threading.Event()  # set once let go: the threads end
        self.compact_wanted = threading.Event()
        self.expiry_soon = threading.Event()  # Index.sooner: wakes the expiry thread
        self.forks = _forks[0]

    def compacted(self) -> int | None:
        """Count a compaction in ``STATE`` (what ``stats`` shows of the store's);
        return the count (None without ``STATE``)."""
        state = self.state
        if state is None:
            return None
        with state.locked():
            state.generation += 1
            return state.generation

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
        self.expiry_soon.set()
        # Invariant: in a forked child these are the parent's; the child's copy
        # of the lock descriptor was closed at the fork (see _fsio).
        if self.inherited():
            return
        if self.follower is not None:
            self.follower.close()
        if self.writer is None:
            if self.state is not None:
                self.state.close()
            return
        try:
            self.sync()
        finally:
            try:
                self.writer.close()
            finally:
                if self.state is not None:
                    self.state.close()
                _fsio.unlock(self.lock_fd)


def let_go_of_dropped(held: Held, tiers: Sequence[Tier] = ()) -> None:
    """The finalizer of a handle dropped without ``close()``: let go of the store
    as ``close()`` would, its remote tier's threads stopped first (they use the
    store). Nobody is left to raise to: a failure is logged."""
    try:
        if not held.inherited():
            for tier in tiers:
                tier.close()
        held.let_go()
    except (OSError, BlobCacheError) as exc:
        log.error("blobcache: closing %s, dropped without close(), failed: %s", held.path, exc)


def start_background(cache: BlobCache, options: Options) -> list[threading.Thread]:
    """The threads of a handle, each a ``_background`` loop: following the other
    processes every ``refresh_interval``; taking expired values out of memory;
    for a writer, compaction when asked
    for, with "os" durability a sync every ``sync_interval``, and with a
    ``gc_interval``, a gc that often."""
    held = cache._held
    loops: list[tuple[str, Callable[[], bool], Callable[[BlobCache], object]]] = [
        # Every half interval: a wake-up can wait its turn for the GIL (about
        # 5 ms when other threads are busy), and a hit must stay within the interval.
        ("refresh", held.every(options.refresh_interval / 2), lambda c: c._catch_up()),
        # At each expiry's deadline (see _expiry): an idle wait when none is set.
        ("expiry", cache._expiry.waiter(held.stop), lambda c: c._expire()),
    ]
    if held.writer is None:
        return _start(cache, loops)
    loops.append(("compaction", held.compaction_wanted, lambda c: c._compact(force=False)))
    if options.durability == "os":
        loops.append(("sync", held.every(options.sync_interval), lambda c: c.sync()))
    if options.gc_interval is not None:
        loops.append(("gc", held.every(options.gc_interval), lambda c: c.gc()))
    return _start(cache, loops)


def _start(
    cache: BlobCache, loops: list[tuple[str, Callable[[], bool], Callable[[BlobCache], object]]]
) -> list[threading.Thread]:
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
