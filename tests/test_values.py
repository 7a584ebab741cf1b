"""What get, open and path hand out, and what put takes: values, views, files, modes.

A damaged value falls back to the newest intact older record of its key,
whichever layout holds it; get returns a view of its own per call and holds no
file descriptor per mapping; put refuses buffers of pointers and stores a
zero-size array as an empty value; the files a value lives in are read-only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

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
