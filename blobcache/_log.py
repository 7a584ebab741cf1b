"""The log of small values: framed records in append-only segment files, read back.

The format of FORMAT.md, section "The log", shared by both sides (segment names
and headers, ``encode_record``), and its reader (``read_segment`` + ``replay``,
``records_of``); the writer, ``LogWriter`` in ``_logwriter``, appends what
``encode_record`` frames. This module knows nothing of the cache beyond the
shape of the index (``_index.pack``): it turns records into bytes, and replays
segments into "key -> newest record".

Crash policy, enforced where marked below:

* only the active (highest-numbered) segment may end in a torn or zeroed tail:
  a crash mid-write leaves at most the unsynced end of the file damaged, which
  recovery cuts off. A bad record anywhere else is corruption, never guessed at.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import xxhash

from . import _clock, _filekinds
from . import _format as F
from ._index import OFFSET_SHIFT, SEGMENT_MASK, SEGMENT_SHIFT, SEQ_SHIFT, SIZE_MASK, typed
from ._names import Key
from ._problems import Problem
from .errors import BlobCacheError, CorruptionError

# Format 1's record header is format 2's without its last two bytes (flags,
# codec): both are read with the shorter struct, the two bytes looked at apart.
_FIELDS = F.RECORD_HEADER_V1
_HEADER_SIZE = F.RECORD_HEADER.size
_CHECKSUM = F.RECORD_CHECKSUM_BYTES
_KINDS = F.RECORD_KINDS
_BODY = F.VERSION_BODY.size
_TAGS = (F.KEY_TAG_STR, F.KEY_TAG_BYTES)
_EXPIRES = F.EXPIRES.size
_CODECS = frozenset(F.CODECS)


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


def segment_header(flags: int, magic: bytes = F.SEGMENT_MAGIC) -> bytes:
    head = magic + bytes([flags, 0, 0, 0])
    return head + xxhash.xxh3_64_intdigest(head).to_bytes(8, "little")


def header_flags(head: bytes) -> int | None:
    """The flags of a good segment header, or None if ``head`` is not one (short,
    wrong magic or checksum, or a flag this version does not know)."""
    if len(head) != F.SEGMENT_HEADER.size or head != segment_header(head[4], head[:4]):
        return None
    if head[:4] not in (F.SEGMENT_MAGIC, F.SEGMENT_MAGIC_V1):
        return None
    return head[4] if head[4] & ~F.SEGMENT_FLAG_COMPACTED == 0 else None


def header_size(head: bytes) -> int:
    """The record header size of a segment with this (good) header: 22, or 20 for format 1."""
    return F.RECORD_HEADER_V1.size if head[:4] == F.SEGMENT_MAGIC_V1 else _HEADER_SIZE


def encode_record(
    seq: int,
    kind: int,
    tag: bytes,
    raw: bytes,
    value: bytes | memoryview,
    flags: int = 0,
    expires: int = 0,
    codec: int = F.CODEC_RAW,
) -> bytes:
    """One framed record: checksum, then the header fields, key, expiry (with
    ``FLAG_EXPIRES`` in ``flags``) and value it covers (``codec``: what the
    value's bytes encode, FORMAT.md "Typed values")."""
    body = F.RECORD_HEADER.pack(0, seq, len(value), kind, tag, len(raw), flags, codec)[_CHECKSUM:]
    body += raw
    if flags & F.FLAG_EXPIRES:
        body += F.EXPIRES.pack(expires)
    body += value
    checksum = xxhash.xxh3_64_intdigest(body) & F.RECORD_CHECKSUM_MASK
    return checksum.to_bytes(_CHECKSUM, "little") + body


def encode_version(
    seq: int,
    tag: bytes,
    raw: bytes,
    length: int,
    checksum: int,
    flags: int = 0,
    expires: int = 0,
    codec: int = F.CODEC_RAW,
) -> bytes:
    """The record announcing version file ``v-<seq>-<length>-<checksum>`` of a key
    (``b-...`` with ``FLAG_BOUND``: see FORMAT.md)."""
    body = F.VERSION_BODY.pack(length, checksum)
    return encode_record(seq, F.RECORD_VERSION, tag, raw, body, flags, expires, codec)


def newer_format(path: str, offset: int, flags: int, codec: int) -> BlobCacheError:
    """A record whose checksum holds but whose flags or codec this version does not
    know: written by a newer blobcache. Never cut or salvaged as damage."""
    return BlobCacheError(
        f"{path}: the record at offset {offset} has flags {flags:#04x} and codec {codec}, "
        "which this version of blobcache does not know: the store was written by a "
        "newer one; open it with that version"
    )


class Framed(NamedTuple):
    """One whole record, as ``iter_records`` reads it."""

    seq: int
    kind: int
    tag: bytes
    raw: bytes  # the key's bytes
    value_at: int  # where the value starts in the data read
    end: int  # where the record ends there
    flags: int
    expires: int  # ms since the epoch; 0 without FLAG_EXPIRES
    codec: int  # CODEC_*: what the value's bytes (a version's: its file's) encode


def frame(data: bytes | memoryview | mmap.mmap, offset: int, head: int, path: str) -> Framed | None:
    """The whole record at ``offset``, or None if there is none there (torn,
    zeroed, not yet written, damaged).

    :raises BlobCacheError: a whole record of a newer format (see ``newer_format``).
    """
    if len(data) - offset < head:
        return None
    checksum, seq, vlen, kind, tag, klen = _FIELDS.unpack_from(data, offset)
    flags = data[offset + 20] if head != _FIELDS.size else 0
    key_at = offset + head
    value_at = key_at + klen + (_EXPIRES if flags & F.FLAG_EXPIRES else 0)
    end = value_at + vlen
    if kind not in _KINDS or tag not in _TAGS or end > len(data):
        return None
    if kind == F.RECORD_VERSION and vlen != _BODY:
        return None
    view = memoryview(data)
    if xxhash.xxh3_64_intdigest(view[offset + _CHECKSUM : end]) & F.RECORD_CHECKSUM_MASK != (
        checksum
    ):
        return None
    codec = data[offset + 21] if head != _FIELDS.size else F.CODEC_RAW
    if flags & ~F.RECORD_FLAGS or codec not in _CODECS:
        raise newer_format(path, offset, flags, codec)
    expires = F.EXPIRES.unpack_from(data, key_at + klen)[0] if flags & F.FLAG_EXPIRES else 0
    raw = bytes(view[key_at : key_at + klen])
    return Framed(seq, kind, tag, raw, value_at, end, flags, expires, codec)


def batch_end(data: bytes | memoryview, offset: int, head: int, path: str) -> int | None:
    """Where the batch whose first record is at ``offset`` ends: after the first
    of its records without ``FLAG_MORE``; None if the data ends or a record is
    not whole before that (the batch was cut short: none of it counts).

    Crash policy: a batch is one write, so a crash during it leaves a torn tail
    holding its first records, maybe whole; they are dropped with the rest.
    """
    while True:
        record = frame(data, offset, head, path)
        if record is None:
            return None
        if not record.flags & F.FLAG_MORE:
            return record.end
        offset = record.end


def iter_records(data: bytes | memoryview, start: int, head: int, path: str) -> Iterator[Framed]:
    """The whole records of a segment's bytes ``data`` from ``start`` on, up to
    the first that is not one (torn, zeroed, or not yet written), or to the
    start of a batch not yet whole; ``head`` is ``header_size``.

    For the readers of a live log (``_follow``), where a record past the end of
    the last whole one is no damage but an append under way.

    :raises BlobCacheError: a whole record of a newer format (see ``newer_format``).
    """
    offset = start
    whole = start  # the end of the last batch known whole
    while True:
        record = frame(data, offset, head, path)
        if record is None:
            return
        if record.flags & F.FLAG_MORE and offset >= whole:
            found = batch_end(data, offset, head, path)
            if found is None:
                return
            whole = found
        yield record
        offset = record.end


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
    head: int = F.RECORD_HEADER.size  # its records' header size: 20 in a format 1 segment
    why: str = ""  # what ended the records before the end of the file, if anything did
    inode: int = 0  # the file read: a follower starting here checks it is the same one
    problems: list[Problem] = field(default_factory=list)


def read_segment(
    path: str, number: int, *, active: bool, salvage: bool
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
        inode = os.fstat(f.fileno()).st_ino
    info = SegmentRead(path, number, size=len(data), inode=inode)
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
    info.head = header_size(data)
    return info, data


def replay(
    data: bytes,
    info: SegmentRead,
    values: dict[Key, bytes | None],
    meta: dict[Key, int],
    live: dict[int, int],
    deletes: list[Key],
    expiry: dict[Key, int],
    noted: dict[int, tuple[int, int, int, int]],
    pins: dict[Key, int],
    *,
    now: int,
    active: bool,
    salvage: bool,
    base: int = 0,
) -> int:
    """Apply the segment's good records to ``values`` and ``meta`` (key -> the
    newest record's value, None for a delete, and its packed place, as the index
    holds them: see ``_index.pack``; the keys of deletes are added to
    ``deletes``), ``live`` (live put bytes per segment) and ``expiry`` (key ->
    when its live value expires, ms since the epoch, for those that do) and
    ``noted`` (the numbers of version records -> (when their values expire, 0
    for never; the segment; the record's size; its codec): a version file's
    expiry and codec are only there, and a b- file counts only with its
    record); return the highest
    sequence number seen; ``pins``: key -> the number of its newest record with
    a say on its pin (a put, a version, a pin record), negated if that record
    unpins it (``_recovery`` keeps the pins whose record is not older than the
    key's live one).

    A put whose expiry is not after ``now`` is read as a delete of its key (it
    still hides every older record of the key). An evict record is a delete.
    A batch (``FLAG_MORE``) is applied only if it is whole.

    The reader and "highest sequence number wins" share one loop because it
    runs once per record at every open: a generator between them cost a third
    of the time. Names are bound to locals, and ``_index.pack`` spelled out,
    for the same reason.

    ``base``: ``data`` holds the segment from that offset on (an open through
    the index snapshot reads only what it does not cover), and its first record
    starts there; 0: the whole segment, header included.
    """
    view = memoryview(data)
    unpack = _FIELDS.unpack_from
    digest = xxhash.xxh3_64_intdigest
    mask, skip, head = F.RECORD_CHECKSUM_MASK, _CHECKSUM, info.head
    extra = head != _FIELDS.size  # format 2: flags and codec follow the key length
    put, version, pin, kinds = F.RECORD_PUT, F.RECORD_VERSION, F.RECORD_PIN, _KINDS
    flag_expires, known, flag_pinned = F.FLAG_EXPIRES, F.RECORD_FLAGS, F.FLAG_PINNED
    str_tag, tags = F.KEY_TAG_STR, (F.KEY_TAG_STR, F.KEY_TAG_BYTES)
    known_codecs = _CODECS
    setdefault = meta.setdefault
    seq_shift, segment_mask, size_mask = SEQ_SHIFT, SEGMENT_MASK, SIZE_MASK
    number = info.number
    in_segment = number << SEGMENT_SHIFT
    here = 0  # live put bytes of this segment, added to live[number] at the end
    total = len(data)
    offset = F.SEGMENT_HEADER.size if not base else 0
    whole = offset  # the end of the last batch known whole
    max_seq = 0
    while offset < total:
        if total - offset < head:
            why = "truncated record header"
        else:
            checksum, seq, vlen, kind, tag, klen = unpack(data, offset)
            flags = data[offset + 20] if extra else 0
            key_at = offset + head
            value_at = key_at + klen + (_EXPIRES if flags & flag_expires else 0)
            end = value_at + vlen
            if kind not in kinds or tag not in tags:
                why = "impossible record type or key tag"
                if checksum == 0 and seq == 0 and kind == 0:
                    why = "zeroed bytes where a record should start"
            elif end > total:
                why = f"record length {end - offset} runs past the end of the file"
            elif kind == version and vlen != F.VERSION_BODY.size:
                why = f"a version record of {vlen} value bytes, not {F.VERSION_BODY.size}"
            elif digest(view[offset + skip : end]) & mask != checksum:
                why = "record checksum mismatch"
            elif (
                flags & F.FLAG_MORE
                and offset >= whole
                and not (whole := batch_end(data, offset, head, info.path) or 0)
            ):
                why = "a batch cut short: its last record is missing or damaged"
            else:
                codec = data[offset + 21] if extra else 0
                if flags & ~known or codec not in known_codecs:
                    raise newer_format(info.path, offset, flags, codec)
                if seq > max_seq:
                    max_seq = seq
                if flags & flag_pinned or pins:
                    raw = data[key_at : key_at + klen]
                    pinned_key: Key = raw.decode() if tag == str_tag else raw
                    said = pins.get(pinned_key)
                    if said is None or abs(said) < seq:
                        if flags & flag_pinned:
                            pins[pinned_key] = seq
                        elif said is not None:
                            pins[pinned_key] = -seq
                if kind in (version, pin):
                    # Only a note for the processes following the log: the file
                    # itself is what recovery reads (_keydir), a batch's once
                    # this note says it was committed. Stale from birth.
                    # A pin record's say is in ``pins`` (above).
                    if kind == version:
                        expires = (
                            F.EXPIRES.unpack_from(data, key_at + klen)[0]
                            if flags & flag_expires
                            else 0
                        )
                        noted[seq] = (expires, number, end - offset, codec)
                    offset = end
                    continue
                raw = data[key_at : key_at + klen]
                key: Key = raw.decode() if tag == str_tag else raw
                size = end - offset
                packed = seq << seq_shift | in_segment | (base + offset) << OFFSET_SHIFT | size
                # One hash lookup for a key seen first (the common case), not two.
                old = setdefault(key, packed)
                if old is not packed:
                    if old >> seq_shift >= seq:  # an older record, read late: not live
                        offset = end
                        continue
                    if values[key] is not None:  # the record superseded was a put
                        if old >> SEGMENT_SHIFT & segment_mask == number:
                            here -= old & size_mask
                        else:
                            live[old >> SEGMENT_SHIFT & segment_mask] -= old & size_mask
                    meta[key] = packed
                    if expiry:
                        expiry.pop(key, None)
                if kind == put and flags & flag_expires:
                    expires = F.EXPIRES.unpack_from(data, key_at + klen)[0]
                    if expires > now:
                        expiry[key] = expires
                    else:
                        kind = 0  # expired: read as a delete
                if kind == put:
                    values[key] = typed(data, value_at, end, codec) if codec else data[value_at:end]
                    here += size
                else:
                    values[key] = None
                    deletes.append(key)
                offset = end
                continue
        _bad_record(data, info, offset, why, active=active, salvage=salvage, base=base)
        break
    else:
        info.end = base + offset
    live[number] = live.get(number, 0) + here
    return max_seq


def _bad_record(
    data: bytes,
    info: SegmentRead,
    offset: int,
    why: str,
    *,
    active: bool,
    salvage: bool,
    base: int = 0,
) -> None:
    info.end = base + offset
    if active and data.count(0, offset) == len(data) - offset:
        info.zero_tail = len(data) - offset  # room the writer zero-filled ahead: the end
        return
    if active:
        # Crash policy: only the unsynced end of the active segment can be torn;
        # everything from the first bad record on was never acknowledged. The
        # cut is the writer's to make, under the append flock, and to report
        # (_held.attach): until then it may be an append under way elsewhere.
        info.cut = len(data) - offset  # the torn record on, zero-filled room included
        info.why = why
        return
    if not salvage:
        raise CorruptionError(
            info.path,
            f"{why} in a sealed segment; open with salvage=True to drop the rest of this "
            "segment and keep going",
            base + offset,
        )
    info.problems.append(
        Problem(info.path, f"{why} at offset {base + offset}: dropped {len(data) - offset} bytes")
    )


def records_of(
    directory: str, tag: bytes, raw: bytes
) -> tuple[dict[int, bytes | None], set[int], dict[int, int], dict[int, int]]:
    """Every intact record of one key in the segments in ``directory``: seq ->
    value (None for a delete, an evict, or a put or version that expired), the
    numbers of its version records (a b- version counts only with its record),
    the expiries (ms) of those of its records that expire later, and the codecs
    of its typed puts and versions (seq -> codec). Reads
    the whole log and changes nothing: for the
    rare fall back of a damaged value, which needs the key's older records that
    the index forgot when a version superseded them.

    Crash policy: a record is taken only if its checksum holds, and a segment is
    read up to its first bad record, past which its framing cannot be trusted
    (the active segment may end in a batch still being written). A segment that
    compaction removes meanwhile was replaced by one published before: listed
    again, up to ``_LISTINGS`` times.
    """
    found: dict[int, bytes | None] = {}
    noted: set[int] = set()
    expiring: dict[int, int] = {}
    codecs: dict[int, int] = {}
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
                _find_records(data, tag, raw, found, noted, expiring, codecs)
        if not vanished:
            break
    return found, noted, expiring, codecs


_LISTINGS = 3


def _find_records(
    data: bytes,
    tag: bytes,
    raw: bytes,
    found: dict[int, bytes | None],
    noted: set[int],
    expiring: dict[int, int],
    codecs: dict[int, int],
) -> None:
    """Add the key's intact records in one segment's bytes to ``found``, the
    numbers of its version records to ``noted``, expiries to ``expiring``,
    codecs to ``codecs``.

    Not shared with ``replay``, whose loop is kept flat for the speed of every open.
    """
    good = header_flags(data[: F.SEGMENT_HEADER.size]) is not None  # salvaged: by checksums
    head = header_size(data) if good else _HEADER_SIZE
    now = _clock.now_ms()
    for record in iter_records(data, F.SEGMENT_HEADER.size, head, ""):
        if record.tag != tag or record.raw != raw or record.kind == F.RECORD_PIN:
            continue
        expired = record.expires and record.expires <= now
        if record.expires and not expired:
            expiring[record.seq] = record.expires
        if record.codec:
            codecs[record.seq] = record.codec
        if record.kind == F.RECORD_VERSION:
            noted.add(record.seq)
            if expired:
                found[record.seq] = None  # as a delete: its file must not come back
            continue
        put = record.kind == F.RECORD_PUT and not expired
        found[record.seq] = data[record.value_at : record.end] if put else None
