"""Unit tests of _mapping: serving a version file's bytes, checked, and failing by name."""

from __future__ import annotations

import os

import pytest

from blobcache import BlobCache, CorruptionError
from tests.conftest import file_of, flip_bit


def test_checksum_mismatch_raises_on_first_get(store: str) -> None:
    with BlobCache(store, inline_limit=0) as c:
        c.put("k", b"value")
        path = file_of(c, "k")
    flip_bit(path, 2)
    with BlobCache(store, inline_limit=0) as c:
        with pytest.raises(CorruptionError, match="checksum mismatch") as info:
            c.get("k")
        assert info.value.path == path
        with pytest.raises(CorruptionError):  # and again: bad bytes are never cached
            c.get("k")


def test_checksum_check_can_be_turned_off(store: str) -> None:
    with BlobCache(store, inline_limit=0) as c:
        c.put("k", b"value")
        path = file_of(c, "k")
    flip_bit(path, 0)
    with BlobCache(store, verify_on_get=False, inline_limit=0) as c:
        assert bytes(c["k"]) == b"walue"


def test_zero_length_value_round_trips(store: str) -> None:
    with BlobCache(store, inline_limit=0) as c:
        c.put("empty", b"")
        assert bytes(c["empty"]) == b""
    with BlobCache(store, inline_limit=0) as c:
        assert bytes(c["empty"]) == b""
        assert c.problems == ()


def test_version_removed_behind_an_open_cache_is_corruption_not_a_crash(
    blob_cache: BlobCache,
) -> None:
    cache = blob_cache
    cache.put("k", b"value")
    os.unlink(file_of(cache, "k"))
    with pytest.raises(CorruptionError, match="missing"):
        cache.get("k")
