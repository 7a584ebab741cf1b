"""The in-memory index: each key's live record, what is no longer live, and the log's book.

* ``values``: key -> the value itself (``bytes``) for a value in the log; its
  ``files``: key -> a ``Mapped`` for a value in a file. ``get`` is one lookup
  in ``values``: a small value comes back as the very object stored, with
  nothing to follow and nothing to test (issue 13: chasing an entry tuple made
  a get 1.65-1.84x a bare ``dict.get``; telling the two kinds apart on every
  get cost 1.08-1.12x of it, against 0.92x this way). A key in a file misses
  there, and the dict's ``__missing__`` serves it from ``files``.
* ``meta``: key -> where its live record is, packed into one int (``pack``):
  the sequence number, the log segment (0 for a version file) and the record's
  bytes in that segment. Only puts, deletes, compaction, recovery and the
  statistics read it; it is one object per key, which is what replay builds
  per record besides the value.

Invariant: a key is in ``values`` or ``files``, never both, and ``meta`` has
the same keys, outside ``Index.lock`` (and, during recovery, until
``_recovery._merge`` drops the deletes). A publish that moves a key from one to
the other adds it to the new dict before it removes it from the old, under the
lock, with ``Values.moves`` odd meanwhile; a lookup that misses both looks
again if a move came between (``stored``), so a present key is never reported
missing, and never waits for the lock but for such a move.

``Index`` keeps them with what a record that stops being live leaves behind:
the log's stale bytes per segment (``SegmentBook``, compaction's measure), the
delete records compaction must keep, and the key directories the janitor has
to visit. Its methods publish records; compaction (``_garbage``) reads and
swaps its fields under ``lock``.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, NoReturn, TypeVar

from . import _format as F
from ._names import Key
from .errors import ClosedError

if TYPE_CHECKING:  # the index names the layouts' records; it imports neither layout
    from ._keydir import Record
    from ._sieve import Sieve
    from ._snapshot import Cold


class Mapped:
    """A value in a version file, as ``values`` holds it: the file, and its
    mapping once the first ``get`` made it.

    The view is never handed out itself: each get returns a slice of it, which
    the caller may release (``with cache.get(k) as v:``) without breaking the
    key for everyone else.
    """

    __slots__ = ("codec", "record", "view")

    def __init__(self, record: Record, codec: int = F.CODEC_RAW) -> None:
        self.record = record
        self.view: memoryview | None = None
        self.codec = codec  # what the file's bytes encode (FORMAT.md, "Typed values")


class NpyBytes(bytes):
    """A small typed value's bytes, as ``values`` holds them: the type is the
    codec (FORMAT.md, "Typed values"). A subclass per codec, not an attribute:
    bytes subclasses take no slots, and a ``__dict__`` would cost a raw value's
    bytes; ``get`` returns the very object, so the typed getters learn its
    codec from it without a second lookup that a put in between could
    mismatch."""

    __slots__ = ()


class SafetensorsBytes(bytes):
    __slots__ = ()


class JsonBytes(bytes):
    __slots__ = ()


class PickleBytes(bytes):
    __slots__ = ()


_TYPED: Final[dict[int, type[bytes]]] = {
    F.CODEC_NPY: NpyBytes,
    F.CODEC_SAFETENSORS: SafetensorsBytes,
    F.CODEC_JSON: JsonBytes,
    F.CODEC_PICKLE: PickleBytes,
}
CODEC_OF: Final[dict[type, int]] = {kind: codec for codec, kind in _TYPED.items()}


def typed(data: bytes | memoryview, start: int, end: int, codec: int) -> bytes:
    """``data[start:end]`` as the index holds a value of ``codec``. REQUIRES: codec != 0."""
    kind = _TYPED[codec]
    if type(data) is kind and start == 0 and end == len(data):
        return data  # (already one: no second copy)
    return kind(memoryview(data)[start:end])


def codec_of(value: bytes | memoryview | Mapped) -> int:
    """The codec of a value as the index holds it, or of what a get returned:
    a ``Mapped``'s, a small value's by its type; 0 (raw) for anything else."""
    if isinstance(value, Mapped):
        return value.codec
    return CODEC_OF.get(type(value), F.CODEC_RAW)


Value = bytes | Mapped  # what a key's live record holds in memory
_R = TypeVar("_R")


class Values(dict[Key, bytes]):
    """``get``'s dict: the values in the log; ``files`` holds the others.

    ``values[key]`` is a value ready to return: the bytes, or for a key in
    ``files`` (through ``__missing__``) a view of its own of the mapped file,
    mapped and checked by ``first_get`` on the first get. ``KeyError``: the
    key is in neither.
    """

    __slots__ = ("cold_left", "files", "first_get", "inherited", "lock", "moves", "thaw", "warm")

    def __init__(self, values: dict[Key, bytes], files: dict[Key, Mapped]) -> None:
        super().__init__(values)
        self.files = files
        # Set by the handle (_reads.Reads.first_get): None when the key turned
        # out deleted (it fell back to a delete record).
        self.first_get: Callable[[Key, Mapped], bytes | memoryview | None] = _unset
        self.lock = threading.Lock()  # Index.lock: held by every change
        # Odd while a publish moves a key from one dict to the other (under the
        # lock); bumped twice per move. A reader that missed both dicts, or
        # counted them, asks it whether a move came between its two looks.
        self.moves = 0
        # Set by the handle: whether this process is a fork of the one that
        # opened the store. Then nothing changes the dicts here, and a parent
        # thread may have held the lock at the fork (mid-move, maybe), never to
        # release it.
        self.inherited: Callable[[], bool] = _never
        # Set by the index while a snapshot holds keys not loaded yet (_snapshot):
        # ``thaw`` loads one (KeyError: it holds none of that name), ``warm`` all,
        # ``cold_left`` counts those left.
        self.thaw: Callable[[Key], bytes] = _absent
        self.warm: Callable[[], None] = _nothing
        self.cold_left: Callable[[], int] = _none_left

    def __missing__(self, key: Key) -> bytes | memoryview:
        mapped = self.files.get(key)
        if mapped is None:
            return self.thaw(key)  # KeyError: not in the cache
        view = mapped.view
        if view is not None:
            return view[:]  # a slice, never the cached view itself: the caller may release it
        found = self.first_get(key, mapped)
        if found is None:
            raise KeyError(key)
        return found

    def _settled(self, before: int) -> bool:
        """Whether no move came between a read that started at ``moves ==
        before`` and now; if one is under way, wait for it (its publish holds the
        lock a moment; the lock is never taken otherwise: compaction holds it
        while it scans, and a reader must not wait for that)."""
        if (before == self.moves and not before & 1) or self.inherited():
            return True
        if self.moves & 1:
            with self.lock:
                pass
        return False

    def stored(self, key: Key) -> Value | None:
        """What the key's live record holds in memory (bytes or a Mapped), or None."""
        while True:
            before = self.moves
            value: Value | None = self.get(key)  # dict.get: never __missing__
            if value is None:
                value = self.files.get(key)
                if value is None and self.thaw is not _absent:
                    with contextlib.suppress(KeyError):
                        value = self.thaw(key)
            if value is not None or self._settled(before):
                return value

    def peek(self, key: Key) -> Value | None:
        """``stored`` for a caller holding the lock (no move is under way).
        REQUIRES: ``lock``."""
        value: Value | None = self.get(key)
        return value if value is not None else self.files.get(key)

    def _snapshot(self, read: Callable[[], _R]) -> _R:
        """``read()`` of both dicts, again until no move came between."""
        while True:
            before = self.moves
            result = read()
            if self._settled(before):
                return result

    def count(self) -> int:
        return self._snapshot(lambda: len(self) + len(self.files) + self.cold_left())

    def keys_now(self) -> list[Key]:
        """A snapshot of every key."""
        self.warm()
        return self._snapshot(lambda: [*self, *self.files])

    def stored_now(self) -> list[tuple[Key, Value]]:
        """A snapshot of every (key, what its record holds in memory)."""
        self.warm()
        return self._snapshot(lambda: [*self.items(), *self.files.items()])


def _unset(key: Key, mapped: Mapped) -> NoReturn:
    raise AssertionError("Values.first_get is set by the handle before any get")


def _never() -> bool:
    return False


def _absent(key: Key) -> NoReturn:
    raise KeyError(key)


def _nothing() -> None:
    pass


def _none_left() -> int:
    return 0


# meta's packing: seq << SEQ_SHIFT | segment << SEGMENT_SHIFT | offset <<
# OFFSET_SHIFT | size. An int, not a tuple: opening a store makes one per log
# record, and an int is one object where a tuple is two or more. The record's
# offset is there for the index snapshot (``_snapshot``), which names where
# each live record lies; the fields below seq are as narrow as the log allows
# (``Options.segment_bytes`` is at most 2**40, a record at most a u32 value plus
# its key and header, segment numbers checked by ``check_segment_number``), so
# the int is no bigger than it was without it (five 30-bit digits below seq
# 2**26).
WARM_STEP: Final = 4096  # entries Index.warm loads per hold of the lock
SIZE_BITS: Final = 40
OFFSET_BITS: Final = 40
SEGMENT_BITS: Final = 24
OFFSET_SHIFT: Final = SIZE_BITS
SEGMENT_SHIFT: Final = OFFSET_SHIFT + OFFSET_BITS
SEQ_SHIFT: Final = SEGMENT_SHIFT + SEGMENT_BITS
SIZE_MASK: Final = (1 << SIZE_BITS) - 1
OFFSET_MASK: Final = (1 << OFFSET_BITS) - 1
SEGMENT_MASK: Final = (1 << SEGMENT_BITS) - 1
MAX_SEGMENT_NUMBER: Final = SEGMENT_MASK
IN_A_FILE: Final = 0  # the segment of a value in a version file (segments start at 1)


def pack(seq: int, segment: int, offset: int, size: int) -> int:
    """A key's ``meta``: its record ``seq``, in log ``segment`` (``IN_A_FILE``
    for a version file) at ``offset``, taking ``size`` bytes there."""
    return seq << SEQ_SHIFT | segment << SEGMENT_SHIFT | offset << OFFSET_SHIFT | size


def seq_of(meta: int) -> int:
    return meta >> SEQ_SHIFT


def segment_of(meta: int) -> int:
    return meta >> SEGMENT_SHIFT & SEGMENT_MASK


def offset_of(meta: int) -> int:
    return meta >> OFFSET_SHIFT & OFFSET_MASK


def size_of(meta: int) -> int:
    return meta & SIZE_MASK


def length(value: Value) -> int:
    """The value's length in bytes."""
    return value.record.length if isinstance(value, Mapped) else len(value)


@dataclass
class Deleted:
    """A delete record in the log, kept in memory while versions older than it
    may lie in its key's directory (the key deleted, or put again as a newer
    version): compaction must copy it forward until the janitor removes them,
    or they would come back (see ``_garbage.Garbage.still_needs_delete``)."""

    seq: int
    segment: int
    size: int


class SegmentBook:
    """How many record bytes each log segment holds, and how many are still live.

    A record is live while it is its key's newest record in the log and a put;
    overwritten values and delete records count as stale. The ratio of stale
    bytes in sealed segments decides when compaction pays.
    REQUIRES: callers serialise through ``Index.lock``.
    """

    def __init__(self, total: dict[int, int], live: dict[int, int]) -> None:
        self.total = total
        self.live = live

    def add(self, segment: int, size: int, *, live: bool) -> None:
        self.total[segment] = self.total.get(segment, 0) + size
        if live:
            self.live[segment] = self.live.get(segment, 0) + size
        else:
            self.live.setdefault(segment, 0)

    def supersede(self, segment: int, size: int) -> None:
        if segment in self.live:  # not if its segment was compacted away meanwhile
            self.live[segment] -= size

    def stale(self, *, below: int | None = None) -> tuple[int, int]:
        """(stale bytes, total bytes) over the segments numbered below ``below`` (all: None)."""
        numbers = [n for n in self.total if below is None or n < below]
        total = sum(self.total[n] for n in numbers)
        return total - sum(self.live[n] for n in numbers), total

    def replace(self, inputs: list[int], output: int, total: int, live: int) -> None:
        for number in inputs:
            self.total.pop(number, None)
            self.live.pop(number, None)
        self.total[output] = total
        self.live[output] = live


class Index:
    """The live records (``values``, ``meta``), the delete records compaction
    keeps (``deleted``), the log's ``book``, and the key directories holding
    records no longer live (``dirty``, the janitor's to-do list).

    REQUIRES: ``lock`` for ``meta``, ``deleted`` and ``book``, and for every
    change of ``values`` (which ``get`` reads without it); ``dirty_lock`` for
    ``dirty``. A writer holds its key's stripe lock too: the records of one key
    are published in the order of their numbers.
    """

    def __init__(
        self,
        values: Values,
        meta: dict[Key, int],
        deleted: dict[Key, Deleted],
        book: SegmentBook,
        dirty: set[str],
        sooner: threading.Event,
    ) -> None:
        self.values = values
        self.meta = meta
        self.deleted = deleted
        self.book = book
        self.lock = values.lock  # one lock: a lookup that missed waits for a move
        # key -> seq of a delete this process applied before the follower passed
        # it: a record of the key numbered below it is older (see _follow).
        self.gone: dict[Key, int] = {}
        self.dirty = dirty
        self.dirty_lock = threading.Lock()
        # key -> when its live value expires (ms since the epoch), for those that
        # do; and the same as a heap of (expires, seq, key), which may hold entries
        # no longer live (checked against ``meta`` when due). ``sooner`` is set
        # when a deadline earlier than every other one comes in (_expiry waits on it).
        self.expiry: dict[Key, int] = {}
        self.deadlines: list[tuple[int, int, Key]] = []
        self.sooner = sooner
        # key -> (segment, size) of the version record compaction copied forward
        # for its live file (an expiry, a batch's b- file: see _garbage), booked
        # live there until the key's record is superseded.
        self.notes: dict[Key, tuple[int, int]] = {}
        # The keys whose live value is pinned (FORMAT.md, "Pins and evictions"):
        # ``max_bytes`` never evicts them.
        self.pins: set[Key] = set()
        # key -> (seq, pinned) of the newest pin record applied, while no newer
        # record of the key is: a record older than it, applied later (another
        # process's, read by the follower after this one's pin record was
        # applied ahead), takes its pin from it, not from its own bit.
        self.pin_said: dict[Key, tuple[int, bool]] = {}
        # With ``max_bytes`` (``track``): the keys in SIEVE order, and the sum of
        # the live values' lengths, kept as records are published.
        self.sieve: Sieve | None = None
        self.live_bytes = 0
        # The keys of the index snapshot not loaded yet (_snapshot.Cold), or None.
        self.cold: Cold | None = None

    def take_cold(self, cold: Cold | None) -> None:
        """Serve the keys ``cold`` holds as if loaded: each on its first lookup
        (``thaw``), all at once for a whole-index operation (``warm``).
        REQUIRES: ``lock``, or nothing else using the index yet."""
        values = self.values
        self.cold = cold
        if cold is None or not cold.left:
            self.cold = None
            values.thaw, values.warm, values.cold_left = _absent, _nothing, _none_left
            return
        values.thaw, values.warm = self._thaw, self.warm
        values.cold_left = lambda: cold.left

    def _thaw(self, key: Key) -> bytes:
        """The key's value, loaded from the snapshot (``Values.__missing__``).

        :raises KeyError: neither the index nor the snapshot holds the key.
        """
        values = self.values
        cold = self.cold
        # Looked up without the lock: an answer of "not held" stays true (entries
        # are only ever taken; one taken meanwhile is in a dict, and a reader that
        # missed sees ``moves`` changed and looks again).
        if cold is None:
            raise KeyError(key)
        found = cold.find(key)
        if found is None:
            raise KeyError(key)
        if values.inherited():  # (a fork's parent may have held the lock: see Values)
            return found[1]
        with self.lock:
            if not self._take(cold, key, found):  # (taken meanwhile, or put)
                now = values.peek(key)
                if now is None:
                    raise KeyError(key)
                if isinstance(now, Mapped):
                    return values[key]  # (a file put meanwhile: through __missing__)
                return now
        return found[1]

    def _thaw_locked(self, key: Key) -> None:
        """Load the key from the snapshot, if it holds it and the index does not.
        REQUIRES: ``lock``."""
        cold = self.cold
        if cold is None or key in self.meta:
            return
        found = cold.find(key)
        if found is not None:
            self._take(cold, key, found)

    def _take(self, cold: Cold, key: Key, found: tuple[int, bytes, int, int]) -> bool:
        """Move ``found``, the entry of ``key`` in ``cold``, into the index, unless
        it was taken (or the key put) since it was found; returns whether it did.
        REQUIRES: ``lock``."""
        i, value, meta, _expires = found
        if cold is not self.cold or cold.taken[i] or key in self.meta:
            return False
        values = self.values
        values.moves += 1  # (a count meanwhile sees the key in both or neither: it counts again)
        cold.mark(i)
        dict.__setitem__(values, key, value)
        self.meta[key] = meta
        values.moves += 1
        if not cold.left:
            self.take_cold(None)
        return True

    def warm(self) -> None:
        """Load every key the snapshot still holds (a whole-index operation).

        A few thousand at a time, the lock let go between: a million take
        seconds, and puts (and first lookups) wait for the lock meanwhile."""
        start = 0
        while True:
            with self.lock:
                cold = self.cold
                if cold is None:
                    return
                stop = min(start + WARM_STEP, len(cold.taken))
                self._warm_locked(start, stop)
                if stop == len(cold.taken):
                    self.take_cold(None)
                    return
            start = stop

    def _warm_locked(self, start: int = 0, stop: int | None = None) -> None:
        """Load the snapshot's entries ``start`` to ``stop`` (all: None) not taken
        yet; with all, the snapshot is done with. REQUIRES: ``lock``."""
        cold = self.cold
        if cold is None:
            return
        values, meta = self.values, self.meta
        values.moves += 1
        try:
            for key, value, packed, _expires in cold.take_all(start=start, stop=stop):
                if key not in meta:
                    dict.__setitem__(values, key, value)
                    meta[key] = packed
        finally:
            values.moves += 1
        if stop is None:
            self.take_cold(None)

    def track(self, sieve: Sieve) -> None:
        """Keep ``sieve`` and ``live_bytes`` from now on, starting from every live
        key, oldest record first. REQUIRES: ``lock``, or nothing else using the
        index yet."""
        meta = self.meta
        for key in sorted(meta, key=meta.__getitem__):  # by number: seq is the top field
            sieve.insert(key)
        self.sieve = sieve
        self._count_live()

    def _count_live(self) -> None:
        values = self.values
        self.live_bytes = sum(map(len, dict.values(values))) + sum(
            m.record.length for m in values.files.values()
        )

    def size(self, key: Key) -> int:
        """The length of the key's live value, 0 for none. REQUIRES: ``lock``."""
        self._thaw_locked(key)
        value = self.values.peek(key)
        return 0 if value is None else length(value)

    def set_pin(self, key: Key, seq: int, pinned: bool) -> bool:
        """Apply pin record ``seq``: pin (or unpin) the key's live value if it is
        numbered ``seq`` or below; returns whether it did. REQUIRES: as ``publish``."""
        with self.lock:
            self._thaw_locked(key)
            meta = self.meta.get(key)
            if meta is None or seq_of(meta) > seq or self.gone.get(key, 0) > seq:
                return False
            said = self.pin_said.get(key)
            if said is not None and said[0] > seq:
                return False  # a newer pin record is applied already (its writer's, ahead)
            if pinned:
                self.pins.add(key)
            else:
                self.pins.discard(key)
            self.pin_said[key] = (seq, pinned)
            return True

    def set_expiry(self, expiry: dict[Key, int]) -> None:
        """Take the expiries recovery found (key -> ms), with their records' numbers
        from ``meta``. REQUIRES: ``lock``, or nothing else using the index yet."""
        self.expiry = expiry
        self.deadlines = [(e, seq_of(self.meta[k]), k) for k, e in expiry.items()]
        heapq.heapify(self.deadlines)
        self.sooner.set()

    def _note_expiry(self, key: Key, seq: int, expires: int) -> None:
        """REQUIRES: ``lock``."""
        if expires:
            self.expiry[key] = expires
            if not self.deadlines or expires < self.deadlines[0][0]:
                self.sooner.set()
            heapq.heappush(self.deadlines, (expires, seq, key))
            if len(self.deadlines) > 2 * len(self.expiry) + 1024:
                # Mostly entries of values overwritten or deleted since: rebuilt,
                # so overwrites with a ttl do not grow it without bound.
                meta = self.meta  # (the key's own is not in it yet: publish sets it after)
                self.deadlines = [
                    (e, seq if k == key else seq_of(meta[k]), k) for k, e in self.expiry.items()
                ]
                heapq.heapify(self.deadlines)
        elif self.expiry:
            self.expiry.pop(key, None)

    def _drop_note(self, key: Key) -> None:
        """The key's live record is superseded: so is its copied note. REQUIRES: ``lock``."""
        if self.notes:
            note = self.notes.pop(key, None)
            if note is not None:
                self.book.supersede(*note)

    def due(self, now: int) -> list[tuple[Key, int]]:
        """(key, seq) of every value whose expiry is not after ``now``, taken off
        the heap (each still to be checked live by ``expire``)."""
        out = []
        with self.lock:
            heap = self.deadlines
            while heap and heap[0][0] <= now:
                _expires, seq, key = heapq.heappop(heap)
                out.append((key, seq))
        return out

    def next_deadline(self) -> int | None:
        """The earliest deadline on the heap (maybe no longer live), or None."""
        try:
            return self.deadlines[0][0]
        except IndexError:  # empty, or emptied by ``due`` in another thread just now
            return None

    def expire(self, key: Key, seq: int, keydir: str | None, active: int) -> bool:
        """Drop ``key``'s live value ``seq`` from memory, its expiry passed: the
        key is absent from now on, as after a delete numbered ``seq`` (its record
        hides every older one: FORMAT.md, "Expiry"). ``keydir``: the key's
        directory, if it has one (then compaction keeps a delete of number
        ``seq`` while older versions lie there; ``active`` is the segment it is
        booked in when the value was in a file). Returns whether it was live.
        REQUIRES: the follower has applied every record numbered below ``seq``
        (``_expiry`` catches up first), so none can come back after this."""
        values = self.values
        with self.lock:
            self._thaw_locked(key)
            meta = self.meta.get(key)
            if meta is None or seq_of(meta) != seq or key not in self.expiry:
                return False
            del self.expiry[key]
            self._drop_note(key)
            old = values.peek(key)
            self.pins.discard(key)
            if self.sieve is not None and old is not None:
                self.live_bytes -= length(old)
                self.sieve.remove(key)
            segment, size = segment_of(meta), size_of(meta)
            if segment != IN_A_FILE:
                self.book.supersede(segment, size)
            else:
                segment = active
            if keydir is not None:
                self.deleted[key] = Deleted(seq, segment, size)
            del self.meta[key]
            values.pop(key, None)
            values.files.pop(key, None)
        if isinstance(old, Mapped):
            self.mark_dirty(os.path.dirname(old.record.path))
        elif keydir is not None:
            self.mark_dirty(keydir)
        return True

    def publish(
        self,
        key: Key,
        value: Value | None,
        meta: int = 0,
        expires: int = 0,
        pinned: bool = False,
        codec: int = 0,
    ) -> int | None:
        """Make ``value``, with its ``meta`` (see ``pack``), the key's live record
        (None: deleted), and account for what it supersedes; return the log
        segment of the record superseded, or None (there was none, or it was a
        version file, whose directory is now the janitor's to visit).
        ``expires``: when the value expires (ms since the epoch), 0 for never;
        ``pinned``: its record's PINNED bit; ``codec``: what its bytes encode.

        A record not newer than the key's live one (a recovered version's own
        note in the log, say) changes nothing: None.
        REQUIRES: the follower's lock (``_follow``), or the key's stripe lock for a
        record of this process its writer applies itself (``_writes``): records
        of one key are told apart by their numbers, not by who applies them;
        the record is acknowledged."""
        values = self.values
        files = values.files
        with self.lock:
            if self.cold is not None:
                self._thaw_locked(key)
            old_meta = self.meta.get(key)
            seq = seq_of(meta)
            older = old_meta is not None and seq_of(old_meta) >= seq
            if value is not None and (older or self.gone.get(key, 0) > seq):
                if not isinstance(value, Mapped):
                    self.book.add(segment_of(meta), size_of(meta), live=False)
                return None
            old = values.peek(key)
            self._note_expiry(key, seq, expires if value is not None else 0)
            self._drop_note(key)
            if self.pin_said:
                said = self.pin_said.get(key)
                if said is not None:
                    if said[0] > seq:
                        pinned = said[1]  # a newer pin record, applied already
                    else:
                        del self.pin_said[key]
            if pinned and value is not None:
                self.pins.add(key)
            elif self.pins:
                self.pins.discard(key)
            if codec and value is not None:
                if isinstance(value, Mapped):
                    value.codec = codec
                else:
                    value = typed(value, 0, len(value), codec)
            sieve = self.sieve
            if sieve is not None:
                self.live_bytes += (0 if value is None else length(value)) - (
                    0 if old is None else length(old)
                )
                if value is None:
                    sieve.remove(key)
                else:
                    sieve.insert(key)
            # A key going from one dict to the other: between the two changes
            # it is in both (the new record goes in before the old comes out),
            # and ``moves`` is odd for a reader that looked at the other first.
            moving = value is not None and old is not None and type(old) is not type(value)
            if moving:
                values.moves += 1
            if value is None:
                self.meta.pop(key, None)
                values.pop(key, None)
                files.pop(key, None)
            elif isinstance(value, Mapped):
                self.meta[key] = meta
                files[key] = value
                values.pop(key, None)
            else:
                self.meta[key] = meta
                values[key] = value
                files.pop(key, None)
                self.deleted.pop(key, None)  # superseded in the log: see Deleted
                self.book.add(segment_of(meta), size_of(meta), live=True)
            if moving:
                values.moves += 1
            old_segment = None
            if old_meta is not None and type(old) is not Mapped:
                old_segment = segment_of(old_meta)
                self.book.supersede(old_segment, size_of(old_meta))
        if isinstance(old, Mapped):
            # An older version to remove, or the whole directory if the key left it.
            self.mark_dirty(os.path.dirname(old.record.path))
        return old_segment

    def publish_delete(
        self,
        key: Key,
        seq: int,
        segment: int,
        size: int,
        keydir: str | None,
        *,
        ahead: bool = False,
    ) -> int | None:
        """Publish the delete record ``seq`` of ``key``, ``size`` bytes in log
        ``segment``; ``keydir`` is the key's directory if it has one. Returns
        what ``publish`` does. ``ahead``: applied by its writer before the
        follower passed it (see ``gone``). REQUIRES: as ``publish``."""
        with self.lock:
            if self.cold is not None:
                self._thaw_locked(key)
            old_meta = self.meta.get(key)
            self.book.add(segment, size, live=False)
            if (old_meta is not None and seq_of(old_meta) >= seq) or self.gone.get(key, 0) > seq:
                return None
            if ahead:  # before the follower passed it: older records of the key may follow
                self.gone[key] = seq
            if keydir is not None:
                # Older versions may lie in the key's directory until the janitor
                # removes it: compaction must keep this record until then.
                self.deleted[key] = Deleted(seq, segment, size)
        if keydir is not None:
            self.mark_dirty(keydir)
        return self.publish(key, None, pack(seq, 0, 0, 0))

    def replace(
        self,
        values: Values,
        meta: dict[Key, int],
        deleted: dict[Key, Deleted],
        total: dict[int, int],
        live: dict[int, int],
        expiry: dict[Key, int],
        notes: dict[Key, tuple[int, int]],
        pins: set[Key],
        cold: Cold | None = None,
    ) -> None:
        """Take everything from a new recovery (``_follow``'s reload), in place:
        ``get`` keeps its dict, a lookup meanwhile sees a move under way.
        REQUIRES: the follower's lock."""
        mine = self.values
        with self.lock:
            mine.moves += 1
            dict.clear(mine)
            dict.update(mine, values)
            mine.files.clear()
            mine.files.update(values.files)
            self.meta, self.deleted = meta, deleted
            self.book = SegmentBook(total, live)
            self.notes = notes
            self.pins = pins
            self.pin_said = {}
            self.set_expiry(expiry)
            was_warm = self.cold is None
            self.take_cold(cold)
            sieve = self.sieve
            if sieve is not None or was_warm:
                # An index once loaded stays so: a whole-index operation under way
                # (compaction, the janitor) read it whole, and must not find keys
                # gone back to the snapshot (the review found compaction dropping
                # them); and the cap orders every key.
                self._warm_locked()
            if sieve is not None:
                for key in sieve.order():
                    if key not in meta:
                        sieve.remove(key)
                for key in sorted(meta, key=meta.__getitem__):
                    if key not in sieve:
                        sieve.insert(key)
                self._count_live()
            mine.moves += 1

    def forget_gone(self, key: Key, seq: int) -> None:
        """The follower passed this process's delete ``seq`` of ``key``."""
        with self.lock:
            if self.gone.get(key) == seq:
                del self.gone[key]

    def book_stale(self, segment: int, size: int) -> None:
        """Count a record that is never live (a version's note) in its segment."""
        with self.lock:
            self.book.add(segment, size, live=False)

    def close(self, path: str) -> None:
        """Let go of every value (views handed out stay valid): every use of the
        index after this raises ``ClosedError``. REQUIRES: every stripe lock."""
        with self.lock:
            self.values = ClosedIndex(path)
            self.cold = None
            self.meta = {}
            self.deleted = {}
            self.expiry, self.deadlines = {}, []

    def mark_dirty(self, keydir: str) -> None:
        """Note that ``keydir`` holds garbage for the next ``gc()``."""
        with self.dirty_lock:
            self.dirty.add(keydir)

    def take_dirty(self) -> set[str]:
        """The directories to visit, leaving none."""
        with self.dirty_lock:
            dirty, self.dirty = self.dirty, set()
        return dirty


class ClosedIndex(Values):
    """Stands in for ``values`` after ``close()``: every use raises ``ClosedError``.

    Swapping the dict for this keeps the "is it closed?" test off the ``get``
    hot path: a lookup in a closed cache fails by itself.
    """

    def __init__(self, path: str) -> None:
        super().__init__({}, {})
        self.path = path

    def _closed(self, *_: object) -> NoReturn:
        raise ClosedError(self.path)

    __getitem__ = __contains__ = __setitem__ = __delitem__ = get = pop = _closed
    stored = count = keys_now = stored_now = _closed  # type: ignore[assignment]

    def __len__(self) -> int:
        self._closed()

    def __iter__(self) -> Iterator[Key]:
        self._closed()
