"""BlobCache.memoize (issue 16): hits, keys bound to the signature, one computation
per key across threads and processes (a SIGKILLed one included), failures that
store nothing, async functions, methods, invalidate/clear, ttl."""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from blobcache import BlobCache, ReadOnlyError, _clock

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _count(counter: str) -> int:
    """How many computations the counter file holds (one line each)."""
    try:
        with open(counter) as f:
            return len(f.readlines())
    except FileNotFoundError:
        return 0


def _note(counter: str) -> None:
    with open(counter, "a") as f:
        f.write(f"{os.getpid()}\n")


def test_a_hit_returns_the_stored_result_without_calling(store: str, tmp_path: Path) -> None:
    counter = str(tmp_path / "count")
    with BlobCache(store) as cache:

        @cache.memoize()
        def area(width: int, height: int = 2) -> int:
            _note(counter)
            return width * height

        assert area(3) == area(width=3) == area(3, 2) == area(height=2, width=3) == 6
        assert _count(counter) == 1
        assert area(3, 3) == 9 and _count(counter) == 2
        assert area.cache_info() == (3, 2)
        assert area.__wrapped__(3) == 6 and area.__name__ == "area"  # (a call: counted)
        assert _count(counter) == 3
    with BlobCache(store) as cache:  # stored: a new handle (or process) hits

        @cache.memoize()
        def area(width: int, height: int = 2) -> int:
            _note(counter)
            return width * height

        assert area(3) == 6 and _count(counter) == 3


def test_memoize_without_parentheses_and_a_version(cache: BlobCache) -> None:
    @cache.memoize
    def one(x: int) -> int:
        return x + 1

    def two(x: int) -> int:
        return x + 1

    assert one(1) == 2 and one.cache_info() == (0, 1)
    v1 = cache.memoize(version=1)(two).cache_key(1)
    v2 = cache.memoize(version=2)(two).cache_key(1)
    assert v1 != v2 and v1.startswith(b"memoize:")


def test_results_are_stored_through_the_codecs(cache: BlobCache) -> None:
    @cache.memoize()
    def features(n: int) -> Any:
        return np.arange(n, dtype=np.float32)

    @cache.memoize()
    def weights(n: int) -> dict[str, Any]:
        return {"w": np.ones((n, n)), "b": np.zeros(n)}

    @cache.memoize()
    def opaque(n: int) -> object:
        return object()

    first = features(5)
    again = features(5)
    assert (again == first).all() and not again.flags.writeable  # a hit: read-only, mapped
    assert features.cache_info() == (1, 1)
    assert (weights(3)["w"] == 1).all() and (weights(3)["b"] == 0).all()
    with pytest.raises(TypeError, match=r"opaque.*serializer=\"pickle\""):
        opaque(1)
    assert cache.get(opaque.cache_key(1)) is None  # nothing stored


def test_an_argument_without_a_key_raises_naming_it(cache: BlobCache) -> None:
    @cache.memoize()
    def f(x: Any, verbose: Any = None) -> int:
        return 1

    with pytest.raises(TypeError, match="x"):
        f(threading.Lock())
    ignoring = cache.memoize(ignore=("verbose",))(f.__wrapped__)
    assert ignoring.cache_key(1, verbose=threading.Lock()) == ignoring.cache_key(1)
    with pytest.raises(ValueError, match="nope"):
        cache.memoize(ignore=("nope",))(f.__wrapped__)
    with pytest.raises(ValueError, match="serializer"):
        cache.memoize(serializer="yaml")(f.__wrapped__)
    with pytest.raises(ValueError, match="ttl"):
        cache.memoize(ttl=-1)(f.__wrapped__)


def test_invalidate_and_clear(cache: BlobCache, tmp_path: Path) -> None:
    counter = str(tmp_path / "count")

    @cache.memoize()
    def f(x: int) -> int:
        _note(counter)
        return x

    cache.put("other", b"kept")
    for x in range(4):
        f(x)
    assert f.invalidate(0) is True and f.invalidate(0) is False
    f(0)
    assert _count(counter) == 5
    assert f.clear() == 4
    f(1)
    assert _count(counter) == 6
    assert cache.get("other") == b"kept"


def test_a_ttl_makes_a_result_expire(
    store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [_clock.now_ms()]
    monkeypatch.setattr(_clock, "now_ms", lambda: now[0])
    counter = str(tmp_path / "count")
    with BlobCache(store) as cache:

        @cache.memoize(ttl=10)
        def f(x: int) -> int:
            _note(counter)
            return x

        f(1)
        f(1)
        now[0] += 11_000
        f(1)
        assert _count(counter) == 2


@dataclasses.dataclass(frozen=True)
class _Model:
    depth: int

    def run(self, x: int) -> int:
        return self.depth * x


class _Service:
    def __init__(self, name: str) -> None:
        self.name = name

    def __blobcache_key__(self) -> str:
        return self.name


def test_methods_take_self_as_an_argument(cache: BlobCache) -> None:
    run = cache.memoize()(_Model.run)
    assert run(_Model(2), 3) == 6 and run(_Model(3), 3) == 9
    assert run.cache_key(_Model(2), 3) != run.cache_key(_Model(3), 3)

    class Local:
        @cache.memoize(ignore=("self",))
        def double(self, x: int) -> int:
            return 2 * x

        @cache.memoize()
        def named(self, x: int) -> int:
            return x

    assert Local().double(4) == Local().double(4) == 8
    assert Local.double.cache_info() == (1, 1)
    with pytest.raises(TypeError, match="self"):
        Local().named(1)
    keyed = cache.memoize()(lambda service, x: x)
    assert keyed.cache_key(_Service("a"), 1) != keyed.cache_key(_Service("b"), 1)


def test_async_functions_are_memoized(cache: BlobCache, tmp_path: Path) -> None:
    counter = str(tmp_path / "count")

    @cache.memoize()
    async def fetch(x: int) -> list[int]:
        _note(counter)
        await asyncio.sleep(0)
        return [x, x]

    async def main() -> list[list[int]]:
        return list(await asyncio.gather(*(fetch(7) for _ in range(5))))

    assert asyncio.run(main()) == [[7, 7]] * 5
    assert _count(counter) == 1
    assert fetch.cache_info() == (4, 1)


def test_a_readonly_handle_computes_and_stores_nothing(store: str) -> None:
    with BlobCache(store) as cache:
        cache.put("x", b"")
    with BlobCache(store, readonly=True) as cache:
        f = cache.memoize()(lambda x: x * 2)
        assert f(2) == 4 and f(2) == 4 and f.cache_info() == (0, 2)
        with pytest.raises(ReadOnlyError):
            cache.put("y", b"")


# --- one computation per key --------------------------------------------------------------


def _slow_square(counter: str, gate: Any, x: int) -> int:
    _note(counter)
    gate.wait(30)  # held open until every caller has called (or is about to)
    return x * x


def _call_in_process(store: str, counter: str, gate: Any, ready: Any, out: Any) -> None:
    with BlobCache(store) as cache:
        square = cache.memoize(ignore=("counter", "gate"))(_slow_square)
        ready.release()
        out.put(square(counter, gate, 12))


def test_eight_threads_and_four_processes_compute_once(store: str, tmp_path: Path) -> None:
    counter = str(tmp_path / "count")
    ctx = mp.get_context("spawn")
    gate, ready, out = ctx.Event(), ctx.Semaphore(0), ctx.Queue()
    procs = [
        ctx.Process(target=_call_in_process, args=(store, counter, gate, ready, out))
        for _ in range(4)
    ]
    with BlobCache(store) as cache:
        square = cache.memoize(ignore=("counter", "gate"))(_slow_square)
        results: list[int] = []
        threads = [
            threading.Thread(target=lambda: results.append(square(counter, gate, 12)))
            for _ in range(8)
        ]
        for p in procs:
            p.start()
        for _ in procs:
            assert ready.acquire(timeout=60)
        for t in threads:
            t.start()
        gate.set()
        for t in threads:
            t.join()
        got = [out.get(timeout=60) for _ in procs]
        for p in procs:
            p.join()
        assert results == [144] * 8 and got == [144] * 4
        assert _count(counter) == 1
        hits, misses = square.cache_info()
        assert hits + misses == 8 and misses <= 1


def _compute_then_die(store: str, counter: str) -> None:
    with BlobCache(store) as cache:

        @cache.memoize(ignore=("counter",))
        def f(counter: str, x: int) -> int:
            _note(counter)
            os.kill(os.getpid(), signal.SIGKILL)  # killed while computing, holding the lock
            return x

        f(counter, 1)


def test_a_process_killed_while_computing_lets_the_others_compute(
    store: str, tmp_path: Path
) -> None:
    counter = str(tmp_path / "count")
    child = mp.get_context("fork").Process(target=_compute_then_die, args=(store, counter))
    child.start()
    child.join()
    assert child.exitcode == -signal.SIGKILL and _count(counter) == 1
    with BlobCache(store) as cache:

        @cache.memoize(ignore=("counter",))
        def f(counter: str, x: int) -> int:
            _note(counter)
            return x

        assert f(counter, 1) == 1  # the dead process's lock went with it
        assert _count(counter) == 2


def test_a_call_that_raises_stores_nothing_and_the_waiters_compute(
    cache: BlobCache, tmp_path: Path
) -> None:
    counter = str(tmp_path / "count")
    started, gate = threading.Event(), threading.Event()

    @cache.memoize(version=1, ignore=("fail",))  # (its closure holds events: no code key)
    def f(x: int, fail: bool) -> int:
        _note(counter)
        if fail:
            started.set()
            gate.wait(30)
            raise RuntimeError("boom")
        return x

    errors: list[BaseException] = []

    def failing() -> None:
        try:
            f(5, True)
        except RuntimeError as error:
            errors.append(error)

    first = threading.Thread(target=failing)
    first.start()
    assert started.wait(30)
    results: list[int] = []
    waiter = threading.Thread(target=lambda: results.append(f(5, False)))
    waiter.start()
    gate.set()
    first.join()
    waiter.join()
    assert [str(e) for e in errors] == ["boom"] and results == [5]
    assert _count(counter) == 2  # the failure stored nothing: the waiter computed
    assert f(5, False) == 5 and _count(counter) == 2


# --- the key is the same in a new process ---------------------------------------------------


def shared_function(x: int, scale: float = 1.0) -> float:
    return x * scale


def test_the_key_is_the_same_in_a_new_process(cache: BlobCache) -> None:
    key = cache.memoize()(shared_function).cache_key(3, scale=2.0)
    script = (
        "import sys, tempfile; sys.path.insert(0, sys.argv[1])\n"
        "from blobcache import BlobCache\n"
        "import tests.test_memoize as m\n"
        "with BlobCache(tempfile.mkdtemp()) as c:\n"
        "    print(c.memoize()(m.shared_function).cache_key(3, 2.0).hex())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, _ROOT], capture_output=True, text=True, check=True
    )
    assert bytes.fromhex(out.stdout.strip()) == key


def _child_hits(store: str, conn: Any) -> None:
    with BlobCache(store) as cache:
        f = cache.memoize()(shared_function)
        conn.send((f(4), f.cache_info()))


def test_a_result_computed_in_one_process_is_a_hit_in_another(store: str) -> None:
    with BlobCache(store) as cache:
        assert cache.memoize()(shared_function)(4) == 4.0
    parent, child = mp.get_context("spawn").Pipe()
    proc = mp.get_context("spawn").Process(target=_child_hits, args=(store, child))
    proc.start()
    assert parent.recv() == (4.0, (1, 0))
    proc.join()


def _helper_value(x: int) -> int:
    return x + 1


def test_a_memoized_function_calling_another_and_itself_has_a_key(cache: BlobCache) -> None:
    """The wrapper's closure holds the cache (no key): where a caller's key meets
    it, the function it wraps stands for it; a recursion meets its own name."""
    global _memo_helper, _memo_fib
    _memo_helper = cache.memoize()(_helper_value)

    def caller(x: int) -> int:
        return _memo_helper(x) * 2

    def fib(n: int) -> int:
        return n if n < 2 else _memo_fib(n - 1) + _memo_fib(n - 2)

    _memo_fib = cache.memoize()(fib)
    assert cache.memoize()(caller)(3) == 8
    assert _memo_fib(20) == 6765
    assert _memo_fib.cache_info().misses == 21


def test_a_bytes_result_is_stored_as_it_is(cache: BlobCache) -> None:
    @cache.memoize()
    def blob(n: int) -> bytes:
        return bytes(i % 256 for i in range(n))

    assert blob(5) == blob(5) == bytes(range(5))
    assert blob(300_000)[:3] == blob(300_000)[:3] == b"\x00\x01\x02"  # a file: a view back
    assert blob.cache_info() == (2, 2)
    assert cache.get(blob.cache_key(5)) == bytes(range(5))


def test_what_memoize_refuses_to_wrap(cache: BlobCache) -> None:
    import functools

    with pytest.raises(TypeError, match="partial"):
        cache.memoize(version=1)(functools.partial(shared_function, 1))

    @cache.memoize()
    def deep(n: int) -> Any:
        nested: Any = 0
        for _ in range(n):
            nested = [nested]
        return nested

    with pytest.raises(ValueError, match=r"memoize\(.*deep\)"):
        deep(300)  # nested too deep for JSON: refused with the function named
