"""The log's state shared by every process with the store open: ``STATE``, mapped.

Several processes append to one active segment (FORMAT.md, section "Several
processes"). What they must agree on lives in the ``STATE`` file, mapped by
each of them, and changes only under an exclusive flock of that file, held
for one append (or a roll) at a time: the next sequence number, the active
segment, where its last whole record ends (``appended``), how far its records
are acknowledged (``acked``: what the other processes may see), where the
append under way ends (``pending``), how far it is zero-filled ahead (``allocated``)
and how many compactions ran (``generation``).

``STATE`` is a hint, never fsynced: after a power cut (or when it disagrees
with the log) the first writer to open rebuilds it from what recovery read
(``_logwriter.attach``). A process killed while holding the flock loses it
with its life; what it left half done, ``pending`` says.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
import threading

from . import _format as F
from . import _fsio

_U64 = 8
_Q = struct.Struct("<Q")
_ALL = struct.Struct("<7Q")  # the fields after the magic, in one read
_TWO = struct.Struct("<QQ")
# Field offsets in STATE_LAYOUT, after the 8 bytes of magic and padding.
_NEXT, _SEGMENT, _APPENDED, _ACKED, _PENDING, _ALLOCATED, _GENERATION = (
    8 + _U64 * i for i in range(7)
)


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

    def magic_ok(self) -> bool:
        return self.map[:4] == F.STATE_MAGIC

    def reset(self, *, next_seq: int, segment: int, appended: int, allocated: int) -> None:
        """Write every field anew (a rebuild). REQUIRES: ``locked()``."""
        generation = self.generation if self.magic_ok() else 0
        self.map[: F.STATE_LAYOUT.size] = F.STATE_LAYOUT.pack(
            F.STATE_MAGIC, next_seq, segment, appended, appended, appended, allocated, generation
        )

    next_seq = _Field(_NEXT)
    segment = _Field(_SEGMENT)
    appended = _Field(_APPENDED)
    acked = _Field(_ACKED)
    pending = _Field(_PENDING)
    allocated = _Field(_ALLOCATED)
    generation = _Field(_GENERATION)

    def close(self) -> None:
        self.map.close()
        _fsio.unlock(self.fd)
