"""Appending to the log of small values: group commit into the active segment.

The writer of the format in FORMAT.md, section "The log", whose records and
segment headers ``_log`` frames (and reads back at open): ``LogWriter`` queues
the puts of concurrent threads and writes each batch with one ``pwrite`` and
one fdatasync, rolls over to a new segment when the active one is full, and
``create_segment`` makes segment files for it (``_held.attach`` settles the
active one at open).

Crash policy:

* a record is acknowledged only after the write (and, with ``sync``, the
  fdatasync) of the batch holding it returned (``append``, ``_lead``);
* a segment is sealed only after an fdatasync, whatever the durability level,
  so a sealed segment is never torn (``_roll``).
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
import time
from collections.abc import Callable

from . import _filekinds, _fsio
from . import _format as F
from ._index import MAX_SEGMENT_NUMBER
from ._log import segment_header, segment_name
from ._names import Key
from ._shared import SharedState
from .errors import BlobCacheError


class _Request:
    """One record waiting to be written; its thread sleeps on ``wake`` until
    its batch is done or it is handed the lead. ``make(seq)`` frames the record
    once its number is known (under the append flock); ``own`` is what the
    index gets when the follower reaches it (see ``_follow``)."""

    __slots__ = (
        "count",
        "done",
        "end",
        "error",
        "hint",
        "make",
        "own",
        "plan",
        "seq",
        "size",
        "wake",
    )

    def __init__(
        self,
        make: Callable[[int], tuple[bytes, object]],
        hint: int,
        count: int,
        plan: Callable[[], int] | None = None,
    ) -> None:
        self.make = make
        # Called under the append flock just before ``make``: how many numbers
        # the request takes (a capped put's evictions are chosen there: _cap).
        self.plan = plan
        self.hint = hint  # about the record's size, to cut batches
        # The numbers it takes: 1, or a batch's records (then ``own`` is a list
        # of (size, change), one per record, in order: see ``LogWriter.append``).
        self.count = count
        self.done = False
        self.error: BaseException | None = None
        self.seq = 0
        self.end = (0, 0)  # (segment, offset just after the record)
        self.size = 0  # the record's bytes
        self.own: object = None
        self.wake: threading.Lock = _NO_WAKE  # a lock of its own once queued (group commit)


_NO_WAKE = threading.Lock()  # a request's wake until it is queued

# ``STATE.pending`` while a roll is under way (see LogWriter._roll).
ROLLING = F.MAX_SEQ

# What the writer tells the follower of its own records: (segment, offset) ->
# (seq, record size, what make() said the index gets).
Own = dict[tuple[int, int], tuple[int, int, object]]


class LogWriter:
    """Appends records to the active segment, which several processes share;
    concurrent puts of this process share writes and fdatasyncs.

    Group commit, as in LevelDB's writer queue: a putting thread queues its
    record; if no batch is being written it leads, otherwise it sleeps on its
    own lock. A leader takes every queued record (up to ``batch_bytes``),
    and under the store's append flock (``_shared.SharedState``) takes their
    sequence numbers, frames them and writes them with one ``pwrite`` where the
    last whole record ends; then it makes them durable with one ``fdatasync``,
    shared with the other processes appending (``SharedState.sync_shared``:
    theirs may cover it, or its theirs), and marks them acknowledged (``acked``)
    for every process to see. Then it hands the lead to the first record queued
    meanwhile (so the next batch starts at once) and wakes the threads of its
    batch. With ``sync=False``
    ("os" durability) an append is one ``pwrite`` under the lock, acknowledged
    at once, and ``sync()`` flushes later.

    Failure: a failed write or fdatasync fails every put of its batch; the
    segment is cut back to where the batch began when no other process wrote
    after it, and the next batch goes into a new segment.
    """

    # The file is zero-filled and fdatasynced this far ahead of the records, so
    # a batch's fdatasync flushes data only: no size change, no journal commit
    # (91-98 us instead of 125-140 us per fdatasync on the reference machine).
    # Recovery reads the zeros as the end of the log.
    PREALLOCATE = 1 << 20

    def __init__(
        self,
        directory: str,
        state: SharedState,
        *,
        sync: bool,
        segment_bytes: int,
        batch_bytes: int = 1 << 20,
    ) -> None:
        self.directory = directory
        self.state = state
        self.number = state.segment  # the segment _fd is open on
        self._fd = _open_segment(directory, self.number)
        self._sync = sync
        self._segment_bytes = segment_bytes
        self._batch_bytes = batch_bytes
        self._lock = threading.Lock()  # guards the fields below, never held during I/O
        self._queue: list[_Request] = []
        self._leading = False  # a leader is writing a batch (it owns the file)
        self._idle = threading.Condition(self._lock)  # notified when the lead is let go
        self._failed = False  # the last batch failed: roll before writing again
        # Records found at open may sit only in the page cache (a crashed "os"
        # writer): the first sync() fdatasyncs them.
        self._unsynced = True
        self._sync_error: OSError | None = None  # a failed sync(): refuse to pretend again
        self._more = threading.Condition(self._lock)  # a record was queued
        self._expect = 0  # records the next leader may wait for (see _gather)
        self.own: Own = {}  # this process's records the follower has yet to pass
        # Those its writer applied itself, before the follower passed them:
        # (segment, offset) -> (size, seq), for the follower to step over.
        # (and for a delete its key: see Index.gone).
        self.ahead: dict[tuple[int, int], tuple[int, int, Key | None]] = {}
        # Writes begun under the append flock: a capped put's view of what is
        # appended but not yet applied is good for one write (_cap).
        self.writes_begun = 0

    def append(
        self,
        make: Callable[[int], tuple[bytes, object]],
        hint: int,
        count: int = 1,
        plan: Callable[[], int] | None = None,
    ) -> tuple[int, int, int, int]:
        """Write the record ``make(seq)`` frames; return (seq, segment, offset,
        size) once it is acknowledged.

        With ``sync`` that is after the fdatasync of its batch: it survives power
        loss. Without, after the write: it survives a crash of this process.

        ``count`` > 1: ``make(seq)`` frames that many records, numbered from
        ``seq`` on (a batch of the user's, ``_writes.Writes.put_batch``), and
        says what each of them does: a list of (record size, change). They are
        written with one write, one after the other, and acknowledged together.
        ``plan``: says that count, under the append flock, just before ``make``.
        """
        request = _Request(make, hint, count, plan)
        if not self._sync:  # no queue, no lead: the request is never slept on
            with self._lock:
                while self._leading:  # a roll() by compaction
                    self._idle.wait()
                self._write([request], acknowledge=True)
            if request.error is not None:
                raise request.error
            return request.seq, request.end[0], request.end[1] - request.size, request.size
        request.wake = threading.Lock()
        request.wake.acquire()  # released exactly once, by whoever wakes this thread
        with self._lock:
            self._queue.append(request)
            lead = not self._leading
            self._leading = True
            # Wake a gathering leader only once what it waits for is queued, not
            # at every record (each wake is a GIL handoff: see _gather).
            if self._expect and len(self._queue) >= self._expect:
                self._more.notify()
        if not lead:
            request.wake.acquire()  # until our batch is done, or the lead is ours
        if not request.done:
            self._lead()
        if request.error is not None:
            raise request.error
        return request.seq, request.end[0], request.end[1] - request.size, request.size

    def _lead(self) -> None:
        """Write the queued records as one batch and fdatasync them; then pass
        the lead on and wake the batch. REQUIRES: this thread holds the lead."""
        with self._lock:
            self._gather()
            batch: list[_Request] = []
            size = 0
            queue, limit = self._queue, self._batch_bytes
            while queue and (not batch or size + queue[0].hint <= limit):
                batch.append(queue.pop(0))
                size += batch[-1].hint
        error: BaseException | None = None
        span: tuple[int, int, int, int] | None = None
        try:
            span = self._write(batch, acknowledge=False)
            if span is not None:
                # Marks it acknowledged too (`acked`), for every process to see.
                number, _start, end, troubles = span
                self.state.sync_shared(number, end, troubles, self._fdatasync_batch)
        except BaseException as exc:  # every put of the batch fails with it
            error = exc
            if span is not None:
                self._undo(span)
        for request in batch:
            request.done = True
            if error is not None and request.error is None:
                request.error = error
        with self._lock:
            if error is None and not self._queue:
                self._unsynced = False
            # The threads woken below may put again at once: let the next leader
            # wait a moment for them (see _gather).
            self._expect = len(self._queue) + len(batch)
            if self._queue:
                self._queue[0].wake.release()  # the lead passes on; _leading stays True
            else:
                self._leading = False
                self._idle.notify_all()
        # Invariant: the leader's own record is batch[0] (the lead goes to the
        # front of the queue); every other thread of the batch sleeps on its lock.
        for request in batch[1:]:
            request.wake.release()

    # How long a new leader waits for the threads of the previous batch to queue
    # their next records. Without it, batch sizes alternate (k, n-k, k, ...):
    # the threads woken by one batch always just miss the next.
    GATHER_SECONDS = 100e-6

    def _gather(self) -> None:
        """Wait up to ``GATHER_SECONDS`` until the expected records are queued.

        REQUIRES: lock held, this thread holds the lead.
        """
        expect = self._expect
        if expect > len(self._queue):
            deadline = time.monotonic() + self.GATHER_SECONDS
            while len(self._queue) < expect:
                left = deadline - time.monotonic()
                if left <= 0 or not self._more.wait(left):
                    break
        self._expect = 0

    def _write(
        self, batch: list[_Request], *, acknowledge: bool
    ) -> tuple[int, int, int, int] | None:
        """Under the append flock: number and frame the records of ``batch`` and
        pwrite them where the active segment's last whole record ends; return
        (segment, start, end, ``troubles`` then), or None when no record was
        framed (each request whose ``make`` raised carries its error).

        Rolls over first when they would overflow the segment or the last batch
        failed; zero-fills ahead first when they would pass the preallocation.
        With ``acknowledge`` ("os"), the records are acknowledged at once.
        REQUIRES: this thread owns the file (lead, or the lock with ``sync=False``).
        """
        state = self.state
        with state.locked():
            first, segment, start, _, pending, allocated, _ = state.fields()
            if segment != self.number or pending == ROLLING:
                self._follow_roll()
                if state.pending == ROLLING:  # its roller died midway
                    self._finish_roll()
                first, _, start, _, pending, allocated, _ = state.fields()
            self.writes_begun += 1
            records: list[tuple[_Request, bytes]] = []
            seq = first
            for request in batch:
                try:
                    if request.plan is not None:
                        request.count = request.plan()
                    if seq + request.count > F.MAX_SEQ:
                        raise BlobCacheError(
                            f"sequence numbers are exhausted (next would be {seq})"
                        )
                    # Taken before anything is written (make names files with
                    # them): a number is never handed out twice, even by a
                    # process killed right after this.
                    state.next_seq = seq + request.count
                    data, request.own = request.make(seq)
                except BaseException as exc:  # this put fails alone (its numbers a gap)
                    request.error = exc
                    continue
                finally:
                    request.seq, seq = seq, seq + request.count
                records.append((request, data))
            if not records:
                return None
            data = records[0][1] if len(records) == 1 else b"".join(d for _, d in records)
            full = start > F.SEGMENT_HEADER.size and start + len(data) > self._segment_bytes
            if self._failed or full:
                self._roll()
                _, _, start, _, pending, allocated, _ = state.fields()
            end = start + len(data)
            if end > allocated:
                self._extend(end)
                allocated = state.allocated
            # Past `start`: an appender died there mid-write (within the room it
            # had zero-filled: STATE is a hint, never trusted past the file).
            dead = min(pending, allocated)
            state.pending = end
            try:
                _fsio.pwrite_all(self._fd, data, start)
                if dead > end:  # its bytes would read as a record after ours
                    _fsio.pwrite_all(self._fd, bytes(dead - end), end)
            except BaseException:
                # What the write left past `start` is a failed append's: `pending`
                # says so until it is cut (here, or by the roll the next batch makes).
                state.pending = max(end, dead)
                self._failed = True
                state.trouble()
                with contextlib.suppress(OSError):
                    _fsio.truncate(self._fd, start)
                    state.pending = start
                    state.allocated = min(allocated, start)
                raise
            number, own, offset = self.number, self.own, start
            for request, record in records:
                size = len(record)
                request.end, request.size = (number, offset + size), size
                if request.count == 1:
                    own[(number, offset)] = (request.seq, size, request.own)
                    offset += size
                    continue
                members = request.own
                assert isinstance(members, list), "a batch's make says each record's change"
                for member_seq, (member_size, change) in enumerate(members, request.seq):
                    own[(number, offset)] = (member_seq, member_size, change)
                    offset += member_size
            state.set_appended(end, acked=acknowledge)
            self._unsynced = True
            return number, start, end, state.troubles

    def claim(self, segment: int, offset: int, *, gone: Key | None = None) -> bool:
        """Whether this process's record at (segment, offset) is its writer's to
        apply to the index, not the follower's, which took it first otherwise
        (one of the two applies each record, once: a dict's pop is atomic).
        ``gone``: the key, for a delete (the follower clears ``Index.gone``)."""
        where = (segment, offset)
        mine = self.own.get(where)
        if mine is None:
            return False
        seq, size, _change = mine
        # In `ahead` before it leaves `own`: a follower that misses it in the one
        # finds it in the other, never takes it for another process's record.
        self.ahead[where] = (size, seq, gone)
        if self.own.pop(where, None) is None:  # the follower took it meanwhile
            self.ahead.pop(where, None)
            return False
        return True

    def _fdatasync_batch(self) -> None:
        """A batch's fdatasync: unlike ``_fdatasync``, a failure fails only its
        batch (no ``_sync_error``: those puts raise), and ``sync_shared`` notes
        the trouble."""
        _fsio.fdatasync(self._fd)

    def _undo(self, span: tuple[int, int, int, int]) -> None:
        """After a failed fdatasync (or any failure while the batch waited for
        one): cut the segment back to where the batch began if nothing was
        written after it since, and roll before the next write.

        The batch is taken off the log first (``appended`` back to its start), so
        even if the cut fails no follower reads it, and the roll cuts it then.
        If another process appended after it the records stay: they were never
        acknowledged, yet every process will read them (a failed fdatasync with
        another writer in between: see FORMAT.md, "Several processes"). So do
        they once ``acked`` passed their start: another process's fdatasync
        covered them (the put failed while it waited, interrupted), or a
        writer's open rebuilt ``STATE``; other processes may have read them.
        """
        number, start, end, _troubles = span
        state = self.state
        self._failed = True
        with state.locked():
            state.trouble()  # (a cut may come under another's fdatasync)
            for key in [k for k in self.own if k[0] == number and start <= k[1] < end]:
                del self.own[key]
            if state.segment == number and state.appended == end and state.acked <= start:
                state.appended = start
                state.pending = end  # what is past `start` is a dead append's
                with contextlib.suppress(OSError):
                    _fsio.truncate(self._fd, start)
                    state.pending = start
                    state.allocated = min(state.allocated, start)

    def _cut_failed(self) -> None:
        """Cut what a failed batch whose cut failed left past the last whole record
        (``_undo``), if the segment is still the active one: else its sealer did."""
        state = self.state
        with state.locked():
            if state.segment == self.number and state.pending > state.appended:
                state.trouble()
                _fsio.truncate(self._fd, state.appended)
                state.pending = state.allocated = state.appended

    def _follow_roll(self) -> None:
        """Point ``_fd`` at the active segment, which another process may have
        started. REQUIRES: the append flock; this thread owns the file."""
        number = self.state.segment
        if number != self.number:
            fd = _open_segment(self.directory, number)
            os.close(self._fd)
            self._fd, self.number, self._failed = fd, number, False

    def _extend(self, end: int) -> None:
        """Zero-fill the file up to ``end`` and ``PREALLOCATE`` beyond, within the
        segment's size, durably. REQUIRES: the append flock; this thread owns the file."""
        state = self.state
        allocated = state.allocated
        target = max(end, min(state.appended + self.PREALLOCATE, self._segment_bytes))
        with state.troubled_on_failure():
            _fsio.pwrite_all(self._fd, bytes(target - allocated), allocated)
        self._fdatasync()
        state.allocated = target

    def _fdatasync(self) -> None:
        """fdatasync the active segment outside a batch. REQUIRES: this thread owns
        the file. If it fails while written records wait for it, so does every
        later ``sync()`` (see ``_fsio.earlier_sync_failed``); it is a trouble
        for every process (``SharedState.trouble``)."""
        try:
            _fsio.fdatasync(self._fd)
        except OSError as exc:
            if self._unsynced:
                self._sync_error = exc
            self.state.trouble()
            raise
        self._unsynced = False

    def sync(self, *, force: bool = False) -> None:
        """fdatasync the segment this process last wrote if anything written may
        lack one (a segment sealed since was fdatasynced by its sealer); with
        ``force``, the active one whoever wrote it."""
        with self._lock:
            while self._leading:
                self._idle.wait()
            if self._sync_error is not None:
                raise _fsio.earlier_sync_failed(self.directory, self._sync_error)
            if force:
                with self.state.locked():
                    self._follow_roll()
                self._unsynced = True
            if self._unsynced:
                self._fdatasync()

    def roll(self) -> int:
        """Seal the active segment and start the next one; return the new active
        number. Used by compaction, whose output then replaces the sealed one.

        Invariant: segment numbers are used one after the other, never skipped,
        so recovery can tell a lost segment by the gap it leaves.
        """
        with self._lock:
            while self._leading:
                self._idle.wait()
            with self.state.locked():
                self._follow_roll()
                if self.state.pending == ROLLING:
                    self._finish_roll()
                self._roll()
            return self.number

    def _roll(self) -> None:
        """Seal: cut the file at its last whole record (the zero-filled room, and
        what a writer killed mid-append left), fdatasync (whatever the durability
        level, so a sealed segment is never torn), then create the next segment.

        ``pending`` says ``ROLLING`` from the start until every other field names
        the new segment: an appender that finds it so (the roller died) finishes
        the roll before it writes (``_finish_roll``), so nothing is appended to a
        segment once its successor may exist (recovery would take it as sealed,
        and its torn tail as damage), and no field is trusted half changed.
        REQUIRES: the append flock; this thread owns the file.
        """
        if self.number >= MAX_SEGMENT_NUMBER:  # the index packs it in 24 bits (_index.pack)
            raise BlobCacheError(
                f"log segment numbers are exhausted ({self.number} is the last): "
                "copy the store's values into a new store"
            )
        state = self.state
        state.pending = ROLLING
        if os.fstat(self._fd).st_size != state.appended:
            _fsio.truncate(self._fd, state.appended)
        self._fdatasync()
        self._start_successor()

    def _start_successor(self) -> None:
        """Create the segment after the sealed one and point ``STATE`` at it, the
        new segment's ``acked`` before its number (a reader takes `acked` as the
        segment's it read with it), ``pending`` last. REQUIRES: as ``_roll``."""
        state = self.state
        number = self.number + 1
        new_fd = create_segment(self.directory, number, flags=0)
        os.close(self._fd)
        self._fd, self.number, self._failed = new_fd, number, False
        head = F.SEGMENT_HEADER.size
        state.appended = state.acked = state.allocated = state.synced = head
        state.synced_in = number
        state.segment = number
        state.pending = head

    def _finish_roll(self) -> None:
        """Finish the roll of a process that died midway (``pending`` is
        ``ROLLING``). REQUIRES: as ``_roll``, after ``_follow_roll``."""
        state = self.state
        head = F.SEGMENT_HEADER.size
        successor = os.path.join(self.directory, segment_name(self.number + 1))
        try:
            made = stat.S_ISREG(os.lstat(successor).st_mode)
        except FileNotFoundError:
            made = False
        if made:
            # Killed once it was making the successor: the sealed segment was cut
            # and fdatasynced before, and nothing was written to the successor
            # (STATE never named it), whose header may be torn: made anew.
            _fsio.unlink(successor)
            self._start_successor()
        elif state.appended == head and os.fstat(self._fd).st_size == head:
            state.pending = head  # killed after naming the new segment: nothing left
        else:
            self._roll()  # killed before making the successor: all of it again

    def close(self) -> None:
        with self._lock:
            while self._leading:
                self._idle.wait()
            try:
                if self._failed:
                    self._cut_failed()
                if self._unsynced:
                    self._fdatasync()
            finally:
                os.close(self._fd)


def _open_segment(directory: str, number: int) -> int:
    return _filekinds.open_regular(os.path.join(directory, segment_name(number)), os.O_RDWR)


def create_segment(directory: str, number: int, *, flags: int) -> int:
    """Create segment ``number`` holding only its header, durably; return its fd.

    The header is fsynced and the directory too, so after a crash the segment
    either does not exist or starts with a good header.
    """
    path = os.path.join(directory, segment_name(number))
    try:
        fd = _fsio.create_exclusive(path, readable=True, mode=_fsio.WRITABLE)
    except FileExistsError:
        # Numbers only grow and each is made once: what holds the name is a
        # stray (reported at open), a directory named like a segment, say.
        raise BlobCacheError(
            f"{path} is in the way of the log's next segment: it is no segment this "
            "store made (reported at open); move it out of the store"
        ) from None
    try:
        _fsio.pwrite_all(fd, segment_header(flags), 0)
        _fsio.fsync_file(fd)
        _fsio.fsync_dir(directory)
    except BaseException:
        os.close(fd)
        _fsio.discard(path)
        raise
    return fd
