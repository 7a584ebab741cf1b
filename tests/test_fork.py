"""Forked children and the store's locks.

A forked child (a DataLoader worker, a ``multiprocessing`` "fork" pool) inherits
the parent's descriptors, and an flock lives as long as any copy of its
descriptor. The copies of every flocked descriptor are closed in the child at
the fork (``_fsio``), so the parent's close(), or its death, frees the store
(and a key directory, a temp file) while the child runs on.

Crash model: process crash (a SIGKILLed parent with a live child). Children are
synchronised through pipes only, never sleeps.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import Any, Final

import pytest

from blobcache import BlobCache, BlobCacheError, _fsio
from tests.conftest import file_of

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


class _Child:
    """A forked child that runs ``run()`` and sends back what it returned.

    The constructor returns once the child is running, its fork hooks done (it
    says so through a pipe): from then on it holds whatever it inherited.
    """

    def __init__(self, run: Callable[[], object]) -> None:
        ready_r, ready_w = os.pipe()
        result_r, result_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the child: never back into pytest
            status = 0
            try:
                os.write(ready_w, b"r")
                data = pickle.dumps(("returned", run()))
            except BaseException:
                data, status = pickle.dumps(("raised", traceback.format_exc())), 1
            with os.fdopen(result_w, "wb") as f:
                f.write(data)
            os._exit(status)
        os.close(ready_w)
        os.close(result_w)
        assert os.read(ready_r, 1) == b"r"
        os.close(ready_r)
        self._result = result_r

    def result(self) -> Any:
        with os.fdopen(self._result, "rb") as f:
            data = f.read()
        _, status = os.waitpid(self.pid, 0)
        kind, value = pickle.loads(data)
        assert kind == "returned" and status == 0, f"the child failed:\n{value}"
        return value


class _Gate:
    """A pipe a child waits on until the parent opens it."""

    def __init__(self) -> None:
        self._r, self._w = os.pipe()

    def wait(self) -> None:
        os.read(self._r, 1)

    def open(self) -> None:
        os.write(self._w, b"g")


def _large(n: int) -> bytes:
    return bytes(i % 251 for i in range(n))


# --- the lock: not held by a forked child ---------------------------------------------


def test_the_store_reopens_after_close_while_a_forked_child_still_runs(store: str) -> None:
    cache = BlobCache(store)
    cache.put("k", b"v")
    go = _Gate()
    forked = _Child(go.wait)  # holds everything it inherited until the gate opens
    try:
        cache.close()
        with BlobCache(store) as again:  # LockedError if the child held the lock
            assert again["k"] == b"v"
    finally:
        go.open()
        forked.result()


PARENT_THEN_CHILD: Final = """
import os, sys
from blobcache import BlobCache
cache = BlobCache(sys.argv[1])
cache.put("k", b"acknowledged")
if os.fork() == 0:
    os.write(1, b"child %d\\n" % os.getpid())  # one write each: the lines do not mix
    os.read(0, 1)  # until the test closes our stdin
    os._exit(0)
os.write(1, b"parent\\n")
os.read(0, 1)  # until SIGKILL
"""


def test_a_new_writer_opens_once_a_killed_parent_is_dead_though_its_child_lives(
    store: str,
) -> None:
    """Crash model: process crash. The lock dies with the writer process, not with
    the last forked child still running."""
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT_THEN_CHILD, store],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdin is not None and parent.stdout is not None
    try:
        lines = sorted(parent.stdout.readline().split() for _ in range(2))
        assert lines[1] == ["parent"], lines
        child_pid = int(lines[0][1])
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        os.kill(child_pid, 0)  # the child still runs (raises if it does not)
        with BlobCache(store) as again:  # LockedError if the child held the lock
            assert again["k"] == b"acknowledged"
    finally:
        parent.kill()
        parent.wait()
        parent.stdin.close()  # the child reads EOF and exits
        parent.stdout.close()


def test_a_forked_child_does_not_hold_the_flocks_of_a_put_under_way(store: str) -> None:
    """A put in another thread holds its key directory (shared, against `blobcache
    gc`) and its temp file (against the janitor) flocked; a child forked meanwhile
    must not keep either locked once the put is done."""
    cache = BlobCache(store, inline_limit=0)
    cache.put("k", b"v1")
    keydir = os.path.dirname(file_of(cache, "k"))
    inside, finish = threading.Event(), threading.Event()

    def chunks() -> Iterator[bytes]:
        yield b"first chunk"
        inside.set()
        finish.wait()
        yield b", last chunk"

    putter = threading.Thread(target=cache.put_stream, args=("k", chunks()))
    putter.start()
    inside.wait()
    go = _Gate()
    forked = _Child(go.wait)
    finish.set()
    putter.join()
    try:
        assert cache["k"] == b"first chunk, last chunk"
        held = _fsio.lock_dir(keydir, exclusive=True, wait=False)
        assert held is not None, "the child holds the key directory's flock"
        _fsio.unlock(held)
        fd = os.open(file_of(cache, "k"), os.O_RDONLY)  # the temp file, renamed
        try:
            assert _fsio.try_lock(fd), "the child holds the temp file's flock"
        finally:
            os.close(fd)
    finally:
        go.open()
        forked.result()
        cache.close()


def test_every_flocked_descriptor_is_forgotten_once_closed(store: str, tmp_path: Any) -> None:
    """A descriptor left noted after its close would be closed by a forked child,
    whatever the child later opened under its number."""
    before = set(_fsio._flocked)
    cache = BlobCache(store, inline_limit=1024, durability="os", sync_interval=3600)
    with pytest.raises(BlobCacheError):
        BlobCache(store)  # LockedError: its descriptor is closed and forgotten too
    assert len(_fsio._flocked - before) == 1  # the store's lock
    source = tmp_path / "source"
    source.write_bytes(_large(5000))
    cache.put("a", _large(3000))
    cache.put("a", _large(4000))
    cache.put_file("b", str(source))
    cache.put_stream("c", [_large(2000), _large(2000)])
    cache.put("d", b"small")
    cache.put("d", b"small again")
    cache.delete("b")
    cache.gc()  # the janitor, and compaction (a temp file in the log directory)
    assert len(_fsio._flocked - before) == 1
    cache.close()
    assert set(_fsio._flocked) == before
