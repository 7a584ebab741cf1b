"""Unit tests of _names: key encoding, hashing, and the file-name grammar."""

from __future__ import annotations

import pytest

from blobcache import _format as F
from blobcache import _names as N


def test_str_and_bytes_keys_hash_to_different_directories() -> None:
    assert N.key_hash(*N.encode_key("a")) != N.key_hash(*N.encode_key(b"a"))


def test_key_round_trips_with_its_type() -> None:
    for key in ["", b"", "ключ", b"\x00\xff", "a" * 100]:
        assert N.decode_key(*N.encode_key(key)) == key
        assert type(N.decode_key(*N.encode_key(key))) is type(key)


def test_str_subclass_key_is_stored_as_plain_str() -> None:
    class Name(str):
        pass

    tag, raw = N.encode_key(Name("x"))
    assert type(N.decode_key(tag, raw)) is str


@pytest.mark.parametrize("key", [1, 1.5, None, bytearray(b"a"), ("a",), memoryview(b"a")])
def test_wrong_key_type_is_a_type_error(key: object) -> None:
    with pytest.raises(TypeError, match="keys must be str or bytes"):
        N.encode_key(key)


def test_longest_key_is_accepted_and_one_more_byte_is_not() -> None:
    N.encode_key(b"k" * F.MAX_KEY_BYTES)
    with pytest.raises(ValueError, match=f"at most {F.MAX_KEY_BYTES} bytes"):
        N.encode_key(b"k" * (F.MAX_KEY_BYTES + 1))
    assert F.MAX_KEY_BYTES >= 4096


def test_unencodable_str_key_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="UTF-8"):
        N.encode_key("\ud800")


def test_key_dir_fans_out_two_levels() -> None:
    digest = N.key_hash(*N.encode_key("k"))
    assert N.key_dir("/b", digest) == f"/b/{digest[:2]}/{digest[2:4]}/{digest}"
    assert len(digest) == F.KEY_HASH_HEX_DIGITS


def test_version_name_round_trips() -> None:
    name = N.version_name(5, 1 << 40, 2**64 - 1)
    assert name == "v-0000000000000005-0000010000000000-ffffffffffffffff"
    assert len(name) == F.VERSION_NAME_LEN
    assert N.parse_version_name(name) == N.VersionName(5, 1 << 40, 2**64 - 1)


@pytest.mark.parametrize(
    "name",
    [
        "v-0000000000000005-0000000000000001",  # a field missing
        "v-000000000000000G-0000000000000001-0000000000000001",  # not hex
        "v-000000000000000A-0000000000000001-0000000000000001",  # upper case
        "x-0000000000000005-0000000000000001-0000000000000001",  # wrong prefix
        "v-0000000000000005-0000000000000001-0000000000000001.bak",
        "v-0000000000000005_0000000000000001_0000000000000001",
    ],
)
def test_foreign_names_are_not_versions(name: str) -> None:
    assert N.parse_version_name(name) is None
