"""The write path of a large value: what its checksum covers, and which locks it holds.

A version is written to a temp file with no lock of the cache held, then named
(sequence number, length, checksum) under its key's stripe lock. These tests
pin what follows: the checksum is of the bytes that reached the file, however
the caller's buffer changes; code of the caller's that runs during a put (a
stream's chunks, a file object's reads, a path's ``__fspath__``) may use the
cache, even keys sharing the stripe; ``gc()``, ``close()`` and other puts go on
while a stream waits; two puts of one key are ordered by their numbers.

Threads are joined with a timeout only to detect a hang (a deadlock would
otherwise stop the test run); no test waits for time to pass.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xxhash

from blobcache import BlobCache, ClosedError, _fsio
from blobcache import _format as F
from blobcache import _names as N
from tests.conftest import files_named, flip_bit

HANG = 60.0  # seconds: far beyond what any step takes; reaching it means a deadlock

_LIMIT = 1024  # inline_limit of these stores: 4 KiB and more go to files
_OPTIONS: dict[str, Any] = {"inline_limit": _LIMIT}


def _value(tag: int, size: int = 300_000) -> bytes:
    return bytes([tag]) * size


def _same_stripe(cache: BlobCache, key: str) -> str:
    """Another key whose puts take the same stripe lock as ``key``'s."""
    lock = _stripe_of(cache, key)
    return next(k for k in (f"{key}-{i}" for i in range(100_000)) if _stripe_of(cache, k) is lock)


def _stripe_of(cache: BlobCache, key: str) -> threading.Lock:
    guard = cache._writes.writing(N.key_hash(*N.encode_key(key)))
    return guard._lock


@contextlib.contextmanager
def _opened(store: str) -> Iterator[BlobCache]:
    """A cache for the block, closed if the block ends normally. After a failure
    it is left open: close() would wait for ever for a thread deadlocked in it."""
    cache = BlobCache(store, **_OPTIONS)
    yield cache
    cache.close()


def _seq_of(path: str) -> int:
    name = N.parse_version_name(os.path.basename(path))
    assert name is not None, path
    return name.seq


def _start(target: Callable[[], None]) -> tuple[threading.Thread, list[BaseException]]:
    """Run ``target`` in a daemon thread (a deadlocked one must not keep the run
    alive); what it raises is collected."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, raised


def _finish(thread: threading.Thread, raised: list[BaseException], what: str) -> None:
    thread.join(HANG)
    assert not thread.is_alive(), f"{what} never finished: a lock is held across caller code"
    if raised:
        raise raised[0]


# --- #5: the checksum covers what reached the file ----------------------------------------


def test_a_buffer_changed_right_after_its_write_is_served_as_written(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: the checksum was computed over the caller's buffer after the
    write; a buffer changed in between named the file with the checksum of
    other bytes, so its first get failed the check and fell back to the
    previous version (a warning only), also after a reopen."""
    buffer = bytearray(_value(1))
    with _opened(store) as cache:
        cache.put("k", _value(0))
        real = _fsio.pwrite_all

        def write_then_change(fd: int, data: Any, offset: int) -> None:
            real(fd, data, offset)
            buffer[:] = _value(2)  # another thread's update, landing after the write

        with monkeypatch.context() as patch:
            patch.setattr(_fsio, "pwrite_all", write_then_change)
            cache.put("k", buffer)
        assert bytes(cache["k"]) == _value(1)
        assert cache.problems == ()
    with BlobCache(store) as cache:
        assert bytes(cache["k"]) == _value(1)
        assert cache.problems == ()


def test_an_array_updated_by_another_thread_during_puts_serves_the_last_put(store: str) -> None:
    """The review's case: a numpy array changed by another thread throughout 20
    puts of it. Each put's file holds some state (or mix of states) of the
    array, and get serves exactly that file: the last put's, never an older one."""
    array = np.zeros(1 << 20, dtype=np.uint64)  # 8 MiB
    stop = threading.Event()

    def update() -> None:
        while not stop.is_set():
            np.add(array, 1, out=array)  # releases the GIL: runs during the puts

    updater = threading.Thread(target=update, daemon=True)
    updater.start()
    try:
        with _opened(store) as cache:
            for _ in range(20):
                cache.put("array", array)
                path = cache.path("array")
                value = cache["array"]  # checked on this first get: must not fall back
                assert cache.path("array") == path
                assert cache.problems == ()
            assert path is not None
            with open(path, "rb") as f:
                assert bytes(value) == f.read()
    finally:
        stop.set()
        updater.join(HANG)
    with BlobCache(store) as cache:
        assert cache.path("array") == path and cache.problems == ()
        assert bytes(cache["array"]) == bytes(value)


def test_every_writer_names_its_file_by_the_checksum_of_the_file(
    store: str, tmp_path: Path
) -> None:
    """put, put_stream and put_file (kernel copy and file object) share one path:
    the name's checksum is of the file's bytes (what verify-on-get checks)."""
    source = tmp_path / "source.bin"
    source.write_bytes(_value(7, 2 << 20))
    with _opened(store) as cache:
        cache.put("put", _value(3, 2 << 20))
        cache.put_stream("stream", (_value(4, 1 << 20) for _ in range(3)))
        cache.put_file("copy", source)
        with open(source, "rb") as f:
            cache.put_file("object", f)
        for key in ("put", "stream", "copy", "object"):
            path = cache.path(key)
            assert path is not None
            name = N.parse_version_name(os.path.basename(path))
            assert name is not None
            with open(path, "rb") as f:
                data = f.read()
            assert name.length == len(data)
            assert name.checksum == xxhash.xxh3_64_intdigest(data), key


# --- #11: no lock held while caller code runs ------------------------------------------------


class _PutsWhileRead:
    """A file object whose reads put ``key`` into ``cache`` first (caller code
    that uses the cache while put_file reads it)."""

    def __init__(self, cache: BlobCache, key: str, data: bytes) -> None:
        self._cache, self._key, self._data, self._at = cache, key, data, 0

    def read(self, size: int = -1) -> bytes:
        self._cache.put(self._key, _value(9, 5000))
        chunk = self._data[self._at : self._at + size]
        self._at += len(chunk)
        return chunk


class _PutsWhenNamed:
    """A path-like whose ``__fspath__`` puts ``key`` into ``cache`` first."""

    def __init__(self, cache: BlobCache, key: str, path: Path) -> None:
        self._cache, self._key, self._path = cache, key, path

    def __fspath__(self) -> str:
        self._cache.put(self._key, _value(9, 5000))
        return str(self._path)


@pytest.mark.parametrize("source", ["chunks", "file-object", "path-like"])
def test_caller_code_that_puts_a_key_of_the_same_stripe_completes(
    store: str, tmp_path: Path, source: str
) -> None:
    """Regression: put_stream and put_file held the key's stripe lock while
    they read the caller's source; a source that put a key sharing the stripe
    (1 key in 1,024) waited for that lock for ever."""
    big = _value(5, 3 * BlobCache.CHUNK_BYTES)
    path = tmp_path / "source.bin"
    path.write_bytes(big)
    with _opened(store) as cache:
        neighbour = _same_stripe(cache, "k")

        def chunks() -> Iterator[bytes]:
            for i in range(0, len(big), 1 << 20):
                cache.put(neighbour, _value(9, 5000))  # a file of its own
                yield big[i : i + (1 << 20)]

        def stream() -> None:
            if source == "chunks":
                cache.put_stream("k", chunks())
            elif source == "file-object":
                cache.put_file("k", _PutsWhileRead(cache, neighbour, big))  # type: ignore[arg-type]
            else:
                cache.put_file("k", _PutsWhenNamed(cache, neighbour, path))

        _finish(*_start(stream), what="the stream")
        assert bytes(cache["k"]) == big and bytes(cache[neighbour]) == _value(9, 5000)
    with BlobCache(store) as cache:
        assert bytes(cache["k"]) == big and bytes(cache[neighbour]) == _value(9, 5000)


class _Blocked:
    """Chunks that stop after the first, inside the write, until released."""

    def __init__(self, tag: int) -> None:
        self.tag = tag
        self.waiting = threading.Event()
        self.release = threading.Event()

    def __iter__(self) -> Iterator[bytes]:
        yield _value(self.tag)
        self.waiting.set()
        assert self.release.wait(HANG), "never released"
        yield _value(self.tag)

    @property
    def whole(self) -> bytes:
        return _value(self.tag) * 2


def _blocked_stream(
    cache: BlobCache, key: str, chunks: _Blocked
) -> tuple[threading.Thread, list[BaseException]]:
    started = _start(lambda: cache.put_stream(key, chunks))
    assert chunks.waiting.wait(HANG), "the stream never got to its second chunk"
    return started


def test_gc_and_puts_of_other_keys_go_on_while_a_stream_waits(store: str) -> None:
    """Regression: a stream held its key's stripe lock while it waited for its
    source; gc() (the janitor and compaction take every stripe), and puts of
    keys of that stripe waited for it. The janitor leaves the directory the
    stream is writing into (it holds it shared) for the next gc."""
    with _opened(store) as cache:
        neighbour = _same_stripe(cache, "k")
        cache.put("k", _value(1))
        cache.put("k", _value(2))  # the first version is garbage: gc visits k's directory
        chunks = _Blocked(3)
        stream, raised = _blocked_stream(cache, "k", chunks)

        def meanwhile() -> None:
            cache.put(neighbour, _value(4))
            cache.put("other", _value(5))
            cache.put("small", b"s")
            cache.gc()

        _finish(*_start(meanwhile), what="puts and gc() beside a waiting stream")
        assert bytes(cache["k"]) == _value(2), "the stream is not acknowledged yet"
        assert len(files_named(os.path.dirname(cache.path("k") or ""), F.VERSION_PREFIX)) == 2
        chunks.release.set()
        _finish(stream, raised, what="the stream")
        assert bytes(cache["k"]) == chunks.whole
        assert cache.gc().files_removed == 2  # both older versions, left by the first gc
        assert bytes(cache[neighbour]) == _value(4) and bytes(cache["other"]) == _value(5)
    with BlobCache(store) as cache:
        assert bytes(cache["k"]) == chunks.whole and bytes(cache[neighbour]) == _value(4)


def test_close_goes_on_while_a_stream_waits_and_the_stream_then_fails(store: str) -> None:
    """Regression: close() waited (every stripe) for a stream stalled on its source.
    Now it closes; the stream then finds the cache closed, raises ClosedError and
    leaves no trace: the key keeps its previous value."""
    with _opened(store) as cache:
        cache.put("k", _value(1))
        chunks = _Blocked(2)
        stream, raised = _blocked_stream(cache, "k", chunks)
        _finish(*_start(cache.close), what="close() beside a waiting stream")
        chunks.release.set()
        with pytest.raises(ClosedError):
            _finish(stream, raised, what="the stream")
    assert files_named(store, F.TEMP_PREFIX) == []
    with BlobCache(store) as cache:
        assert bytes(cache["k"]) == _value(1)


def test_a_large_put_holds_no_lock_while_its_file_is_written_and_fsynced(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: put() of a large value held its stripe lock through the write
    and fsync of its file. With that fsync stalled (a slow disk), puts of keys
    sharing the stripe and gc() go on."""
    with _opened(store) as cache:
        neighbour = _same_stripe(cache, "k")
        cache.put("k", _value(1))
        cache.put(neighbour, _value(1))
        stalled, release = threading.Event(), threading.Event()
        real = _fsio.fsync_file

        def stalling(fd: int) -> None:
            if not stalled.is_set():
                stalled.set()
                assert release.wait(HANG), "never released"
            real(fd)

        monkeypatch.setattr(_fsio, "fsync_file", stalling)
        put, raised = _start(lambda: cache.put("k", _value(2)))
        assert stalled.wait(HANG)

        def meanwhile() -> None:
            cache.put(neighbour, _value(3))
            cache.gc()

        _finish(*_start(meanwhile), what="puts and gc() beside a stalled fsync")
        release.set()
        _finish(put, raised, what="the put")
        assert bytes(cache["k"]) == _value(2) and bytes(cache[neighbour]) == _value(3)


# --- the ordering rule --------------------------------------------------------------------


def test_a_put_that_finishes_later_wins_over_one_that_started_later(store: str) -> None:
    """Numbers are taken when a version is named, under the stripe lock: a stream
    begun first and finished last wins, in memory and on disk."""
    with _opened(store) as cache:
        chunks = _Blocked(1)
        stream, raised = _blocked_stream(cache, "k", chunks)
        _finish(*_start(lambda: cache.put("k", _value(2))), what="a put beside a stream")
        assert bytes(cache["k"]) == _value(2)
        chunks.release.set()
        _finish(stream, raised, what="the stream")
        assert bytes(cache["k"]) == chunks.whole
    with BlobCache(store) as cache:
        assert bytes(cache["k"]) == chunks.whole


def test_a_stream_whose_source_puts_its_own_key_wins_over_that_put(store: str) -> None:
    with _opened(store) as cache:

        def chunks() -> Iterator[bytes]:
            yield _value(1)
            cache.put("k", _value(2))
            yield _value(1)

        _finish(*_start(lambda: cache.put_stream("k", chunks())), what="the stream")
        assert bytes(cache["k"]) == _value(1) * 2
    with BlobCache(store) as cache:
        assert bytes(cache["k"]) == _value(1) * 2


def test_concurrent_puts_of_one_key_leave_memory_and_disk_agreeing(store: str) -> None:
    values = {tag: _value(tag, 100_000 + tag) for tag in range(1, 9)}
    with _opened(store) as cache:
        barrier = threading.Barrier(len(values))

        def putter(tag: int) -> Callable[[], None]:
            def run() -> None:
                barrier.wait(HANG)
                for _ in range(5):
                    cache.put("k", values[tag])

            return run

        started = [_start(putter(tag)) for tag in values]
        for thread, raised in started:
            _finish(thread, raised, what="a putter")
        served = bytes(cache["k"])
        path = cache.path("k")
        assert path is not None
        versions = files_named(os.path.dirname(path), F.VERSION_PREFIX)
        assert max(versions, key=_seq_of) == path, "the index's version is not the newest"
    with BlobCache(store) as cache:
        assert bytes(cache["k"]) == served


# --- the class: no lock held while caller code runs, on the fall-back path too -------------


def _damage_live_version(cache: BlobCache, key: str) -> None:
    """Put two versions of ``key`` and flip a bit of the newer one: its first get
    fails the check and falls back to the older one (writing it anew)."""
    cache.put(key, _value(1))
    cache.put(key, _value(2))
    path = cache.path(key)
    assert path is not None
    flip_bit(path, 1000)


def test_a_logging_handler_that_puts_a_key_of_the_stripe_completes(store: str) -> None:
    """Regression: the fall-back warning was logged with the key's stripe lock
    held; a handler (caller code) that put a key of that stripe waited for ever."""
    with _opened(store) as cache:
        neighbour = _same_stripe(cache, "k")
        _damage_live_version(cache, "k")
        logged: list[str] = []

        class PutsWhatItLogs(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                cache.put(neighbour, record.getMessage().encode())
                logged.append(record.getMessage())

        handler = PutsWhatItLogs()
        logger = logging.getLogger("blobcache")
        logger.addHandler(handler)
        try:
            got: list[bytes] = []
            _finish(*_start(lambda: got.append(bytes(cache["k"]))), what="the get")
        finally:
            logger.removeHandler(handler)
        assert got == [_value(1)]
        assert len(logged) == 1 and "serving the older record" in logged[0]
        assert cache[neighbour] == logged[0].encode()


def test_a_key_subclass_whose_methods_use_the_cache_falls_back_without_deadlock(
    store: str,
) -> None:
    """The caller's key object (a str subclass) may run code of its own: put and
    delete make a plain key of it before any lock; so does a get that falls back."""
    with _opened(store) as cache:
        neighbour = _same_stripe(cache, "k")
        _damage_live_version(cache, "k")

        class Key(str):
            def encode(self, *args: Any, **kwargs: Any) -> bytes:
                cache.put(neighbour, b"from the key's own code")
                return str.encode(self, *args, **kwargs)

        got: list[bytes] = []
        _finish(*_start(lambda: got.append(bytes(cache[Key("k")]))), what="the get")
        assert got == [_value(1)] and cache[neighbour] == b"from the key's own code"
        _finish(*_start(lambda: cache.put(Key("k"), _value(3))), what="a put")
        assert bytes(cache["k"]) == _value(3)


# --- a janitor beside the writer, between a temp file's create and its flock ----------------


def test_the_sweeper_between_a_temp_files_create_and_flock_leaves_it(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression (found by test_cli's racing gc, flaky before): a temp file is
    unlocked between its create and its flock, and `blobcache gc` beside the
    writer took it as an orphan right then; the writer saw a failed flock (an
    assertion) or a rename of a file already unlinked (FileNotFoundError, which
    put() hid by trying again and put_stream did not). The sweeper, run in that
    very gap, now finds the directory held and leaves the file."""
    from blobcache import _storedir

    with _opened(store) as cache:
        cache.put("k", _value(1))
        real = _fsio.create_exclusive
        swept: list[int | None] = []

        def sweeper_steps_in(path: str, **options: Any) -> int:
            fd = real(path, **options)
            if not swept and os.path.basename(path).startswith(F.TEMP_PREFIX):
                swept.append(_storedir.remove_orphan_temp(path))
            return fd

        monkeypatch.setattr(_fsio, "create_exclusive", sweeper_steps_in)
        cache.put_stream("k", iter([_value(2), _value(2)]))
        monkeypatch.undo()
        assert swept == [None], "the sweeper took a temp file its writer was creating"
        assert bytes(cache["k"]) == _value(2) * 2
    with BlobCache(store) as cache:
        assert bytes(cache["k"]) == _value(2) * 2


def test_a_key_directory_removed_by_hand_between_puts_is_made_again(store: str) -> None:
    with _opened(store) as cache:
        cache.put("k", _value(1))
        path = cache.path("k")
        assert path is not None
        shutil.rmtree(os.path.dirname(os.path.dirname(os.path.dirname(path))))
        cache.put("k", _value(2))
        cache.put_stream("k", iter([_value(3), _value(3)]))
        assert bytes(cache["k"]) == _value(3) * 2
    with BlobCache(store) as cache:
        assert bytes(cache["k"]) == _value(3) * 2
