"""Following the log: every change of every process reaches this one's index in log order.

Several processes append to one log (``_logwriter``). Each process reads it
from where it last stopped to where ``STATE`` says the acknowledged records
end, and applies what it finds to its index (``Follower.catch_up``): its own
records from memory (``LogWriter.own`` holds them, keyed by where they were
written), the others' from the file. Records of format 2 are in the log in
the order of their numbers (numbers are taken under the append flock), so the
index sees every key's records in order; a record older than what the index
holds for its key (one recovery read in a version file) is passed over.

When it runs: a lookup that would miss catches up first (so a put
acknowledged in another process is never reported missing); a background
thread every half ``refresh_interval`` bounds how old a hit may be;
``refresh()`` at once; compaction and the janitor before they judge. A put or
delete applies its own record itself once acknowledged (so this process sees
its puts at once, without reading what others appended before it): the
writer's ``claim`` or the follower, whichever comes first, applies each of
this process's records once (the put returns only once it is applied:
``settle``), and ``Index.gone`` remembers a delete applied ahead of the
follower, so an older record of the key read later stays older.

If the follower falls so far behind that a compaction replaced a segment it
had not read yet (it opens one by name and finds it COMPACTED), it rebuilds
the index from the files (``reload``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import NamedTuple

from . import _clock, _filekinds, _log
from . import _format as F
from . import _names as N
from ._index import IN_A_FILE, Index, Mapped, pack
from ._keydir import Record
from ._logwriter import LogWriter
from ._shared import SharedState

_DELETES = (F.RECORD_DELETE, F.RECORD_EVICT)


def _version_path(keydir: str, seq: int, length: int, checksum: int) -> str | None:
    """The file a version record names, under its name as a single put's or as
    one of a batch's (FORMAT.md, "Batches"); None if neither is there."""
    for name in (
        N.version_name(seq, length, checksum),
        N.batch_version_name(seq, length, checksum),
    ):
        path = os.path.join(keydir, name)
        if os.path.exists(path):
            return path
    return None


class Change(NamedTuple):
    """What one record does to the index: ``value`` bytes for a put to the log, a
    ``Mapped`` for a version file, None for a delete (``keydir``: the key's
    directory if it has one, so compaction keeps the delete while it does)."""

    key: N.Key
    value: bytes | Mapped | None
    keydir: str | None = None
    expires: int = 0  # when the value expires, ms since the epoch (0: never)
    pinned: bool = False  # its record's PINNED bit
    codec: int = F.CODEC_RAW  # what the value's bytes encode (FORMAT.md, "Typed values")

    def apply(
        self, index: Index, seq: int, segment: int, offset: int, size: int, *, ahead: bool
    ) -> int | None:
        """Publish this change, record ``seq`` of ``size`` bytes at ``offset`` of log ``segment``;
        return what ``Index.publish`` does. ``ahead``: applied by its own writer
        before the follower passed it (see ``Index.gone``). Serves the follower
        and a writer applying its own records (``_writes``) alike."""
        value = self.value
        if isinstance(value, Mapped):
            index.book_stale(segment, size)  # a version's note is never live
            meta = pack(seq, IN_A_FILE, 0, 0)
            return index.publish(self.key, value, meta, self.expires, self.pinned, self.codec)
        if value is None:
            return index.publish_delete(self.key, seq, segment, size, self.keydir, ahead=ahead)
        meta = pack(seq, segment, offset, size)
        return index.publish(self.key, value, meta, self.expires, self.pinned, self.codec)


class PinChange(NamedTuple):
    """What a pin record does: pins (or unpins) the key's live value, if it is not
    newer than the record (FORMAT.md, "Pins and evictions")."""

    key: N.Key
    pinned: bool
    value: bool = True  # (not None: it is no delete)

    def apply(
        self, index: Index, seq: int, segment: int, offset: int, size: int, *, ahead: bool
    ) -> None:
        index.book_stale(segment, size)
        index.set_pin(self.key, seq, self.pinned)


class Follower:
    """Where this handle has read the log to, and the applying of what follows.

    REQUIRES: ``lock`` for the position and for applying.
    Invariant: every record before the position is applied to the index.
    """

    def __init__(
        self,
        root: str,
        index: Index,
        key_dirs: set[str],
        writer: LogWriter | None,
        state: SharedState | None,
        segment: int,
        offset: int,
        inode: int,
        reload: Callable[[], tuple[int, int, int]],
    ) -> None:
        self.root = root
        self.logdir = os.path.join(root, F.LOG_DIR)
        self.blobs = os.path.join(root, F.BLOBS_DIR)
        self.index = index
        self.key_dirs = key_dirs
        self.writer = writer
        self.state = state
        self.segment, self.offset = segment, offset
        # (segment, offset) where the position stood at its last step: one tuple,
        # read without the lock (_cap); never past the position.
        self.floor = (segment, offset)
        # Records of this process its writer is applying itself (``hold_floor``
        # to ``applied``): the floor may pass them before they are in the index.
        self.unapplied: dict[tuple[int, int], None] = {}
        self._fd = -1  # open on `segment` once read from
        # The inode of `segment` when the position was taken in it (0: not
        # known): a compaction may have replaced the file under its name since.
        self._inode = inode
        self._head = F.RECORD_HEADER.size
        # Held from the start: a compaction may replace the file under its name
        # (its output takes the number), and our offset is in this one. (Gone
        # or replaced already: the first catch-up finds so again, and rebuilds.)
        self._open()
        self._reload = reload
        self.lock = threading.Lock()
        self.active_seen = segment
        self.foreign_files: dict[str, str] = {}  # keydir -> a version others put, newest
        self.closed = False
        self._own_state = False  # state mapped here, not the handle's
        self._rebuilds = 0
        self._stale_seen = False  # set by _own_record during a catch-up

    def catch_up(self) -> bool:
        """Apply every acknowledged record after the position; return whether a
        sealed segment got staler (or the log rolled): compaction may be due."""
        with self.lock:
            if self.closed:
                return False
            state = self.state
            if state is None:
                state = self.state = SharedState.peek(self.root)
                if state is None:
                    return False  # no writer of format 2 yet: nothing to follow
                self._own_state = True
            stale = False
            self._stale_seen = False
            rebuilds = self._rebuilds
            while True:
                if self._rebuilds > rebuilds + 1:
                    break  # STATE names what the files do not hold: wait for a writer
                _, active, _, acked, _, _, _ = state.fields()
                if state.segment != active:
                    continue  # rolled while read (it sets `acked` first): read again
                if self.segment == active:
                    # Our own records, from memory (all there is, with one process).
                    while self.offset < acked and self._own_record():
                        pass
                    if self.offset >= acked:
                        break
                    stale |= self._read(acked)
                    if self.offset < acked:
                        break  # not a whole record where one should be: next time
                elif self.segment < active:
                    stale |= self._read(None)
                    if not self._next_segment():
                        stale = True
                else:
                    break  # behind what we read ourselves (STATE rebuilt): wait for it
            if active != self.active_seen:
                self.active_seen, stale = active, True
            self.floor = (self.segment, self.offset)
            return stale or self._stale_seen

    def _open(self) -> bool:
        """Open the segment at the position; False if it is gone."""
        if self._fd < 0:
            path = os.path.join(self.logdir, _log.segment_name(self.segment))
            try:
                fd = _filekinds.open_regular(path)
            except FileNotFoundError:
                return False
            if self._inode and os.fstat(fd).st_ino != self._inode:
                os.close(fd)  # replaced by a compaction: our offset means nothing there
                return False
            self._fd, self._inode = fd, 0
            head = os.pread(self._fd, F.SEGMENT_HEADER.size, 0)
            self._head = _log.header_size(head)
        return True

    def _next_segment(self) -> bool:
        """Move to the next segment; if a compaction replaced it before we read
        it, rebuild the index (returns False then)."""
        self._close()
        self.segment += 1
        self.offset = F.SEGMENT_HEADER.size
        if self._open():
            head = os.pread(self._fd, F.SEGMENT_HEADER.size, 0)
            flags = _log.header_flags(head)
            if flags is None or not flags & F.SEGMENT_FLAG_COMPACTED:
                return True
        self._close()
        self._rebuild()
        return False

    def _rebuild(self) -> None:
        """Rebuild the index from the files, and go on from where that read the log."""
        self._rebuilds += 1
        self._close()
        self.segment, self.offset, self._inode = self._reload()
        self._open()
        own = self.writer.own if self.writer is not None else {}
        ahead = self.writer.ahead if self.writer is not None else {}
        for ours in (own, ahead):
            for where in [w for w in list(ours) if w < (self.segment, self.offset)]:
                ours.pop(where, None)  # in what the rebuild read

    def _close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _read(self, limit: int | None) -> bool:
        """Apply the records from the position up to ``limit`` (None: the end of
        the file, a sealed segment). Returns whether a sealed segment got staler.

        One read of the file; this process's records in it (``own`` or ``ahead``:
        both hold every record of ours below ``acked``, which was read before)
        are taken from memory, the others' parsed. Looked up record by record:
        with several processes ours and theirs alternate."""
        writer = self.writer
        if not self._open():
            self._rebuild()
            return True
        size = os.fstat(self._fd).st_size
        limit = size if limit is None else min(limit, size)  # STATE is a hint
        if self.offset >= limit:
            return False
        own = writer.own if writer is not None else {}
        ahead = writer.ahead if writer is not None else {}
        number, index = self.segment, self.index
        stale = False
        base = self.offset
        data = os.pread(self._fd, limit - base, base)
        done = 0
        for seq, kind, tag, raw, value_at, end, flags, expires, codec in _log.iter_records(
            data, 0, self._head, self.logdir
        ):
            if own or ahead:
                where = (number, base + done)
                if where in own or where in ahead:
                    self.offset = where[1]
                    if self._own_record():
                        done = self.offset - base
                        continue
            if kind == F.RECORD_PUT and not flags and not codec:  # the common case, flat
                old = index.publish(
                    N.decode_key(tag, raw),
                    data[value_at:end],
                    pack(seq, number, base + done, end - done),
                )
                stale |= old is not None and old != number
            else:
                change = self._change(
                    kind, tag, raw, data, seq, value_at, end, flags, expires, codec
                )
                if change is None:
                    index.book_stale(number, end - done)
                else:
                    stale |= self._apply(seq, base + done, end - done, change)
            done = end
        self.offset = base + done
        return stale

    def passed_own(self, segment: int, offset: int, size: int) -> bool:
        """If the follower stands right at this process's record (segment, offset),
        move it past: nothing of another process's lies before it, so its writer
        may apply it as the follower would, with no step over it later. False
        when others' records come first, or a catch-up is under way (then the
        writer ``claim``s it). REQUIRES: the record is acknowledged."""
        if not self.lock.acquire(blocking=False):
            return False
        try:
            if (self.segment, self.offset) != (segment, offset) or self.writer is None:
                return False
            if self.writer.own.pop((segment, offset), None) is None:
                return False  # the follower took it (it stands past it then: never here)
            self.offset += size
            self.floor = (segment, self.offset)
            return True
        finally:
            self.lock.release()

    def settle(self) -> None:
        """Wait for the catch-up under way, if any, to end.

        A catch-up takes a record of this process out of ``own`` and applies it
        within one hold of ``lock``: a writer whose ``claim`` found its record
        taken waits here, so its put returns with the index showing it
        (read-your-writes), not while the catch-up is between the two.
        REQUIRES: not ``lock`` (a catch-up takes no stripe lock: a writer holding
        its key's may wait for it)."""
        with self.lock:
            pass

    def hold_floor(self, segment: int, offset: int) -> None:
        """This process's acknowledged record at (segment, offset) is about to be
        applied by its writer: until ``applied``, the cap's reading of the log's
        end starts there at the latest, wherever the position moves meanwhile."""
        self.unapplied[(segment, offset)] = None

    def applied(self, segment: int, offset: int) -> None:
        """The writer of the record at (segment, offset) has applied it (or the
        follower did)."""
        self.unapplied.pop((segment, offset), None)

    def _own_record(self) -> bool:
        """Pass this process's record at the position, if it is one: apply it
        (``own``), or step over it when its writer applied it (``ahead``).
        Returns whether there was one. REQUIRES: ``lock``."""
        writer = self.writer
        if writer is None:
            return False
        where = (self.segment, self.offset)
        mine = writer.own.pop(where, None)
        if mine is not None:
            seq, size, change = mine
            assert isinstance(change, (Change, PinChange)), "a writer's record says its change"
            self._stale_seen |= self._apply(seq, self.offset, size, change)
            self.offset += size
            return True
        stepped = writer.ahead.pop(where, None)
        if stepped is None:
            return False
        size, seq, gone = stepped
        if gone is not None:
            self.index.forget_gone(gone, seq)
        self.offset += size
        return True

    def _change(
        self,
        kind: int,
        tag: bytes,
        raw: bytes,
        data: bytes,
        seq: int,
        value_at: int,
        end: int,
        flags: int,
        expires: int,
        codec: int,
    ) -> Change | PinChange | None:
        key = N.decode_key(tag, raw)
        keydir = N.key_dir(self.blobs, N.key_hash(tag, raw))
        expired = expires and expires <= _clock.now_ms()
        if kind in _DELETES or (expired and kind == F.RECORD_PUT):
            # An expired put hides the older records of its key, as a delete does.
            return Change(key, None, keydir if keydir in self.key_dirs else None)
        pinned = bool(flags & F.FLAG_PINNED)
        if kind == F.RECORD_PUT:
            return Change(key, data[value_at:end], None, expires, pinned, codec)
        if kind == F.RECORD_PIN:
            return PinChange(key, pinned)
        length, checksum = F.VERSION_BODY.unpack_from(data, value_at)
        path = _version_path(keydir, seq, length, checksum)
        if path is None:
            # Collected (a newer record follows), or its put failed after the
            # record was written (its directory fsync): nothing to serve.
            return None
        self.key_dirs.add(keydir)
        if expired:
            # Its file is there, and counts only while this record is: the delete
            # it becomes is kept (the key's directory known) until the janitor
            # removes the file, or compaction would drop the record and bring
            # the value back.
            return Change(key, None, keydir)
        # Another process's file, maybe an "os" one's never fsynced: compaction
        # makes it durable before it drops a log record it supersedes.
        self.foreign_files[keydir] = path
        record = Record(seq, path, length, checksum)
        return Change(key, Mapped(record), None, expires, pinned, codec)

    def _apply(self, seq: int, offset: int, size: int, change: Change | PinChange) -> bool:
        """Apply one record (``size`` bytes at ``offset``) to the index."""
        old = change.apply(self.index, seq, self.segment, offset, size, ahead=False)
        return old is not None and old != self.segment

    def take_foreign_files(self) -> list[tuple[str, str]]:
        """The versions of other processes applied since the last call."""
        with self.lock:
            files, self.foreign_files = self.foreign_files, {}
        return list(files.items())

    def close(self) -> None:
        """Stop following (a catch-up under way ends first); close what it opened.
        ``STATE``, if it mapped it itself (a reader that found none at open), too."""
        with self.lock:
            self.closed = True
            self._close()
            if self._own_state and self.state is not None:
                self.state.close()
