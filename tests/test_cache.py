"""The public API of BlobCache: mapping behaviour, bad input, locking, threads, fork."""

from __future__ import annotations

import errno
import fcntl
import io
import os
import pickle
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from blobcache import BlobCache, BlobCacheError, ClosedError, LockedError, _mapping
from blobcache import _format as F
from tests.conftest import DURABILITY_CALLS, fail_once, file_of, files_named, record_calls


def _tree(root: str) -> list[tuple[str, bytes]]:
    """Every file under root with its content: to show bad input changed nothing."""
    out = []
    for d, _, names in os.walk(root):
        for n in names:
            with open(os.path.join(d, n), "rb") as f:
                out.append((os.path.join(d, n), f.read()))
    return sorted(out)


# --- mapping behaviour --------------------------------------------------------------


def test_str_and_bytes_keys_are_different_keys(cache: BlobCache) -> None:
    cache["a"] = b"str"
    cache[b"a"] = b"bytes"
    assert bytes(cache["a"]) == b"str"
    assert bytes(cache[b"a"]) == b"bytes"
    assert sorted(cache, key=repr) == sorted(["a", b"a"], key=repr)


def test_empty_key_is_a_key(store: str) -> None:
    with BlobCache(store) as c:
        c[""] = b"x"
        c[b""] = b"y"
    with BlobCache(store) as c:
        assert bytes(c[""]) == b"x"
        assert bytes(c[b""]) == b"y"


def test_longest_key_round_trips(store: str) -> None:
    key = "é" * (F.MAX_KEY_BYTES // 2)
    with BlobCache(store) as c:
        c[key] = b"v"
    with BlobCache(store) as c:
        assert list(c) == [key]


def test_get_returns_bytes_for_log_values_and_read_only_views_for_files(
    cache: BlobCache,
) -> None:
    cache.put("small", b"value")
    assert type(cache.get("small")) is bytes
    assert cache.path("small") is None
    cache.put("k", b"v" * cache.options.inline_limit)
    view = cache.get("k")
    assert isinstance(view, memoryview) and view.readonly
    assert cache.path("k") is not None
    assert cache.get("missing") is None
    assert cache.get("missing", b"d") == b"d"
    with pytest.raises(KeyError):
        cache["missing"]
    with pytest.raises(TypeError):
        view[0] = 1


def test_mutable_mapping_methods(cache: BlobCache) -> None:
    cache.update({"a": b"1", "b": b"2"})
    assert len(cache) == 2 and "a" in cache and "z" not in cache
    assert cache.delete("a") is True
    assert cache.delete("a") is False
    with pytest.raises(KeyError):
        del cache["a"]
    del cache["b"]
    assert len(cache) == 0 and list(cache) == []


def test_iteration_is_a_snapshot(cache: BlobCache) -> None:
    for i in range(5):
        cache[f"k{i}"] = b"x"
    seen = []
    for key in cache:
        seen.append(key)
        cache.delete(key)
    assert len(seen) == 5


@pytest.mark.parametrize(
    "value",
    [b"abc", bytearray(b"abc"), memoryview(b"abc"), np.frombuffer(b"abc", dtype=np.uint8)],
)
def test_any_bytes_like_value(cache: BlobCache, value: object) -> None:
    cache.put("k", value)
    assert bytes(cache["k"]) == b"abc"


def test_numpy_array_is_stored_as_its_raw_bytes_and_opens_from_path(
    blob_cache: BlobCache,
) -> None:
    cache = blob_cache
    table = np.arange(12, dtype=np.float32).reshape(3, 4)
    cache.put("table", table)
    assert np.array_equal(np.frombuffer(cache["table"], dtype=np.float32).reshape(3, 4), table)
    buf = io.BytesIO()
    np.save(buf, table)
    cache.put("table.npy", buf.getvalue())
    loaded = np.load(file_of(cache, "table.npy"), mmap_mode="r")
    assert np.array_equal(loaded, table)


def test_value_is_copied_at_put(cache: BlobCache) -> None:
    value = bytearray(b"before")
    cache.put("k", value)
    value[:] = b"AFTER!"
    assert bytes(cache["k"]) == b"before"


def test_view_outlives_overwrite_and_gc(blob_cache: BlobCache) -> None:
    cache = blob_cache
    cache.put("k", b"first")
    view = cache["k"]
    cache.put("k", b"second")
    assert cache.gc().files_removed == 1
    assert bytes(view) == b"first"
    assert bytes(cache["k"]) == b"second"


# --- bad input: a clear error, nothing changed on disk ------------------------------------

BAD_CALLS: list[tuple[str, Callable[[BlobCache], object], type[Exception], str]] = [
    ("int key", lambda c: c.put(1, b"v"), TypeError, "keys must be str or bytes, not int"),  # type: ignore[arg-type]
    ("bytearray key", lambda c: c.get(bytearray(b"k")), TypeError, "not bytearray"),  # type: ignore[arg-type]
    ("list key in", lambda c: [] in c, TypeError, "not list"),  # type: ignore[comparison-overlap]
    ("int key in", lambda c: 1 in c, TypeError, "not int"),  # type: ignore[comparison-overlap]
    ("int key get", lambda c: c.get(1), TypeError, "not int"),  # type: ignore[arg-type]
    ("int key delete", lambda c: c.delete(1), TypeError, "not int"),  # type: ignore[arg-type]
    ("int key path", lambda c: c.path(1), TypeError, "not int"),  # type: ignore[arg-type]
    ("str value", lambda c: c.put("k", "text"), TypeError, "not str"),
    ("int value", lambda c: c.put("k", 5), TypeError, "not int"),
    ("None value", lambda c: c.put("k", None), TypeError, "not NoneType"),
    (
        "strided value",
        lambda c: c.put("k", np.arange(10)[::2]),
        ValueError,
        "C-contiguous",
    ),
    ("huge key", lambda c: c.put("k" * (F.MAX_KEY_BYTES + 1), b"v"), ValueError, "at most"),
    ("surrogate key", lambda c: c.put("\udcff", b"v"), ValueError, "UTF-8"),
]


@pytest.mark.parametrize(
    ("call", "error", "message"), [b[1:] for b in BAD_CALLS], ids=[b[0] for b in BAD_CALLS]
)
def test_bad_input_raises_and_changes_nothing(
    cache: BlobCache, call: Callable[[BlobCache], object], error: type[Exception], message: str
) -> None:
    cache.put("k", b"kept")
    before = _tree(cache.directory)
    with pytest.raises(error, match=message):
        call(cache)
    assert _tree(cache.directory) == before
    assert bytes(cache["k"]) == b"kept"


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"durability": "never"}, ValueError, "durability must be one of"),
        ({"sync_interval": 0}, ValueError, "positive"),
        ({"sync_interval": float("nan")}, ValueError, "positive"),
        ({"sync_interval": "1"}, TypeError, "number of seconds"),
        ({"verify_on_get": 1}, TypeError, "True or False"),
    ],
)
def test_bad_options_are_refused_before_touching_disk(
    store: str, kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        BlobCache(store, **kwargs)
    assert not os.path.exists(store)


def test_foreign_directory_is_refused_and_left_alone(tmp_path: Any) -> None:
    (tmp_path / "thesis.tex").write_text("precious")
    with pytest.raises(BlobCacheError, match="not a blobcache store"):
        BlobCache(tmp_path)
    assert os.listdir(tmp_path) == ["thesis.tex"]


def test_file_instead_of_directory_is_refused(tmp_path: Any) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(BlobCacheError, match="not a directory"):
        BlobCache(tmp_path / "f")


def test_other_format_version_is_refused(store: str) -> None:
    BlobCache(store).close()
    with open(os.path.join(store, F.MARKER_NAME), "wb") as f:
        f.write(b"blobcache 9\n")
    with pytest.raises(BlobCacheError, match="another blobcache format version"):
        BlobCache(store)


# --- lock, close, fork -------------------------------------------------------------------


def test_a_writer_is_locked_out_only_while_lock_is_held_exclusively(store: str) -> None:
    """Handles take ``LOCK`` shared, so any number write at once (issue 14).
    ``LockedError`` means something holds it exclusively: ``blobcache gc``
    compacting a store no handle has open, or blobcache 0.1's one writer."""
    BlobCache(store).close()
    lock_path = os.path.join(store, F.LOCK_NAME)
    fd = os.open(lock_path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        before = _tree(store)
        with pytest.raises(LockedError) as info:
            BlobCache(store)
        assert _tree(store) == before  # refused before it changed anything
        fcntl.flock(fd, fcntl.LOCK_UN)
        with BlobCache(store) as a, BlobCache(store) as b:  # both at once
            with pytest.raises(BlockingIOError):  # what `blobcache gc` finds then
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            a.put("k", b"from a")
            assert b["k"] == b"from a"
    finally:
        os.close(fd)
    assert info.value.path == lock_path
    assert isinstance(info.value, BlockingIOError)
    again = pickle.loads(pickle.dumps(info.value))
    assert isinstance(again, LockedError) and again.path == info.value.path


_BESIDE = """
import sys
from blobcache import BlobCache
with BlobCache(sys.argv[1]) as cache:
    print("open", flush=True)
    sys.stdin.readline()  # until the test has put after our open
    print(bytes(cache["before"]).decode(), bytes(cache["after"]).decode(), flush=True)
    cache.put("from-child", b"child")
    print("put", flush=True)
    sys.stdin.readline()  # until the test has read it
"""


def test_a_writer_in_another_process_writes_beside_this_one(cache: BlobCache) -> None:
    """Both open at once, each sees what the other put (a miss catches up)."""
    cache.put("before", b"parent")
    child = subprocess.Popen(
        [sys.executable, "-c", _BESIDE, cache.directory],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        assert child.stdout.readline() == "open\n"  # no LockedError
        cache.put("after", b"parent-again")  # after the child opened the store
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline() == "parent parent-again\n"
        assert child.stdout.readline() == "put\n"
        assert cache["from-child"] == b"child"
        child.stdin.write("bye\n")
        child.stdin.flush()
        assert child.wait(timeout=60) == 0
    finally:
        child.kill()
        child.wait()
        child.stdin.close()
        child.stdout.close()


def test_lock_is_released_by_close(store: str) -> None:
    BlobCache(store).close()
    BlobCache(store).close()


def test_every_method_after_close_raises_closed_error(store: str) -> None:
    cache = BlobCache(store)
    cache.put("k", b"v")
    cache.close()
    cache.close()  # harmless
    calls: list[Callable[[], object]] = [
        lambda: cache.get("k"),
        lambda: cache["k"],
        lambda: "k" in cache,
        lambda: len(cache),
        lambda: list(cache),
        lambda: cache.put("k", b"v"),
        lambda: cache.delete("k"),
        lambda: cache.path("k"),
        cache.sync,
        cache.gc,
        cache.stats,
    ]
    for call in calls:
        with pytest.raises(ClosedError, match="is closed"):
            call()


# --- durability: which calls a put makes, and in what order ------------------------------


def _record(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    # fdatasync left out: the log's syncs are not what these tests are about
    return record_calls(monkeypatch, tuple(n for n in DURABILITY_CALLS if n != "fdatasync"))


def test_fsync_put_of_new_key_makes_key_file_durable_before_the_version(
    blob_cache: BlobCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = blob_cache
    calls = _record(monkeypatch)
    cache.put("k", b"value")
    names = [c[0] for c in calls]
    digest = os.path.basename(os.path.dirname(file_of(cache, "k")))
    version = os.path.basename(file_of(cache, "k"))
    # new dirs (mkdir x3, parents fsynced), key file (fsync, rename, fsync dir),
    # then the version (fsync, rename, fsync dir): the put returns after the last.
    assert names == ["mkdir"] * 3 + ["fsync_dir"] * 3 + ["fsync_file", "rename", "fsync_dir"] * 2
    assert calls[-2:] == [("rename", version), ("fsync_dir", digest)]
    calls.clear()
    cache.put("k", b"again")
    assert [c[0] for c in calls] == ["fsync_file", "rename", "fsync_dir"]


def test_os_durability_defers_fsyncs_to_sync(store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with BlobCache(store, durability="os", sync_interval=3600, inline_limit=0) as cache:
        cache.put("k", b"v1")  # new key: key file and directories still durable
        cache.sync()
        calls = _record(monkeypatch)
        cache.put("k", b"v2")
        cache.delete("k")
        assert [c[0] for c in calls] == ["rename"]
        cache.sync()
        assert sorted(c[0] for c in calls) == ["fsync_dir", "fsync_path", "rename"]
        calls.clear()
        cache.sync()
        assert calls == []


def test_os_durability_gc_makes_live_record_durable_before_deleting(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with BlobCache(store, durability="os", sync_interval=3600, inline_limit=0) as cache:
        cache.put("k", b"v1")
        cache.put("k", b"v2")
        live = os.path.basename(file_of(cache, "k"))
        calls = _record(monkeypatch)
        cache.gc()
        first_unlink = next(i for i, c in enumerate(calls) if c[0] == "unlink")
        assert ("fsync_path", live) in calls[:first_unlink]


# --- the janitor ---------------------------------------------------------------------------


def test_gc_removes_superseded_versions_and_deleted_keys(blob_cache: BlobCache) -> None:
    cache = blob_cache
    for i in range(3):
        cache.put("kept", b"x" * (i + 1))
        cache.put("dropped", b"y" * 10)
    cache.delete("dropped")
    result = cache.gc()
    # 2 old "kept" versions, 3 "dropped" versions and its key file
    assert result.files_removed == 2 + 3 + 1
    key_file_size = len(b"BCK1s" + bytes(4) + b"dropped" + bytes(8))
    assert result.dirs_removed == 3  # the key directory and its two fan-out levels
    assert result.segments_compacted == 1  # the log held the delete record
    assert result.bytes_reclaimed >= 1 + 2 + 30 + key_file_size
    blobs = os.path.join(cache.directory, F.BLOBS_DIR)
    assert files_named(blobs, "") == sorted(
        [file_of(cache, "kept"), os.path.join(os.path.dirname(file_of(cache, "kept")), "key")]
    )
    assert cache.gc() == type(result)()  # nothing left to do
    assert bytes(cache["kept"]) == b"xxx"


def test_gc_after_reopen_finds_garbage_left_by_the_previous_process(store: str) -> None:
    with BlobCache(store, inline_limit=0) as c:
        c.put("k", b"1")
        c.put("k", b"2")
        c.put("gone", b"3")
        c.delete("gone")
    with BlobCache(store, inline_limit=0) as c:
        assert c.stats().dirs_awaiting_gc == 2
        assert c.gc().files_removed == 1 + 2  # k's old version; gone's version and key file
        assert bytes(c["k"]) == b"2" and "gone" not in c


def test_put_after_delete_and_gc_recreates_the_key(blob_cache: BlobCache) -> None:
    cache = blob_cache
    cache.put("k", b"1")
    cache.delete("k")
    cache.gc()
    cache.put("k", b"2")
    assert bytes(cache["k"]) == b"2"


# --- threads -------------------------------------------------------------------------------


def test_threads_putting_getting_deleting_and_collecting(store: str) -> None:
    errors: list[BaseException] = []
    with BlobCache(store) as cache:

        def worker(t: int) -> None:
            try:
                for i in range(30):
                    cache.put(f"own-{t}", f"{t}:{i}".encode())
                    cache.put("shared", f"{t}:{i}".encode())
                    assert bytes(cache[f"own-{t}"]) == f"{t}:{i}".encode()
                    shared = cache.get("shared")
                    assert shared is not None and bytes(shared).count(b":") == 1
                    if i % 10 == 0:
                        cache.delete(f"tmp-{t}")
                        cache.put(f"tmp-{t}", b"t")
                        cache.gc()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert errors == []
        final = {k: bytes(cache[k]) for k in cache}
    assert {k: final[k] for k in final if isinstance(k, str) and k.startswith("own-")} == {
        f"own-{t}": f"{t}:29".encode() for t in range(8)
    }
    with BlobCache(store) as cache:
        assert {k: bytes(cache[k]) for k in cache} == final
        assert cache.problems == ()


def test_stats_counts_from_memory(cache: BlobCache) -> None:
    big = cache.options.inline_limit
    cache.put("a", b"12345")
    cache.put("b", b"")
    cache.put("a", b"123")
    cache.put("c", bytes(big))
    cache.put("c", bytes(big))
    stats = cache.stats()
    assert (stats.keys, stats.live_bytes, stats.inline_keys) == (3, 3 + big, 2)
    assert stats.dirs_awaiting_gc == 1
    assert stats.as_dict()["durability"] == "fsync"
    assert stats.next_seq == 6
    assert stats.segments == 1
    head = F.RECORD_HEADER.size
    # Stale: the first record of "a" (header, key, value) and the version records
    # of both puts of "c" (header, key, length and checksum), notes stale from birth.
    assert stats.log_stale_bytes == (head + 1 + 5) + 2 * (head + 1 + F.VERSION_BODY.size)
    # Live: the records of "b" and of the second put of "a".
    assert stats.log_record_bytes - stats.log_stale_bytes == (head + 1) + (head + 1 + 3)


def test_failed_gc_leaves_the_garbage_for_the_next_gc(
    blob_cache: BlobCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = blob_cache
    cache.put("k", b"1")
    cache.put("k", b"2")

    fail_once(monkeypatch, "unlink", errno.EIO)
    with pytest.raises(OSError, match="Input/output"):
        cache.gc()
    assert bytes(cache["k"]) == b"2"
    assert cache.gc().files_removed == 1
    assert bytes(cache["k"]) == b"2"


def test_os_durability_sync_after_gc_removed_a_deleted_key(store: str) -> None:
    with BlobCache(store, durability="os", sync_interval=3600, inline_limit=0) as cache:
        cache.put("k", b"v")
        cache.delete("k")
        cache.gc()
        cache.sync()  # the key's directory is gone: nothing left to owe
    with BlobCache(store) as cache:
        assert "k" not in cache


def test_gc_makes_records_found_at_open_durable_before_deleting_older_ones(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # After a crash, the newest version may be one whose rename never reached the
    # disk; gc must fsync it (and its directory) before removing the older one.
    with BlobCache(store, inline_limit=0) as cache:
        cache.put("k", b"1")
        cache.put("k", b"2")
    with BlobCache(store, inline_limit=0) as cache:
        path = str(file_of(cache, "k"))
        calls = _record(monkeypatch)
        assert cache.gc().files_removed == 1
    first_unlink = next(i for i, c in enumerate(calls) if c[0] == "unlink")
    # the key file too: without it the version could not be attributed to its key
    assert calls[:first_unlink] == [
        ("fsync_path", "key"),
        ("fsync_path", os.path.basename(path)),
        ("fsync_dir", os.path.basename(os.path.dirname(path))),
    ]


def test_os_durability_owes_a_new_keys_directories_and_key_file_to_sync(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with BlobCache(store, durability="os", sync_interval=3600, inline_limit=0) as cache:
        calls = _record(monkeypatch)
        cache.put("new", b"v")
        assert [c[0] for c in calls] == ["mkdir"] * 3 + ["rename"] * 2
        calls.clear()
        cache.sync()
        version = os.path.basename(file_of(cache, "new"))
        assert sorted(c for c in calls if c[0] == "fsync_path") == sorted(
            [("fsync_path", "key"), ("fsync_path", version)]
        )
        # every directory the put created or changed: blobs, the two fan-outs, the key dir
        assert [c[0] for c in calls[2:]] == ["fsync_dir"] * 4


def test_first_get_racing_an_overwrite_and_gc_returns_the_new_value(
    blob_cache: BlobCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    # get takes no lock: between its lookup and the mapping of the file, another
    # thread may overwrite the key and the janitor remove the old file. That is
    # no corruption; the get must serve the new value (or the default if deleted).
    cache = blob_cache
    cache.put("k", b"old")
    cache.put("gone", b"old")
    real = _mapping.map_version
    raced: list[str] = []

    def racing(record: Any, *, check: bool) -> memoryview:
        if not raced:
            raced.append("once")
            cache.put("k", b"new")
            cache.delete("gone")
            cache.gc()
        return real(record, check=check)

    monkeypatch.setattr(_mapping, "map_version", racing)
    assert bytes(cache["k"]) == b"new"
    raced.clear()
    assert cache.get("gone", b"default") == b"default"


class _MovesOnFirstLookup(dict):  # type: ignore[type-arg]
    """The index's ``files`` dict, whose first lookup lets another thread put
    the key again as a small value (moving it to the other dict) before it
    answers: the moment a lock-free lookup may fall between the two dicts."""

    def __init__(self, files: dict[Any, Any], move: Callable[[], None]) -> None:
        super().__init__(files)
        self.move: Callable[[], None] | None = move

    def _first(self) -> None:
        move, self.move = self.move, None
        if move is not None:
            mover = threading.Thread(target=move)
            mover.start()
            mover.join()

    def get(self, key: Any, default: Any = None) -> Any:
        self._first()
        return dict.get(self, key, default)

    def __getitem__(self, key: Any) -> Any:
        self._first()
        return dict.__getitem__(self, key)


@pytest.mark.parametrize("lookup", ["in", "get", "path"])
def test_a_key_moving_from_a_file_to_the_log_is_never_missing(store: str, lookup: str) -> None:
    """A put that moves a key from a file to the log adds it to the log's dict
    before it removes it from the files': a lookup that missed the first and
    then the second (the put came between) looks again under the index's lock,
    instead of calling a present key missing."""
    cache = BlobCache(store, inline_limit=64)
    cache.put("k", b"B" * 100)  # a file
    values = cache._values
    values.files = _MovesOnFirstLookup(values.files, lambda: cache.put("k", b"small"))
    if lookup == "in":
        assert "k" in cache
    elif lookup == "get":
        assert cache.get("k") == b"small"
    else:
        assert cache.path("k") is None  # in the log now, and not a KeyError
    assert cache.get("k") == b"small"
    cache.close()


def test_a_put_taken_by_a_catch_up_returns_once_it_is_applied(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A catch-up in another thread (the refresh thread, compaction, the expiry
    sweep) may take a put's own record out of ``own`` between its append and its
    claim: the put returns only once that catch-up has applied it, never while
    the index still holds the key's older value (a get right after the put
    served it: the model test once found a typed value put as a file back in
    the log). Here the catch-up holds the record until the claim has failed."""
    cache = BlobCache(store, inline_limit=64, refresh_interval=3600)
    cache.put("k", b"old")
    follower, writer = cache._follower, cache._held.writer
    assert writer is not None
    taken, claimed = threading.Event(), threading.Event()
    catch_up = threading.Thread(target=follower.catch_up)
    follower_apply, passed_own, claim = follower._apply, follower.passed_own, writer.claim

    def apply_late(*args: Any) -> bool:
        taken.set()  # out of ``own``, not yet in the index
        claimed.wait(timeout=30)  # a bound for a hang
        return follower_apply(*args)

    def catch_up_first(*args: Any) -> bool:
        catch_up.start()
        assert taken.wait(timeout=30)
        return passed_own(*args)  # False: the catch-up holds the follower's lock

    def claim_then_let_go(*args: Any, **kwargs: Any) -> bool:
        try:
            return claim(*args, **kwargs)  # False: the catch-up took the record
        finally:
            claimed.set()

    monkeypatch.setattr(follower, "_apply", apply_late)
    monkeypatch.setattr(follower, "passed_own", catch_up_first)
    monkeypatch.setattr(writer, "claim", claim_then_let_go)
    cache.put("k", b"N" * 100)  # a file now
    got = cache.get("k")
    catch_up.join()
    assert type(got) is memoryview and bytes(got) == b"N" * 100
    assert writer.own == {} and writer.ahead == {}
    cache.close()


def test_close_lets_go_of_the_values(store: str) -> None:
    """After close() the index holds no value (views handed out stay valid)."""
    cache = BlobCache(store)
    cache.put("k", b"v" * 1000)
    index = cache._index
    cache.close()
    with pytest.raises(ClosedError):
        index.values.stored("k")
    assert index.meta == {}


def test_a_miss_len_and_iteration_do_not_wait_for_the_index_lock(store: str) -> None:
    """Compaction holds the index's lock while it scans every key; a get that
    misses, ``in``, ``len`` and iteration must not wait for it (reads never wait
    on compaction). The lock is held here as compaction would hold it."""
    cache = BlobCache(store, inline_limit=64)
    cache.put("small", b"s")
    cache.put("large", b"L" * 100)
    answers: list[object] = []
    reads = threading.Thread(
        target=lambda: answers.extend(
            [cache.get("absent"), "absent" in cache, len(cache), sorted(cache)]
        )
    )
    with cache._index.lock:
        reads.start()
        reads.join(timeout=30)  # a bound for a hang, not a wait for something to happen
        assert not reads.is_alive(), "a read waited for the index lock"
    assert answers == [None, False, 2, ["large", "small"]]
    cache.close()
