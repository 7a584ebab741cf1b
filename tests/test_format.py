"""FORMAT.md and blobcache/_format.py agree byte for byte; the worked examples are true."""

from __future__ import annotations

import mmap
import os
import re
import struct

import pytest
import xxhash

from blobcache import BlobCache, BlobCacheError, _keydir, _log
from blobcache import _format as F
from blobcache import _names as N

FORMAT_MD = os.path.join(os.path.dirname(__file__), os.pardir, "FORMAT.md")


def _render(value: object) -> str:
    if isinstance(value, struct.Struct):
        return f"Struct({value.format!r})"
    return repr(value)


def _constants_table() -> dict[str, str]:
    with open(FORMAT_MD, encoding="utf-8") as f:
        text = f.read()
    section = text.split("## 9. Constants", 1)[1]
    return dict(re.findall(r"^\| `([A-Z_0-9]+)` \| `(.+)` \|$", section, re.MULTILINE))


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _segment(store: str, number: int) -> str:
    return os.path.join(store, F.LOG_DIR, _log.segment_name(number))


def test_every_constant_is_in_format_md_with_its_value() -> None:
    module = {name: _render(getattr(F, name)) for name in dir(F) if name.isupper()}
    assert _constants_table() == module


def test_struct_sizes_match_the_prose() -> None:
    assert F.KEY_FILE_HEADER.size == 9
    assert F.KEY_FILE_TRAILER.size == 8
    assert F.SEGMENT_HEADER.size == 16
    assert F.RECORD_HEADER.size == 22
    assert F.RECORD_HEADER_V1.size == 20
    # Format 1's record header is format 2's without rflags and codec, the last two bytes.
    assert F.RECORD_HEADER.format == F.RECORD_HEADER_V1.format + "BB"
    assert F.VERSION_BODY.size == 16
    assert F.STATE_LAYOUT.size == 96 <= mmap.PAGESIZE
    assert len(F.MARKER_CONTENT) == len(F.MARKER_CONTENT_V1) == 12
    assert len(N.version_name(1, 2, 3)) == F.VERSION_NAME_LEN == 52
    assert len(_log.segment_name(1)) == F.SEGMENT_NAME_LEN == 20


def test_state_layout_matches_the_prose() -> None:
    # magic at 0, four zero bytes, then next, segment, appended, acked, pending,
    # allocated, generation, synced, synced_in and troubles, a u64 each from
    # offset 8; wakes, a u32 at 88, and four zero bytes.
    fields = [0x0101010101010101 * i for i in range(1, 11)]
    packed = F.STATE_LAYOUT.pack(F.STATE_MAGIC, *fields, 0x0A0B0C0D)
    assert packed[:8] == b"BCS1" + bytes(4)
    for i, value in enumerate(fields):
        assert packed[8 + 8 * i : 16 + 8 * i] == value.to_bytes(8, "little")
    assert packed[88:] == (0x0A0B0C0D).to_bytes(4, "little") + bytes(4)


def test_torn_tail_example(tmp_path: object) -> None:
    record = _log.encode_record(1, F.RECORD_PUT, b"s", b"k", b"hello")
    assert len(record) == 28
    assert record[4:] == bytes.fromhex("0100000000000000 05000000 01 73 0100 00 00 6b 68656c6c6f")
    assert record[:4] == (xxhash.xxh3_64_intdigest(record[4:]) & 0xFFFFFFFF).to_bytes(4, "little")
    store = str(tmp_path)
    with BlobCache(store) as cache:
        cache.put("k", b"hello")
    path = _segment(store, 1)
    segment = _read(path)
    assert segment[16:44] == record
    assert segment[44:].count(0) == len(segment) - 44  # the zero-filled room
    assert len(segment) == 16 + (1 << 20)  # zero-filled 1 MiB ahead of the header
    torn = _log.encode_record(2, F.RECORD_PUT, b"s", b"j", b"world")[:10]
    with open(path, "r+b") as f:
        f.seek(44)
        f.write(torn)
    with BlobCache(store, readonly=True) as cache:  # found, not cut: counted all the same
        assert cache.stats().torn_bytes_at_open == 1_048_548
    assert os.path.getsize(path) == 16 + (1 << 20)
    with BlobCache(store) as cache:
        assert os.path.getsize(path) == 44
        assert cache.stats().torn_bytes_at_open == 1_048_548  # the room after the torn bytes too
        assert [p.path for p in cache.problems] == [path]
        assert "offset 44" in cache.problems[0].message
        assert cache["k"] == b"hello"
        cache.put("j", b"again")
        seq = cache.stats().next_seq - 1
    segment = _read(path)
    assert segment[16:44] == record
    assert segment[44:72] == _log.encode_record(seq, F.RECORD_PUT, b"s", b"j", b"again")


def test_a_version_record_of_other_than_16_value_bytes_is_a_bad_record(tmp_path: object) -> None:
    store = str(tmp_path)
    with BlobCache(store) as cache:
        cache.put("k", b"hello")
    path = _segment(store, 1)
    # Its checksum holds; only its length is wrong: 15 bytes cannot name a version file.
    bad = _log.encode_record(2, F.RECORD_VERSION, b"s", b"j", bytes(15))
    with open(path, "r+b") as f:
        f.seek(44)
        f.write(bad)
    with BlobCache(store) as cache:
        assert os.path.getsize(path) == 44
        assert [p.path for p in cache.problems] == [path]
        assert cache.problems[0].message.startswith(
            "a version record of 15 value bytes, not 16 at offset 44: cut the segment there"
        )
        assert cache["k"] == b"hello"
        assert cache.stats().next_seq == 2  # no record: its number counts for nothing


def test_worked_example(tmp_path: object) -> None:
    key_file = _keydir.key_file_bytes(b"s", b"cfg")
    assert key_file[:12] == bytes.fromhex("42434b31 73 03000000 636667")
    assert key_file[12:] == struct.pack("<Q", xxhash.xxh3_64_intdigest(key_file[:12]))
    assert len(key_file) == 17 + 3
    store = str(tmp_path)
    value = bytes(300_000)
    value_checksum = xxhash.xxh3_64_intdigest(value)
    with BlobCache(store) as cache:
        cache.put("cfg", value)
        digest = xxhash.xxh3_128_hexdigest(b"scfg")
        keydir = os.path.join(store, "blobs", digest[:2], digest[2:4], digest)
        checksum = format(value_checksum, "016x")
        assert cache.path("cfg") == os.path.join(
            keydir, f"v-0000000000000001-00000000000493e0-{checksum}"
        )
        assert _read(os.path.join(keydir, "key")) == key_file
        cache.delete("cfg")
        segment = _read(os.path.join(store, "log", "0000000000000001.log"))
        assert segment[:4] == b"BCL2"
        version = segment[16 : 16 + 41]
        assert version[4:] == bytes.fromhex(
            "0100000000000000 10000000 03 73 0300 00 00 636667 e093040000000000"
        ) + struct.pack("<Q", value_checksum)
        delete = segment[57 : 57 + 25]
        assert delete[4:] == bytes.fromhex("0200000000000000 00000000 02 73 0300 00 00 636667")
        for record in (version, delete):
            checksum_bytes = xxhash.xxh3_64_intdigest(record[4:]) & 0xFFFFFFFF
            assert record[:4] == checksum_bytes.to_bytes(4, "little")
        assert segment[82:].count(0) == len(segment) - 82  # zero-filled ahead
        result = cache.gc()
        assert result.dirs_removed == 3
        assert not os.path.exists(os.path.join(store, "blobs", digest[:2]))
        assert result.segments_compacted == 1
        assert cache.stats().log_record_bytes == 0  # nothing copied, the delete dropped
        compacted = _read(os.path.join(store, "log", "0000000000000001.log"))
        assert compacted == _log.segment_header(F.SEGMENT_FLAG_COMPACTED)
        state = _state(store)
        assert state[:8] == (F.STATE_MAGIC, 3, 2, 16, 16, 16, 16, 1)
        assert state[8:10] == (16, 2)  # synced: the new segment's header, made durable


def _state(store: str) -> tuple[object, ...]:
    """The fields of the store's ``STATE``, as ``STATE_LAYOUT`` unpacks them."""
    return F.STATE_LAYOUT.unpack(_read(os.path.join(store, F.STATE_NAME))[: F.STATE_LAYOUT.size])


def _format_1_store(store: str) -> bytes:
    """A store as blobcache 0.1 left it, made from FORMAT.md's grammar: one
    segment, ``put("k", b"hello")`` as a 26-byte record, and zero-filled room."""
    os.makedirs(os.path.join(store, F.BLOBS_DIR))
    os.makedirs(os.path.join(store, F.LOG_DIR))
    with open(os.path.join(store, F.MARKER_NAME), "wb") as f:
        f.write(b"blobcache 1\n")
    with open(os.path.join(store, F.LOCK_NAME), "wb"):
        pass
    body = F.RECORD_HEADER_V1.pack(0, 1, 5, F.RECORD_PUT, b"s", 1)[4:] + b"khello"
    record = (xxhash.xxh3_64_intdigest(body) & 0xFFFFFFFF).to_bytes(4, "little") + body
    assert len(record) == 26
    head = b"BCL1" + bytes(4)
    head += xxhash.xxh3_64_intdigest(head).to_bytes(8, "little")
    with open(_segment(store, 1), "wb") as f:
        f.write(head + record + bytes(1000))
    return head + record


def _tree(store: str) -> dict[str, bytes]:
    found = {}
    for top, _dirs, files in os.walk(store):
        for name in files:
            path = os.path.join(top, name)
            found[os.path.relpath(path, store)] = _read(path)
    return found


def test_a_format_1_store_opens_and_a_writer_upgrades_it(tmp_path: object) -> None:
    store = str(tmp_path)
    sealed = _format_1_store(store)
    before = _tree(store)
    with BlobCache(store, readonly=True) as cache:
        assert cache["k"] == b"hello"
    assert _tree(store) == before  # a reader changes nothing
    with BlobCache(store) as cache:
        assert cache["k"] == b"hello"
        assert _read(os.path.join(store, F.MARKER_NAME)) == b"blobcache 4\n"
        assert _read(_segment(store, 1)) == sealed  # cut at its last record
        assert _read(_segment(store, 2)) == _log.segment_header(0)  # BCL2, header only
        cache.put("k", b"again")
        state = _state(store)
        assert state[:3] == (F.STATE_MAGIC, 3, 2)
    assert _read(_segment(store, 2))[16:44] == _log.encode_record(
        2, F.RECORD_PUT, b"s", b"k", b"again"
    )
    with BlobCache(store) as cache:
        assert cache["k"] == b"again"


@pytest.mark.parametrize(
    ("offset", "byte", "said"),
    [(20, 0x10, "flags 0x10 and codec 0"), (21, 5, "flags 0x00 and codec 5")],
)
@pytest.mark.parametrize("readonly", [False, True])
def test_a_record_with_an_unknown_rflags_or_codec_is_refused_not_cut(
    tmp_path: object, offset: int, byte: int, said: str, readonly: bool
) -> None:
    """Bit 4 of rflags and codec 5 are the first ones format 4 does not know."""
    store = str(tmp_path)
    with BlobCache(store) as cache:
        cache.put("k", b"hello")
    path = _segment(store, 1)
    record = bytearray(_read(path)[16:44])
    record[offset] = byte  # as a newer blobcache would write it, its checksum good
    record[:4] = (xxhash.xxh3_64_intdigest(record[4:]) & 0xFFFFFFFF).to_bytes(4, "little")
    with open(path, "r+b") as f:
        f.seek(16)
        f.write(record)
    before = _read(path)
    with pytest.raises(BlobCacheError, match="newer") as raised:
        BlobCache(store, readonly=readonly)
    assert f"{path}: the record at offset 16 has {said}" in str(raised.value)
    assert _read(path) == before  # never cut as a torn tail
