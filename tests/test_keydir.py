"""Unit tests of _keydir and recovery: one test per named failure of a key directory."""

from __future__ import annotations

import os

import pytest

from blobcache import BlobCache, CorruptionError, _fsio, _keydir
from blobcache import _format as F
from blobcache import _names as N
from blobcache._maintenance import verify
from tests.conftest import file_of, flip_bit, truncate, versions


def _two_versions(store: str, key: str = "k") -> tuple[str, str]:
    """A store whose key has an old version b"old!" and a newer one b"new!", not collected."""
    with BlobCache(store, inline_limit=0) as c:
        c.put(key, b"old!")
        old = file_of(c, key)
        c.put(key, b"new!")
        new = file_of(c, key)
    return old, new


def test_version_shorter_than_its_name_says_falls_back_to_older(store: str) -> None:
    _old, new = _two_versions(store)
    truncate(new, 2)
    with BlobCache(store, inline_limit=0) as c:
        assert bytes(c["k"]) == b"old!"
        assert [p.path for p in c.problems] == [new]
        assert "2 bytes; its name says 4" in c.problems[0].message


def test_zero_length_version_falls_back_to_older(store: str) -> None:
    _old, new = _two_versions(store)
    truncate(new, 0)  # what delayed allocation leaves after a power cut without fsync
    with BlobCache(store, inline_limit=0) as c:
        assert bytes(c["k"]) == b"old!"
        assert c.problems[0].path == new


def test_only_version_damaged_means_key_absent(store: str) -> None:
    with BlobCache(store, inline_limit=0) as c:
        c.put("k", b"value")
        path = file_of(c, "k")
    truncate(path, 1)
    with BlobCache(store, inline_limit=0) as c:
        assert "k" not in c
        assert c.problems[0].path == path


def test_next_sequence_number_is_above_unusable_versions(store: str) -> None:
    _old, new = _two_versions(store)
    truncate(new, 0)
    with BlobCache(store, inline_limit=0) as c:
        c.put("k", b"newest")
        newest = N.parse_version_name(os.path.basename(file_of(c, "k")))
        older = N.parse_version_name(os.path.basename(new))
        assert newest is not None and older is not None and newest.seq > older.seq
    with BlobCache(store, inline_limit=0) as c:
        assert bytes(c["k"]) == b"newest"


def test_checksum_mismatch_falls_back_to_the_older_intact_version(store: str) -> None:
    # What a power cut does to a version renamed but never fsynced ("os" on XFS):
    # name and size survive, the bytes do not. The synced value before it is served.
    _, new = _two_versions(store)
    flip_bit(new, 1)
    with BlobCache(store, inline_limit=0) as c:
        assert bytes(c["k"]) == b"old!"
        (problem,) = c.problems
        assert problem.path == new and "serving the older record" in problem.message
        assert bytes(c["k"]) == b"old!"
        c.gc()
        assert versions(store) == [file_of(c, "k")]  # written anew; both old files collected
    with BlobCache(store, inline_limit=0) as c:
        assert bytes(c["k"]) == b"old!" and c.problems == ()


def test_checksum_mismatch_falls_back_to_the_log_record_the_version_beat(store: str) -> None:
    with BlobCache(store, inline_limit=100) as c:
        c.put("k", b"small, in the log")
        c.put("k", b"L" * 200)
        path = file_of(c, "k")
    flip_bit(path, 7)
    with BlobCache(store, inline_limit=100) as c:
        assert c["k"] == b"small, in the log"
    with BlobCache(store, inline_limit=100) as c:
        assert c["k"] == b"small, in the log"


def test_gc_checks_a_version_found_at_open_before_deleting_what_it_would_fall_back_to(
    store: str,
) -> None:
    _, new = _two_versions(store)
    flip_bit(new, 1)
    with BlobCache(store, inline_limit=0) as c:
        c.gc()  # before any get: it must not delete "old!" and keep the damaged one
        assert bytes(c["k"]) == b"old!"
    with BlobCache(store, inline_limit=0) as c:
        assert bytes(c["k"]) == b"old!"


def test_missing_key_file_hides_the_versions_and_is_reported(store: str) -> None:
    with BlobCache(store, inline_limit=0) as c:
        c.put("k", b"value")
        keydir = os.path.dirname(file_of(c, "k"))
    os.unlink(os.path.join(keydir, F.KEY_FILE_NAME))
    with BlobCache(store, inline_limit=0) as c:
        assert "k" not in c
        assert [str(p) for p in c.problems] == [f"{keydir}/key: key file missing"]


def test_corrupt_key_file_is_reported_with_its_path(store: str) -> None:
    with BlobCache(store, inline_limit=0) as c:
        c.put("k", b"value")
        key_file = os.path.join(os.path.dirname(file_of(c, "k")), F.KEY_FILE_NAME)
    flip_bit(key_file, F.KEY_FILE_HEADER.size)  # inside the key bytes
    # An open through the index snapshot, which knows the key, does not read the
    # key file again (issue 18): serves the key, and verify reports the file.
    with BlobCache(store, inline_limit=0) as c:
        assert c["k"] == b"value" and c.problems == ()
    assert [p.path for p in verify(store)] == [key_file]
    os.unlink(os.path.join(store, F.SNAPSHOT_NAME))  # as after a crash before any close
    with BlobCache(store, inline_limit=0) as c:
        assert "k" not in c
        assert c.problems[0].path == key_file
        assert "checksum" in c.problems[0].message


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"BC", "shorter than its header"),
        (b"XXXXs\x01\x00\x00\x00k" + bytes(8), "starts with"),
        (F.KEY_FILE_HEADER.pack(F.KEY_FILE_MAGIC, b"s", 5) + b"k" + bytes(8), "header says"),
    ],
)
def test_malformed_key_files_are_corruption(store: str, content: bytes, message: str) -> None:
    keydir = os.path.join(store, "kd")
    os.makedirs(keydir)
    with open(os.path.join(keydir, F.KEY_FILE_NAME), "wb") as f:
        f.write(content)
    with pytest.raises(CorruptionError, match=message):
        _keydir.read_key_file(keydir)


def test_key_file_naming_another_key_is_corruption(store: str) -> None:
    tag, raw = N.encode_key("k")
    keydir = os.path.join(store, N.key_hash(*N.encode_key("other")))
    os.makedirs(keydir)
    with open(os.path.join(keydir, F.KEY_FILE_NAME), "wb") as f:
        f.write(_keydir.key_file_bytes(tag, raw))
    with pytest.raises(CorruptionError, match="does not hash to its directory"):
        _keydir.read_key_file(keydir)


def test_missing_key_directory_means_absent_key(store: str) -> None:
    with BlobCache(store, inline_limit=0) as c:
        c.put("gone", b"1")
        c.put("kept", b"2")
        gone_dir = os.path.dirname(file_of(c, "gone"))
    for name in os.listdir(gone_dir):
        os.unlink(os.path.join(gone_dir, name))
    os.rmdir(gone_dir)
    with BlobCache(store, inline_limit=0) as c:
        assert "gone" not in c
        assert bytes(c["kept"]) == b"2"
        assert c.problems == ()


def test_key_directory_removed_behind_an_open_cache_is_recreated_by_put(
    blob_cache: BlobCache,
) -> None:
    cache = blob_cache
    cache.put("k", b"value")
    keydir = os.path.dirname(file_of(cache, "k"))
    for name in os.listdir(keydir):
        os.unlink(os.path.join(keydir, name))
    os.rmdir(keydir)
    cache.put("k", b"again")
    assert bytes(cache["k"]) == b"again"
    assert _keydir.read_key_file(keydir) == "k"


def test_stray_files_and_directories_are_reported_not_fatal(store: str) -> None:
    with BlobCache(store, inline_limit=0) as c:
        c.put("k", b"value")
        keydir = os.path.dirname(file_of(c, "k"))
    blobs = os.path.join(store, F.BLOBS_DIR)
    strays = [
        os.path.join(keydir, "notes.txt"),
        os.path.join(keydir, "v-123"),
        os.path.join(blobs, "README"),
        os.path.join(os.path.dirname(keydir), "zz"),
    ]
    for path in strays:
        with open(path, "w") as f:
            f.write("hello")
    os.mkdir(os.path.join(blobs, "not-hex"))
    strays.append(os.path.join(blobs, "not-hex"))
    with BlobCache(store, inline_limit=0) as c:
        assert bytes(c["k"]) == b"value"
        assert sorted(p.path for p in c.problems) == sorted(strays)
        c.gc()
    for path in strays:
        assert os.path.exists(path), "gc must never remove a file it does not know"


def test_delete_record_in_the_log_hides_older_versions_after_reopen(store: str) -> None:
    with BlobCache(store, inline_limit=0) as c:
        c.put("k", b"value")
        assert c.delete("k")
    assert versions(store)  # still on disk until gc: the log's delete record hides it
    with BlobCache(store, inline_limit=0) as c:
        assert "k" not in c
        assert c.get("k") is None


def test_highest_sequence_number_wins_whatever_the_file_order(store: str) -> None:
    with BlobCache(store, inline_limit=0) as c:
        for i in range(12):
            c.put("k", str(i).encode())
    with BlobCache(store, inline_limit=0) as c:
        assert bytes(c["k"]) == b"11"


def test_temp_file_held_by_a_writer_survives_recovery_and_orphan_does_not(store: str) -> None:
    with BlobCache(store, inline_limit=0) as c:
        c.put("k", b"value")
        keydir = os.path.dirname(file_of(c, "k"))
    held_fd, held = _fsio.open_temp(keydir)
    orphan_fd, orphan = _fsio.open_temp(keydir)
    os.close(orphan_fd)  # its writer "died": the flock is gone
    try:
        with BlobCache(store, inline_limit=0) as c:
            assert c.stats().temps_removed_at_open == 1
        assert os.path.exists(held)
        assert not os.path.exists(orphan)
    finally:
        os.close(held_fd)


def test_key_directory_of_a_put_killed_before_its_key_file_is_garbage_not_a_problem(
    store: str,
) -> None:
    BlobCache(store, inline_limit=0).close()
    keydir = N.key_dir(os.path.join(store, F.BLOBS_DIR), N.key_hash(*N.encode_key("k")))
    os.makedirs(keydir)
    with BlobCache(store, inline_limit=0) as c:
        assert c.problems == ()
        assert c.gc().dirs_removed == 3
    assert os.listdir(os.path.join(store, F.BLOBS_DIR)) == []


def test_empty_fanout_directories_are_collected(store: str) -> None:
    BlobCache(store, inline_limit=0).close()
    blobs = os.path.join(store, F.BLOBS_DIR)
    os.makedirs(os.path.join(blobs, "ab", "cd"))
    os.makedirs(os.path.join(blobs, "ef"))
    with BlobCache(store, inline_limit=0) as c:
        assert c.problems == ()
        assert c.gc().dirs_removed == 3
    assert os.listdir(blobs) == []


def test_failed_rmdir_of_a_collected_key_directory_does_not_lose_the_next_put(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: the janitor removed the key file, the rmdir failed, and the next
    # put published a version into a directory without its key file.
    with BlobCache(store, inline_limit=0) as c:
        c.put("k", b"old")
        c.delete("k")
        real = _fsio.rmdir

        def failing(path: str) -> None:
            if N.is_key_dir_name(os.path.basename(path)):
                raise OSError(5, "Input/output error", path)
            real(path)

        monkeypatch.setattr(_fsio, "rmdir", failing)
        with pytest.raises(OSError, match="Input/output"):
            c.gc()
        monkeypatch.undo()
        c.put("k", b"new")
    with BlobCache(store, inline_limit=0) as c:
        assert bytes(c["k"]) == b"new"
        assert c.problems == ()


def test_stray_file_in_a_collected_key_directory_does_not_lose_the_next_put(store: str) -> None:
    with BlobCache(store, inline_limit=0) as c:
        c.put("k", b"big")
        stray = os.path.join(os.path.dirname(file_of(c, "k")), "notes.txt")
    with open(stray, "w") as f:
        f.write("mine")
    with BlobCache(store, inline_limit=4) as c:
        c.put("k", b"sm")  # shorter than the limit: to the log
        c.gc()  # removes the version and the key file; the stray keeps the directory
        assert os.path.exists(stray)
        c.put("k", b"big again")  # a file again, in the same handle
    with BlobCache(store, inline_limit=0) as c:
        assert bytes(c["k"]) == b"big again"
        assert [p.path for p in c.problems] == [stray]
