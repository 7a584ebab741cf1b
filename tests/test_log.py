"""Unit tests of the log (_log, _logwriter, _compaction and the log half of recovery).

One test per named failure of the log reader, each made by byte-editing a real
segment that BlobCache wrote, then tests of the writer: group commit, failed
writes and syncs, rollover, moving a key between the two layouts, compaction.
Unless a test says otherwise, its crash model is a process crash: the edited
bytes stand for what a crash (or a failing disk) left in the files.
"""

from __future__ import annotations

import errno
import os
import shutil
import struct
import subprocess
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pytest

from blobcache import BlobCache, BlobCacheError, CorruptionError, _fsio, _log, _recovered, _recovery
from blobcache import _format as F
from blobcache import _names as N
from tests.conftest import fail_once, files_named, flip_bit, record_calls, truncate

_HEAD = F.SEGMENT_HEADER.size  # 16: records start here
_RECORD = F.RECORD_HEADER.size  # 22
_CHECKSUM = F.RECORD_CHECKSUM_BYTES
_LENGTH_AT = struct.calcsize("<IQ")  # the value-length field follows checksum and seq
_TYPE_AT = struct.calcsize("<IQI")  # the type byte follows the value length
_SMALL_SEGMENT = 4096  # the smallest segment_bytes allowed: a few records per segment

Contents = dict[Any, bytes]


# --- reading segments with the package's reader, _log.iter_records -----------------------


@dataclass(frozen=True)
class Rec:
    """One record of a segment file, as parsed by the test."""

    path: str
    offset: int
    size: int
    seq: int
    kind: int
    key: str | bytes
    value: bytes


def _segments(store: str) -> list[str]:
    """The segment files of the store, oldest first (names are fixed-width hex)."""
    logdir = os.path.join(store, F.LOG_DIR)
    return [p for p in files_named(logdir, "") if p.endswith(F.SEGMENT_SUFFIX)]


def _parse(path: str) -> list[Rec]:
    """Every record of an intact segment of format 2, read by ``_log.iter_records``;
    fails the test on any bad byte.

    A run of zeros to the end of the file is not a record (FORMAT.md: zero-tail).
    """
    with open(path, "rb") as f:
        data = f.read()
    assert data[:4] == F.SEGMENT_MAGIC and _log.header_flags(data[:_HEAD]) is not None, path
    records = []
    offset = _HEAD
    for seq, kind, tag, raw, value_at, end, *_ in _log.iter_records(data, _HEAD, _RECORD, path):
        assert tag in (F.KEY_TAG_STR, F.KEY_TAG_BYTES), (path, offset)
        key = raw.decode() if tag == F.KEY_TAG_STR else raw
        records.append(Rec(path, offset, end - offset, seq, kind, key, data[value_at:end]))
        offset = end
    assert data.count(0, offset) == len(data) - offset, f"{path}: a bad record at {offset}"
    return records


def _end(path: str) -> int:
    """Where the records of an intact segment end (any zero tail starts there)."""
    records = _parse(path)
    return records[-1].offset + records[-1].size if records else _HEAD


def _all_records(store: str) -> list[Rec]:
    return [r for path in _segments(store) for r in _parse(path)]


def _locate(store: str, key: str | bytes, value: bytes | None = None) -> Rec:
    """The newest record of ``key`` (holding ``value``, if given) in the log."""
    found = [r for r in _all_records(store) if r.key == key and (value is None or r.value == value)]
    assert found, f"no record of {key!r} in the log"
    return max(found, key=lambda r: r.seq)


def _replay(records: Iterable[Rec]) -> Contents:
    """What the records say the store holds: per key the highest seq wins. For small
    values only: a key whose newest record is a version's has its value in a file."""
    newest: dict[str | bytes, Rec] = {}
    for r in records:
        if r.key not in newest or newest[r.key].seq < r.seq:
            newest[r.key] = r
    return {k: r.value for k, r in newest.items() if r.kind == F.RECORD_PUT}


def _patch(path: str, offset: int, data: bytes) -> None:
    """Overwrite bytes of a file in place."""
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _flags(path: str) -> int:
    """The flags byte of a segment's header."""
    with open(path, "rb") as f:
        return f.read(len(F.SEGMENT_MAGIC) + 1)[-1]


def _log_bytes(store: str) -> int:
    return sum(os.path.getsize(p) for p in _segments(store))


# --- helpers on the store -------------------------------------------------------------


def _contents(cache: BlobCache) -> Contents:
    return {key: bytes(cache[key]) for key in cache}


def _write(store: str, items: Iterable[tuple[str, bytes]], **options: Any) -> Contents:
    """Put each item in order, close; return the contents."""
    with BlobCache(store, **options) as cache:
        for key, value in items:
            cache.put(key, value)
        return _contents(cache)


def _assert_tail_cut(store: str, expected: Contents, bad_offset: int) -> None:
    """Reopen: the active segment is cut at ``bad_offset``, the bytes cut are
    counted as torn and the cut is reported with the file and offset, the contents
    are ``expected``; a new put lands right at the cut and survives another reopen."""
    active = _segments(store)[-1]
    size = os.path.getsize(active)
    with BlobCache(store) as cache:
        assert os.path.getsize(active) == bad_offset  # the cut reached the file
        assert cache.stats().torn_bytes_at_open == size - bad_offset
        (problem,) = cache.problems
        assert problem.path == active
        assert f"at offset {bad_offset}: cut the segment there" in problem.message
        _assert_resumes(store, cache, expected, bad_offset, reported=True)


def _assert_resumes(
    store: str, cache: BlobCache, expected: Contents, end: int, *, reported: bool = False
) -> None:
    """``cache`` (just opened) holds ``expected`` and reports nothing (but the cut
    if ``reported``); its next put goes at ``end`` of the active segment and
    survives a reopen."""
    active = _segments(store)[-1]
    assert _contents(cache) == expected
    assert len(cache.problems) == reported
    cache.put("after", b"written after the cut")
    cache.close()
    after = _parse(active)  # no garbage left between the good records
    assert (after[-1].key, after[-1].offset) == ("after", end)
    with BlobCache(store) as cache:
        assert _contents(cache) == {**expected, "after": b"written after the cut"}
        assert cache.stats().torn_bytes_at_open == 0
        assert cache.problems == ()


_THREE = [("a", b"1" * 50), ("b", b"2" * 50), ("c", b"3" * 50)]


# --- named failures of the active segment: a torn tail, cut ----------------------------


def test_truncated_record_header_in_active_segment_is_cut(store: str) -> None:
    _write(store, _THREE)
    last = _locate(store, "c")
    truncate(last.path, last.offset + 10)
    _assert_tail_cut(store, {"a": b"1" * 50, "b": b"2" * 50}, last.offset)


def test_truncated_record_payload_in_active_segment_is_cut(store: str) -> None:
    _write(store, _THREE)
    last = _locate(store, "c")
    truncate(last.path, last.offset + _RECORD + 1 + 20)  # header, key, 20 of 50 value bytes
    _assert_tail_cut(store, {"a": b"1" * 50, "b": b"2" * 50}, last.offset)


def test_checksum_mismatch_in_last_record_of_active_segment_is_cut(store: str) -> None:
    _write(store, [("a", b"1" * 50), ("k", b"old"), ("k", b"new value")])
    last = _locate(store, "k", b"new value")
    flip_bit(last.path, last.offset + _RECORD + 1 + 4)  # a bit of the value
    # The key falls back to its older record; the bad one is cut.
    _assert_tail_cut(store, {"a": b"1" * 50, "k": b"old"}, last.offset)


def test_impossible_length_in_active_segment_cuts_it_and_everything_after(store: str) -> None:
    _write(store, _THREE)
    middle = _locate(store, "b")
    _patch(middle.path, middle.offset + _LENGTH_AT, struct.pack("<I", 2**32 - 1))
    _assert_tail_cut(store, {"a": b"1" * 50}, middle.offset)


def test_impossible_type_in_active_segment_is_cut(store: str) -> None:
    _write(store, _THREE)
    last = _locate(store, "c")
    _patch(last.path, last.offset + _TYPE_AT, b"\x07")
    _assert_tail_cut(store, {"a": b"1" * 50, "b": b"2" * 50}, last.offset)


def test_zero_tail_of_active_segment_is_not_a_problem(store: str) -> None:
    """Zeros after the last record: what a power cut leaves of a file that grew
    without an fdatasync (or room the writer zero-filled ahead). Not a record, not
    a problem; whatever open cuts of them is counted as torn bytes."""
    expected = _write(store, _THREE)
    active = _segments(store)[-1]
    end = _end(active)
    with open(active, "ab") as f:
        f.write(bytes(4096))
    size = os.path.getsize(active)
    with BlobCache(store) as cache:
        cut = size - os.path.getsize(active)
        assert cut in (0, size - end)  # kept as room, or cut at the last record
        assert cache.stats().torn_bytes_at_open == cut
        _assert_resumes(store, cache, expected, end)


# --- named failures of a sealed segment: corruption, reported -------------------------


def _sealed_store(store: str) -> tuple[Rec, Contents]:
    """A store of several segments where "a" was overwritten (A1 -> A2) and "b"
    first put right after A2, both in a sealed segment with more records after
    them; return A2's record and the contents."""
    value = bytes(range(256)) + bytes(144)  # 400 bytes: 9 records per 4 KiB segment
    items = [("a", b"A1" + value)]
    items += [(f"f{i:02}", value) for i in range(12)]
    items += [("a", b"A2" + value), ("b", b"B1" + value)]
    items += [(f"g{i:02}", value) for i in range(12)]
    contents = _write(store, items, segment_bytes=_SMALL_SEGMENT)
    a2 = _locate(store, "a", b"A2" + value)
    a1 = _locate(store, "a", b"A1" + value)
    b1 = _locate(store, "b")
    segments = _segments(store)
    # Preconditions of the tests below, true for these sizes.
    assert len(segments) >= 3 and a2.path != segments[-1]  # A2's segment is sealed
    assert a1.path != a2.path and b1.path == a2.path and b1.offset > a2.offset
    assert _parse(a2.path)[-1].offset > b1.offset  # more records follow B1
    return a2, contents


def test_checksum_mismatch_mid_sealed_segment_raises_with_path_and_offset(store: str) -> None:
    bad, _ = _sealed_store(store)
    flip_bit(bad.path, bad.offset + _RECORD + 1 + 100)
    sizes = [os.path.getsize(p) for p in _segments(store)]
    with pytest.raises(CorruptionError) as info:
        BlobCache(store, segment_bytes=_SMALL_SEGMENT)
    assert info.value.path == bad.path
    assert info.value.offset == bad.offset
    assert "salvage=True" in str(info.value)  # says what the user can do
    assert [os.path.getsize(p) for p in _segments(store)] == sizes  # nothing deleted or cut
    # The failed open released the lock: a salvage open is possible right away.
    with BlobCache(store, segment_bytes=_SMALL_SEGMENT, salvage=True):
        pass


def test_salvage_drops_rest_of_sealed_segment_and_keys_fall_back(store: str) -> None:
    bad, before = _sealed_store(store)
    dropped = [r for r in _parse(bad.path) if r.offset >= bad.offset]
    kept = [r for r in _all_records(store) if r.path != bad.path or r.offset < bad.offset]
    size = os.path.getsize(bad.path)
    flip_bit(bad.path, bad.offset + _RECORD + 1 + 100)
    with BlobCache(store, segment_bytes=_SMALL_SEGMENT, salvage=True) as cache:
        contents = _contents(cache)
        assert [p.path for p in cache.problems] == [bad.path]
        assert str(bad.offset) in cache.problems[0].message
        assert str(size - bad.offset) in cache.problems[0].message  # the bytes dropped
        cache.put("new", b"after salvage")
    assert contents == _replay(kept)
    assert contents["a"] == before["a"].replace(b"A2", b"A1", 1)  # fell back to the older put
    assert "b" not in contents  # its only record was dropped
    assert {r.key for r in dropped} - {"a"} == set(before) - set(contents)
    with BlobCache(store, segment_bytes=_SMALL_SEGMENT, salvage=True) as cache:
        assert _contents(cache) == {**contents, "new": b"after salvage"}


def test_gc_after_salvage_rewrites_the_damaged_segment(store: str) -> None:
    bad, _before = _sealed_store(store)
    flip_bit(bad.path, bad.offset + _RECORD + 1 + 100)
    with BlobCache(store, segment_bytes=_SMALL_SEGMENT, salvage=True) as cache:
        contents = _contents(cache)
        assert cache.gc().segments_compacted >= 1
    assert not os.path.exists(bad.path)
    with BlobCache(store, segment_bytes=_SMALL_SEGMENT) as cache:  # no salvage needed now
        assert _contents(cache) == contents
        assert cache.problems == ()


def test_os_durability_sync_after_a_failed_fdatasync_keeps_failing(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # After a failed fsync the kernel may drop the dirty pages, and a second fsync
    # may then report success for data that is gone: sync() must not pretend.
    with BlobCache(store, durability="os", sync_interval=3600) as cache:
        cache.put("a", b"acked")
        fail_once(monkeypatch, "fdatasync", errno.EIO)
        with pytest.raises(OSError, match="Input/output"):
            cache.sync()
        with pytest.raises(BlobCacheError, match="reopen the store"):
            cache.sync()
        assert cache.get("a") == b"acked"
        with pytest.raises(BlobCacheError):
            cache.close()
    with BlobCache(store) as cache:
        assert cache.get("a") == b"acked"  # the bytes were in the kernel all along


@pytest.mark.parametrize(
    ("offset", "bit"),
    [(0, 0), (4, 0), (8, 3)],
    ids=["magic", "flags-compacted-bit", "checksum"],
)
def test_damaged_header_of_sealed_segment_raises(store: str, offset: int, bit: int) -> None:
    _sealed_store(store)
    first, second = _segments(store)[:2]
    flip_bit(second, offset, bit)
    with pytest.raises(CorruptionError) as info:
        BlobCache(store, segment_bytes=_SMALL_SEGMENT)
    assert info.value.path == second
    assert info.value.offset == 0
    # A flipped COMPACTED bit fails the header checksum: it must not make
    # recovery delete the segments below it.
    assert os.path.exists(first)


@pytest.mark.parametrize("which", ["sealed", "active"])
def test_salvage_reads_the_records_of_a_segment_with_a_damaged_header(
    store: str, which: str
) -> None:
    _, contents = _sealed_store(store)
    damaged = _segments(store)[1 if which == "sealed" else -1]
    flip_bit(damaged, 0)
    with BlobCache(store, segment_bytes=_SMALL_SEGMENT, salvage=True) as cache:
        (problem,) = cache.problems
        assert problem.path == damaged and "header is damaged" in problem.message
        assert _contents(cache) == contents  # every record has its own checksum
        cache.put("after", b"never appended to the damaged segment")
        assert _segments(store)[-1] != damaged  # "after" went to a new segment
        cache.gc()  # rewrites the damaged segment
    assert not os.path.exists(damaged)
    with BlobCache(store, segment_bytes=_SMALL_SEGMENT) as cache:  # no salvage needed now
        assert _contents(cache) == {**contents, "after": b"never appended to the damaged segment"}
        assert cache.problems == ()


@pytest.mark.parametrize(
    "content",
    [b"", bytes(_HEAD), _log.segment_header(0)[:7]],
    ids=["empty", "zero-header", "short-header"],
)
def test_active_segment_with_zero_or_short_header_is_recreated(store: str, content: bytes) -> None:
    """A crash while the next segment was being created (before its header was
    durable): a header's length at most; zeros beyond it are damage (see
    test_zeroed_header_with_anything_after_it_is_corruption)."""
    expected = _write(store, _THREE)
    sealed = _segments(store)[-1]
    truncate(sealed, _end(sealed))  # sealing cuts any zero-filled room before the roll
    number = int(os.path.basename(sealed)[: F.FIELD_HEX_DIGITS], 16)
    created = os.path.join(store, F.LOG_DIR, _log.segment_name(number + 1))
    with open(created, "wb") as f:
        f.write(content)
    with BlobCache(store) as cache:
        assert _contents(cache) == expected
        assert cache.problems == ()
        assert cache.stats().torn_bytes_at_open == len(content)
        cache.put("after", b"into the recreated segment")
    assert [r.key for r in _parse(created)] == ["after"]  # a good header again
    with BlobCache(store) as cache:
        assert _contents(cache) == {**expected, "after": b"into the recreated segment"}
        assert cache.problems == ()


def _listing(store: str) -> dict[str, int]:
    """Every file under ``store`` with its size: to check that a refused open changed nothing."""
    return {
        os.path.join(d, n): os.path.getsize(os.path.join(d, n))
        for d, _, names in os.walk(store)
        for n in names
    }


def test_zeroed_header_followed_by_records_is_corruption(store: str) -> None:
    """Regression: zeroing the header of the active segment holding 1,000
    acknowledged records made the next open delete the whole segment (0 keys, no
    problem reported). A crash cannot leave that: the header is fsynced, and the
    directory too, before any record is written after it."""
    items = [(f"k{i:04}", f"acknowledged value {i} ".encode() * 4) for i in range(1000)]
    expected = _write(store, items)
    (active,) = _segments(store)
    _patch(active, 0, bytes(_HEAD))
    before = _listing(store)
    with pytest.raises(CorruptionError) as info:
        BlobCache(store)
    assert (info.value.path, info.value.offset) == (active, 0)
    assert "zeroed" in str(info.value) and "salvage=True" in str(info.value)
    assert _listing(store) == before  # nothing deleted or cut
    with BlobCache(store, salvage=True) as cache:
        assert _contents(cache) == expected  # each record has its own checksum
        (problem,) = cache.problems
        assert problem.path == active and "zeroed" in problem.message
        assert cache.stats().torn_bytes_at_open == 0
        cache.put("after", b"into a new segment")
        cache.gc()  # rewrites the damaged segment
    with BlobCache(store) as cache:
        assert _contents(cache) == {**expected, "after": b"into a new segment"}
        assert cache.problems == ()


def test_a_wholly_zeroed_active_segment_is_corruption(store: str) -> None:
    """Regression (review of issue 12): zeroing the whole active segment that
    held 1,000 acknowledged records still made the next open delete it, with
    nothing in problems: only a segment of a header's length or less can be a
    crashed creation."""
    items = [(f"k{i:04}", f"acknowledged value {i} ".encode() * 4) for i in range(1000)]
    _write(store, items)
    (active,) = _segments(store)
    size = os.path.getsize(active)
    with open(active, "r+b") as f:
        f.write(bytes(size))
    before = _listing(store)
    with pytest.raises(CorruptionError, match="zeroed") as info:
        BlobCache(store)
    assert (info.value.path, info.value.offset) == (active, 0)
    assert _listing(store) == before and os.path.getsize(active) == size


@pytest.mark.parametrize(
    "content",
    [bytes(_HEAD) + b"\x01", bytes(_HEAD) + bytes(8192) + b"x" * 30, bytes(_HEAD) + bytes(4096)],
    ids=["a-byte-after-it", "zeros-then-bytes", "zeros-only"],
)
def test_zeroed_header_with_anything_after_it_is_corruption(store: str, content: bytes) -> None:
    """Only a header cut short, or zeroed with nothing after it, is a crashed
    creation: room is zero-filled ahead only once the header is durable."""
    _write(store, _THREE)
    sealed = _segments(store)[-1]
    truncate(sealed, _end(sealed))
    number = int(os.path.basename(sealed)[: F.FIELD_HEX_DIGITS], 16)
    created = os.path.join(store, F.LOG_DIR, _log.segment_name(number + 1))
    with open(created, "wb") as f:
        f.write(content)
    with pytest.raises(CorruptionError) as info:
        BlobCache(store)
    assert (info.value.path, info.value.offset) == (created, 0)
    assert os.path.getsize(created) == len(content)


def test_stray_entries_in_log_dir_are_reported_not_fatal(store: str) -> None:
    expected = _write(store, _THREE)
    logdir = os.path.join(store, F.LOG_DIR)
    notes = os.path.join(logdir, "notes.txt")
    with open(notes, "w") as f:
        f.write("not a segment")
    upper = os.path.join(logdir, "00000000000000AB.log")  # segment names are lower-case hex
    shutil.copyfile(_segments(store)[0], upper)
    folder = os.path.join(logdir, _log.segment_name(99))  # a segment's name, but a directory
    os.mkdir(folder)
    with BlobCache(store) as cache:
        assert _contents(cache) == expected
        assert sorted(p.path for p in cache.problems) == sorted([notes, upper, folder])
        cache.put("after", b"still writable")
    for path in (notes, upper, folder):
        assert os.path.exists(path)  # reported, never deleted: they are not ours
    with BlobCache(store) as cache:
        assert _contents(cache) == {**expected, "after": b"still writable"}


def _compaction_workload(cache: BlobCache, rounds: int, keys: int) -> None:
    """Overwrite ``keys`` keys ``rounds`` times, then delete every third one."""
    for r in range(rounds):
        for i in range(keys):
            cache.put(f"k{i}", f"round {r} key {i} ".encode() * 15)
    for i in range(0, keys, 3):
        cache.delete(f"k{i}")


def test_compacted_segment_replaces_older_ones_left_by_a_crash(store: str, tmp_path: Any) -> None:
    """A crash after compaction renamed its output but before it deleted its inputs."""
    aside = tmp_path / "aside"
    aside.mkdir()
    # No background compaction may delete segments while they are copied: it runs
    # only once all sealed bytes are stale (compact_ratio=1), and "pinned" never is.
    options: dict[str, Any] = {"segment_bytes": _SMALL_SEGMENT, "compact_ratio": 1.0}
    with BlobCache(store, **options) as cache:
        cache.put("pinned", b"live in the first segment until gc")
        _compaction_workload(cache, rounds=6, keys=12)
        expected = _contents(cache)
        inputs = _segments(store)
        for path in inputs:
            shutil.copy(path, aside)
        cache.gc()
        after = _segments(store)
    compacted = [p for p in after if _flags(p) & F.SEGMENT_FLAG_COMPACTED]
    assert compacted == [inputs[-1]]  # the output replaced the highest input...
    assert not set(inputs[:-1]) & set(after)  # ...and gc deleted the others...
    for path in inputs[:-1]:  # ...which the crash "undoes"
        shutil.copy(aside / os.path.basename(path), path)
    with BlobCache(store, **options) as cache:
        assert _contents(cache) == expected
        assert cache.problems == ()
    assert _segments(store) == after  # the replaced inputs were deleted unread
    with BlobCache(store, **options) as cache:
        assert _contents(cache) == expected


# --- something missing: a segment, log/, blobs/ -----------------------------------------

_NO_COMPACTION: dict[str, Any] = {"segment_bytes": _SMALL_SEGMENT, "compact_ratio": 1.0}


def _number(path: str) -> int:
    return int(os.path.basename(path)[: F.FIELD_HEX_DIGITS], 16)


def _segment_path(store: str, number: int) -> str:
    return os.path.join(store, F.LOG_DIR, _log.segment_name(number))


def _overwrites_and_deletes(cache: BlobCache) -> None:
    """Records over several segments: puts, then overwrites and deletes of them
    in later segments. "pinned" keeps background compaction away (compact_ratio
    is 1: it never makes every sealed byte stale)."""
    cache.put("pinned", b"live in the first segment")
    value = bytes(range(256)) + bytes(144)
    for round_ in range(5):
        for i in range(8):
            cache.put(f"k{i}", b"%d" % round_ + value)
    for i in range(0, 8, 2):
        cache.delete(f"k{i}")
    for i in range(10):  # seal the segment of the deletes
        cache.put(f"tail{i}", value)


def _assert_gap_refused_then_salvaged(store: str, missing: list[int], note: str = "") -> Contents:
    """Open raises, naming the first missing segment and changing nothing; with
    salvage it opens with what is left and reports the gap; then gc() rewrites
    the log and no salvage is needed any more. Returns the contents salvaged."""
    left = _replay(_all_records(store))
    before = _listing(store)
    with pytest.raises(CorruptionError) as info:
        BlobCache(store, **_NO_COMPACTION)
    first = _segment_path(store, missing[0])
    assert info.value.path == first
    assert os.path.basename(first) in str(info.value) and "salvage=True" in str(info.value)
    assert note in str(info.value)
    assert _listing(store) == before
    with BlobCache(store, **_NO_COMPACTION, salvage=True) as cache:
        assert _contents(cache) == left
        assert [p.path for p in cache.problems] == [first]
        assert "missing" in cache.problems[0].message
        assert cache.gc().segments_compacted >= 1
    numbers = [_number(p) for p in _segments(store)]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))  # no gap now
    with BlobCache(store, **_NO_COMPACTION) as cache:
        assert _contents(cache) == left
        assert cache.problems == ()
    return left


@pytest.mark.parametrize("which", ["with-a-delete", "with-a-live-put", "first"])
def test_missing_segment_is_corruption_unless_salvage(store: str, which: str) -> None:
    """Regression: with a segment gone the store opened with no problem reported,
    bringing back a key deleted there, or rolling back a key overwritten there."""
    with BlobCache(store, **_NO_COMPACTION) as cache:
        _overwrites_and_deletes(cache)
        expected = _contents(cache)
    segments = _segments(store)
    assert len(segments) >= 5
    lost = {
        "with-a-delete": _locate(store, "k0").path,
        "with-a-live-put": _locate(store, "k1").path,
        "first": segments[0],
    }[which]
    assert lost != segments[-1]  # a sealed segment
    os.unlink(lost)
    left = _assert_gap_refused_then_salvaged(store, [_number(lost)])
    if which == "with-a-delete":
        assert "k0" in left  # what salvage means: the deleted key is back
    elif which == "with-a-live-put":
        assert left.get("k1") != expected["k1"]  # rolled back, or gone


def test_missing_compacted_segment_is_corruption_unless_salvage(store: str) -> None:
    """Regression (the review's case): after a compaction the lowest segment is
    the COMPACTED one; with it gone, the store opened empty and said nothing."""
    with BlobCache(store, **_NO_COMPACTION) as cache:
        _overwrites_and_deletes(cache)
        cache.gc()
        cache.put("after", b"in the segment after the compacted one")
    compacted, *_ = _segments(store)
    assert _flags(compacted) & F.SEGMENT_FLAG_COMPACTED
    os.unlink(compacted)
    _assert_gap_refused_then_salvaged(store, list(range(1, _number(compacted) + 1)))


def test_store_with_the_gap_an_interrupted_compaction_of_e5dfd61_left(store: str) -> None:
    """Built by hand. At e5dfd61 compaction sealed the active segment N, started
    N + 2 and kept N + 1 for its output; a crash before the output's rename left
    N + 1 missing, and lost nothing. Nothing tells that gap from a lost segment:
    open refuses it too, says so, and salvage then gc() repair it losslessly."""
    with BlobCache(store, **_NO_COMPACTION) as cache:
        _overwrites_and_deletes(cache)
        expected = _contents(cache)
    active = _segments(store)[-1]
    os.rename(active, _segment_path(store, _number(active) + 1))  # numbered as e5dfd61 did
    left = _assert_gap_refused_then_salvaged(store, [_number(active)], note="e5dfd61")
    assert left == expected


def test_readonly_open_of_a_store_with_a_gap_raises_corruption(store: str) -> None:
    with BlobCache(store, **_NO_COMPACTION) as cache:
        _overwrites_and_deletes(cache)
    lost = _segments(store)[1]
    os.unlink(lost)
    before = _listing(store)
    with pytest.raises(CorruptionError) as info:  # not FileNotFoundError after retries
        BlobCache(store, readonly=True)
    assert info.value.path == lost
    with BlobCache(store, readonly=True, salvage=True) as reader:
        assert [p.path for p in reader.problems] == [lost]
    assert _listing(store) == before


def test_readonly_open_reads_again_when_a_gap_was_a_listing_taken_mid_roll(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader lists log/ while a writer rolls: the listing may miss a segment
    that was created meanwhile. The gap is then not damage: it reads again."""
    with BlobCache(store, **_NO_COMPACTION) as cache:
        _overwrites_and_deletes(cache)
        expected = _contents(cache)
    os.unlink(os.path.join(store, F.SNAPSHOT_NAME))  # the whole log is read (issue 18)
    real = _recovery._segment_numbers
    calls = []

    def listed_mid_roll(logdir: str, result: _recovered.Recovered) -> list[int]:
        numbers = real(logdir, result)
        calls.append(numbers)
        return [n for n in numbers if n != numbers[1]] if len(calls) == 1 else numbers

    monkeypatch.setattr(_recovery, "_segment_numbers", listed_mid_roll)
    with BlobCache(store, readonly=True) as reader:
        assert _contents(reader) == expected
        assert reader.problems == ()
    assert len(calls) == 3  # the short listing, the check's, the second reading's


_COMPACTING_WRITER = """
import sys
from blobcache import BlobCache
with BlobCache(sys.argv[1], segment_bytes=4096, compact_ratio=0.3) as cache:
    for i in range(int(sys.argv[2])):
        cache.put("k%d" % (i % 8), b"%08d" % i + b"." * 300)
        if i % 40 == 39:
            cache.gc()
        if i == 16:
            print("ready", flush=True)
"""


def test_readers_beside_a_compacting_writer_never_see_a_key_roll_back(store: str) -> None:
    """Compaction renames its output over its highest input and then deletes the
    others: a reader beside it reads each file whole, old or new, reads again
    when one vanished, and so never sees an older state than the one before."""
    writer = subprocess.Popen(
        [sys.executable, "-c", _COMPACTING_WRITER, store, "600"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout is not None
    assert writer.stdout.readline() == "ready\n"
    seen: dict[str | bytes, int] = {}
    opens = 0
    while writer.poll() is None or opens == 0:
        with BlobCache(store, readonly=True) as reader:
            now = {key: int(bytes(reader[key])[:8]) for key in reader}
            assert reader.problems == ()
        opens += 1
        for key, counter in seen.items():
            assert now.get(key, -1) >= counter, (key, counter, now.get(key))
        seen = now
    assert writer.wait() == 0
    assert opens >= 2


def _values_in_both_layouts(cache: BlobCache) -> None:
    cache.put("small", b"in the log")
    cache.put("big", b"B" * 2000)
    cache.put("big", b"C" * 2000)  # the first version is superseded
    cache.put("gone", b"G" * 2000)
    cache.delete("gone")  # a delete record in the log, older versions in blobs/


@pytest.mark.parametrize("lost", [F.LOG_DIR, "segments", F.BLOBS_DIR])
def test_missing_store_dir_beside_the_other_holding_records_is_corruption(
    store: str, lost: str
) -> None:
    """Regression for log/: a missing log/ (or one without a segment) was made
    anew without a word, bringing deleted keys back. A store with FORMAT always
    had both directories, and segment 1 from its first open on."""
    with BlobCache(store, inline_limit=1000) as cache:
        _values_in_both_layouts(cache)
    if lost == "segments":
        for path in _segments(store):
            os.unlink(path)
    else:
        shutil.rmtree(os.path.join(store, lost))
    damaged = os.path.join(store, F.LOG_DIR if lost == "segments" else lost)
    before = _listing(store)
    with pytest.raises(CorruptionError) as info:
        BlobCache(store, inline_limit=1000)
    assert info.value.path == damaged
    assert "salvage=True" in str(info.value)
    assert _listing(store) == before
    assert os.path.exists(damaged) == (lost == "segments")  # nothing made
    with BlobCache(store, inline_limit=1000, salvage=True) as cache:
        assert [p.path for p in cache.problems] == [damaged]
        left = {k: bytes(cache[k]) for k in cache}
        cache.put("after", b"written after the salvage")
    if lost != F.BLOBS_DIR:
        assert left == {"big": b"C" * 2000, "gone": b"G" * 2000}  # what is left: files only
    else:
        assert left == {"small": b"in the log"}
    with BlobCache(store, inline_limit=1000) as cache:
        assert cache.problems == ()
        assert cache["after"] == b"written after the salvage"


@pytest.mark.parametrize("lost", [F.LOG_DIR, F.BLOBS_DIR])
def test_missing_store_dir_beside_the_other_empty_is_reported_and_made_again(
    store: str, lost: str
) -> None:
    BlobCache(store).close()  # the first open made segment 1, its header only
    shutil.rmtree(os.path.join(store, lost))
    with BlobCache(store) as cache:
        # Reported: a store of small values only, its log/ lost, opened empty
        # with nothing said (review of issue 12).
        (problem,) = cache.problems
        assert problem.path == os.path.join(store, lost) and "missing" in problem.message
        assert len(cache) == 0
        assert os.path.isdir(os.path.join(store, lost))
        cache.put("k", b"v")
    with BlobCache(store) as cache:
        assert cache["k"] == b"v"


@pytest.mark.parametrize("readonly", [False, True])
def test_store_an_interrupted_init_of_e5dfd61_left_opens_empty(store: str, readonly: bool) -> None:
    """At e5dfd61 FORMAT was published before blobs/ and log/ were made: an
    interrupted init left FORMAT alone, an empty store."""
    os.mkdir(store)
    with open(os.path.join(store, F.MARKER_NAME), "wb") as f:
        f.write(F.MARKER_CONTENT)
    with BlobCache(store, readonly=readonly) as cache:
        assert cache.problems == () and len(cache) == 0
    made = sorted(os.listdir(store))
    if readonly:  # a reader changes nothing
        assert made == [F.MARKER_NAME]
        return
    assert made == sorted(
        [F.MARKER_NAME, F.LOCK_NAME, F.STATE_NAME, F.SNAPSHOT_NAME, F.BLOBS_DIR, F.LOG_DIR]
    )
    with BlobCache(store) as cache:
        cache.put("k", b"v")
    with BlobCache(store) as cache:
        assert cache["k"] == b"v"


def test_init_makes_blobs_and_log_durable_before_the_marker(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = record_calls(monkeypatch, ("mkdir", "fsync_dir", "rename"))
    BlobCache(store).close()
    monkeypatch.undo()
    marker = calls.index(("rename", F.MARKER_NAME))
    made = [calls.index(("mkdir", name)) for name in (F.BLOBS_DIR, F.LOG_DIR)]
    synced = calls.index(("fsync_dir", "store"), max(made))
    assert synced < marker


def test_init_takes_the_empty_dirs_an_interrupted_init_left_but_nothing_else(store: str) -> None:
    for name in (F.BLOBS_DIR, F.LOG_DIR):
        os.makedirs(os.path.join(store, name))
    BlobCache(store).close()
    assert os.path.exists(os.path.join(store, F.MARKER_NAME))
    other = store + "-other"
    os.makedirs(os.path.join(other, F.LOG_DIR))
    with open(os.path.join(other, F.LOG_DIR, "notes.txt"), "w") as f:
        f.write("someone's file")
    with pytest.raises(BlobCacheError, match="not a blobcache store"):
        BlobCache(other)
    assert not os.path.exists(os.path.join(other, F.MARKER_NAME))


# --- the writer -------------------------------------------------------------------------


def test_group_commit_shares_fdatasyncs_between_threads(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads, each = 8, 25
    queued = 0  # records put in the writer's queue so far
    syncs = 0
    gate = threading.Condition()
    real_sync = _fsio.fdatasync

    class Queue(list[Any]):
        """The writer's queue of records waiting for a leader, counting them in."""

        def append(self, request: Any) -> None:
            nonlocal queued
            super().append(request)
            with gate:
                queued += 1
                gate.notify_all()

    def fdatasync(fd: int) -> None:
        nonlocal syncs
        with gate:
            syncs += 1
            if syncs == 1:
                # Hold the first batch until every thread has a record on its way, in
                # it or queued after it (no sleep: a wait on the condition), so a
                # batch holds several.
                assert gate.wait_for(lambda: queued >= threads, timeout=30)
        real_sync(fd)

    errors: list[BaseException] = []
    with BlobCache(store, durability="fsync") as cache:
        cache._writes.log._queue = Queue()
        monkeypatch.setattr(_fsio, "fdatasync", fdatasync)

        def putter(t: int) -> None:
            try:
                for i in range(each):
                    cache.put(f"t{t}-{i}", f"value {t} {i}".encode())
            except BaseException as exc:
                errors.append(exc)

        workers = [threading.Thread(target=putter, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        monkeypatch.undo()
        assert errors == []
        assert 0 < syncs < threads * each  # some puts shared an fdatasync
    expected = {f"t{t}-{i}": f"value {t} {i}".encode() for t in range(threads) for i in range(each)}
    assert _replay(_all_records(store)) == expected  # every record intact on disk
    with BlobCache(store) as cache:
        assert _contents(cache) == expected


def test_failed_fdatasync_fails_the_put_and_keeps_the_old_value(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with BlobCache(store) as cache:
        cache.put("k", b"old")
        cache.put("other", b"before")
        fail_once(monkeypatch, "fdatasync", errno.EIO)
        with pytest.raises(OSError) as info:
            cache.put("k", b"never acknowledged")
        assert info.value.errno == errno.EIO
        assert cache["k"] == b"old"  # the previous value stays served
        cache.put("later", b"after the failure")  # the store keeps going
        assert cache["later"] == b"after the failure"
    assert b"never acknowledged" not in [r.value for r in _all_records(store)]
    with BlobCache(store) as cache:
        assert _contents(cache) == {"k": b"old", "other": b"before", "later": b"after the failure"}
        assert cache.problems == ()
        assert cache.stats().torn_bytes_at_open == 0


@pytest.mark.parametrize("end", ["crash", "close"])
def test_failed_fdatasync_of_a_new_key_leaves_it_absent(
    store: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, end: str
) -> None:
    """No put follows the failed one. "crash": the process dies right after the put
    raised (a copy of the files as the kernel holds them is opened: the
    process-crash model); "close": the cache is closed normally."""
    crashed = str(tmp_path / "crashed")
    with BlobCache(store) as cache:
        cache.put("a", b"acknowledged")
        fail_once(monkeypatch, "fdatasync", errno.EIO)
        with pytest.raises(OSError):
            cache.put("new", b"never acknowledged")
        assert "new" not in cache
        if end == "crash":
            shutil.copytree(store, crashed)
            store = crashed
    with BlobCache(store) as cache:
        assert _contents(cache) == {"a": b"acknowledged"}, "a put that raised came back"


def test_failed_pwrite_fails_the_put_and_leaves_no_half_record(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def half(fd: int, data: bytes, offset: int) -> None:  # a short write, then the disk is full
        os.pwrite(fd, bytes(data)[: len(data) // 2], offset)

    with BlobCache(store) as cache:
        cache.put("k", b"old")
        fail_once(monkeypatch, "pwrite_all", errno.ENOSPC, before=half)
        with pytest.raises(OSError) as info:
            cache.put("k", b"never acknowledged" * 10)
        assert info.value.errno == errno.ENOSPC
        assert cache["k"] == b"old"
        cache.put("later", b"after the failure")
    for path in _segments(store):
        _parse(path)  # every segment intact: no half record between good ones
    with BlobCache(store) as cache:
        assert _contents(cache) == {"k": b"old", "later": b"after the failure"}
        assert cache.problems == ()
        assert cache.stats().torn_bytes_at_open == 0


def test_os_durability_sync_after_a_failed_put_still_syncs_earlier_puts(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Power-loss model: sync() promises every acknowledged put survives it."""
    with BlobCache(store, durability="os", sync_interval=3600) as cache:
        cache.put("a", b"acknowledged, in the page cache only")
        fail_once(monkeypatch, "pwrite_all", errno.ENOSPC)
        with pytest.raises(OSError):
            cache.put("b", b"fails")
        monkeypatch.undo()
        syncs = record_calls(monkeypatch, ("fdatasync",))
        cache.sync()
        assert syncs, "sync() returned without making the acknowledged put durable"


def test_segment_rollover(store: str) -> None:
    items = [(f"key{i:03}", bytes([i]) * 100) for i in range(150)]
    with BlobCache(store, segment_bytes=_SMALL_SEGMENT) as cache:
        for key, value in items:
            cache.put(key, value)
        segments = _segments(store)
        assert cache.stats().segments == len(segments)
    assert len(segments) >= 4
    assert all(os.path.getsize(p) <= _SMALL_SEGMENT for p in segments)
    records = [r for p in segments for r in _parse(p)]
    assert [r.seq for r in records] == sorted(r.seq for r in records)  # appended in order
    with BlobCache(store, segment_bytes=_SMALL_SEGMENT) as cache:
        assert _contents(cache) == dict(items)
        assert cache.stats().segments == len(segments)
        assert cache.stats().inline_keys == len(items)


def test_value_crossing_inline_limit_both_ways(store: str) -> None:
    limit = 1024
    small, large, small_again = b"s" * 100, bytes(range(256)) * 16, b"t" * (limit - 1)

    def reopen() -> BlobCache:
        return BlobCache(store, inline_limit=limit)

    with reopen() as cache:
        cache.put("k", small)
        assert cache.path("k") is None and cache.get("k") == small
        assert isinstance(cache.get("k"), bytes)
    with reopen() as cache:
        assert cache.path("k") is None and cache.get("k") == small
        cache.put("k", large)  # log -> file
        file = cache.path("k")
        assert file is not None and bytes(cache["k"]) == large
    with open(file, "rb") as f:
        assert f.read() == large
    with reopen() as cache:
        assert cache.path("k") == file and bytes(cache["k"]) == large
        assert cache.stats().inline_keys == 0
        cache.put("k", small_again)  # file -> log
        assert cache.path("k") is None and cache.get("k") == small_again
    keydir = os.path.dirname(file)
    assert os.path.isdir(keydir)  # garbage until gc
    with reopen() as cache:
        assert cache.path("k") is None and cache.get("k") == small_again
        cache.gc()
        assert not os.path.exists(keydir)  # the key left its directory: all of it goes
        assert cache.get("k") == small_again
    with reopen() as cache:
        assert cache.get("k") == small_again
        cache.delete("k")
    with reopen() as cache:
        assert "k" not in cache
        cache.put("k", large)
    with reopen() as cache:
        assert bytes(cache["k"]) == large
        cache.delete("k")  # a delete of a file's value is a log record too
    assert _locate(store, "k").kind == F.RECORD_DELETE
    with reopen() as cache:
        assert "k" not in cache
        cache.gc()
    assert files_named(os.path.join(store, F.BLOBS_DIR), F.VERSION_PREFIX) == []
    with reopen() as cache:
        assert "k" not in cache


def test_compaction_keeps_only_live_records(store: str) -> None:
    with BlobCache(store, segment_bytes=_SMALL_SEGMENT) as cache:
        _compaction_workload(cache, rounds=20, keys=12)
        expected = _contents(cache)
        assert cache.stats().log_stale_bytes > 0
        cache.gc()
        stats = cache.stats()
        live = sum(_RECORD + len(k.encode()) + len(v) for k, v in expected.items())
        assert stats.log_stale_bytes == 0
        assert stats.log_record_bytes == live
        assert _contents(cache) == expected
        segments = _segments(store)
    assert len(segments) <= 2  # the compacted output and the new active segment
    assert live <= _log_bytes(store) <= live + _HEAD * len(segments)
    assert _replay(_all_records(store)) == expected
    with BlobCache(store, segment_bytes=_SMALL_SEGMENT) as cache:
        assert _contents(cache) == expected
        assert cache.stats().log_stale_bytes == 0
        assert cache.problems == ()
    assert stats.segments == len(segments)  # stats() counts the segment files gc left


def test_os_durability_puts_then_sync_then_reopen(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = {f"k{i}": f"value {i}".encode() for i in range(50)}
    with BlobCache(store, durability="os", sync_interval=3600) as cache:
        syncs = record_calls(monkeypatch, ("fdatasync",))
        for key, value in items.items():
            cache.put(key, value)
        assert len(syncs) < len(items)  # "os": puts do not each wait for the disk...
        assert _replay(_all_records(store)) == items  # ...but their bytes are in the kernel
        before = len(syncs)
        cache.sync()
        assert len(syncs) > before  # sync() makes them survive power loss
        monkeypatch.undo()
    with BlobCache(store) as cache:
        assert _contents(cache) == items


@pytest.mark.parametrize("op", ["put", "delete"])
def test_compaction_beside_a_put_or_delete_between_its_append_and_its_return_keeps_it(
    store: str, op: str
) -> None:
    # Regression: compaction chose its inputs while a put had appended its record
    # but not yet updated the index; it then deleted the segment holding it.
    # Now the follower applies the record, from memory, when compaction has
    # sealed the segment holding it: compaction need not wait for the put.
    cache = BlobCache(store, compact_ratio=1.0)
    cache.put("a", b"1")
    cache.put("a", b"2")  # something stale, so gc() compacts
    cache.put("b", b"old")
    appended, go = threading.Event(), threading.Event()
    real_append = cache._writes.log.append

    def paused_append(*args: Any) -> tuple[int, int, int, int]:
        where = real_append(*args)
        if threading.current_thread().name == "writer":
            appended.set()
            go.wait()
        return where

    cache._writes.log.append = paused_append  # type: ignore[method-assign]
    call = (lambda: cache.put("b", b"new")) if op == "put" else (lambda: cache.delete("b"))
    writer = threading.Thread(target=call, name="writer")
    writer.start()
    appended.wait()

    compacted: list[int] = []

    def collect() -> None:
        compacted.append(cache.gc().segments_compacted)

    collector = threading.Thread(target=collect)
    collector.start()
    # gc() ends while the put waits between its append and its return. The
    # timeout only keeps a gc() that waits for the put from hanging the test.
    collector.join(timeout=60)
    if collector.is_alive():
        go.set()  # so that the failure does not hang as well
        pytest.fail("gc() waited for a put between its append and its return")
    assert compacted[0] >= 1  # it compacted the segment holding the record
    # The follower applied the record from memory: gc() lost neither it nor the index's view.
    assert cache.get("b") == (b"new" if op == "put" else None)
    go.set()
    writer.join()
    cache.gc()  # a second compaction must find every segment it counts on
    cache.close()
    with BlobCache(store) as cache:
        assert cache.get("b") == (b"new" if op == "put" else None)
        assert cache.get("a") == b"2"


@pytest.mark.parametrize("durability", ["os", "fsync"])
def test_compaction_makes_a_superseding_file_durable_before_dropping_the_log_record(
    store: str, monkeypatch: pytest.MonkeyPatch, durability: str
) -> None:
    # Never delete the last durable copy: the log record of "k" may be dropped only
    # once the file that supersedes it survives power loss. With "os" that file is
    # owed to sync(); with "fsync" a version found at open may never have been
    # fsynced (a crash between its rename and its directory's fsync).
    big = 300_000
    snapshot = os.path.join(store, F.SNAPSHOT_NAME)
    with BlobCache(store, durability=durability, sync_interval=3600) as cache:  # type: ignore[arg-type]
        cache.put("k", b"small")
        cache.sync()
        if durability == "fsync":
            cache.close()  # its index snapshot names the small value
            with open(snapshot, "rb") as f:
                before = f.read()
            cache = BlobCache(store, sync_interval=3600)
        cache.put("k", bytes(big))
        version = os.path.basename(str(cache.path("k")))
        if durability == "fsync":
            cache.close()
            # As a crash after the put leaves it: the snapshot of before (this
            # close's, which knows the file, made it durable first).
            with open(snapshot, "wb") as f:
                f.write(before)
            cache = BlobCache(store, sync_interval=3600)
        calls = record_calls(monkeypatch, ("fsync_path", "fsync_dir", "unlink", "rename"))
        cache.gc()
        monkeypatch.undo()
        # The record goes when the output is renamed over its segment (or when
        # a lower segment holding it is unlinked, after that).
        dropped = next(i for i, c in enumerate(calls) if c[1].endswith(".log"))
        assert calls[dropped][0] == "rename"
        assert ("fsync_path", version) in calls[:dropped]
        assert ("fsync_dir", "blobs") in calls[:dropped]
        cache.close()


def _replayed(
    *segments: list[tuple[int, bytes, bytes | None]],
) -> tuple[dict[Any, Any], dict[int, int]]:
    """Replay segments numbered 1, 2, ... of (seq, key, value or None: a delete)
    records, in order; return each key's newest value and the live bytes per segment."""
    values: dict[Any, bytes | None] = {}
    meta: dict[Any, int] = {}
    live: dict[int, int] = {}
    for number, records in enumerate(segments, start=1):
        data = _log.segment_header(0) + b"".join(
            _log.encode_record(
                seq,
                F.RECORD_PUT if value is not None else F.RECORD_DELETE,
                *N.encode_key(key.decode()),
                value or b"",
            )
            for seq, key, value in records
        )
        info = _log.SegmentRead(path=f"{number}.log", number=number)
        _log.replay(
            data, info, values, meta, live, [], {}, {}, {}, now=0, active=False, salvage=False
        )
    return values, live


def test_replay_counts_a_record_read_again_or_late_as_not_live() -> None:
    """A reader beside a writer's compaction can read one record twice (in an
    input, then in the output that replaced the next input) and an older one
    after a newer: neither is live, and neither may lower a segment's live bytes
    (replay once counted such a put as minus its size)."""
    again = _log.encode_record(5, F.RECORD_PUT, *N.encode_key("k"), b"v" * 10)
    values, live = _replayed([(5, b"k", b"v" * 10)], [(5, b"k", b"v" * 10), (3, b"k", b"old")])
    assert values == {"k": b"v" * 10}
    assert live == {1: len(again), 2: 0}
