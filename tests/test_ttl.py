"""Expiry (``put(..., ttl=)``, ``default_ttl``): an expired key misses everywhere.

The clock is the module ``blobcache._clock``, stood in for by ``Clock`` here, so
the tests move time by hand: the background sweep is tested apart, with the
real clock and an event instead of a sleep.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest

from blobcache import BlobCache, _clock
from blobcache import _format as F
from blobcache._index import Index

LIMIT: Final = 64  # inline_limit: values of 64 bytes or more get a file
SMALL: Final = b"small value"
LARGE: Final = b"L" * 200


class Clock:
    """A wall clock that moves only when told to."""

    def __init__(self) -> None:
        self.ms = 1_796_148_000_000  # 2026-12-01 18:00 UTC

    def __call__(self) -> int:
        return self.ms

    def advance(self, seconds: float) -> None:
        self.ms += math.ceil(seconds * 1000)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    fake = Clock()
    monkeypatch.setattr(_clock, "now_ms", fake)
    yield fake


def _open(store: str, **options: Any) -> BlobCache:
    return BlobCache(store, inline_limit=LIMIT, **options)


def _files_under(store: str) -> list[str]:
    return sorted(
        name for _root, _dirs, names in os.walk(os.path.join(store, F.BLOBS_DIR)) for name in names
    )


@pytest.mark.parametrize("value", [SMALL, LARGE], ids=["log", "file"])
def test_a_value_is_served_until_its_ttl_and_missing_after(
    tmp_path: Path, clock: Clock, value: bytes
) -> None:
    store = str(tmp_path)
    with _open(store) as cache:
        cache.put("k", value, ttl=10)
        clock.advance(9.999)
        assert bytes(cache["k"]) == value and "k" in cache and len(cache) == 1
    with _open(store) as cache:  # the expiry is in its record
        assert bytes(cache["k"]) == value
        clock.advance(0.001)
        assert "k" not in cache and cache.get("k") is None and len(cache) == 0
        assert list(cache) == [] and cache.stats().keys == 0
        with pytest.raises(KeyError):
            cache.path("k")
    with _open(store) as cache:
        assert cache.get("k") is None


@pytest.mark.parametrize(
    ("old", "new"),
    [(SMALL, b"new"), (LARGE, b"new"), (SMALL, LARGE), (LARGE, b"N" * 300)],
    ids=["log-log", "file-log", "log-file", "file-file"],
)
def test_an_expired_value_hides_the_older_one(
    tmp_path: Path, clock: Clock, old: bytes, new: bytes
) -> None:
    """An expired put is a delete of its number: the value it replaced never
    comes back, in memory, after a reopen, or after gc."""
    store = str(tmp_path)
    with _open(store) as cache:
        cache.put("k", old)
        cache.put("k", new, ttl=5)
        clock.advance(5)
        # ``in`` looks at the clock (and sweeps); a bare get trusts the sweep
        # thread, which sleeps by the real clock: see the last test.
        assert "k" not in cache and cache.get("k") is None
    with _open(store) as cache:
        assert cache.get("k") is None
        cache.gc()
        assert cache.get("k") is None
    with _open(store) as cache:
        assert cache.get("k") is None
        cache.gc()
    with _open(store) as cache:
        assert cache.get("k") is None and len(cache) == 0


def test_default_ttl_and_an_explicit_one(tmp_path: Path, clock: Clock) -> None:
    store = str(tmp_path)
    with _open(store, default_ttl=60) as cache:
        cache.put("default", SMALL)
        cache.put("longer", SMALL, ttl=120)
        with cache.batch() as b:
            b.put("in-batch", LARGE)
            b.put("in-batch-short", SMALL, ttl=1)
        clock.advance(1)
        assert sorted(cache) == ["default", "in-batch", "longer"]
        clock.advance(59)
        assert sorted(cache) == ["longer"]
    with _open(store) as cache:  # no default_ttl now: puts do not expire
        assert sorted(cache) == ["longer"]
        cache.put("forever", SMALL)
        clock.advance(10**6)
        assert sorted(cache) == ["forever"]


def test_compaction_keeps_every_expiry(tmp_path: Path, clock: Clock) -> None:
    """Compaction copies a live put's expiry, and keeps a version's record (its
    expiry is only there), so gc before the deadline loses none."""
    store = str(tmp_path)
    with _open(store, compact_ratio=1.0) as cache:
        cache.put("s", SMALL, ttl=10)
        cache.put("L", LARGE, ttl=10)
        cache.put("stale", b"1")
        cache.put("stale", b"2")
        assert cache.gc().segments_compacted >= 1
        cache.gc()
    with _open(store) as cache:
        assert sorted(cache) == ["L", "s", "stale"]
        clock.advance(10)
        assert sorted(cache) == ["stale"]
    with _open(store) as cache:
        assert sorted(cache) == ["stale"]


def test_gc_reclaims_what_expired(tmp_path: Path, clock: Clock) -> None:
    store = str(tmp_path)
    with _open(store) as cache:
        cache.put("L", LARGE, ttl=1)
        cache.put("s", SMALL * 10, ttl=1)
        cache.put("keep", b"k")
        clock.advance(1)
        result = cache.gc()
        assert result.files_removed >= 2 and result.dirs_removed >= 1
        assert _files_under(store) == []
        stats = cache.stats()
        assert stats.keys == 1 and stats.live_bytes == 1 and stats.log_stale_bytes == 0
    with _open(store) as cache:
        assert sorted(cache) == ["keep"]


def test_an_expired_file_left_uncollected_stays_expired(tmp_path: Path, clock: Clock) -> None:
    """Reopened after its deadline with its file still there: absent; the gc of
    that open keeps a delete of its number until the janitor removed the file."""
    store = str(tmp_path)
    with _open(store) as cache:
        cache.put("L", b"older" * 20)
        cache.put("L", LARGE, ttl=1)
        clock.advance(2)
    with _open(store, compact_ratio=1.0) as cache:
        assert cache.get("L") is None
        assert len(_files_under(store)) == 3  # key file and both versions: not yet collected
        cache.gc()
        assert _files_under(store) == []
    with _open(store) as cache:
        assert cache.get("L") is None


def test_another_handle_sees_the_expiry(tmp_path: Path, clock: Clock) -> None:
    store = str(tmp_path)
    with _open(store) as writer, _open(store, readonly=True) as reader:
        writer.put("s", SMALL, ttl=3)
        writer.put("L", LARGE, ttl=3)
        reader.refresh()
        assert reader["s"] == SMALL and bytes(reader["L"]) == LARGE
        clock.advance(3)
        assert "s" not in reader and "L" not in reader
        assert "s" not in writer and "L" not in writer
        writer.put("s", b"again")  # a put after the expiry: there again
        reader.refresh()
        assert reader["s"] == b"again"


def test_a_follower_reads_an_expired_record_as_a_delete(tmp_path: Path, clock: Clock) -> None:
    store = str(tmp_path)
    with _open(store) as writer, _open(store) as other:
        other.put("k", b"older")
        writer.refresh()
        writer.put("k", SMALL, ttl=1)
        clock.advance(1)  # expired before the other handle read it
        other.refresh()
        assert other.get("k") is None


@pytest.mark.parametrize(
    ("ttl", "error"),
    [
        (-1, ValueError),
        (0, ValueError),
        (float("nan"), ValueError),
        (float("inf"), ValueError),
        (2.0**32 + 1, ValueError),  # about 136 years: the longest
        ("10", TypeError),
        (True, TypeError),
    ],
)
def test_a_bad_ttl_is_refused_and_changes_nothing(
    tmp_path: Path, ttl: object, error: type[Exception]
) -> None:
    store = str(tmp_path)
    with _open(store) as cache:
        cache.put("k", b"old")
        before = cache.stats()
        with pytest.raises(error, match="ttl"):
            cache.put("k", b"new", ttl=ttl)  # type: ignore[arg-type]
        with pytest.raises(error, match="ttl"):
            cache.put("big", LARGE, ttl=ttl)  # type: ignore[arg-type]
        with pytest.raises(error, match="ttl"), cache.batch() as b:
            b.put("k", b"new", ttl=ttl)  # type: ignore[arg-type]
        with pytest.raises(error, match="ttl"):
            cache.put_stream("k", [b"new"], ttl=ttl)  # type: ignore[arg-type]
        assert cache["k"] == b"old" and cache.get("big") is None
        after = cache.stats()
        assert (after.next_seq, after.log_record_bytes) == (
            before.next_seq,
            before.log_record_bytes,
        )
        assert _files_under(store) == []
    with pytest.raises(error, match="default_ttl"):
        _open(store, default_ttl=ttl)


def test_the_background_sweep_takes_an_expired_value_out_of_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the real clock: the sweep thread wakes at the deadline and removes
    the value, so a plain get misses (no call that checks the clock first)."""
    expired = threading.Event()
    real = Index.expire

    def expire(self: Index, *args: Any) -> bool:
        done = real(self, *args)
        if done:
            expired.set()
        return done

    monkeypatch.setattr(Index, "expire", expire)
    with _open(str(tmp_path)) as cache:
        cache.put("k", SMALL, ttl=0.05)
        assert expired.wait(timeout=30), "the sweep never took the value out"
        assert cache._values.get("k") is None  # get's own lookup misses
        assert cache.get("k") is None


# --- regressions found by review (each fails on the code before its fix) ------------


def test_a_follower_keeps_the_delete_an_expired_version_becomes(
    tmp_path: Path, clock: Clock
) -> None:
    """A handle that first reads another's expiring version after its deadline
    keeps the delete it becomes until the file is collected: its compaction
    would otherwise drop the only record of the expiry, and the file count
    again after a reopen."""
    store = str(tmp_path)
    follower = _open(store, refresh_interval=3600)
    with _open(store) as writer:
        writer.put("tok", LARGE, ttl=60)
    clock.advance(61)
    assert follower.get("tok") is None
    follower.gc()
    follower.close()
    with _open(store) as cache:
        assert cache.get("tok") is None


def test_an_expiry_swept_during_a_compaction_keeps_its_delete(
    tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The delete of an expired put booked in a segment that the compaction
    under way removes is written by the next one: the older version it hides
    stays hidden."""
    from blobcache import _compaction

    store = str(tmp_path)
    cache = _open(store, compact_ratio=1.0)
    cache.put("k", b"O" * 200)  # a version file
    cache.put("k", b"short", ttl=60)  # in the log, superseding it
    cache._writes.log.roll()
    cache.put("other", b"x")
    cache.put("other", b"y")
    real = _compaction.write_compacted

    def racing(*args: Any) -> Any:
        clock.advance(61)
        assert cache._expiry.sweep() == 1  # as the sweep thread may, meanwhile
        return real(*args)

    monkeypatch.setattr(_compaction, "write_compacted", racing)
    cache._garbage.compact(force=True)
    monkeypatch.setattr(_compaction, "write_compacted", real)
    cache._garbage.compact(force=True)  # the background compaction: no janitor
    assert "k" not in cache
    cache.close()
    with _open(store) as reopened:
        assert reopened.get("k") is None


def test_a_large_put_with_a_ttl_killed_before_its_record_never_counts(tmp_path: Path) -> None:
    """Its file is bound to its record (a b- name), which holds the expiry: a
    SIGKILL between the file's rename and the record leaves the file garbage,
    never a value served without its expiry."""
    import signal
    import subprocess
    import sys

    store = str(tmp_path)
    child = f"""
import os, signal
from blobcache import BlobCache, _blob
cache = BlobCache({store!r}, inline_limit={LIMIT})
real = _blob.TempVersion.publish
def publish(self, record):
    real(self, record)  # named, its directory fsynced
    os.kill(os.getpid(), signal.SIGKILL)  # killed before the record is written
_blob.TempVersion.publish = publish
cache.put("tok", b"T" * 200, ttl=60)
"""
    done = subprocess.run([sys.executable, "-c", child], check=False)
    assert done.returncode == -signal.SIGKILL
    assert [n[:2] for n in _files_under(store)] == ["b-", "ke"]
    with _open(store) as cache:
        assert cache.get("tok") is None
        cache.gc()
        assert _files_under(store) == []


def test_a_failing_sweep_is_retried_a_second_later_not_in_a_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from blobcache import BlobCacheError, _expiry

    failures = threading.Semaphore(0)
    monkeypatch.setattr(_expiry, "_RETRY_AFTER", 0.2)
    with _open(str(tmp_path), refresh_interval=3600) as cache:

        def newer() -> None:
            failures.release()
            raise BlobCacheError("a record of a newer blobcache (a stand-in)")

        cache._expiry._catch_up = newer
        cache.put("k", b"v", ttl=0.01)
        assert failures.acquire(timeout=30)  # the first sweep failed
        start = time.monotonic()
        assert failures.acquire(timeout=30)  # the next one came...
        assert time.monotonic() - start >= 0.15  # ...after the pause, not at once
        cache._expiry._catch_up = lambda: None


def _damage(path: str) -> None:
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.write(b"X")


def test_a_fall_back_never_serves_an_expired_older_version(tmp_path: Path, clock: Clock) -> None:
    store = str(tmp_path)
    with _open(store) as cache:
        cache.put("k", b"1" * 200, ttl=60)
        cache.put("k", b"2" * 200)
        live = cache.path("k")
    assert live is not None
    clock.advance(61)
    _damage(live)
    with _open(store) as cache:
        assert cache.get("k") is None  # the older value expired: the key falls back to absent
    with _open(store) as cache:
        assert cache.get("k") is None


def test_a_fall_back_keeps_the_older_values_expiry(tmp_path: Path, clock: Clock) -> None:
    store = str(tmp_path)
    with _open(store) as cache:
        cache.put("k", b"short", ttl=60)
        cache.put("k", b"2" * 200)
        live = cache.path("k")
    assert live is not None
    _damage(live)
    with _open(store) as cache:
        assert cache.get("k") == b"short"  # served from the older record, rewritten...
    clock.advance(61)
    with _open(store) as cache:
        assert cache.get("k") is None  # ...with its expiry
