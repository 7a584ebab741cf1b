"""Reading the index snapshot (``INDEX``): what open needs of the log up to a position.

Issue 18. Bitcask's hint files, in one file: instead of reading every log record
at open, recovery (``_recovery``) loads this, checks it still fits the log, and
replays only the records after the position it covers. The keys it holds are
not made at open: ``Cold`` maps the file and the segments, and a key's first
lookup finds its record there (hash, binary search, the record's own checksum),
then the index holds it as if replay had made it (``Index.thaw``). A whole-index
operation (iteration, compaction, the statistics, the cap) loads the rest first
(``Index.warm``).

Crash policy: the file is written whole (temp, fsync, rename, directory fsync:
``_snapshotwrite``), so it is there whole or not at all, old or new. Trust
policy: it is a cache of what the log says, never a source: a damaged, torn or
stale one (its segments compacted or gone since) is reported and the log is
replayed whole; a record it names is checked by its checksum, key and number
before it is served.
"""

from __future__ import annotations

import bisect
import marshal
import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass

import xxhash

from . import _filekinds, _log
from . import _format as F
from . import _names as N
from ._dirbook import Book
from ._index import pack, typed
from .errors import CorruptionError

_PLACE: int = F.SNAPSHOT_PLACE_SHIFT
_LOW: int = (1 << _PLACE) - 1


class Unusable(Exception):
    """The snapshot cannot stand for the log here: why, in a sentence.

    ``damaged``: the file itself is torn or fails a check (reported in
    ``problems``); else it is stale, as a crash between a compaction and the
    snapshot it then writes leaves it, or a version file put while it was
    written (no damage: only the time of a full replay, said in ``stats()``).
    """

    def __init__(self, why: str, *, damaged: bool = False) -> None:
        super().__init__(why)
        self.damaged = damaged


@dataclass
class Covered:
    """A segment the snapshot covers, as it was when the snapshot was written."""

    number: int
    tail: int
    end: int
    total: int
    live: int
    head: int
    flags: int


@dataclass
class Snapshot:
    """A snapshot read and checked: its header, its segments, its extra section."""

    segment: int
    offset: int
    max_seq: int
    segments: list[Covered]
    hashes: memoryview  # n u64, ascending (a cast of the mapping)
    entries: memoryview  # n SNAPSHOT_ENTRY
    # Keys deleted whose directories may hold older versions: (key, seq, segment, size).
    tombstones: list[tuple[N.Key, int, int, int]]
    # Keys whose live value is in a file: (key, seq, expires, codec, note segment, note size).
    files: list[tuple[N.Key, int, int, int, int, int]]
    pins: list[tuple[N.Key, int]]  # key -> the number of its newest say on its pin
    blob_over_log: dict[N.Key, str]
    eager: list[int]  # the entries flagged SNAPSHOT_EAGER, in order
    book: Book  # the directories under blobs/ it vouches for (_dirbook)
    map: mmap.mmap | None = None


def path_of(root: str) -> str:
    return os.path.join(root, F.SNAPSHOT_NAME)


def load(root: str) -> Snapshot | None:
    """The store's snapshot, checked whole, or None if there is none.

    :raises Unusable: it is torn, damaged, of another version, or no regular file.
    """
    path = path_of(root)
    try:
        fd = _filekinds.open_regular(path)
    except FileNotFoundError:
        return None
    except CorruptionError as exc:
        raise Unusable(exc.detail, damaged=True) from None
    try:
        size = os.fstat(fd).st_size
        if size < F.SNAPSHOT_HEADER.size:
            raise Unusable(f"{size} bytes, shorter than its header", damaged=True)
        data = mmap.mmap(fd, size, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
    head = F.SNAPSHOT_HEADER
    fields = head.unpack_from(data, 0)
    magic, version, segment, offset, max_seq, _made, n_seg, n, n_extra = fields[:9]
    seg_sum, entry_sum, extra_sum, head_sum = fields[9:]
    if magic != F.SNAPSHOT_MAGIC:
        raise Unusable("not a blobcache index snapshot (wrong magic)", damaged=True)
    if xxhash.xxh3_64_intdigest(data[: head.size - 8]) != head_sum:
        raise Unusable("its header fails its checksum", damaged=True)
    if version != F.SNAPSHOT_VERSION:
        raise Unusable(
            f"version {version}, not {F.SNAPSHOT_VERSION}"
        )  # (a newer blobcache: no damage)
    at = head.size
    seg_end = at + n_seg * F.SNAPSHOT_SEGMENT.size
    hash_end = seg_end + n * F.SNAPSHOT_HASH.size
    entry_end = hash_end + n * F.SNAPSHOT_ENTRY.size
    if entry_end + n_extra != size:
        raise Unusable(
            f"{size} bytes where its header says {entry_end + n_extra}: torn", damaged=True
        )
    view = memoryview(data)
    if xxhash.xxh3_64_intdigest(view[at:seg_end]) != seg_sum:
        raise Unusable("its segment table fails its checksum", damaged=True)
    if xxhash.xxh3_64_intdigest(view[seg_end:entry_end]) != entry_sum:
        raise Unusable("its keys fail their checksum", damaged=True)
    if xxhash.xxh3_64_intdigest(view[entry_end:]) != extra_sum:
        raise Unusable("its extra section fails its checksum", damaged=True)
    segments = [
        Covered(*F.SNAPSHOT_SEGMENT.unpack_from(data, at + i * F.SNAPSHOT_SEGMENT.size))
        for i in range(n_seg)
    ]
    try:
        tombstones, files, pins, blob_over_log, eager, fanouts, keydirs = marshal.loads(
            view[entry_end:]
        )
    except (ValueError, EOFError, TypeError) as exc:
        raise Unusable(f"its extra section does not decode ({exc})", damaged=True) from None
    return Snapshot(
        segment,
        offset,
        max_seq,
        segments,
        view[seg_end:hash_end].cast("Q"),
        view[hash_end:entry_end],
        tombstones,
        files,
        pins,
        blob_over_log,
        eager,
        (fanouts, keydirs),
        data,
    )


def hash_key(tag: bytes, raw: bytes) -> int:
    """A key's hash in the snapshot."""
    return xxhash.xxh3_64_intdigest(tag + raw)


class Cold:
    """The keys of a snapshot not yet in the index: each found by its hash, read
    from its record in a mapped segment on its first lookup, and marked taken.

    REQUIRES: ``Index.lock`` for ``take``, ``mark`` and ``take_all`` (``find`` needs none).
    """

    def __init__(self, snapshot: Snapshot, maps: dict[int, tuple[mmap.mmap, int, str]]) -> None:
        self.hashes = snapshot.hashes
        self.entries = snapshot.entries
        self.maps = maps  # segment number -> (its mapping, record header size, path)
        self.taken = bytearray(len(self.hashes))
        self.left = len(self.hashes)
        self.eager = snapshot.eager
        self._keep = snapshot.map  # the hashes and entries are views of it
        # The last key not found: a get's miss asks three times (the lookup, and
        # the miss path's before and after it catches up), and the answer cannot
        # change (entries are only ever taken).
        self._missed: N.Key | None = None
        self._bytes: int | None = None  # see untaken_bytes

    def find(self, key: N.Key) -> tuple[int, bytes, int, int] | None:
        """(entry, value, meta, expires) of the key's record, if the snapshot holds
        it and it is not taken yet."""
        missed = self._missed
        if missed is not None and missed == key and type(missed) is type(key):
            return None
        tag, raw = N.encode_key(key)
        h = hash_key(tag, raw)
        hashes, taken = self.hashes, self.taken
        i = bisect.bisect_left(hashes, h)
        n = len(hashes)
        while i < n and hashes[i] == h:  # (two keys of one hash: rare, both kept)
            if not taken[i]:
                found, value, meta, expires = self._read(i)
                if found == key and type(found) is type(key):
                    return i, value, meta, expires
            i += 1
        self._missed = key
        return None

    def _read(self, i: int) -> tuple[N.Key, bytes, int, int]:
        """Entry ``i``'s (key, value, meta, expires), its record checked: its
        checksum, and that it is the put the snapshot names (its number).

        :raises CorruptionError: it is not (the segment is damaged).
        """
        seq, place, _low = F.SNAPSHOT_ENTRY.unpack_from(self.entries, i * F.SNAPSHOT_ENTRY.size)
        segment, offset = place >> _PLACE, place & _LOW
        data, head, path = self.maps[segment]
        framed = _log.frame(data, offset, head, path)
        if framed is None or framed.seq != seq or framed.kind != F.RECORD_PUT:
            raise CorruptionError(
                path,
                "the record the index snapshot names here is damaged or not there; "
                "delete the store's INDEX file and open again to replay the log",
                offset,
            )
        codec = framed.codec
        value = (
            typed(memoryview(data), framed.value_at, framed.end, codec)
            if codec
            else data[framed.value_at : framed.end]
        )
        meta = pack(seq, segment, offset, framed.end - offset)
        return N.decode_key(framed.tag, framed.raw), value, meta, framed.expires

    def take(self, key: N.Key) -> tuple[bytes, int, int] | None:
        """(value, meta, expires) of the key's record, taken: None if the snapshot
        does not hold it (or it was taken)."""
        found = self.find(key)
        if found is None:
            return None
        self.mark(found[0])
        return found[1:]

    def mark(self, i: int) -> None:
        """Entry ``i`` is taken: the index holds its key from now on."""
        self.taken[i] = 1
        self.left -= 1
        if self._bytes is not None:
            self._bytes -= self._length(i)

    def _length(self, i: int) -> int:
        entry = F.SNAPSHOT_ENTRY
        return int(entry.unpack_from(self.entries, i * entry.size)[2]) & _LOW

    def take_all(
        self, *, eager_only: bool = False, start: int = 0, stop: int | None = None
    ) -> Iterator[tuple[N.Key, bytes, int, int]]:
        """(key, value, meta, expires) of every entry not taken yet (of those
        flagged eager, with ``eager_only``; of entries ``start`` to ``stop``),
        each taken as it is yielded."""
        taken = self.taken
        for i in self.eager if eager_only else range(start, len(taken) if stop is None else stop):
            if taken[i]:
                continue
            found = self._read(i)
            self.mark(i)
            yield found

    def untaken_bytes(self) -> int:
        """The length of every value not taken yet (the statistics' live bytes):
        summed at the first call, kept by ``mark`` after (not at open: a pass
        over every entry)."""
        if self._bytes is None:
            taken = self.taken
            self._bytes = sum(self._length(i) for i in range(len(taken)) if not taken[i])
        return self._bytes

    def untaken(self) -> Iterator[tuple[int, bytes]]:
        """(hash, entry bytes) of every entry not taken yet: for the next snapshot."""
        size = F.SNAPSHOT_ENTRY.size
        for i in range(len(self.taken)):
            if not self.taken[i]:
                yield self.hashes[i], bytes(self.entries[i * size : (i + 1) * size])


def tail_sum(fd: int, end: int) -> int:
    """The segment's tail checksum up to ``end`` (see F.SNAPSHOT_SEGMENT)."""
    start = max(0, end - F.SNAPSHOT_TAIL)
    return xxhash.xxh3_64_intdigest(os.pread(fd, end - start, start))


def map_segments(
    logdir: str, snapshot: Snapshot, inodes: dict[int, int]
) -> dict[int, tuple[mmap.mmap, int, str]]:
    """Map every segment the snapshot covers, checking each is the file it was;
    ``inodes`` gets each one's inode (for the follower).

    :raises Unusable: one is gone, replaced (compaction) or shorter.
    """
    maps: dict[int, tuple[mmap.mmap, int, str]] = {}
    for covered in snapshot.segments:
        path = os.path.join(logdir, _log.segment_name(covered.number))
        try:
            fd = _filekinds.open_regular(path)
        except (FileNotFoundError, CorruptionError):
            raise Unusable(f"its segment {covered.number} is gone") from None
        try:
            st = os.fstat(fd)
            head = os.pread(fd, F.SEGMENT_HEADER.size, 0)
            # A compaction's output is COMPACTED and takes the number of a segment
            # that was not (the one it sealed): the flags tell it, if nothing else
            # does (a snapshot covering only that segment's header, say).
            if (
                st.st_size < covered.end
                or _log.header_flags(head) != covered.flags
                or covered.tail != tail_sum(fd, covered.end)
            ):
                raise Unusable(f"its segment {covered.number} was replaced since (compaction)")
            inodes[covered.number] = st.st_ino
            if covered.end > F.SEGMENT_HEADER.size:
                maps[covered.number] = (
                    mmap.mmap(fd, covered.end, prot=mmap.PROT_READ),
                    covered.head,
                    path,
                )
        finally:
            os.close(fd)
    return maps
