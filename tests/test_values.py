"""What get, open and path hand out, and what put takes: values, views, files, modes.

A damaged value falls back to the newest intact older record of its key,
whichever layout holds it; get returns a view of its own per call and holds no
file descriptor per mapping; put refuses buffers of pointers and stores a
zero-size array as an empty value; the files a value lives in are read-only.
"""

from __future__ import annotations

import ctypes
import io
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import blobcache
from blobcache import BlobCache, CorruptionError, GcResult
from blobcache import _format as F
from tests.conftest import file_of, files_named, flip_bit

LIMIT = 64  # inline_limit of these stores: values below it go to the log
A = b"A" * 100  # large: a version file
B = b"b" * 10  # small: a log record
C = b"C" * 100  # large, the one damaged
D = b"D" * 100  # large
DELETED = None


# --- falling back to the newest intact older record ---------------------------------


class _Run:
    """A store that steps reopen and collect, as one handle at a time."""

    def __init__(self, store: str, **options: Any) -> None:
        self.store = store
        # Small segments, so that "roll" seals one after a few records.
        self.options = {"inline_limit": LIMIT, "segment_bytes": 4096, **options}
        self.cache = BlobCache(store, **self.options)

    def step(self, step: str | tuple[str, bytes]) -> None:
        if step == "reopen":
            self.cache.close()
            self.cache = BlobCache(self.store, **self.options)
        elif step == "gc":
            self.cache.gc()
        elif step == "delete":
            assert self.cache.delete("k")
        elif step == "roll":  # other keys' records until the log seals the segment
            start = self.cache.stats().segments
            i = 0
            while self.cache.stats().segments == start:
                self.cache.put(f"filler{i}", b"f" * 40)
                i += 1
        else:
            assert isinstance(step, tuple)
            self.cache.put("k", step[1])

    def close(self) -> None:
        self.cache.close()


# before: what the key held before C; between: what happens between that and C's put
ORDERS = {
    "large-small-large": ([("put", A), ("put", B)], B),
    "small-large-large": ([("put", B), ("put", A)], A),
    "large-large-large": ([("put", A), ("put", D)], D),
    "large-delete-large": ([("put", A), "delete"], DELETED),
    "large-small-delete-large": ([("put", A), ("put", B), "delete"], DELETED),
}
BETWEEN: dict[str, list[str]] = {
    "": [],
    "reopen": ["reopen"],
    "gc": ["gc"],
    "reopen-gc": ["reopen", "gc"],
    "roll": ["roll"],  # the older record in a sealed segment, not the active one
}
AFTER: dict[str, list[str]] = {"": [], "reopen": ["reopen"]}


@pytest.mark.parametrize("after", list(AFTER), ids=[f"after={a or '-'}" for a in AFTER])
@pytest.mark.parametrize("between", list(BETWEEN), ids=[f"between={b or '-'}" for b in BETWEEN])
@pytest.mark.parametrize("order", list(ORDERS))
def test_damaged_value_falls_back_to_the_newest_intact_older_record_of_either_layout(
    store: str, order: str, between: str, after: str
) -> None:
    before, expected = ORDERS[order]
    run = _Run(store)
    try:
        for step in [*before, *BETWEEN[between], ("put", C), *AFTER[after]]:
            run.step(step)
        damaged = file_of(run.cache, "k")
        flip_bit(damaged, 50)
        if expected is DELETED and "gc" in between:
            # The delete was collected with the directory it shadowed: no older
            # record of the key is left anywhere, so the get is loud -- and never
            # brings back the value deleted before.
            for _ in range(2):
                with pytest.raises(CorruptionError, match="checksum mismatch"):
                    run.cache.get("k")
            return
        got = run.cache.get("k")
        assert (None if got is None else bytes(got)) == expected
        assert ("k" in run.cache) is (expected is not DELETED)
        assert any(
            p.path == damaged and "serving the older record" in p.message
            for p in run.cache.problems
        )
        run.step("reopen")  # the fall back was written anew, durably
        got = run.cache.get("k")
        assert (None if got is None else bytes(got)) == expected
    finally:
        run.close()


def _flip_in_log(store: str, needle: bytes) -> None:
    """Flip a bit inside the one log record holding ``needle``."""
    hits = []
    for path in files_named(os.path.join(store, F.LOG_DIR), ""):
        data = Path(path).read_bytes()
        if needle in data:
            hits.append((path, data.index(needle)))
    ((path, offset),) = hits
    flip_bit(path, offset + 1)


def test_fall_back_never_serves_a_log_record_whose_checksum_fails(store: str) -> None:
    run = _Run(store)
    try:
        for step in [("put", A), ("put", B), ("put", C)]:
            run.step(step)
        _flip_in_log(store, B)  # in the active segment, under a live writer
        flip_bit(file_of(run.cache, "k"), 50)
        assert bytes(run.cache["k"]) == A  # the newest intact one left
    finally:
        run.close()


def test_gc_after_reopen_keeps_the_log_record_a_damaged_version_falls_back_to(
    store: str,
) -> None:
    run = _Run(store)
    try:
        for step in [("put", A), ("put", B), ("put", C)]:
            run.step(step)
        flip_bit(file_of(run.cache, "k"), 50)
        run.step("reopen")
        run.step("gc")  # checks the version found at open before dropping what it beat
        assert run.cache["k"] == B
        run.step("reopen")
        assert run.cache["k"] == B
    finally:
        run.close()


def test_fall_back_never_jumps_over_a_delete_collected_since_open(store: str) -> None:
    # Open keeps in memory the log record a version found at open won over, for
    # that version to fall back to once compaction dropped it. A later version
    # must not: the delete between the two may be gone from the log by then.
    run = _Run(store)
    try:
        for step in [("put", B), ("put", C), "reopen", "delete", ("put", D), "gc"]:
            run.step(step)
        flip_bit(file_of(run.cache, "k"), 50)
        for _ in range(2):
            with pytest.raises(CorruptionError, match="checksum mismatch"):
                run.cache.get("k")
    finally:
        run.close()


# --- views: one per get, no file descriptor per mapping -------------------------------


def test_releasing_a_returned_view_leaves_the_key_readable(store: str) -> None:
    with BlobCache(store, inline_limit=LIMIT) as cache:
        cache.put("k", A)
        with cache.get("k") as view:  # type: ignore[union-attr]
            assert bytes(view) == A
        cache["k"].release()  # type: ignore[union-attr]
        again = cache["k"]
        assert isinstance(again, memoryview) and again.readonly and bytes(again) == A


def test_each_get_of_a_large_value_returns_its_own_view_of_one_mapping(store: str) -> None:
    with BlobCache(store, inline_limit=LIMIT) as cache:
        cache.put("k", A)
        first, second = cache["k"], cache["k"]
        assert isinstance(first, memoryview) and isinstance(second, memoryview)
        assert first is not second
        assert first.obj is second.obj  # mapped once
        array = np.frombuffer(first, dtype=np.uint8)
        second.release()
        assert bytes(array) == A and bytes(first) == A


def test_what_a_view_is_a_view_of_cannot_be_read_past_or_written(store: str) -> None:
    with BlobCache(store, inline_limit=LIMIT) as cache:
        cache.put("k", A)
        view = cache["k"]
        assert isinstance(view, memoryview)
        with pytest.raises(TypeError):
            view.obj[0] = 1
        with pytest.raises((TypeError, IndexError)):  # past the value: an error, never a crash
            view.obj[1 << 40]
        with pytest.raises(TypeError):
            view[0] = 1
        # A buffer of what it is a view of is the value's bytes, no more (it was a
        # span of 64 TiB: reading past the value's pages segfaulted).
        assert memoryview(view.obj).nbytes == len(A)
        assert bytes(memoryview(view.obj).cast("B")) == A
        assert bytes(cache["k"]) == A


def test_views_stay_valid_after_unlink_and_close(store: str) -> None:
    cache = BlobCache(store, inline_limit=LIMIT)
    cache.put("k", A)
    view = cache["k"]
    cache.put("k", C)
    assert cache.gc().files_removed == 1
    cache.close()
    assert bytes(view) == A


def test_a_mapping_is_unmapped_once_its_last_view_is_gone(store: str) -> None:
    def mapped() -> set[str]:
        with open("/proc/self/maps") as f:
            return {line.split()[-1] for line in f if F.VERSION_PREFIX in line}

    with BlobCache(store, inline_limit=LIMIT) as cache:
        cache.put("k", b"M" * 8192)
        path = file_of(cache, "k")
        view = cache["k"]
        assert path in mapped()
        cache.put("k", A)  # the index drops its view of the old version
        assert path in mapped()  # ours holds it
        view.release()
        assert path not in mapped()


_MANY_MAPPINGS = """
import resource, sys
from blobcache import BlobCache
resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
with BlobCache(sys.argv[1], durability="os", inline_limit=16) as cache:
    for i in range(600):
        cache.put(f"shard{i}", b"%032d" % i)
    views = [cache[f"shard{i}"] for i in range(600)]  # each mapped, all held
    assert all(bytes(v) == b"%032d" % i for i, v in enumerate(views))
print("ok", len(views))
"""


def test_reading_more_large_values_than_the_fd_limit_needs_no_fd_per_value(store: str) -> None:
    package_root = os.path.dirname(os.path.dirname(blobcache.__file__))  # the code under test
    done = subprocess.run(
        [sys.executable, "-c", _MANY_MAPPINGS, store],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": package_root},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["ok", "600"]


def test_a_large_get_holds_no_file_descriptor(store: str) -> None:
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    with BlobCache(store, inline_limit=LIMIT) as cache:
        for i in range(20):
            cache.put(f"k{i}", A)
        before = open_fds()
        views = [cache[f"k{i}"] for i in range(20)]
        assert open_fds() == before
        assert all(bytes(v) == A for v in views)


# --- what else the cache hands out: can the caller break it? --------------------------


def test_a_small_value_is_immutable_bytes(store: str) -> None:
    with BlobCache(store, inline_limit=LIMIT) as cache:
        cache.put("k", bytearray(B))
        assert type(cache["k"]) is bytes


def test_closing_or_writing_a_file_from_open_leaves_the_value(store: str) -> None:
    with BlobCache(store, inline_limit=LIMIT) as cache:
        cache.put("small", B)
        cache.put("large", A)
        for key, value in (("small", B), ("large", A)):
            f = cache.open(key)
            assert not f.writable()
            with pytest.raises(io.UnsupportedOperation):
                f.write(b"X")
            f.close()
            with cache.open(key) as g:
                assert g.read() == value
            assert bytes(cache[key]) == value


def test_stats_problems_options_and_gc_results_are_the_callers_to_keep(store: str) -> None:
    with BlobCache(store, inline_limit=LIMIT) as cache:
        cache.put("k", A)
        version = file_of(cache, "k")
    os.truncate(version, 5)  # reported at open
    with BlobCache(store, inline_limit=LIMIT) as cache:
        cache.put("k", C)
        stats = cache.stats()
        with pytest.raises(AttributeError):
            stats.keys = 5  # type: ignore[misc]
        stats.as_dict()["keys"] = 99
        assert cache.stats().keys == 1
        problems = cache.problems
        assert isinstance(problems, tuple) and len(problems) == 1
        with pytest.raises(AttributeError):
            problems[0].message = "x"  # type: ignore[misc]
        assert "5 bytes" in cache.problems[0].message
        with pytest.raises(AttributeError):
            cache.options.inline_limit = 0  # type: ignore[misc]
        result = cache.gc()
        assert isinstance(result, GcResult) and result.files_removed == 1
        result.files_removed = 1000
        assert cache.gc().files_removed == 0
        assert bytes(cache["k"]) == C


# --- what put takes ----------------------------------------------------------------


def _tree(root: str) -> list[tuple[str, bytes]]:
    out = []
    for d, _, names in os.walk(root):
        for n in names:
            out.append((os.path.join(d, n), Path(d, n).read_bytes()))
    return sorted(out)


@pytest.mark.parametrize("inline_limit", [LIMIT, 0], ids=["in the log", "in a file"])
@pytest.mark.parametrize("shape", [(0,), (0, 5), (3, 0, 2)])
def test_put_of_a_zero_size_array_stores_an_empty_value(
    store: str, inline_limit: int, shape: tuple[int, ...]
) -> None:
    with BlobCache(store, inline_limit=inline_limit) as cache:
        cache.put("k", np.zeros(shape))
        assert bytes(cache["k"]) == b""
    with BlobCache(store, inline_limit=inline_limit) as cache:
        assert bytes(cache["k"]) == b""


def _pointer_buffers() -> Iterator[tuple[str, object]]:
    yield "numpy object array", np.array([1, None, "x"], dtype=object)
    yield "numpy record with an object field", np.zeros(3, dtype=[("O", "i4"), ("y", "O")])
    yield "ctypes void pointers", (ctypes.c_void_p * 4)()
    yield "ctypes char pointers", (ctypes.c_char_p * 4)()
    yield "ctypes wide char pointers", (ctypes.c_wchar_p * 4)()
    yield "ctypes int pointers", (ctypes.POINTER(ctypes.c_int) * 4)()
    yield "ctypes function pointers", (ctypes.CFUNCTYPE(None) * 4)()
    yield "ctypes Python objects", (ctypes.py_object * 4)()


@pytest.mark.parametrize(
    "value", [v for _, v in _pointer_buffers()], ids=[n for n, _ in _pointer_buffers()]
)
@pytest.mark.parametrize("inline_limit", [LIMIT, 0], ids=["in the log", "in a file"])
def test_a_buffer_of_pointers_is_refused_and_changes_nothing(
    store: str, inline_limit: int, value: object
) -> None:
    with BlobCache(store, inline_limit=inline_limit) as cache:
        cache.put("k", A)
        before = _tree(store)
        with pytest.raises(TypeError, match=r"pointers.*pickle"):
            cache.put("k", value)
        with pytest.raises(TypeError, match="pointers"):
            cache.put_stream("k", [b"x" * 100, value])
        assert _tree(store) == before
        assert bytes(cache["k"]) == A


@pytest.mark.parametrize(
    "value",
    [
        np.zeros(3, dtype=np.complex64),  # "Zf": a complex, not a wide char pointer
        np.zeros(3, dtype=[("Obj", "i4"), ("P", "f8")]),  # field names are not codes
        np.zeros((2, 2), dtype="U3"),
    ],
    ids=["complex", "record named like pointer codes", "unicode"],
)
def test_buffers_without_pointers_are_stored_as_their_bytes(store: str, value: Any) -> None:
    with BlobCache(store, inline_limit=LIMIT) as cache:
        cache.put("k", value)
        assert bytes(cache["k"]) == value.tobytes()


@pytest.mark.parametrize(
    "as_path",
    [os.fsencode, str, Path, lambda p: _BytesPath(os.fsencode(p))],
    ids=["bytes", "str", "Path", "PathLike of bytes"],
)
@pytest.mark.parametrize("size", [10, 1000], ids=["small", "large"])
def test_put_file_takes_any_path(
    store: str, tmp_path: Path, as_path: Callable[[str], Any], size: int
) -> None:
    source = tmp_path / "source"
    source.write_bytes(b"s" * size)
    with BlobCache(store, inline_limit=LIMIT) as cache:
        cache.put_file("k", as_path(str(source)))
        assert bytes(cache["k"]) == b"s" * size


class _BytesPath:
    def __init__(self, path: bytes) -> None:
        self.path = path

    def __fspath__(self) -> bytes:
        return self.path


# --- file modes -------------------------------------------------------------------


def test_version_and_key_files_are_read_only_and_log_segments_writable(store: str) -> None:
    with BlobCache(store, inline_limit=LIMIT) as cache:
        cache.put("k", A)
        cache.put("small", B)
        cache.put("small", b"again")
        assert cache.gc().segments_compacted  # a compacted segment too
        version = file_of(cache, "k")
    key_file = os.path.join(os.path.dirname(version), F.KEY_FILE_NAME)
    for path in (version, key_file, os.path.join(store, F.MARKER_NAME)):
        assert stat.S_IMODE(os.stat(path).st_mode) & 0o222 == 0, path
    segments = files_named(os.path.join(store, F.LOG_DIR), "")
    assert len(segments) >= 2
    for path in segments:
        assert stat.S_IMODE(os.stat(path).st_mode) & stat.S_IWUSR, path


_NOBODY = 65534


def _as_nobody(work: Callable[[], None]) -> None:
    """Run ``work`` in a forked child as an unprivileged user; raise its failure here."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        status = 1
        try:
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(_NOBODY)
                os.setuid(_NOBODY)
            work()
            status = 0
        except BaseException as exc:
            os.write(write_end, repr(exc).encode())
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        message = f.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, message


@pytest.fixture
def open_dir() -> Iterator[str]:
    """A directory an unprivileged user can reach and write (tmp_path's parents are 0700)."""
    top = tempfile.mkdtemp(prefix="blobcache-nobody-")
    os.chmod(top, 0o777)
    try:
        yield top
    finally:
        shutil.rmtree(top)


def test_writing_through_path_is_refused_for_an_unprivileged_user(open_dir: str) -> None:
    store = os.path.join(open_dir, "store")

    def work() -> None:
        with BlobCache(store, inline_limit=LIMIT) as cache:
            cache.put("k", A)
            path = file_of(cache, "k")
            view = cache["k"]
            for mode in ("r+b", "wb", "ab"):
                with pytest.raises(PermissionError), open(path, mode):
                    pass
            assert bytes(view) == A and bytes(cache["k"]) == A

    _as_nobody(work)


def test_an_unprivileged_user_collects_read_only_files_and_reopens(open_dir: str) -> None:
    store = os.path.join(open_dir, "store")

    def work() -> None:
        with BlobCache(store, inline_limit=LIMIT) as cache:
            cache.put("k", A)
            cache.put("k", C)
            cache.put("gone", A)
            cache.delete("gone")
            cache.put("small", B)
            cache.put("small", b"again")
            result = cache.gc()  # unlinks 0444 files, rewrites the log
            assert result.files_removed >= 3 and result.segments_compacted >= 1
        for _ in range(2):  # the log is appended to again after each reopen
            with BlobCache(store, inline_limit=LIMIT) as cache:
                assert bytes(cache["k"]) == C and "gone" not in cache
                cache.put("small", b"later")
        with BlobCache(store, inline_limit=LIMIT) as cache:
            assert cache["small"] == b"later"

    _as_nobody(work)


def test_a_delete_compacted_before_the_janitor_ran_still_hides_the_older_version(
    store: str,
) -> None:
    """Put A (large), delete, put C (large), compact before the janitor removed A,
    damage C: the key is deleted, not A again. Compaction must copy the delete
    forward while A may still be in the key's directory, though a newer put
    superseded the delete (it dropped it, and the fallback then found A)."""
    with BlobCache(store, inline_limit=LIMIT) as cache:
        cache.put("k", A)
        cache.delete("k")
        cache.put("k", C)
        cache._compact(force=True)  # what background compaction may do before any gc()
        assert len(files_named(os.path.dirname(file_of(cache, "k")), "v-")) == 2  # A is there
        flip_bit(file_of(cache, "k"), 50)
        assert cache.get("k") is None
        assert "k" not in cache
    with BlobCache(store, inline_limit=LIMIT) as cache:
        assert cache.get("k") is None
