"""Handles across fork, dropped handles, and who holds the store's lock.

A forked child (a DataLoader worker, a ``multiprocessing`` "fork" pool) inherits
the parent's handles. It may read through them; everything that changes files
(put, delete, gc, sync, the fall back of a damaged value) is refused with one
``BlobCacheError`` naming the parent, and ``close()`` there only closes the
child's copy. The child does not hold the parent's locks: the copies of every
flocked descriptor are closed at the fork (``_fsio``), so the parent's close(),
or its death, frees the store while the child runs on.

A handle dropped without ``close()`` lets go of the store once it is collected
(its background threads hold it only weakly): syncs what ``"os"`` owes, closes
the log, releases the lock.

Crash models: process crash (a SIGKILLed parent with a live child) and power
loss (the crash states of a dropped ``"os"`` handle, ``tests/crashsim.py``).
Children are synchronised through pipes only, never sleeps.
"""

from __future__ import annotations

import asyncio
import copy
import gc
import io
import os
import pickle
import select
import signal
import subprocess
import sys
import threading
import traceback
import weakref
from collections.abc import Callable, Iterator
from typing import Any, Final

import aiofiles
import pytest

from blobcache import AsyncBlobCache, BlobCache, BlobCacheError, _fsio
from tests import crashsim as C
from tests.conftest import file_of, flip_bit

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

Outcome = tuple[str, Any]  # ("ok", what the call returned) or ("raised", (type name, message))


def _outcome(call: Callable[[], object]) -> Outcome:
    try:
        return ("ok", call())
    except BlobCacheError as exc:
        return ("raised", (type(exc).__name__, str(exc)))


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

    def result(self, hang: float = 60.0) -> Any:
        """What the child returned; fails the test if it has not after ``hang``
        seconds (a deadlock: this is no synchronisation, the child says when it is done)."""
        ready, _, _ = select.select([self._result], [], [], hang)
        if not ready:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            pytest.fail(f"the child hung for {hang} s")
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


def _files(root: str) -> dict[str, tuple[int, int, int]]:
    """Every file and directory under ``root``: (inode, size, mtime in ns)."""
    found = {}
    for directory, dirs, names in os.walk(root):
        for name in dirs + names:
            path = os.path.join(directory, name)
            st = os.stat(path)
            found[os.path.relpath(path, root)] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return found


def _refused_as_inherited(outcome: Outcome) -> bool:
    """The one error an inherited handle gives for what would change files."""
    if outcome[0] != "raised":
        return False
    name, message = outcome[1]
    return (
        name == "BlobCacheError"
        and f"opened by process {os.getpid()}" in message
        and "inherited by a fork" in message
        and "open a handle in this process" in message
    )


# --- 1. a forked child changes nothing of the parent's ---------------------------------


def test_gc_in_a_forked_child_keeps_the_puts_the_parent_made_after_the_fork(store: str) -> None:
    cache = BlobCache(store)
    cache.put("k", b"old")
    cache.put("k", b"new")  # a stale record: gc has a log to compact
    go = _Gate()

    def child() -> Outcome:
        go.wait()
        return _outcome(cache.gc)

    forked = _Child(child)
    for i in range(101):
        cache.put(f"after-fork-{i}", b"acknowledged")
    before = _files(store)
    go.open()
    outcome = forked.result()
    assert _files(store) == before  # the child touched nothing
    cache.put("after-child", b"still writing")
    cache.close()
    with BlobCache(store) as again:
        assert again.problems == ()
        assert [again.get(f"after-fork-{i}") for i in range(101)] == [b"acknowledged"] * 101
        assert again["k"] == b"new" and again["after-child"] == b"still writing"
    assert _refused_as_inherited(outcome), outcome


def _large(n: int) -> bytes:
    return bytes(i % 251 for i in range(n))


def test_every_method_of_an_inherited_handle_in_a_forked_child(store: str, tmp_path: Any) -> None:
    cache = BlobCache(store, inline_limit=1024)
    cache.put("small", b"s")
    cache.put("large", _large(3000))
    cache.put("mapped", _large(2000))
    assert cache["mapped"] == _large(2000)  # mapped before the fork: the child inherits the view
    source = tmp_path / "source"
    source.write_bytes(_large(5000))

    def child() -> dict[str, Outcome]:
        calls: dict[str, Callable[[], object]] = {
            # reads: served from the inherited index and files
            "get small": lambda: cache.get("small"),
            "get large": lambda: bytes(cache.get("large") or b""),
            "get mapped before the fork": lambda: bytes(cache["mapped"]),
            "get missing": lambda: cache.get("missing", b"default"),
            "[]": lambda: cache["small"],
            "in": lambda: ("small" in cache, "missing" in cache),
            "len": lambda: len(cache),
            "iter": lambda: sorted(cache),
            "keys, values, items": lambda: (
                sorted(cache.keys()),
                len(list(cache.values())),
                len(cache.items()),
            ),
            "path": lambda: cache.path("large"),
            "open": lambda: cache.open("large").read(),
            "stats": lambda: cache.stats().keys,
            "problems": lambda: cache.problems,
            "options": lambda: cache.options.inline_limit,
            "directory": lambda: cache.directory,
            "repr": lambda: repr(cache),
            "setdefault of a present key": lambda: cache.setdefault("small", b"x"),
            "==": lambda: cache == {"small": b"s", "large": _large(3000), "mapped": _large(2000)},
            # what would change files: refused
            "put": lambda: cache.put("small", b"child"),
            "put large": lambda: cache.put("large", _large(4000)),
            "[]=": lambda: cache.__setitem__("new", b"child"),
            "put_file": lambda: cache.put_file("large", str(source)),
            "put_file of a file object": lambda: cache.put_file("f", io.BytesIO(_large(5000))),
            "put_stream": lambda: cache.put_stream("large", [_large(3000)]),
            "delete": lambda: cache.delete("small"),
            "del": lambda: cache.__delitem__("small"),
            "pop": lambda: cache.pop("small"),
            "popitem": cache.popitem,
            "clear": cache.clear,
            "update": lambda: cache.update({"u": b"child"}),
            "setdefault of a missing key": lambda: cache.setdefault("missing", b"x"),
            "gc": cache.gc,
            "sync": cache.sync,
        }
        outcomes = {name: _outcome(call) for name, call in calls.items()}
        outcomes["background threads"] = _outcome(
            lambda: [t.name for t in threading.enumerate() if t.name.startswith("blobcache-")]
        )
        outcomes["leaving a with block"] = _outcome(lambda: cache.__exit__(None, None, None))
        outcomes["get after close"] = _outcome(lambda: cache.get("small"))
        outcomes["close again"] = _outcome(cache.close)
        return outcomes

    before = _files(store)
    outcomes = _Child(child).result()
    assert _files(store) == before  # the child touched nothing
    keys = ["large", "mapped", "small"]
    assert outcomes.pop("get small") == ("ok", b"s")
    assert outcomes.pop("get large") == ("ok", _large(3000))
    assert outcomes.pop("get mapped before the fork") == ("ok", _large(2000))
    assert outcomes.pop("get missing") == ("ok", b"default")
    assert outcomes.pop("[]") == ("ok", b"s")
    assert outcomes.pop("in") == ("ok", (True, False))
    assert outcomes.pop("len") == ("ok", 3)
    assert outcomes.pop("iter") == ("ok", keys)
    assert outcomes.pop("keys, values, items") == ("ok", (keys, 3, 3))
    assert outcomes.pop("path") == ("ok", file_of(cache, "large"))
    assert outcomes.pop("open") == ("ok", _large(3000))
    assert outcomes.pop("stats") == ("ok", 3)
    assert outcomes.pop("problems") == ("ok", ())
    assert outcomes.pop("options") == ("ok", 1024)
    assert outcomes.pop("directory") == ("ok", cache.directory)
    assert outcomes.pop("repr") == ("ok", repr(cache))
    assert outcomes.pop("setdefault of a present key") == ("ok", b"s")
    assert outcomes.pop("==") == ("ok", True)
    assert outcomes.pop("background threads") == ("ok", [])  # none runs in the child
    assert outcomes.pop("leaving a with block") == ("ok", None)  # close(): the child's copy
    assert outcomes.pop("get after close")[1][0] == "ClosedError"
    assert outcomes.pop("close again") == ("ok", None)
    refused = {name: o for name, o in outcomes.items() if not _refused_as_inherited(o)}
    assert refused == {}, "not refused as an inherited handle's"
    # The parent's handle is untouched by all that: it reads, writes, syncs, collects.
    assert cache["small"] == b"s"
    cache.put("small", b"parent")
    cache.delete("large")
    cache.sync()
    cache.gc()
    cache.close()
    with BlobCache(store) as again:
        assert dict(again.items()) == {"small": b"parent", "mapped": _large(2000)}


def test_an_inherited_handle_takes_no_lock_a_parent_thread_held_at_the_fork(
    store: str,
) -> None:
    """A lock held by another thread of the parent at the fork stays held in the
    child forever (the thread is not there to release it)."""
    cache = BlobCache(store, inline_limit=1024)
    cache.put("large", _large(3000))
    held = [
        cache._garbage.compact_lock,
        cache._index.lock,
        cache._garbage.gc_lock,
        *cache._writes.stripes,
    ]
    for lock in held:  # as a compaction and a put under way in other threads would
        lock.acquire()
    try:
        forked = _Child(
            lambda: (
                cache.stats().keys,
                bytes(cache["large"]),
                _outcome(lambda: cache.put("large", b"x"))[0],
                _outcome(cache.gc)[0],
                _outcome(cache.sync)[0],
                cache.close(),
            )
        )
    finally:
        for lock in held:
            lock.release()
    assert forked.result(hang=20) == (1, _large(3000), "raised", "raised", "raised", None)
    cache.close()


def test_a_damaged_value_read_in_a_forked_child_is_not_repaired_there(store: str) -> None:
    cache = BlobCache(store, inline_limit=1024)
    cache.put("k", _large(2000))
    cache.put("k", _large(3000))  # the older version stays until gc: the one to fall back to
    flip_bit(file_of(cache, "k"), 100)
    before = _files(store)
    outcome = _Child(lambda: _outcome(lambda: cache.get("k"))).result()
    assert _files(store) == before  # falling back writes: the child must not
    assert outcome[0] == "raised" and outcome[1][0] == "CorruptionError", outcome
    assert "checksum mismatch" in outcome[1][1], outcome  # what is wrong, as a reader says
    assert cache["k"] == _large(2000)  # the parent falls back
    cache.close()


def test_a_handle_a_forked_child_drops_without_close_leaves_the_parents_files(
    store: str,
) -> None:
    holder = [BlobCache(store, durability="os", sync_interval=3600, inline_limit=0)]
    holder[0].put("k", b"v")  # owed an fsync: the finalizer would sync it, and close the log

    def child() -> tuple[bool, list[str]]:
        calls: list[str] = []
        for name in ("fdatasync", "fsync_path", "fsync_dir", "truncate", "unlock"):
            real = getattr(_fsio, name)

            def noted(*args: Any, _name: str = name, _real: Any = real) -> Any:
                calls.append(_name)
                return _real(*args)

            setattr(_fsio, name, noted)  # in the child's memory only
        dropped = weakref.ref(holder.pop())  # the only reference left in the child
        gc.collect()
        return dropped() is None, calls  # collected, so its finalizer ran: doing nothing

    before = _files(store)
    assert _Child(child).result() == (True, [])
    assert _files(store) == before
    cache = holder.pop()
    cache.put("k2", b"v2")
    cache.close()
    with BlobCache(store) as again:
        assert dict(again.items()) == {"k": b"v", "k2": b"v2"}


def test_every_method_of_an_inherited_async_handle_in_a_forked_child(
    store: str, tmp_path: Any
) -> None:
    source = tmp_path / "source"
    source.write_bytes(_large(5000))
    acache = AsyncBlobCache(store, inline_limit=1024)
    asyncio.run(acache.open_store())
    acache.sync_cache.put("small", b"s")
    acache.sync_cache.put("large", _large(3000))

    async def chunks() -> Any:
        yield b"one chunk"

    async def put_async_file() -> None:
        async with aiofiles.open(source, "rb") as f:
            await acache.put_file("f", f)

    async def via_sync_cache() -> object:
        return acache.sync_cache.get("small")

    async def calls() -> dict[str, Outcome]:
        async def run(call: Callable[[], Any]) -> Outcome:
            try:
                return ("ok", await call())
            except BlobCacheError as exc:
                return ("raised", (type(exc).__name__, str(exc)))

        async def opened() -> bytes:
            return (await acache.open("large")).read()

        async def stats() -> int:
            return (await acache.stats()).keys

        outcomes = {
            "open_store": await run(acache.open_store),  # already open: nothing to do
            "sync_cache": await run(via_sync_cache),
            "get": await run(lambda: acache.get("small")),
            "open": await run(opened),
            "stats": await run(stats),
            "put": await run(lambda: acache.put("small", b"child")),
            "delete": await run(lambda: acache.delete("small")),
            "put_file": await run(lambda: acache.put_file("f", io.BytesIO(_large(5000)))),
            "put_file of a path": await run(lambda: acache.put_file("f", source)),
            "put_file of an async file": await run(put_async_file),
            "put_stream": await run(lambda: acache.put_stream("f", [_large(5000)])),
            "put_stream of an async iterable": await run(lambda: acache.put_stream("f", chunks())),
            "sync": await run(acache.sync),
            "gc": await run(acache.gc),
            "leaving an async with block": await run(lambda: acache.__aexit__(None, None, None)),
        }
        outcomes["get after close"] = await run(lambda: acache.get("small"))
        return outcomes

    before = _files(store)
    outcomes = _Child(lambda: asyncio.run(calls())).result()
    assert _files(store) == before
    assert outcomes.pop("get") == ("ok", b"s")
    assert outcomes.pop("open") == ("ok", _large(3000))
    assert outcomes.pop("stats") == ("ok", 2)
    assert outcomes.pop("open_store") == ("ok", None)
    assert outcomes.pop("sync_cache") == ("ok", b"s")
    assert outcomes.pop("leaving an async with block") == ("ok", None)
    assert outcomes.pop("get after close")[1][0] == "ClosedError"
    refused = {name: o for name, o in outcomes.items() if not _refused_as_inherited(o)}
    assert refused == {}, "not refused as an inherited handle's"
    asyncio.run(acache.put("small", b"parent"))
    asyncio.run(acache.close())
    with BlobCache(store) as again:
        assert again["small"] == b"parent"


# --- 18. the lock: not held by a forked child, nor by a dropped handle -----------------


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


@pytest.mark.parametrize(
    ("options", "threads"),
    [
        pytest.param({}, 1, id="fsync"),
        pytest.param({"gc_interval": 3600.0}, 2, id="gc-thread"),
        pytest.param({"durability": "os", "sync_interval": 3600.0}, 2, id="os-sync-thread"),
    ],
)
def test_a_handle_dropped_without_close_releases_the_store(
    store: str, options: dict[str, Any], threads: int
) -> None:
    cache = BlobCache(store, inline_limit=1024, **options)
    cache.put("small", b"s")
    cache.put("large", _large(3000))
    assert len(cache._threads) == threads  # none of them may keep the handle alive
    del cache
    gc.collect()
    with BlobCache(store) as again:  # LockedError if the dropped handle held on
        assert dict(again.items()) == {"small": b"s", "large": _large(3000)}


def test_dropping_an_os_handle_makes_its_acknowledged_puts_durable(store: str) -> None:
    """Crash model: power loss. A dropped handle syncs what it owes, as close() would."""

    def steps(d: C.Driver) -> None:
        d.small("a")
        d.large("B", 3000)
        d.small("a", 30)
        d.large("C", 2000)
        d.settle()  # no background compaction holds the handle meanwhile
        d._cache = None  # dropped without close(): the finalizer lets go of the store
        gc.collect()
        d.recorder.mark(C.Synced("dropped"))
        d.small("after", 10)  # opens the store again: the drop released the lock

    workload = C.Workload("os-dropped-handle", {**C.BASE, "durability": "os"}, steps)
    config = C.Config(max_states=32, exhaustive=128, deep_probe=True)
    report = C.explore(workload, config)
    print(report.summary())
    assert not report.failures, "\n\n".join(map(str, report.failures))
    assert report.states_checked >= 100, report.summary()


def test_a_failure_letting_go_of_a_dropped_handle_is_logged_and_the_lock_released(
    store: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cache = BlobCache(store, durability="os", sync_interval=3600, inline_limit=0)
    cache.put("k", b"v")

    def failing(path: str) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(_fsio, "fsync_path", failing)
    del cache
    gc.collect()
    assert "dropped without close(), failed" in caplog.text
    monkeypatch.undo()
    with BlobCache(store) as again:  # released all the same
        assert again["k"] == b"v"


# --- 22. clear and pickling ------------------------------------------------------------


def test_clear_reads_no_value_and_lists_the_keys_once(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MutableMapping.clear pops one item at a time: every value read, and the key
    list copied for each key (quadratic)."""
    cache = BlobCache(store, inline_limit=1024)
    for i in range(50):
        cache.put(f"k{i}", b"v" if i % 2 else _large(2000))
    listed: list[str] = []
    read: list[object] = []
    real_iter, real_getitem = BlobCache.__iter__, BlobCache.__getitem__

    def iterate(self: BlobCache) -> Iterator[Any]:
        listed.append("a copy of every key")
        return real_iter(self)

    def getitem(self: BlobCache, key: Any) -> Any:
        read.append(key)
        return real_getitem(self, key)

    monkeypatch.setattr(BlobCache, "__iter__", iterate)
    monkeypatch.setattr(BlobCache, "__getitem__", getitem)
    cache.clear()
    monkeypatch.undo()
    assert len(cache) == 0
    assert len(listed) <= 1 and read == []
    cache.close()
    with BlobCache(store) as again:
        assert len(again) == 0
        assert again.gc().dirs_removed >= 25  # the large values' directories went


def test_a_handle_refuses_pickling_with_how_to_share_a_store(store: str) -> None:
    with BlobCache(store) as cache:
        cache.put("k", b"v")
        for attempt in (pickle.dumps, copy.copy, copy.deepcopy):
            with pytest.raises(TypeError) as info:
                attempt(cache)
            message = str(info.value)
            assert "open a handle in each" in message and "readonly=True" in message
        assert cache["k"] == b"v"
    acache = AsyncBlobCache(store)
    asyncio.run(acache.open_store())
    try:
        with pytest.raises(TypeError, match="open a handle in each"):
            pickle.dumps(acache)
    finally:
        asyncio.run(acache.close())


def test_compaction_itself_refuses_an_inherited_handle(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defence in depth (review of issue 12): not only gc() but the compaction it
    calls refuses in a forked child, which would cut the parent's active segment."""
    cache = BlobCache(store, segment_bytes=4096)
    monkeypatch.setattr(cache, "_maybe_compact", lambda: None)  # the parent's files stay still
    for i in range(60):
        cache.put(f"k{i % 5}", b"x" * 100)
    before = _files(store)
    outcome = _Child(lambda: _outcome(lambda: cache._compact(force=True))).result()
    assert _refused_as_inherited(outcome), outcome
    assert _files(store) == before
    cache.close()
