"""The log of small values: framed records in append-only segment files.

Writer (``LogWriter``) and reader (``read_segment``) of the format in FORMAT.md,
section "The log". This module knows nothing of the cache: it turns records
into bytes on disk and back, and says where each one landed.

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
from collections.abc import Iterator
from dataclasses import dataclass, field

import xxhash

from . import _format as F
from . import _fsio
from ._blob import Problem
from .errors import CorruptionError

_HEADER = F.RECORD_HEADER
_HEADER_SIZE = F.RECORD_HEADER.size


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


def encode_record(seq: int, kind: int, tag: bytes, raw: bytes, value: bytes | memoryview) -> bytes:
    """One framed record: checksum, then header fields, key and value it covers."""
    body = _HEADER.pack(0, seq, len(value), kind, tag, len(raw))[8:] + raw + value
    return xxhash.xxh3_64_intdigest(body).to_bytes(8, "little") + body


# --- Reading --------------------------------------------------------------------------


@dataclass
class SegmentRead:
    """What reading one segment found; filled in as its records are iterated."""

    path: str
    number: int
    compacted: bool = False
    end: int = 0  # offset just after the last good record: where writing may resume
    size: int = 0  # bytes in the file
    cut: int = 0  # bytes of a torn or zeroed tail cut off (active segment only)
    problems: list[Problem] = field(default_factory=list)


# A record as the reader yields it: seq, type, key tag, key bytes, value, offset, size.
RawRecord = tuple[int, int, bytes, bytes, bytes, int, int]


def read_segment(
    path: str, number: int, *, active: bool, salvage: bool = False
) -> tuple[SegmentRead, Iterator[RawRecord]]:
    """Open a segment; return its summary and an iterator over its good records.

    The summary's ``end``, ``cut`` and ``problems`` are final once the iterator
    is exhausted.

    :raises CorruptionError: a bad header or record in a sealed segment (or in
        the active segment's header), unless ``salvage``: then the rest of that
        segment is dropped and reported in ``problems``.
    """
    with open(path, "rb") as f:
        data = f.read()
    info = SegmentRead(path, number, size=len(data))
    head = F.SEGMENT_HEADER.size
    header_ok = len(data) >= head and data[:head] == segment_header(data[4]) and data[4] < 2
    if not header_ok:
        if active and (len(data) < head or not data[:head].strip(b"\0")):
            # A crash while the segment was being created: end = 0 tells the
            # opener to make it anew.
            info.cut = len(data)
            return info, iter(())
        raise CorruptionError(path, "segment header is damaged or not blobcache's", 0)
    info.compacted = bool(data[4] & F.SEGMENT_FLAG_COMPACTED)
    return info, _records(data, info, active=active, salvage=salvage)


def _records(data: bytes, info: SegmentRead, *, active: bool, salvage: bool) -> Iterator[RawRecord]:
    view = memoryview(data)
    unpack = _HEADER.unpack_from
    digest = xxhash.xxh3_64_intdigest
    total = len(data)
    offset = F.SEGMENT_HEADER.size
    while offset < total:
        why = None
        if total - offset < _HEADER_SIZE:
            why = "truncated record header"
        else:
            checksum, seq, vlen, kind, tag, klen = unpack(data, offset)
            end = offset + _HEADER_SIZE + klen + vlen
            if checksum == 0 and seq == 0 and vlen == 0 and kind == 0:
                why = "zeroed bytes where a record should start"
            elif kind not in (F.RECORD_PUT, F.RECORD_DELETE) or tag not in (b"s", b"b"):
                why = "impossible record type or key tag"
            elif end > total:
                why = f"record length {end - offset} runs past the end of the file"
            elif digest(view[offset + 8 : end]) != checksum:
                why = "record checksum mismatch"
        if why is not None:
            _bad_record(data, info, offset, why, active=active, salvage=salvage)
            return
        key_at = offset + _HEADER_SIZE
        yield (
            seq,
            kind,
            tag,
            data[key_at : key_at + klen],
            data[key_at + klen : end],
            offset,
            end - offset,
        )
        offset = end
        info.end = offset
    info.end = offset


def _bad_record(
    data: bytes, info: SegmentRead, offset: int, why: str, *, active: bool, salvage: bool
) -> None:
    info.end = offset
    if active:
        # Crash policy: only the unsynced end of the active segment can be torn;
        # everything from the first bad record on was never acknowledged.
        info.cut = len(data) - offset
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


# --- Writing --------------------------------------------------------------------------


class _Request:
    __slots__ = ("data", "done", "error", "offset", "segment")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.done = False
        self.error: BaseException | None = None
        self.segment = 0
        self.offset = 0


class LogWriter:
    """Appends records to the active segment; threads share writes and fdatasyncs.

    Group commit: a putting thread queues its record; the first one to find no
    batch in flight becomes the leader, takes the queued records (up to
    ``batch_bytes``), writes them with one ``pwrite`` and makes them durable
    with one ``fdatasync``, then wakes the others with the result. With
    ``sync=False`` ("os" durability) each append is one ``pwrite`` under the
    lock and ``sync()`` flushes later.
    """

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
    ) -> None:
        self.directory = directory
        self.number = number
        self._fd = fd
        self._offset = offset
        self._sync = sync
        self._segment_bytes = segment_bytes
        self._batch_bytes = batch_bytes
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queue: list[_Request] = []
        self._leading = False
        self._unsynced = unsynced  # bytes written since the last fdatasync
        self._failed: BaseException | None = None  # set by a failed batch: roll before writing

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
                return self._write_batch([record])
        request = _Request(record)
        with self._wake:
            self._queue.append(request)
            while not request.done:
                if self._leading:
                    self._wake.wait()
                    continue
                self._lead()
        if request.error is not None:
            raise request.error
        return request.segment, request.offset

    def _lead(self) -> None:
        """Write and sync one batch. REQUIRES: ``self._lock`` held; releases it meanwhile."""
        batch: list[_Request] = []
        size = 0
        while self._queue and (not batch or size + len(self._queue[0].data) <= self._batch_bytes):
            request = self._queue.pop(0)
            batch.append(request)
            size += len(request.data)
        self._leading = True
        self._lock.release()
        error: BaseException | None = None
        number = start = 0
        try:
            number, start = self._write_batch([r.data for r in batch])
            try:
                _fsio.fdatasync(self._fd)
            except BaseException as exc:
                # Not durable, so not acknowledged: cut the batch off again, or a
                # put that raised could reappear after a restart.
                self._undo(start, exc)
                raise
            self._unsynced = False
        except BaseException as exc:  # every put of the batch fails with it
            error = exc
        finally:
            self._lock.acquire()
        offset = start
        for request in batch:
            request.done, request.error = True, error
            request.segment, request.offset = number, offset
            offset += len(request.data)
        self._leading = False
        self._wake.notify_all()

    def _write_batch(self, records: list[bytes]) -> tuple[int, int]:
        """pwrite ``records`` at the end of the active segment, rolling over first
        if they would overflow it; return (segment number, start offset).

        REQUIRES: the caller is the only writer (lock held, or leader).
        """
        data = records[0] if len(records) == 1 else b"".join(records)
        if self._failed is not None or (
            self._offset > F.SEGMENT_HEADER.size and self._offset + len(data) > self._segment_bytes
        ):
            self._roll(self.number + 1)
        start = self._offset
        try:
            _fsio.pwrite_all(self._fd, data, start)
        except BaseException as exc:
            self._undo(start, exc)
            raise
        self._offset = start + len(data)
        self._unsynced = True
        return self.number, start

    def _undo(self, start: int, exc: BaseException) -> None:
        """After a failed write: cut the segment back to ``start``, so no half record
        stays between good ones, and roll to a new segment before the next write."""
        self._failed = exc
        # If the cut fails too, the roll's fdatasync or the next recovery meets the tail.
        with contextlib.suppress(OSError):
            _fsio.truncate(self._fd, start)
        self._offset = start

    def sync(self) -> None:
        """fdatasync the active segment if anything was written since the last one."""
        with self._lock:
            if self._unsynced and self._failed is None:
                _fsio.fdatasync(self._fd)
                self._unsynced = False

    def roll(self, skip: int = 0) -> int:
        """Seal the active segment and start the next, ``skip`` numbers further on;
        return the new active number. Used by compaction to reserve numbers."""
        with self._lock:
            while self._leading:
                self._wake.wait()
            self._roll(self.number + 1 + skip)
            return self.number

    def _roll(self, number: int) -> None:
        """REQUIRES: sole writer. Seal: fdatasync the active segment (whatever the
        durability level, so a sealed segment is never torn), then create ``number``."""
        _fsio.fdatasync(self._fd)
        new_fd = create_segment(self.directory, number, flags=0)
        os.close(self._fd)
        self._fd, self.number, self._offset = new_fd, number, F.SEGMENT_HEADER.size
        self._unsynced = False
        self._failed = None

    @property
    def offset(self) -> int:
        return self._offset

    def close(self) -> None:
        with self._lock:
            try:
                if self._unsynced:
                    _fsio.fdatasync(self._fd)
            finally:
                os.close(self._fd)


def create_segment(directory: str, number: int, *, flags: int) -> int:
    """Create segment ``number`` holding only its header, durably; return its fd.

    The header is fsynced and the directory too, so after a crash the segment
    either does not exist or starts with a good header.
    """
    path = os.path.join(directory, segment_name(number))
    fd = _fsio.create_exclusive(path, readable=True)
    try:
        _fsio.pwrite_all(fd, segment_header(flags), 0)
        _fsio.fsync_file(fd)
        _fsio.fsync_dir(directory)
    except BaseException:
        os.close(fd)
        _fsio.discard(path)
        raise
    return fd


def open_active(directory: str, number: int, end: int) -> int:
    """Reopen the active segment for writing after recovery, cutting a torn tail.

    The cut is made durable before any new record is written after it, so a
    later power cut cannot bring torn bytes back between good records.
    """
    path = os.path.join(directory, segment_name(number))
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        if os.fstat(fd).st_size != end:
            _fsio.truncate(fd, end)
            _fsio.fsync_file(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd
