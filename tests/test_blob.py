"""Unit tests of _blob: writing a version file, and what a failed write leaves."""

from __future__ import annotations

import errno
import os

import pytest

from blobcache import BlobCache, _fsio
from blobcache import _format as F
from blobcache import _names as N
from tests.conftest import fail_once, file_of, files_named, versions


def test_version_file_holds_exactly_the_value(blob_cache: BlobCache) -> None:
    cache = blob_cache
    cache.put("k", b"\x00value\xff")
    with open(file_of(cache, "k"), "rb") as f:
        assert f.read() == b"\x00value\xff"


def test_write_failure_removes_the_temp_file_and_keeps_the_old_value(
    blob_cache: BlobCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = blob_cache
    cache.put("k", b"old")

    fail_once(monkeypatch, "fsync_file", errno.ENOSPC)
    with pytest.raises(OSError, match="No space"):
        cache.put("k", b"new")
    assert bytes(cache["k"]) == b"old"
    assert files_named(cache.directory, F.TEMP_PREFIX) == []
    assert len(versions(cache.directory)) == 1


def test_failed_fsync_of_a_large_value_overlapped_with_hashing_fails_the_put(
    blob_cache: BlobCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = blob_cache
    cache.put("k", b"old")

    fail_once(monkeypatch, "fsync_file", errno.EIO)
    with pytest.raises(OSError, match="Input/output"):
        cache.put("k", bytes(4 << 20))  # large enough to hash while the fsync runs
    assert bytes(cache["k"]) == b"old"
    assert files_named(cache.directory, F.TEMP_PREFIX) == []
    cache.put("k", bytes(4 << 20))
    assert cache["k"] == bytes(4 << 20)


def test_put_into_an_existing_fanout_directory_fsyncs_its_parent_too(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A process killed between a mkdir and its parent's fsync leaves a directory
    # that exists but may not survive a power cut: the next put must fsync it.
    BlobCache(store).close()
    blobs = os.path.join(store, F.BLOBS_DIR)
    digest = N.key_hash(*N.encode_key("k"))
    os.mkdir(os.path.join(blobs, digest[:2]))  # made, never fsynced into blobs/
    synced: list[str] = []
    real = _fsio.fsync_dir

    def recording(path: str) -> None:
        synced.append(path)
        real(path)

    monkeypatch.setattr(_fsio, "fsync_dir", recording)
    with BlobCache(store, inline_limit=0) as c:
        synced.clear()
        c.put("k", b"v")
    assert blobs in synced
