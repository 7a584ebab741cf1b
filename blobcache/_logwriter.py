"""Appending to the log of small values: group commit into the active segment.

The writer of the format in FORMAT.md, section "The log", whose records and
segment headers ``_log`` frames (and reads back at open): ``LogWriter`` queues
the puts of concurrent threads and writes each batch with one ``pwrite`` and
one fdatasync, rolls over to a new segment when the active one is full, and
``create_segment`` and ``open_active`` make and reopen segment files for it.

Crash policy:

* a record is acknowledged only after the write (and, with ``sync``, the
  fdatasync) of the batch holding it returned (``append``, ``_lead``);
* a segment is sealed only after an fdatasync, whatever the durability level,
  so a sealed segment is never torn (``_roll``).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time

from . import _filekinds, _fsio
from . import _format as F
from ._log import segment_header, segment_name
from .errors import BlobCacheError


class _Request:
    """One record waiting to be written; its thread sleeps on ``wake`` until
    its batch is done or it is handed the lead."""

    __slots__ = ("data", "done", "error", "offset", "segment", "wake")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.done = False
        self.error: BaseException | None = None
        self.segment = 0
        self.offset = 0
        self.wake = threading.Lock()
        self.wake.acquire()  # released exactly once, by whoever wakes this thread


class LogWriter:
    """Appends records to the active segment; concurrent puts share writes and fdatasyncs.

    Group commit, as in LevelDB's writer queue: a putting thread queues its
    record; if no batch is being written it leads, otherwise it sleeps on its
    own lock. A leader takes every queued record (up to ``batch_bytes``),
    writes them with one ``pwrite`` and makes them durable with one
    ``fdatasync``. Then it hands the lead to the first record queued meanwhile
    (so the next batch starts at once) and wakes the threads of its batch.
    Each thread sleeps on a lock of its own, so a batch wakes only its own
    threads, not every waiter. With ``sync=False`` ("os" durability) an append
    is one ``pwrite`` under the lock, and ``sync()`` flushes later.

    Failure: a failed write or fdatasync fails every put of its batch; the
    segment is cut back to where the batch began and the next batch goes into
    a new segment, so a put that raised never reappears after a restart and no
    half record sits between good ones.
    """

    # The file is zero-filled and fdatasynced this far ahead of the records, so
    # a batch's fdatasync flushes data only: no size change, no journal commit
    # (91-98 us instead of 125-140 us per fdatasync on the reference machine).
    # Recovery reads the zeros as the end of the log.
    PREALLOCATE = 1 << 20

    def __init__(
        self,
        directory: str,
        number: int,
        fd: int,
        offset: int,
        *,
        sync: bool,
        segment_bytes: int,
        batch_bytes: int = 1 << 20,
        unsynced: bool = False,
        allocated: int = 0,
    ) -> None:
        self.directory = directory
        self.number = number
        self._fd = fd
        self._offset = offset  # where the next batch goes
        self._allocated = max(allocated, offset)  # zero-filled and durable up to here
        self._sync = sync
        self._segment_bytes = segment_bytes
        self._batch_bytes = batch_bytes
        self._lock = threading.Lock()  # guards the fields below, never held during I/O
        self._queue: list[_Request] = []
        self._leading = False  # a leader is writing a batch (it owns the file)
        self._idle = threading.Condition(self._lock)  # notified when the lead is let go
        self._failed = False  # the last batch failed: roll before writing again
        self._unsynced = unsynced  # written bytes may lack an fdatasync
        self._sync_error: OSError | None = None  # a failed sync(): refuse to pretend again
        self._more = threading.Condition(self._lock)  # a record was queued
        self._expect = 0  # records the next leader may wait for (see _gather)

    @classmethod
    def create(cls, directory: str, number: int, *, sync: bool, segment_bytes: int) -> LogWriter:
        fd = create_segment(directory, number, flags=0)
        return cls(
            directory, number, fd, F.SEGMENT_HEADER.size, sync=sync, segment_bytes=segment_bytes
        )

    def append(self, record: bytes) -> tuple[int, int]:
        """Write ``record``; return (segment number, offset) once it is acknowledged.

        With ``sync`` that is after the fdatasync of its batch: it survives power
        loss. Without, after the write: it survives a crash of this process.
        """
        if not self._sync:
            with self._lock:
                while self._leading:  # a roll() by compaction
                    self._idle.wait()
                self._write([record])
                return self.number, self._offset - len(record)
        request = _Request(record)
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
        return request.segment, request.offset

    def _lead(self) -> None:
        """Write the queued records as one batch and fdatasync them; then pass
        the lead on and wake the batch. REQUIRES: this thread holds the lead."""
        with self._lock:
            self._gather()
            batch: list[_Request] = []
            size = 0
            queue, limit = self._queue, self._batch_bytes
            while queue and (not batch or size + len(queue[0].data) <= limit):
                batch.append(queue.pop(0))
                size += len(batch[-1].data)
        error: BaseException | None = None
        number = start = 0
        try:
            number, start = self._write([r.data for r in batch])
            _fsio.fdatasync(self._fd)
        except BaseException as exc:  # every put of the batch fails with it
            error = exc
            if number:
                self._undo(start)
        offset = start
        for request in batch:
            request.segment, request.offset, request.error = number, offset, error
            request.done = True
            offset += len(request.data)
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

    def _write(self, records: list[bytes]) -> tuple[int, int]:
        """pwrite ``records`` at the end of the active segment; return (segment, offset).

        Rolls over first when they would overflow the segment or the last batch
        failed; zero-fills ahead first when they would pass the preallocation.
        REQUIRES: this thread owns the file (lead, or the lock with ``sync=False``).
        """
        data = records[0] if len(records) == 1 else b"".join(records)
        start = self._offset
        full = start > F.SEGMENT_HEADER.size and start + len(data) > self._segment_bytes
        if self._failed or full:
            self._roll(self.number + 1)
            start = self._offset
        if start + len(data) > self._allocated:
            self._extend(start + len(data))
        try:
            _fsio.pwrite_all(self._fd, data, start)
        except BaseException:
            self._undo(start)
            raise
        self._offset = start + len(data)
        self._unsynced = True
        return self.number, start

    def _undo(self, start: int) -> None:
        """After a failed write or fdatasync: cut the segment back to ``start`` and
        roll to a new segment before the next write."""
        self._failed = True
        # If the cut fails too, the roll's fdatasync still seals what is there and
        # recovery meets the torn bytes; nothing better is possible here.
        with contextlib.suppress(OSError):
            _fsio.truncate(self._fd, start)
        self._offset = start

    def _extend(self, end: int) -> None:
        """Zero-fill the file up to ``end`` and ``PREALLOCATE`` beyond, within the
        segment's size, durably. REQUIRES: this thread owns the file."""
        target = max(end, min(self._offset + self.PREALLOCATE, self._segment_bytes))
        _fsio.pwrite_all(self._fd, bytes(target - self._allocated), self._allocated)
        self._fdatasync()
        self._allocated = target

    def _fdatasync(self) -> None:
        """fdatasync the active segment outside a batch. REQUIRES: this thread owns
        the file. If it fails while written records wait for it, so does every
        later ``sync()`` (see ``_fsio.earlier_sync_failed``)."""
        try:
            _fsio.fdatasync(self._fd)
        except OSError as exc:
            if self._unsynced:
                self._sync_error = exc
            raise
        self._unsynced = False

    def sync(self) -> None:
        """fdatasync the active segment if anything written may lack one."""
        with self._lock:
            while self._leading:
                self._idle.wait()
            if self._sync_error is not None:
                raise _fsio.earlier_sync_failed(self.directory, self._sync_error)
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
            self._roll(self.number + 1)
            return self.number

    def _roll(self, number: int) -> None:
        """Seal: cut the zero-filled room off, fdatasync (whatever the durability
        level, so a sealed segment is never torn), then create ``number``.

        REQUIRES: this thread owns the file.
        """
        if self._allocated > self._offset:  # a sealed segment ends at its last record
            _fsio.truncate(self._fd, self._offset)
        self._fdatasync()
        new_fd = create_segment(self.directory, number, flags=0)
        os.close(self._fd)
        self._fd, self.number, self._offset = new_fd, number, F.SEGMENT_HEADER.size
        self._allocated = self._offset
        self._failed = False

    def close(self) -> None:
        with self._lock:
            while self._leading:
                self._idle.wait()
            try:
                if self._failed:  # _undo's cut failed too: the failed batch is still there
                    _fsio.truncate(self._fd, self._offset)
                if self._unsynced:
                    self._fdatasync()
            finally:
                os.close(self._fd)


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


def open_active(directory: str, number: int, end: int, zero_tail: int) -> int:
    """Reopen the active segment for writing after recovery, cutting a torn tail.

    The cut is made durable before any new record is written after it, so a
    later power cut cannot bring torn bytes back between good records. A tail of
    zeros only is kept: it is room the writer zero-filled ahead.
    """
    path = os.path.join(directory, segment_name(number))
    fd = _filekinds.open_regular(path, os.O_RDWR)
    try:
        if os.fstat(fd).st_size != end + zero_tail:
            _fsio.truncate(fd, end)
            _fsio.fsync_file(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd
