"""The log's state shared by every process with the store open: ``STATE``, mapped.

Several processes append to one active segment (FORMAT.md, section "Several
processes"). What they must agree on lives in the ``STATE`` file, mapped by
each of them, and changes only under an exclusive flock of that file, held
for one append (or a roll) at a time: the next sequence number, the active
segment, where its last whole record ends (``appended``), how far its records
are acknowledged (``acked``: what the other processes may see), where the
append under way ends (``pending``), how far it is zero-filled ahead (``allocated``),
how many compactions ran (``generation``), and how far the active segment is
fdatasynced (``synced``: one process's fdatasync serves every process whose
records it covered; see ``sync_shared``).

``STATE`` is a hint, never fsynced: after a power cut (or when it disagrees
with the log) the first writer to open rebuilds it from what recovery read
(``_logwriter.attach``). A process killed while holding the flock loses it
with its life; what it left half done, ``pending`` says.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import struct
import threading
from collections.abc import Callable, Iterator

from . import _format as F
from . import _fsio, _futex

_U64 = 8
_Q = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_FLOCK = struct.Struct("hh4xqqi4x")  # Linux's struct flock, on 64-bit x86 and Arm
_ALL = struct.Struct("<7Q")  # the fields after the magic, in one read
_TWO = struct.Struct("<QQ")
# Field offsets in STATE_LAYOUT, after the 8 bytes of magic and padding.
(
    _NEXT,
    _SEGMENT,
    _APPENDED,
    _ACKED,
    _PENDING,
    _ALLOCATED,
    _GENERATION,
    _SYNCED,
    _SYNCED_IN,
    _TROUBLES,
    _WAKES,
) = (8 + _U64 * i for i in range(11))
# How long a process waiting for another's fdatasync sleeps before it looks
# again, and how many such naps it takes before it fdatasyncs for itself: a
# syncer killed (or stopped) midway wakes no one.
SYNC_WAIT_SECONDS = 0.005
SYNC_NAPS = 20


class _NoSyncLock(Exception):
    """The system refuses open file description locks (an old kernel, a sandbox)."""


def _lock_sync(fd: int, kind: int) -> bool:
    """Take (``F_WRLCK``) or release (``F_UNLCK``) the sync lock, without waiting:
    an open file description lock of byte ``STATE_SYNC_BYTE`` of ``STATE``
    (Linux; apart from the file's flock, and like it released when the file is
    closed, a holder killed included). False: another process holds it.

    :raises _NoSyncLock: there are no such locks here.
    """
    request = _FLOCK.pack(kind, os.SEEK_SET, F.STATE_SYNC_BYTE, 1, 0)
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, request)
    except (BlockingIOError, PermissionError):  # EAGAIN or EACCES: held
        return False
    except OSError as exc:  # EINVAL, ENOLCK, ...
        raise _NoSyncLock(str(exc)) from exc
    return True


def _fresh_trouble() -> int:
    """A value for ``troubles`` that no process noted: random, not a count, so
    that two processes writing one at once, without a lock, still change it."""
    return int.from_bytes(os.urandom(8), "little")


class _Field:
    """One u64 field of the mapped ``STATE``, read and written in place."""

    def __init__(self, at: int) -> None:
        self.at = at

    def __get__(self, state: SharedState, owner: object = None) -> int:
        value: int = _Q.unpack_from(state.map, self.at)[0]
        return value

    def __set__(self, state: SharedState, value: int) -> None:
        _Q.pack_into(state.map, self.at, value)


class SharedState:
    """``STATE`` of one store, mapped; its fields read and written in place.

    REQUIRES: ``locked()`` for every write of a field. A reader without it
    (``_follow``) reads ``segment``, then ``acked``, then ``segment`` again: a
    writer that rolls sets the new segment's ``acked`` before its number.
    """

    @classmethod
    def peek(cls, root: str) -> SharedState | None:
        """``STATE`` mapped read-only, for a reader; None if no writer made it yet."""
        path = os.path.join(root, F.STATE_NAME)
        try:
            fd = _fsio.open_flocked_readonly(path)
        except FileNotFoundError:
            return None
        self = cls.__new__(cls)
        self.path, self.fd = path, fd
        self._threads = threading.Lock()
        self._wakes = 0
        try:
            if os.fstat(fd).st_size < mmap.PAGESIZE:
                raise FileNotFoundError(path)  # being made: as if not yet
            self.map = mmap.mmap(fd, mmap.PAGESIZE, prot=mmap.PROT_READ)
        except (OSError, ValueError):
            _fsio.unlock(fd)
            return None
        return self

    def __init__(self, root: str) -> None:
        self._threads = threading.Lock()
        self.path = os.path.join(root, F.STATE_NAME)
        # Flocked: a forked child closes its copy (see _fsio), so its appends
        # never ride on the parent's lock.
        self.fd = _fsio.open_flocked(self.path)
        try:
            if os.fstat(self.fd).st_size < mmap.PAGESIZE:
                # Grown, never shrunk: two openers racing both make it a page.
                _fsio.truncate(self.fd, mmap.PAGESIZE)
            self.map = mmap.mmap(self.fd, mmap.PAGESIZE)
            self._wakes = _futex.address_of(self.map, _WAKES) if _futex.available else 0
        except BaseException:
            _fsio.unlock(self.fd)
            raise

    def locked(self) -> SharedState:
        """Hold the append flock (``with state.locked():``). A process killed
        meanwhile releases it by dying. (A method pair, not a generator: it is
        taken once per append.)"""
        return self

    def __enter__(self) -> None:
        # An flock belongs to the open file, which every thread of this handle
        # shares: a second thread's flock would pass at once, and its unlock
        # free the lock mid-append. The threads take turns on a lock first.
        self._threads.acquire()
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except BaseException:
            self._threads.release()
            raise

    def __exit__(self, *exc: object) -> None:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()

    def fields(self) -> tuple[int, int, int, int, int, int, int]:
        """(next_seq, segment, appended, acked, pending, allocated, generation)."""
        values: tuple[int, int, int, int, int, int, int] = _ALL.unpack_from(self.map, _NEXT)
        return values

    def bound(self) -> tuple[int, int] | None:
        """(segment, appended) for a recovery beside live handles (see
        ``Recovered.bound``), or None when this is no ``STATE`` yet. A hint read
        without the flock: at worst a roll's (old segment, 16), a bound below the
        truth, which the follower makes up for."""
        if not self.magic_ok():
            return None
        _, segment, appended, _, _, _, _ = self.fields()
        return segment, appended

    def set_appended(self, end: int, *, acked: bool) -> None:
        """``appended`` (and with ``acked``, ``acked``) = ``end``, in one write."""
        if acked:
            _TWO.pack_into(self.map, _APPENDED, end, end)
        else:
            _Q.pack_into(self.map, _APPENDED, end)

    def covers(self, segment: int, end: int) -> bool:
        """Whether an fdatasync raised ``synced`` past the records of the active
        ``segment`` up to ``end``. A seal counts not (``sync_shared`` says why).
        A read without the flock, in the order the writers' reverse: ``synced``,
        then ``synced_in``, then ``segment``; a mark writes ``synced`` before
        ``synced_in``, a seal both before ``segment``, so a ``synced`` of a later
        segment is never taken for this one's. Callers also check ``troubles``."""
        return self.synced >= end and self.synced_in == segment and self.segment == segment

    def sync_shared(
        self, segment: int, end: int, troubles: int, fdatasync: Callable[[], None]
    ) -> None:
        """Make the records of ``segment`` up to ``end`` durable, sharing
        fdatasyncs with the other processes appending to it; ``troubles`` is its
        value as it was when they were written (``LogWriter._write``).

        One process at a time fdatasyncs for everyone (holding the sync lock,
        taken without waiting: ``_lock_sync``): it reads ``appended`` first, so its
        fdatasync covers every record whose write returned before, whoever
        wrote it, and then raises ``synced`` (and ``acked``) there. The others
        sleep on ``wakes`` (a futex: woken at once, no spinning), then return if
        covered, else take the lead: so while one fdatasync runs, the records
        appended meanwhile gather for the next (group commit across processes).

        Nobody trusts another's fdatasync across a trouble: an fdatasync that
        failed anywhere (Linux reports a write-back error once per open file, so
        a later one elsewhere may pass over lost pages) or a cut below
        ``appended``. A syncer raises ``synced`` only if ``troubles`` did not
        change while it synced, and a waiter that finds it changed since its
        records were written fdatasyncs its own descriptor (which reports any
        error that touched them). A syncer that dies or stops wakes no one: the
        waiters look again every ``SYNC_WAIT_SECONDS``, and after
        ``SYNC_NAPS`` of them fdatasync for themselves.
        REQUIRES: the caller owns the segment's descriptor ``fdatasync`` syncs.
        Raises what ``fdatasync`` raises.
        """
        naps = 0
        while True:
            if self.troubles != troubles:
                self._sync_own(segment, end, fdatasync, wake=True)
                return
            if self.segment != segment:
                # Sealed, and the seal fdatasynced it: through a descriptor
                # that may have been opened after another process was told of
                # a write-back error and before it noted the trouble. Ours
                # was open before our write: it is told of any that hit it.
                self._sync_own(segment, end, fdatasync, wake=False)
                return
            if self.covers(segment, end):
                if self.troubles == troubles:  # read after: a failure came before
                    return
                continue
            if not self._wakes or naps >= SYNC_NAPS:  # no futex here, or no syncer
                self._sync_own(segment, end, fdatasync, wake=True)
                return
            seen = _U32.unpack_from(self.map, _WAKES)[0]
            held = False
            try:
                held = _lock_sync(self.fd, fcntl.F_WRLCK)
                if not held:
                    if (
                        self.segment == segment
                        and not self.covers(segment, end)
                        and self.troubles == troubles
                    ):
                        _futex.wait(self._wakes, seen, SYNC_WAIT_SECONDS)
                        naps += 1
                    continue
                if not self.covers(segment, end) and self.troubles == troubles:
                    self._sync_own(segment, end, fdatasync, wake=False)
                    return
            except _NoSyncLock:  # no such locks here: every process for itself
                self._wakes = 0
            finally:
                if held:
                    try:
                        _lock_sync(self.fd, fcntl.F_UNLCK)
                    finally:
                        # After the unlock: a waiter that read `wakes` before it
                        # failed to take the lock then sleeps not at all.
                        self._wake()

    def _sync_own(
        self, segment: int, end: int, fdatasync: Callable[[], None], *, wake: bool
    ) -> None:
        """``fdatasync()`` this process's batch of ``segment`` ending at ``end``,
        then ``synced`` and ``acked`` raised to the ``appended`` read before it,
        unless the segment was sealed since; if ``troubles`` changed meanwhile,
        only ``acked``, and only to ``end``: our own descriptor vouches for our
        records, no one's for the rest (the put returns: other processes must
        see it). With ``wake``, the waiters woken. A failure is a trouble."""
        with self.locked():
            upto = self.appended if self.segment == segment else 0
            troubles = self.troubles
        with self.troubled_on_failure():
            fdatasync()
        with self.locked():
            if upto and self.segment == segment:
                if self.troubles != troubles:
                    upto = min(end, self.appended)
                elif self.synced_in != segment or self.synced < upto:
                    self.synced = upto
                    self.synced_in = segment
                if self.acked < upto:
                    self.acked = upto
        if wake:
            self._wake()

    @contextlib.contextmanager
    def troubled_on_failure(self) -> Iterator[None]:
        """Note a trouble (``trouble``) if the block fails: a write or fdatasync
        of the active segment, or a settling of it, raised."""
        try:
            yield
        except BaseException:
            self.trouble()
            raise

    def trouble(self) -> None:
        """Note a trouble: an fdatasync of the active segment failed, a write to
        it failed, or records were cut off it (see ``sync_shared``); wake the
        waiters, who then fdatasync for themselves. ``troubles`` gets a fresh
        random value, not a count: written at once, with or without the flock
        (a failed fdatasync must be told before anyone else can mark over it),
        and two processes writing at once still leave a value nobody noted."""
        self.troubles = _fresh_trouble()
        self._wake()

    def _wake(self) -> None:
        """``wakes`` plus one, and every sleeper on it woken. A waiter that read
        the old count sleeps not at all (the futex compares). Without a lock:
        two processes counting at once may count one, and a waiter that read
        the count between them sleeps until its timeout, no longer."""
        if self._wakes:
            count = (_U32.unpack_from(self.map, _WAKES)[0] + 1) & 0xFFFFFFFF
            _U32.pack_into(self.map, _WAKES, count)
            _futex.wake(self._wakes)

    def magic_ok(self) -> bool:
        return self.map[:4] == F.STATE_MAGIC

    def reset(self, *, next_seq: int, segment: int, appended: int, allocated: int) -> None:
        """Write every field anew (a rebuild): nothing known ``synced`` (what a
        crashed "os" writer left may be in the page cache only), a trouble,
        ``wakes`` kept (and counted). REQUIRES: ``locked()``."""
        generation = self.generation if self.magic_ok() else 0
        wakes = _U32.unpack_from(self.map, _WAKES)[0]
        self.map[: F.STATE_LAYOUT.size] = F.STATE_LAYOUT.pack(
            F.STATE_MAGIC,
            next_seq,
            segment,
            appended,
            appended,
            appended,
            allocated,
            generation,
            0,
            0,
            _fresh_trouble(),
            wakes,
        )
        self._wake()

    next_seq = _Field(_NEXT)
    segment = _Field(_SEGMENT)
    appended = _Field(_APPENDED)
    acked = _Field(_ACKED)
    pending = _Field(_PENDING)
    allocated = _Field(_ALLOCATED)
    generation = _Field(_GENERATION)
    synced = _Field(_SYNCED)
    synced_in = _Field(_SYNCED_IN)
    troubles = _Field(_TROUBLES)

    def close(self) -> None:
        self.map.close()
        _fsio.unlock(self.fd)
