"""The log of small values: framed records in append-only segment files.

Writer (``LogWriter``) and reader (``read_segment`` + ``replay``) of the format
in FORMAT.md, section "The log". This module knows nothing of the cache beyond
the shape of the index's log entries: it turns records into bytes on disk, says where each one
landed, and replays them into "key -> newest record".

Crash policy, enforced where marked below:

* a record is acknowledged only after the write (and, with ``sync``, the
  fdatasync) of the batch holding it returned;
* only the active (highest-numbered) segment may end in a torn or zeroed tail:
  a crash mid-write leaves at most the unsynced end of the file damaged, which
  recovery cuts off. A bad record anywhere else is corruption, never guessed at;
* a segment is sealed only after an fdatasync, whatever the durability level,
  so a sealed segment is never torn.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass, field

import xxhash

from . import _filekinds, _fsio
from . import _format as F
from ._index import FIELD_MASK, SEGMENT_SHIFT, SEQ_SHIFT
from ._names import Key
from ._problems import Problem
from .errors import BlobCacheError, CorruptionError

_HEADER = F.RECORD_HEADER
_HEADER_SIZE = F.RECORD_HEADER.size
_CHECKSUM = F.RECORD_CHECKSUM_BYTES


def segment_name(number: int) -> str:
    return format(number, f"0{F.FIELD_HEX_DIGITS}x") + F.SEGMENT_SUFFIX


def parse_segment_name(name: str) -> int | None:
    """The number of a segment file name, or None if ``name`` is not one."""
    if len(name) != F.SEGMENT_NAME_LEN or not name.endswith(F.SEGMENT_SUFFIX):
        return None
    digits = name[: F.FIELD_HEX_DIGITS]
    if digits != digits.lower():
        return None
    try:
        return int(digits, 16)
    except ValueError:
        return None


def segment_header(flags: int) -> bytes:
    head = F.SEGMENT_MAGIC + bytes([flags, 0, 0, 0])
    return head + xxhash.xxh3_64_intdigest(head).to_bytes(8, "little")


def header_flags(head: bytes) -> int | None:
    """The flags of a good segment header, or None if ``head`` is not one (short,
    wrong magic or checksum, or a flag this version does not know)."""
    if len(head) != F.SEGMENT_HEADER.size or head != segment_header(head[4]):
        return None
    return head[4] if head[4] & ~F.SEGMENT_FLAG_COMPACTED == 0 else None


def encode_record(seq: int, kind: int, tag: bytes, raw: bytes, value: bytes | memoryview) -> bytes:
    """One framed record: checksum, then header fields, key and value it covers."""
    body = _HEADER.pack(0, seq, len(value), kind, tag, len(raw))[_CHECKSUM:] + raw + value
    checksum = xxhash.xxh3_64_intdigest(body) & F.RECORD_CHECKSUM_MASK
    return checksum.to_bytes(_CHECKSUM, "little") + body


# --- Reading --------------------------------------------------------------------------


@dataclass
class SegmentRead:
    """What reading one segment found; filled in as its records are iterated."""

    path: str
    number: int
    compacted: bool = False
    end: int = 0  # offset just after the last good record: where writing may resume
    size: int = 0  # bytes in the file
    cut: int = 0  # bytes of a torn tail cut off (active segment only)
    zero_tail: int = 0  # zero-filled room after the last record (active segment only)
    damaged_header: bool = False  # read anyway, with salvage: never appended to again
    report_cut: bool = True  # False for a reader beside a live writer, mid-append maybe
    problems: list[Problem] = field(default_factory=list)


def read_segment(
    path: str, number: int, *, active: bool, salvage: bool, readonly: bool = False
) -> tuple[SegmentRead, bytes]:
    """Read a segment and check its header; return its summary and its bytes,
    for ``replay`` (which fills in the summary's ``end``, ``cut`` and ``problems``).

    :raises CorruptionError: a damaged header (a zeroed one too, but in the
        active segment with nothing but zeros after it), unless ``salvage``: then
        the damage is reported in ``problems`` and the records are read anyway
        (each has its own checksum); the segment is taken as not COMPACTED. Also when
        ``path`` is no regular file (a symbolic link is never followed).
    """
    with os.fdopen(_filekinds.open_regular(path), "rb") as f:
        data = f.read()
    info = SegmentRead(path, number, size=len(data), report_cut=not readonly)
    head = F.SEGMENT_HEADER.size
    flags = header_flags(data[:head])
    if flags is None:
        # Crash policy: create_segment makes the header durable (file, then
        # directory) before anything else is written to the segment, so a crash
        # while creating it leaves a header cut short, or zeroed, and nothing
        # after it (room is zero-filled ahead only once the header is durable).
        # Only that is taken as "no segment yet"; a zeroed header with anything
        # after it, zeros included, is damage, whatever wiped it.
        if active and (len(data) < head or (len(data) == head and not data.strip(b"\0"))):
            info.cut = len(data)  # end = 0 tells the opener to make it anew
            return info, b""
        why = "segment header is damaged or not blobcache's"
        if data.count(0, 0, head) == head:
            why = "segment header is zeroed, yet bytes follow it"
        if not salvage:
            raise CorruptionError(path, f"{why}; open with salvage=True to read its records", 0)
        info.problems.append(Problem(path, f"{why}: its records were read by their checksums"))
        info.damaged_header = True
        return info, data
    info.compacted = bool(flags & F.SEGMENT_FLAG_COMPACTED)
    return info, data


def replay(
    data: bytes,
    info: SegmentRead,
    values: dict[Key, bytes | None],
    meta: dict[Key, int],
    live: dict[int, int],
    deletes: list[Key],
    *,
    active: bool,
    salvage: bool,
) -> int:
    """Apply the segment's good records to ``values`` and ``meta`` (key -> the
    newest record's value, None for a delete, and its packed place, as the index
    holds them: see ``_index.pack``; the keys of deletes are added to
    ``deletes``) and ``live`` (live put bytes per segment); return the highest
    sequence number seen.

    The reader and "highest sequence number wins" share one loop because it
    runs once per record at every open: a generator between them cost a third
    of the time. Names are bound to locals, and ``_index.pack`` spelled out,
    for the same reason.
    """
    view = memoryview(data)
    unpack = _HEADER.unpack_from
    digest = xxhash.xxh3_64_intdigest
    mask, skip, head = F.RECORD_CHECKSUM_MASK, _CHECKSUM, _HEADER_SIZE
    put, kinds = F.RECORD_PUT, (F.RECORD_PUT, F.RECORD_DELETE)
    str_tag, tags = F.KEY_TAG_STR, (F.KEY_TAG_STR, F.KEY_TAG_BYTES)
    setdefault = meta.setdefault
    seq_shift, field = SEQ_SHIFT, FIELD_MASK
    number = info.number
    in_segment = number << SEGMENT_SHIFT
    here = 0  # live put bytes of this segment, added to live[number] at the end
    total = len(data)
    offset = F.SEGMENT_HEADER.size
    max_seq = 0
    while offset < total:
        if total - offset < head:
            why = "truncated record header"
        else:
            checksum, seq, vlen, kind, tag, klen = unpack(data, offset)
            key_at = offset + head
            value_at = key_at + klen
            end = value_at + vlen
            if kind not in kinds or tag not in tags:
                why = "impossible record type or key tag"
                if checksum == 0 and seq == 0 and kind == 0:
                    why = "zeroed bytes where a record should start"
            elif end > total:
                why = f"record length {end - offset} runs past the end of the file"
            elif digest(view[offset + skip : end]) & mask != checksum:
                why = "record checksum mismatch"
            else:
                raw = data[key_at:value_at]
                key: Key = raw.decode() if tag == str_tag else raw
                if seq > max_seq:
                    max_seq = seq
                size = end - offset
                packed = seq << seq_shift | in_segment | size
                # One hash lookup for a key seen first (the common case), not two.
                old = setdefault(key, packed)
                if old is not packed:
                    if old >> seq_shift >= seq:
                        if kind == put:
                            here -= size  # an older record, read late
                        offset = end
                        continue
                    if values[key] is not None:  # the record superseded was a put
                        if old >> SEGMENT_SHIFT & field == number:
                            here -= old & field
                        else:
                            live[old >> SEGMENT_SHIFT & field] -= old & field
                    meta[key] = packed
                if kind == put:
                    values[key] = data[value_at:end]
                    here += size
                else:
                    values[key] = None
                    deletes.append(key)
                offset = end
                continue
        info.end = offset
        _bad_record(data, info, offset, why, active=active, salvage=salvage)
        break
    else:
        info.end = offset
    live[number] = live.get(number, 0) + here
    return max_seq


def _bad_record(
    data: bytes, info: SegmentRead, offset: int, why: str, *, active: bool, salvage: bool
) -> None:
    info.end = offset
    if active and data.count(0, offset) == len(data) - offset:
        info.zero_tail = len(data) - offset  # room the writer zero-filled ahead: the end
        return
    if active:
        # Crash policy: only the unsynced end of the active segment can be torn;
        # everything from the first bad record on was never acknowledged. A flipped
        # bit there looks the same (valid records may follow a torn page too), so
        # the cut is reported, not only counted: point-in-time recovery.
        info.cut = len(data) - offset  # the torn record on, zero-filled room included
        if info.report_cut:
            info.problems.append(
                Problem(
                    info.path,
                    f"{why} at offset {offset}: cut the segment there ({info.cut} bytes), "
                    "as a write torn by a crash",
                )
            )
        return
    if not salvage:
        raise CorruptionError(
            info.path,
            f"{why} in a sealed segment; open with salvage=True to drop the rest of this "
            "segment and keep going",
            offset,
        )
    info.problems.append(
        Problem(info.path, f"{why} at offset {offset}: dropped {len(data) - offset} bytes")
    )


def records_of(directory: str, tag: bytes, raw: bytes) -> dict[int, bytes | None]:
    """Every intact record of one key in the segments in ``directory``: seq ->
    value (None for a delete). Reads the whole log and changes nothing: for the
    rare fall back of a damaged value, which needs the key's older records that
    the index forgot when a version superseded them.

    Crash policy: a record is taken only if its checksum holds, and a segment is
    read up to its first bad record, past which its framing cannot be trusted
    (the active segment may end in a batch still being written). A segment that
    compaction removes meanwhile was replaced by one published before: listed
    again, up to ``_LISTINGS`` times.
    """
    found: dict[int, bytes | None] = {}
    for _ in range(_LISTINGS):
        vanished = False
        for name in sorted(os.listdir(directory)):
            if parse_segment_name(name) is None:
                continue
            try:
                # Never through a link, never a FIFO (a get would hang on it).
                with os.fdopen(_filekinds.open_regular(os.path.join(directory, name)), "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                vanished = True
                continue
            except CorruptionError:
                continue  # no regular file: none of the log's (open reports such a name)
            if raw in data:  # a record of the key holds its bytes: skip the walk where none do
                _find_records(data, tag, raw, found)
        if not vanished:
            break
    return found


_LISTINGS = 3


def _find_records(data: bytes, tag: bytes, raw: bytes, found: dict[int, bytes | None]) -> None:
    """Add the key's intact records in one segment's bytes to ``found``.

    Not shared with ``replay``, whose loop is kept flat for the speed of every open.
    """
    view = memoryview(data)
    total = len(data)
    offset = F.SEGMENT_HEADER.size
    while total - offset >= _HEADER_SIZE:
        checksum, seq, vlen, kind, key_tag, klen = _HEADER.unpack_from(data, offset)
        key_at = offset + _HEADER_SIZE
        end = key_at + klen + vlen
        if (
            kind not in (F.RECORD_PUT, F.RECORD_DELETE)
            or end > total
            or xxhash.xxh3_64_intdigest(view[offset + _CHECKSUM : end]) & F.RECORD_CHECKSUM_MASK
            != checksum
        ):
            return
        if key_tag == tag and klen == len(raw) and view[key_at : key_at + klen] == raw:
            found[seq] = data[key_at + klen : end] if kind == F.RECORD_PUT else None
        offset = end


# --- Writing --------------------------------------------------------------------------


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
            if self._expect:
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
