"""FORMAT.md and blobcache/_format.py agree byte for byte; the worked example is true."""

from __future__ import annotations

import os
import re
import struct

import xxhash

from blobcache import BlobCache, _keydir, _log
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


def test_every_constant_is_in_format_md_with_its_value() -> None:
    module = {name: _render(getattr(F, name)) for name in dir(F) if name.isupper()}
    assert _constants_table() == module


def test_struct_sizes_match_the_prose() -> None:
    assert F.KEY_FILE_HEADER.size == 9
    assert F.KEY_FILE_TRAILER.size == 8
    assert F.SEGMENT_HEADER.size == 16
    assert F.RECORD_HEADER.size == 20
    assert len(F.MARKER_CONTENT) == 12
    assert len(N.version_name(1, 2, 3)) == F.VERSION_NAME_LEN == 52
    assert len(_log.segment_name(1)) == F.SEGMENT_NAME_LEN == 20


def test_torn_tail_example() -> None:
    record = _log.encode_record(1, F.RECORD_PUT, b"s", b"k", b"hello")
    assert len(record) == 26
    assert record[4:] == bytes.fromhex("0100000000000000 05000000 01 73 0100 6b 68656c6c6f")


def test_worked_example(tmp_path: object) -> None:
    key_file = _keydir.key_file_bytes(b"s", b"cfg")
    assert key_file[:12] == bytes.fromhex("42434b31 73 03000000 636667")
    assert key_file[12:] == struct.pack("<Q", xxhash.xxh3_64_intdigest(key_file[:12]))
    assert len(key_file) == 17 + 3
    store = str(tmp_path)
    value = bytes(300_000)
    with BlobCache(store) as cache:
        cache.put("cfg", value)
        digest = xxhash.xxh3_128_hexdigest(b"scfg")
        keydir = os.path.join(store, "blobs", digest[:2], digest[2:4], digest)
        checksum = format(xxhash.xxh3_64_intdigest(value), "016x")
        assert cache.path("cfg") == os.path.join(
            keydir, f"v-0000000000000001-00000000000493e0-{checksum}"
        )
        with open(os.path.join(keydir, "key"), "rb") as f:
            assert f.read() == key_file
        cache.delete("cfg")
        with open(os.path.join(store, "log", "0000000000000001.log"), "rb") as f:
            segment = f.read()
        assert segment[:4] == b"BCL1"
        record = segment[16 : 16 + 23]
        assert record[4:] == bytes.fromhex("0200000000000000 00000000 02 73 0300 636667")
        assert segment[16 + 23 :].count(0) == len(segment) - 16 - 23  # zero-filled ahead
        result = cache.gc()
        assert result.dirs_removed == 3
        assert not os.path.exists(os.path.join(store, "blobs", digest[:2]))
        assert result.segments_compacted == 1
        assert cache.stats().log_record_bytes == 0  # the delete record was dropped
