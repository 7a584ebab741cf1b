"""Handles across fork, dropped handles, and who holds the store.

A forked child (a DataLoader worker, a ``multiprocessing`` "fork" pool) inherits
the parent's handles. Its first use of one opens the store anew in the child
(issue 14: ``cache._adopt``); from then on the handle reads and writes there as
any handle beside the parent's does, and the parent follows what it wrote. Until
that first use the child holds nothing of the parent's: the copies of every
flocked descriptor are closed at the fork (``_fsio``), so the parent's close(),
or its death, frees the store while the child runs on; ``close()`` of a handle
the child never used only closes the child's copy.

A handle dropped without ``close()`` lets go of the store once it is collected
(its background threads hold it only weakly): syncs what ``"os"`` owes, closes
the log, releases the lock. A copy or a pickle of a handle opens the store anew
with the same options.

"Nobody holds the store" is checked as ``blobcache gc`` checks it before it
compacts a store no handle has open: ``LOCK`` can be taken exclusively.

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
from collections.abc import Callable, Iterator, Mapping
from types import TracebackType
from typing import Any, Final

import aiofiles
import pytest

from blobcache import AsyncBlobCache, BlobCache, BlobCacheError, _fsio, _index, _maintenance
from blobcache import _format as F
from blobcache import cache as cache_module
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


def _large(n: int) -> bytes:
    return bytes(i % 251 for i in range(n))


def _items(cache: Mapping[Any, Any]) -> dict[Any, bytes]:
    """What ``cache`` holds, every value as bytes."""
    return {key: bytes(value) for key, value in cache.items()}


def _nobody_holds(store: str) -> bool:
    """Whether ``blobcache gc`` would find the store free to compact: no handle
    anywhere holds ``LOCK`` (a forked child's copy of it included)."""
    return not _maintenance.writer_running(store)


def _descriptors() -> dict[int, str]:
    """The descriptors open in this process, each with what it is open on
    (after a collection: none left only for the garbage collector to close)."""
    gc.collect()
    found = {}
    for name in os.listdir("/dev/fd"):
        try:
            found[int(name)] = os.readlink(os.path.join("/dev/fd", name))
        except OSError:
            continue  # the listing's own, closed by now
    return found


# --- 1. a forked child writes beside its parent -----------------------------------------


def test_gc_in_a_forked_child_keeps_the_puts_the_parent_made_after_the_fork(store: str) -> None:
    """The child opens the store anew (its first use), then the parent puts,
    overwrites and deletes while the child's index knows nothing of it (no
    background catching up): the child's gc must take all of that in, not drop
    it with the segments it replaces, nor collect the parent's new versions."""
    cache = BlobCache(store, inline_limit=1024, segment_bytes=4096, refresh_interval=3600)
    # Compaction only in the child's gc(): so it is sure to find the log to compact
    # (a compaction under way elsewhere would make it a no-op). Set on the
    # instance, so it holds in the child too.
    cache._maybe_compact = lambda: None  # type: ignore[method-assign]
    for i in range(60):
        cache.put(f"k{i % 5}", b"%d" % i * 50)  # sealed segments full of stale records
    cache.put("big", _large(3000))
    model = {**{f"k{i}": b"%d" % (55 + i) * 50 for i in range(5)}, "big": _large(3000)}
    adopted, go = _Gate(), _Gate()

    def child() -> tuple[bytes, int, dict[str, bytes]]:
        before = cache["k0"]  # the first use: the store opened anew here
        adopted.open()
        go.wait()
        compacted = cache.gc().segments_compacted
        return bytes(before), compacted, _items(cache)

    forked = _Child(child)
    adopted.wait()
    for i in range(101):
        cache.put(f"after-fork-{i}", b"acknowledged")
        model[f"after-fork-{i}"] = b"acknowledged"
    cache.put("k0", b"new k0")
    cache.delete("k4")
    cache.put("big", _large(4000))  # a new version; the old one is garbage
    cache.put("large-after", _large(5000))
    model.update({"k0": b"new k0", "big": _large(4000), "large-after": _large(5000)})
    del model["k4"]
    go.open()
    before, compacted, seen = forked.result()
    assert before == b"55" * 50
    assert compacted >= 2, "the child's gc compacted nothing: the test tests nothing"
    assert seen == model  # the child's gc caught up with the parent first
    assert _items(cache) == model  # the parent serves it all, after the compaction
    cache.put("after-child", b"still writing")  # into the active segment the child rolled to
    model["after-child"] = b"still writing"
    cache.close()
    with BlobCache(store) as again:
        assert again.problems == ()
        assert _items(again) == model


def test_the_parent_follows_what_a_forked_child_put_before_the_child_compacted(
    store: str,
) -> None:
    """The child's compaction replaces the segment the parent's follower stands
    in (the output takes its number): the parent must still take in every
    record the child wrote there before, and not serve its own superseded
    version, which the child's gc removed."""
    cache = BlobCache(store, inline_limit=1024, refresh_interval=3600)
    cache.put("big", _large(3000))
    cache.put("k", b"parent")

    def child() -> int:
        cache.put("big", b"small now")  # the parent's version is garbage from here on
        cache.put("from-child", b"c")
        cache.delete("k")
        return cache.gc().segments_compacted

    assert _Child(child).result() >= 1
    cache.refresh()
    assert _items(cache) == {"big": b"small now", "from-child": b"c"}
    cache.close()
    with BlobCache(store) as again:
        assert again.problems == ()
        assert _items(again) == {"big": b"small now", "from-child": b"c"}


def _first_use(cache: BlobCache, call: Callable[[BlobCache], object]) -> Outcome:
    """What ``call(cache)`` gave in a forked child, as the first use there of the
    inherited ``cache``; the child closes its handle after."""

    def child() -> Outcome:
        try:
            return _outcome(lambda: call(cache))
        finally:
            cache.close()

    outcome: Outcome = _Child(child).result()
    return outcome


def test_every_method_of_an_inherited_handle_works_as_its_first_use_in_a_forked_child(
    store: str, tmp_path: Any
) -> None:
    """One child per call, each the child's first use of the inherited handle
    (each method reaches the adoption its own way); after each, the parent
    follows what the child wrote."""
    cache = BlobCache(store, inline_limit=1024, refresh_interval=3600)
    cache.put("small", b"s")
    cache.put("large", _large(3000))
    cache.put("mapped", _large(2000))
    assert cache["mapped"] == _large(2000)  # mapped before the forks: each child inherits the view
    model = {"small": b"s", "large": _large(3000), "mapped": _large(2000)}
    source = tmp_path / "source"
    source.write_bytes(_large(5000))
    keys = ["large", "mapped", "small"]
    reads: dict[str, tuple[Callable[[BlobCache], object], object]] = {
        "get small": (lambda c: c.get("small"), b"s"),
        "get large": (lambda c: bytes(c.get("large") or b""), _large(3000)),
        "get mapped before the fork": (lambda c: bytes(c["mapped"]), _large(2000)),
        "get missing": (lambda c: c.get("missing", b"default"), b"default"),
        "[]": (lambda c: c["small"], b"s"),
        "in": (lambda c: "small" in c, True),
        "not in": (lambda c: "missing" in c, False),
        "len": (len, 3),
        "iter": (sorted, keys),
        "keys": (lambda c: sorted(c.keys()), keys),
        "values": (lambda c: sorted(bytes(v) for v in c.values()), sorted(model.values())),
        "items": (_items, model),
        "==": (lambda c: c == model, True),
        "path": (lambda c: c.path("large"), file_of(cache, "large")),
        "path of a small value": (lambda c: c.path("small"), None),
        "open": (lambda c: c.open("large").read(), _large(3000)),
        "stats": (lambda c: c.stats().keys, 3),
        "problems": (lambda c: c.problems, ()),
        "options": (lambda c: c.options, cache.options),
        "directory": (lambda c: c.directory, cache.directory),
        "repr": (repr, repr(cache)),
        "setdefault of a present key": (lambda c: c.setdefault("small", b"x"), b"s"),
        "refresh": (BlobCache.refresh, None),
    }
    for name, (call, expected) in reads.items():
        assert _first_use(cache, call) == ("ok", expected), name
    # Each a change of the store: what it returns, and what it changed (None: deleted).
    writes: dict[str, tuple[Callable[[BlobCache], object], object, dict[str, bytes | None]]] = {
        "put": (lambda c: c.put("small", b"child"), None, {"small": b"child"}),
        "put large": (lambda c: c.put("large", _large(4000)), None, {"large": _large(4000)}),
        "[]=": (lambda c: c.__setitem__("new", b"child"), None, {"new": b"child"}),
        "put_file": (lambda c: c.put_file("large", str(source)), None, {"large": _large(5000)}),
        "put_file of a file object": (
            lambda c: c.put_file("f", io.BytesIO(_large(6000))),
            None,
            {"f": _large(6000)},
        ),
        "put_stream": (
            lambda c: c.put_stream("st", [_large(1500), _large(1500)]),
            None,
            {"st": _large(1500) * 2},
        ),
        "delete": (lambda c: c.delete("new"), True, {"new": None}),
        "delete of a missing key": (lambda c: c.delete("new"), False, {}),
        "del": (lambda c: c.__delitem__("f"), None, {"f": None}),
        "pop": (lambda c: c.pop("small"), b"child", {"small": None}),
        "update": (
            lambda c: c.update({"u": b"child", "small": b"again"}),
            None,
            {"u": b"child", "small": b"again"},
        ),
        "setdefault of a missing key": (
            lambda c: c.setdefault("missing", b"x"),
            b"x",
            {"missing": b"x"},
        ),
        "sync": (BlobCache.sync, None, {}),
        "gc": (lambda c: type(c.gc()).__name__, "GcResult", {}),
    }
    for name, (call, returned, changes) in writes.items():
        assert _first_use(cache, call) == ("ok", returned), name
        for key, value in changes.items():
            if value is None:
                del model[key]
            else:
                model[key] = value
        cache.refresh()
        assert _items(cache) == model, name  # the parent follows the child
    outcome = _first_use(cache, lambda c: (lambda kv: (kv[0], bytes(kv[1])))(c.popitem()))
    assert outcome[0] == "ok" and outcome[1][1] == model.pop(outcome[1][0]), outcome
    cache.refresh()
    assert _items(cache) == model
    assert _first_use(cache, BlobCache.clear) == ("ok", None)
    cache.refresh()
    assert len(cache) == 0
    # The parent's own handle goes on: reads, writes, syncs, collects.
    cache.put("small", b"parent")
    cache.sync()
    cache.gc()
    cache.close()
    with BlobCache(store) as again:
        assert again.problems == ()
        assert _items(again) == {"small": b"parent"}


def test_a_forked_child_runs_threads_of_its_own_once_it_uses_an_inherited_handle(
    store: str,
) -> None:
    cache = BlobCache(store, durability="os", gc_interval=3600)

    def blobcache_threads() -> list[str]:
        """In the child: only the forking thread crossed the fork."""
        return sorted(t.name for t in threading.enumerate() if t.name.startswith("blobcache-"))

    def child() -> tuple[list[str], list[str], list[str]]:
        before = blobcache_threads()  # the parent's do not cross a fork
        cache.put("k", b"child")
        during = blobcache_threads()
        cache.close()
        return before, during, blobcache_threads()

    names = [
        "blobcache-compaction",
        "blobcache-expiry",
        "blobcache-gc",
        "blobcache-refresh",
        "blobcache-sync",
    ]
    assert sorted(t.name for t in cache._threads) == names
    assert _Child(child).result() == ([], names, [])
    cache.refresh()
    assert cache["k"] == b"child"
    cache.close()


class _NotingLock:
    """A lock that says when a second thread comes to take it."""

    def __init__(self, arrived: threading.Event) -> None:
        self._lock = threading.Lock()
        self._arrived = arrived
        self._holder: threading.Thread | None = None

    def __enter__(self) -> None:
        if self._holder is not None and self._holder is not threading.current_thread():
            self._arrived.set()
        self._lock.acquire()
        self._holder = threading.current_thread()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._holder = None
        self._lock.release()


def test_a_thread_of_a_forked_child_waits_for_the_adoption_another_thread_has_under_way(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While one thread of the child opens the store anew (half of the handle
    its own, half still the parent's), a put in another thread must wait for
    it, not write through the parent's log writer, whose descriptors are
    closed in the child (their numbers reused by the adoption's own)."""
    cache = BlobCache(store)
    cache.put("k", b"v")

    def child() -> tuple[str, bytes | None, bytes | None]:
        # Whichever comes first: the put is done, or it waits for the adoption.
        done_or_waiting = threading.Event()
        noting = _NotingLock(done_or_waiting)
        cache._forked_lock = noting  # type: ignore[assignment]
        order: list[str] = []
        putters: list[threading.Thread] = []
        real_index = _index.Index

        def put_in_another_thread() -> None:
            try:
                cache.put("b", b"from another thread")
            finally:
                order.append("the put returned")
                done_or_waiting.set()

        def index_midway(*args: Any) -> Any:
            # Inside the adoption, once the handle holds its own lock and STATE.
            # (Set again should the adoption give the handle a new lock: the
            # other thread must come to the one this thread holds.)
            monkeypatch.setattr(cache_module, "Index", real_index)
            cache._forked_lock = noting  # type: ignore[assignment]
            putters.append(threading.Thread(target=put_in_another_thread))
            putters[0].start()
            done_or_waiting.wait()
            order.append("the adoption went on")
            return real_index(*args)

        # In the child's memory only: the parent's monkeypatch records nothing.
        monkeypatch.setattr(cache_module, "Index", index_midway)
        got = cache.get("k")  # the first use: the adoption, in this thread
        for thread in putters:
            thread.join()
        first = order[0]
        seen = cache.get("b")
        cache.close()
        return first, None if got is None else bytes(got), None if seen is None else bytes(seen)

    assert _Child(child).result(hang=20) == ("the adoption went on", b"v", b"from another thread")
    cache.refresh()
    assert cache["b"] == b"from another thread"
    cache.close()


def test_an_inherited_handle_takes_no_lock_a_parent_thread_held_at_the_fork(
    store: str,
) -> None:
    """A lock held by another thread of the parent at the fork stays held in the
    child forever (the thread is not there to release it): the child's handle,
    opened anew, uses none of the parent's."""
    cache = BlobCache(store, inline_limit=1024, refresh_interval=3600)
    cache.put("large", _large(3000))
    held = [
        cache._garbage.compact_lock,
        cache._index.lock,
        cache._garbage.gc_lock,
        *cache._writes.stripes,
    ]
    for lock in held:  # as a compaction and a put under way in other threads would
        lock.acquire()

    def child() -> tuple[int, bytes, Outcome, Outcome, Outcome]:
        found = (
            cache.stats().keys,
            bytes(cache["large"]),
            _outcome(lambda: cache.put("large", b"x")),
            _outcome(lambda: type(cache.gc()).__name__),
            _outcome(cache.sync),
        )
        cache.close()
        return found

    try:
        forked = _Child(child)
    finally:
        for lock in held:
            lock.release()
    assert forked.result(hang=20) == (
        1,
        _large(3000),
        ("ok", None),
        ("ok", "GcResult"),
        ("ok", None),
    )
    cache.refresh()
    assert cache["large"] == b"x"
    cache.close()


def test_a_damaged_value_read_in_a_forked_child_falls_back_there_for_the_parent_too(
    store: str,
) -> None:
    cache = BlobCache(store, inline_limit=1024, refresh_interval=3600)
    cache.put("k", _large(2000))
    cache.put("k", _large(3000))  # the older version stays until gc: the one to fall back to
    damaged = file_of(cache, "k")
    flip_bit(damaged, 100)

    def child() -> tuple[bytes, list[str], str | None]:
        value = bytes(cache["k"])
        return value, [p.message for p in cache.problems], cache.path("k")

    value, problems, path = _Child(child).result()
    assert value == _large(2000)  # the child is a writer: it falls back, writing anew
    assert len(problems) == 1 and "serving the older record" in problems[0], problems
    assert path is not None and path != damaged
    cache.refresh()  # the parent follows the child's fall back: it never reads the damage
    assert cache.path("k") == path
    assert cache["k"] == _large(2000)
    assert cache.problems == ()
    cache.close()
    with BlobCache(store) as again:
        assert again["k"] == _large(2000)


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
    acache = AsyncBlobCache(store, inline_limit=1024, refresh_interval=3600)
    asyncio.run(acache.open_store())
    acache.sync_cache.put("small", b"s")
    acache.sync_cache.put("large", _large(3000))

    async def chunks() -> Any:
        yield b"one chunk"

    async def put_async_file() -> None:
        async with aiofiles.open(source, "rb") as f:
            await acache.put_file("a", f)

    async def via_sync_cache() -> object:
        return acache.sync_cache.get("small")

    async def calls() -> dict[str, Outcome]:
        async def run(call: Callable[[], Any]) -> Outcome:
            try:
                value = await call()
            except BlobCacheError as exc:
                return ("raised", (type(exc).__name__, str(exc)))
            return ("ok", bytes(value) if isinstance(value, memoryview) else value)

        async def opened() -> bytes:
            return (await acache.open("large")).read()

        async def stats() -> int:
            return (await acache.stats()).keys

        async def gc() -> str:
            return type(await acache.gc()).__name__

        return {
            # The first use, in a worker thread: the adoption runs off the loop.
            "get": await run(lambda: acache.get("small")),
            "open_store": await run(acache.open_store),  # already open: nothing to do
            "sync_cache": await run(via_sync_cache),
            "open": await run(opened),
            "stats": await run(stats),
            "put": await run(lambda: acache.put("small", b"child")),
            "delete": await run(lambda: acache.delete("large")),
            "put_file": await run(lambda: acache.put_file("f", io.BytesIO(_large(5000)))),
            "put_file of a path": await run(lambda: acache.put_file("p", source)),
            "put_file of an async file": await run(put_async_file),
            "put_stream": await run(lambda: acache.put_stream("st", [_large(5000)])),
            "put_stream of an async iterable": await run(lambda: acache.put_stream("ai", chunks())),
            "sync": await run(acache.sync),
            "gc": await run(gc),
            "get what it wrote": await run(lambda: acache.get("ai")),
            "leaving an async with block": await run(lambda: acache.__aexit__(None, None, None)),
            "get after close": await run(lambda: acache.get("small")),
        }

    outcomes = _Child(lambda: asyncio.run(calls())).result()
    closed = outcomes.pop("get after close")
    assert closed[0] == "raised" and closed[1][0] == "ClosedError", closed
    assert outcomes == {
        "get": ("ok", b"s"),
        "open_store": ("ok", None),
        "sync_cache": ("ok", b"s"),
        "open": ("ok", _large(3000)),
        "stats": ("ok", 2),
        "put": ("ok", None),
        "delete": ("ok", True),
        "put_file": ("ok", None),
        "put_file of a path": ("ok", None),
        "put_file of an async file": ("ok", None),
        "put_stream": ("ok", None),
        "put_stream of an async iterable": ("ok", None),
        "sync": ("ok", None),
        "gc": ("ok", "GcResult"),
        "get what it wrote": ("ok", b"one chunk"),
        "leaving an async with block": ("ok", None),
    }
    model = {
        "small": b"child",
        **{key: _large(5000) for key in ("f", "p", "a", "st")},
        "ai": b"one chunk",
    }
    acache.sync_cache.refresh()
    assert _items(acache.sync_cache) == model  # the parent follows the child
    asyncio.run(acache.put("small", b"parent"))
    asyncio.run(acache.close())
    with BlobCache(store) as again:
        assert _items(again) == {**model, "small": b"parent"}


# --- 18. the lock: not held by a forked child, nor by a dropped handle -----------------


def test_nobody_holds_the_store_once_closed_while_a_forked_child_still_runs(store: str) -> None:
    cache = BlobCache(store)
    cache.put("k", b"v")
    go = _Gate()
    forked = _Child(go.wait)  # holds everything it inherited until the gate opens
    try:
        assert not _nobody_holds(store)  # the parent's handle
        cache.close()
        assert _nobody_holds(store)  # not if the child held its copy of LOCK
    finally:
        go.open()
        forked.result()
    with BlobCache(store) as again:
        assert again["k"] == b"v"


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


def test_nobody_holds_the_store_once_a_killed_parent_is_dead_though_its_child_lives(
    store: str,
) -> None:
    """Crash model: process crash. The lock dies with the process that took it,
    not with the last forked child still running."""
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
        assert not _nobody_holds(store)  # the parent's handle
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        os.kill(child_pid, 0)  # the child still runs (raises if it does not)
        assert _nobody_holds(store)  # not if the child held its copy of LOCK
        with BlobCache(store) as again:
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
    BlobCache(store).close()
    before = set(_fsio._flocked)
    exclusive = _fsio.lock_file(os.path.join(store, F.LOCK_NAME))  # as `blobcache gc` alone
    assert exclusive is not None
    with pytest.raises(BlobCacheError):
        BlobCache(store)  # LockedError: its descriptor is closed and forgotten too
    _fsio.unlock(exclusive)
    assert set(_fsio._flocked) == before
    cache = BlobCache(store, inline_limit=1024, durability="os", sync_interval=3600)
    held = _fsio._flocked - before
    assert len(held) == 2  # LOCK and STATE
    beside = BlobCache(store)
    reader = BlobCache(store, readonly=True)
    assert len(_fsio._flocked - before - held) == 3  # theirs: LOCK, STATE; the reader's STATE
    source = tmp_path / "source"
    source.write_bytes(_large(5000))
    cache.put("a", _large(3000))
    cache.put("a", _large(4000))
    cache.put_file("b", str(source))
    cache.put_stream("c", [_large(2000), _large(2000)])
    cache.put("d", b"small")
    beside.put("d", b"small again")
    cache.delete("b")
    assert reader["d"] == b"small again"
    cache.gc()  # the janitor, and compaction (a temp file in the log directory)
    beside.close()
    reader.close()
    assert _fsio._flocked - before == held
    cache.close()
    assert set(_fsio._flocked) == before


@pytest.mark.parametrize(
    ("options", "threads"),
    [
        pytest.param({}, 3, id="fsync"),
        pytest.param({"gc_interval": 3600.0}, 4, id="gc-thread"),
        pytest.param({"durability": "os", "sync_interval": 3600.0}, 4, id="os-sync-thread"),
        pytest.param({"readonly": True}, 2, id="readonly"),
    ],
)
def test_a_handle_dropped_without_close_releases_the_store(
    store: str, options: dict[str, Any], threads: int
) -> None:
    with BlobCache(store, inline_limit=1024) as writer:
        writer.put("small", b"s")
        writer.put("large", _large(3000))
    descriptors = _descriptors()
    cache = BlobCache(store, inline_limit=1024, **options)
    if not options.get("readonly"):
        cache.put("small", b"s2")
        cache.put("large", _large(4000))
    assert sorted(cache) == ["large", "small"]
    assert _nobody_holds(store) == bool(options.get("readonly"))  # a reader takes no LOCK
    running = list(cache._threads)
    assert len(running) == threads  # none of them may keep the handle alive
    del cache
    gc.collect()
    for thread in running:
        thread.join()  # they end once the handle is gone
    assert _nobody_holds(store)
    assert _descriptors() == descriptors  # nothing left open: the log, STATE, LOCK
    with BlobCache(store) as again:
        expected = {"small": b"s", "large": _large(3000)}
        if not options.get("readonly"):
            expected = {"small": b"s2", "large": _large(4000)}
        assert _items(again) == expected


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
    config = C.Config(max_states=32, exhaustive=128, deep_probe=True, jobs=C.check_jobs())
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
    assert _nobody_holds(store)  # released all the same
    with BlobCache(store) as again:
        assert again["k"] == b"v"


# --- 22. clear, copies and pickles --------------------------------------------------------


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


def test_a_copy_or_pickle_of_a_handle_opens_the_store_anew_with_its_options(store: str) -> None:
    """``copy``, ``deepcopy`` and a pickle of an ``AsyncBlobCache`` (plain
    pickling of a ``BlobCache``: ``test_processes``). Each is a handle of its own:
    closing it leaves the original open."""
    with BlobCache(store, durability="os", inline_limit=100, refresh_interval=3600) as cache:
        cache.put("k", b"v")
        for make in (copy.copy, copy.deepcopy):
            other = make(cache)
            try:
                assert other is not cache and other.options == cache.options
                assert other.directory == cache.directory
                assert other["k"] == b"v"
                other.put(make.__name__, b"from the copy")
            finally:
                other.close()
            assert cache[make.__name__] == b"from the copy"  # a miss catches up
        assert cache["k"] == b"v"
    acache = AsyncBlobCache(store, inline_limit=100)
    unopened = pickle.loads(pickle.dumps(acache))
    with pytest.raises(RuntimeError, match="open the AsyncBlobCache first"):
        unopened.sync_cache  # noqa: B018 -- the property raises
    asyncio.run(acache.open_store())
    other = pickle.loads(pickle.dumps(acache))
    try:
        assert other.sync_cache is not acache.sync_cache
        assert other.sync_cache.options == acache.sync_cache.options
        assert asyncio.run(other.get("deepcopy")) == b"from the copy"
        asyncio.run(other.put("async", b"from the pickle"))
    finally:
        asyncio.run(other.close())
    try:
        assert asyncio.run(acache.get("async")) == b"from the pickle"
    finally:
        asyncio.run(acache.close())
