"""Writing the index snapshot (``INDEX``): see ``_snapshot`` for what it is and how it is read.

Written by ``close()``, ``gc()`` and compaction, never by a put: the index is
captured under the follower's and the index's locks (so it is exactly what the
log says up to the follower's position), then written whole and durably
(``_fsio.write_file_atomically``). With "os" durability the log is synced
first (the caller's ``sync``): a snapshot never names a record a power cut
could take back.
"""

from __future__ import annotations

import marshal
import os
from array import array
from collections.abc import Callable

import xxhash

from . import _clock, _dirbook, _fsio, _log
from . import _format as F
from . import _names as N
from ._dirbook import Book
from ._follow import Follower
from ._index import (
    OFFSET_MASK,
    OFFSET_SHIFT,
    SEGMENT_MASK,
    SEGMENT_SHIFT,
    SEQ_SHIFT,
    ClosedIndex,
    Index,
    seq_of,
)
from ._snapshot import tail_sum

_PLACE = F.SNAPSHOT_PLACE_SHIFT


# What _capture takes from the index (see its docstring).
_Captured = tuple[
    "array[int]",
    "array[int]",
    list[int],
    list[tuple[N.Key, int, int, int]],
    list[tuple[N.Key, int, int, int, int, int]],
    list[tuple[N.Key, int]],
    dict[int, tuple[int, int]],
    dict[str, tuple[str, N.Key]],
]


def write(
    root: str,
    index: Index,
    follower: Follower,
    blob_over_log: dict[N.Key, str],
    max_seq: int,
    unchanged: Callable[[], bool],
    book: Book,
) -> Book | None:
    """Capture the index as the log has it up to the follower's position, and
    write it as the store's snapshot; return its directory book (``book``, the
    last one written or loaded, spares listing the directories it vouches for
    again) if it was written: not when
    this process's records were applied ahead of the follower (then the index is
    not what any log position says), nor when the log's segments cannot be read
    (the next open replays the log: the snapshot is never a source).
    ``max_seq``: no number was handed out above it; ``unchanged()``: no
    compaction began since before the capture (checked once the segments are
    read: a compaction's output read with an index of before would make a
    snapshot that fits the log and names the wrong places). REQUIRES: the log
    synced up to the follower's position (a snapshot names only durable records).
    """
    with follower.lock:
        writer = follower.writer
        if writer is not None and writer.ahead:
            return None
        at_segment, at_offset = follower.segment, follower.offset
        with index.lock:
            if isinstance(index.values, ClosedIndex):
                return None
            captured = _capture(index, at_segment)
    versions = captured[-1]
    made: list[Book] = []

    def snapshot(temp: os.stat_result) -> bytes:
        # The temp file was created after the capture: its mtime is the t0 of
        # _dirbook's invariant (a change to a directory since is stamped later).
        made.append(_dirbook.write_book(blobs, versions, book, temp.st_mtime_ns, temp.st_dev))
        where = (at_segment, at_offset, max_seq)
        return _bytes(root, where, unchanged, captured, dict(blob_over_log), made[0])

    blobs = os.path.join(root, F.BLOBS_DIR)
    try:
        _fsio.write_file_atomically(root, F.SNAPSHOT_NAME, snapshot, replacing=True)
    except _NotNow:
        return None
    return made[0]


class _NotNow(Exception):
    """The snapshot cannot be written now (the log changed under it): none is."""


def _bytes(
    root: str,
    where: tuple[int, int, int],
    unchanged: Callable[[], bool],
    captured: _Captured,
    blob_over_log: dict[N.Key, str],
    book: Book,
) -> bytes:
    """The snapshot of ``captured``, up to segment and offset ``where`` says
    (and its ``max_seq``), with ``blob_over_log`` and ``book``.

    :raises _NotNow: a segment is gone or changed, or a compaction began.
    """
    hashes, entries, eager, tombstones, files, pins, segment_book, _versions = captured
    at_segment, at_offset, max_seq = where
    logdir = os.path.join(root, F.LOG_DIR)
    # Every segment up to the follower's, as the directory lists them (one may
    # hold no record the book counts), from the newest COMPACTED one on.
    listed = sorted(
        n
        for n in map(_log.parse_segment_name, os.listdir(logdir))
        if n is not None and n <= at_segment
    )
    segments: list[bytes] = []
    for number in listed:
        path = os.path.join(logdir, _log.segment_name(number))
        try:
            with open(path, "rb") as f:
                head = f.read(F.SEGMENT_HEADER.size)
                end = at_offset if number == at_segment else os.fstat(f.fileno()).st_size
                tail = tail_sum(f.fileno(), end)
        except FileNotFoundError:
            raise _NotNow from None
        flags = _log.header_flags(head)
        if flags is None:
            raise _NotNow
        if flags & F.SEGMENT_FLAG_COMPACTED:
            segments.clear()  # replaced by this one (a compaction killed before it deleted them)
        total, live = segment_book.get(number, (0, 0))
        segments.append(
            F.SNAPSHOT_SEGMENT.pack(number, tail, end, total, live, _log.header_size(head), flags)
        )
    if not segments or listed[-1] != at_segment or not unchanged():
        raise _NotNow
    order = sorted(range(len(hashes)), key=hashes.__getitem__)
    out = array("Q", bytes(8 * len(entries)))
    for field in range(3):  # each entry's three u64, gathered in the hashes' order
        column = entries[field::3]
        out[field::3] = array("Q", [column[i] for i in order])
    body = array("Q", [hashes[i] for i in order]).tobytes() + out.tobytes()
    eager_set = set(eager)
    eager_at = [at for at, i in enumerate(order) if i in eager_set] if eager_set else []
    extra = marshal.dumps((tombstones, files, pins, blob_over_log, eager_at, *book), 4)
    table = b"".join(segments)
    fields = (
        F.SNAPSHOT_MAGIC,
        F.SNAPSHOT_VERSION,
        at_segment,
        at_offset,
        max_seq,
        _clock.now_ms(),
        len(segments),
        len(hashes),
        len(extra),
        xxhash.xxh3_64_intdigest(table),
        xxhash.xxh3_64_intdigest(body),
        xxhash.xxh3_64_intdigest(extra),
    )
    unsummed = F.SNAPSHOT_HEADER.pack(*fields, 0)[:-8]
    header = unsummed + xxhash.xxh3_64_intdigest(unsummed).to_bytes(8, "little")
    return header + table + body + extra


def _capture(index: Index, at_segment: int) -> _Captured:
    """What the snapshot holds, from the index: the hashes, and the entries as
    one array of three u64 each (see F.SNAPSHOT_ENTRY), in the index's order.
    REQUIRES: ``Index.lock``.

    It runs once per live key at every close that has something new to write:
    the loop is flat (``_index``'s unpacking and ``_names.encode_key`` spelled
    out; keys in the index are valid already) -- 3.9 s for a million keys with
    the helpers called, about a third of that without.
    """
    values = index.values
    metas, expiry, pins, notes = index.meta, index.expiry, index.pins, index.notes
    hashes: array[int] = array("Q")
    entries: array[int] = array("Q")
    eager: list[int] = []  # which entries are flagged SNAPSHOT_EAGER
    digest = xxhash.xxh3_64_intdigest
    str_tag, bytes_tag = F.KEY_TAG_STR, F.KEY_TAG_BYTES
    seq_shift, segment_shift, offset_shift = SEQ_SHIFT, SEGMENT_SHIFT, OFFSET_SHIFT
    segment_mask, offset_mask = SEGMENT_MASK, OFFSET_MASK
    add_hash, add_entry = hashes.append, entries.extend
    flagged = F.SNAPSHOT_EAGER << _PLACE
    any_eager = bool(expiry or pins)
    # dict.items: Values' own lookups would map files; these are the log's values.
    for key, value in dict.items(values):
        meta = metas[key]
        low = len(value)
        if any_eager and (key in expiry or key in pins):
            eager.append(len(hashes))
            low |= flagged
        add_hash(digest(str_tag + key.encode() if isinstance(key, str) else bytes_tag + key))
        add_entry(
            (
                meta >> seq_shift,
                (meta >> segment_shift & segment_mask) << _PLACE
                | meta >> offset_shift & offset_mask,
                low,
            )
        )
    files: list[tuple[N.Key, int, int, int, int, int]] = []
    versions: dict[str, tuple[str, N.Key]] = {}  # key directory name -> live version, key
    for key, mapped in values.files.items():
        note = notes.get(key, (0, 0))
        files.append((key, seq_of(metas[key]), expiry.get(key, 0), mapped.codec, *note))
        keydir, name = os.path.split(mapped.record.path)
        versions[os.path.basename(keydir)] = (name, key)
    cold = index.cold
    if cold is not None:
        for h, raw in cold.untaken():
            fields = F.SNAPSHOT_ENTRY.unpack(raw)
            if fields[2] >> _PLACE & F.SNAPSHOT_EAGER:
                eager.append(len(hashes))
            add_hash(h)
            add_entry(fields)
    tombstones = [(k, d.seq, d.segment, d.size) for k, d in index.deleted.items()]
    said = index.pin_said
    pin_list = [(k, said[k][0] if k in said else seq_of(metas[k])) for k in pins if k in metas]
    book = {
        n: (index.book.total.get(n, 0), index.book.live.get(n, 0))
        for n in index.book.total
        if n <= at_segment
    }
    # A file's note is booked live by the open that loads this (_recovery._merge).
    for segment, size in notes.values():
        if segment in book:
            total, live = book[segment]
            book[segment] = (total, live - size)
    return hashes, entries, eager, tombstones, files, pin_list, book, versions
