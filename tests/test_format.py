"""FORMAT.md and blobcache/_format.py agree byte for byte; the worked example is true."""

from __future__ import annotations

import os
import re
import struct

import xxhash

from blobcache import BlobCache, _blob
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
    section = text.split("## 8. Constants", 1)[1]
    return dict(re.findall(r"^\| `([A-Z_0-9]+)` \| `(.+)` \|$", section, re.MULTILINE))


def test_every_constant_is_in_format_md_with_its_value() -> None:
    module = {name: _render(getattr(F, name)) for name in dir(F) if name.isupper()}
    assert _constants_table() == module


def test_struct_sizes_match_the_prose() -> None:
    assert F.KEY_FILE_HEADER.size == 9
    assert F.KEY_FILE_TRAILER.size == 8
    assert len(F.MARKER_CONTENT) == 12
    assert len(N.version_name(1, 2, 3)) == F.VERSION_NAME_LEN == 52
    assert len(N.tombstone_name(1)) == F.TOMBSTONE_NAME_LEN == 18


def test_worked_example(tmp_path: object) -> None:
    key_file = _blob.key_file_bytes(b"s", b"cfg")
    assert key_file[:12] == bytes.fromhex("42434b31 73 03000000 636667")
    assert key_file[12:] == struct.pack("<Q", xxhash.xxh3_64_intdigest(key_file[:12]))
    assert len(key_file) == 17 + 3
    with BlobCache(str(tmp_path)) as cache:
        cache.put("cfg", b"hi")
        digest = xxhash.xxh3_128_hexdigest(b"scfg")
        keydir = os.path.join(str(tmp_path), "blobs", digest[:2], digest[2:4], digest)
        checksum = format(xxhash.xxh3_64_intdigest(b"hi"), "016x")
        assert cache.path("cfg") == os.path.join(
            keydir, f"v-0000000000000001-0000000000000002-{checksum}"
        )
        with open(os.path.join(keydir, "key"), "rb") as f:
            assert f.read() == key_file
        cache.delete("cfg")
        assert "t-0000000000000002" in os.listdir(keydir)
        cache.gc()
        assert not os.path.exists(os.path.join(str(tmp_path), "blobs", digest[:2]))
