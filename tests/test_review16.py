"""Review of issue 16 (typed values and memoize): one test per finding."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from blobcache import BlobCache, _codecs

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(script: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a new interpreter; a hang fails the test instead of the run."""
    env = dict(os.environ, PYTHONPATH=_ROOT)
    try:
        return subprocess.run(
            [sys.executable, "-c", textwrap.dedent(script)],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"deadlock: the script did not finish in {timeout} s")


def test_async_waiters_beyond_the_executor_size_do_not_deadlock(tmp_path: Path) -> None:
    # Each async waiter blocked a thread of the loop's default executor in
    # KeyLocks.acquire; the caller holding the lock then needed one of those
    # threads (to_thread(memo.stored), to_thread(memo.keep)) and never got it.
    # With the default executor that is min(32, cpus + 4) concurrent calls.
    result = _run(
        f"""
        import asyncio, concurrent.futures
        from blobcache import BlobCache

        async def main(cache):
            asyncio.get_running_loop().set_default_executor(
                concurrent.futures.ThreadPoolExecutor(2)
            )
            @cache.memoize()
            async def f(x):
                await asyncio.sleep(0.1)
                return x + 1
            return await asyncio.gather(*(f(1) for _ in range(6)))

        with BlobCache({str(tmp_path / "store")!r}) as cache:
            print(asyncio.run(main(cache)))
        """,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[2, 2, 2, 2, 2, 2]"


def test_threads_racing_on_the_first_memoized_call_share_one_lock_descriptor(
    tmp_path: Path,
) -> None:
    # KeyLocks._here ran unguarded: two threads making a handle's first memoized
    # calls both opened a LOCK descriptor; one locked the byte on the first and
    # released it on the second, so the byte stayed locked and the next caller
    # (of any process) waited forever.
    result = _run(
        f"""
        import threading, time
        from blobcache import BlobCache, _fsio, _memoize

        opened = []
        real = _fsio.open_range_locks
        def slow_open(path):
            fd = real(path)
            opened.append(fd)
            time.sleep(0.2)  # the window: another thread's first call comes in
            return fd
        _memoize._fsio.open_range_locks = slow_open

        with BlobCache({str(tmp_path / "store")!r}) as cache:
            @cache.memoize()
            def f(x):
                time.sleep(0.3)
                return x * 2
            out = []
            threads = [threading.Thread(target=lambda: out.append(f(3))) for _ in range(2)]
            for t in threads:
                t.start()
                time.sleep(0.05)
            for t in threads:
                t.join()
            assert out == [6, 6], out
            assert f(4) == 8
            assert len(opened) == 1, opened
        print("ok")
        """,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_unpickling_beside_a_segment_that_vanishes_is_not_an_error(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # private_paths lists log/ and check_private stats each entry later: a
    # segment a compaction (or a temp file it renamed) removed in between made
    # get_object raise FileNotFoundError for a value that is there.
    with BlobCache(store) as cache:
        cache.put_object("p", {1, 2}, serializer="pickle")
        ghost = os.path.join(store, "log", ".tmp-00000000000000aa")
        with open(ghost, "wb"):
            pass
        real = _codecs.os.path.realpath

        def realpath(path: str) -> str:
            if path == ghost and os.path.exists(ghost):
                os.unlink(ghost)  # what a compaction does meanwhile
            return real(path)

        monkeypatch.setattr(_codecs.os.path, "realpath", realpath)
        assert cache.get_object("p") == {1, 2}


def test_small_typed_values_survive_compaction_in_another_process(store: str) -> None:
    # (checked correct) a typed small value compacted by another process keeps its codec
    with BlobCache(store) as cache:
        cache.put_object("a", np.arange(3))
        cache.put("a-raw", b"x")
        for i in range(50):
            cache.put(f"junk{i}", b"y" * 100)
            cache.delete(f"junk{i}")
        cache.gc()
    with BlobCache(store) as cache:
        assert (cache.get_array("a") == np.arange(3)).all()
        assert cache.get_object("a-raw") == b"x"


def test_a_cancelled_async_waiter_lets_go_of_the_lock_it_gets_later(tmp_path: Path) -> None:
    # (checked, and kept for the fix above) a waiter cancelled while its thread
    # waits for the key releases the lock once that thread gets it.
    result = _run(
        f"""
        import asyncio
        from blobcache import BlobCache

        async def main(cache):
            gate = asyncio.Event()
            calls = []
            @cache.memoize(version=1)
            async def f(x):
                calls.append(x)
                await gate.wait()
                return x
            holder = asyncio.create_task(f(1))
            await asyncio.sleep(0.2)
            waiter = asyncio.create_task(f(1))
            await asyncio.sleep(0.2)
            waiter.cancel()
            gate.set()
            assert await holder == 1
            try:
                await waiter
            except asyncio.CancelledError:
                pass
            await asyncio.sleep(0.2)
            f.invalidate(1)
            assert await asyncio.wait_for(f(1), 10) == 1  # the lock is free again
            return calls

        with BlobCache({str(tmp_path / "store")!r}) as cache:
            print(asyncio.run(main(cache)))
        """,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[1, 1]"


def test_async_blob_cache_has_the_typed_calls(store: str) -> None:
    # docs/api.md: AsyncBlobCache offers "the same methods, awaited"; it had
    # none of put_object, get_object, get_array, get_tensors.
    import asyncio

    from blobcache import AsyncBlobCache

    async def main() -> None:
        async with AsyncBlobCache(store) as cache:
            await cache.put_object("a", np.arange(4), ttl=60)
            await cache.put_object("t", {"w": np.ones(2)})
            await cache.put_object("j", [1, "x"])
            assert (await cache.get_array("a") == np.arange(4)).all()
            assert (await cache.get_tensors("t"))["w"].tolist() == [1.0, 1.0]
            assert await cache.get_object("j") == [1, "x"]
            assert await cache.get_object("missing", 7) == 7

    asyncio.run(main())


def test_a_computation_in_flight_when_the_handle_closes_returns_its_result(store: str) -> None:
    # KeyLocks.close set the descriptor to -1 under a caller still computing;
    # its release then raised ValueError (fcntl of -1) instead of the result.
    cache = BlobCache(store)

    @cache.memoize()
    def slow(x: int) -> int:
        time.sleep(0.5)
        return x + 1

    out: list[object] = []

    def call() -> None:
        try:
            out.append(slow(1))
        except BaseException as exc:  # reported by the assert
            out.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(0.2)
    cache.close()
    thread.join()
    assert out == [2]
