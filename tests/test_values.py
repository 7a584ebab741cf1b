"""What get, open and path hand out, and what put takes: values, views, files, modes.

A damaged value falls back to the newest intact older record of its key,
whichever layout holds it; get returns a view of its own per call and holds no
file descriptor per mapping; put refuses buffers of pointers and stores a
zero-size array as an empty value; the files a value lives in are read-only.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from blobcache import BlobCache, CorruptionError
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
    done = subprocess.run(
        [sys.executable, "-c", _MANY_MAPPINGS, store], capture_output=True, text=True
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
