"""``AsyncBlobCache``: the same store from asyncio, without blocking the loop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import random
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiofiles
import pytest

from blobcache import AsyncBlobCache, BlobCache
from blobcache import _format as F
from tests.conftest import files_named


def test_every_method_awaited(store: str, tmp_path: Path) -> None:
    source = tmp_path / "ckpt.bin"
    big = os.urandom(3 * BlobCache.CHUNK_BYTES + 7)
    source.write_bytes(big)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(3):
            await asyncio.sleep(0)
            yield bytes([i]) * 100_000

    async def main() -> None:
        async with AsyncBlobCache(store, inline_limit=1024) as cache:
            await cache.put("small", b"config")
            await cache.put("large", b"L" * 5000)
            await cache.put_file("ckpt", source)
            async with aiofiles.open(source, "rb") as async_file:  # an async file object
                await async_file.seek(7)
                await cache.put_file("ckpt-async", async_file)
            await cache.put_stream("streamed", chunks())
            await cache.put_stream("plain", [b"a", b"b"])
            assert await cache.get("small") == b"config"
            assert bytes(await cache.get("large")) == b"L" * 5000  # type: ignore[arg-type]
            assert bytes(await cache.get("ckpt")) == big  # type: ignore[arg-type]
            assert bytes(await cache.get("ckpt-async")) == big[7:]  # type: ignore[arg-type]
            streamed = await cache.get("streamed")
            assert streamed is not None
            assert bytes(streamed) == b"".join(bytes([i]) * 100_000 for i in range(3))
            assert await cache.get("plain") == b"ab"
            f = await cache.open("ckpt")
            with f:
                assert f.read(10) == big[:10]
            assert await cache.delete("small") and not await cache.delete("small")
            assert await cache.get("small", b"gone") == b"gone"
            await cache.sync()
            await cache.put("large", b"M" * 5000)
            assert (await cache.gc()).files_removed >= 1
            assert (await cache.stats()).keys == 5

    asyncio.run(main())
    with BlobCache(store) as cache:  # an awaited put is as durable as a sync one
        assert bytes(cache["ckpt"]) == big and bytes(cache["large"]) == b"M" * 5000


async def _heartbeat(work: Callable[[], Awaitable[None]]) -> list[float]:
    """Run ``work`` while a 5 ms ticker records the gaps between its ticks (ms)."""
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append((now - last) * 1000)
            last = now

    tick = asyncio.ensure_future(ticker())
    try:
        await work()
    finally:
        done.set()
        await tick
    return gaps


def test_the_loop_keeps_ticking_through_open_and_large_and_small_puts(store: str) -> None:
    with BlobCache(store, durability="os") as cache:  # something to recover at open
        for i in range(50_000):
            cache.put(f"k{i}", b"v" * 100)
    large = os.urandom(64 << 20)

    async def work() -> None:
        async with AsyncBlobCache(store) as cache:
            await asyncio.gather(
                *(cache.put(f"large-{i}", large) for i in range(3)),
                *(cache.put(f"small-{i}", b"s" * 100) for i in range(100)),
            )
            await cache.get("large-2")  # maps and checks 64 MiB, off the loop

    # The test process's own heap (every collected test) would make a full
    # collection of the cyclic GC stall the loop whatever blobcache does: set it
    # aside, so what is measured is blobcache's (its index is created after this).
    gc.collect()
    gc.freeze()
    try:
        gaps = asyncio.run(_heartbeat(work))
    finally:
        gc.unfreeze()
    median, worst = statistics.median(gaps), max(gaps)
    print(f"heartbeat: {len(gaps)} ticks, median gap {median:.1f} ms, worst {worst:.1f} ms")
    assert len(gaps) > 10
    assert worst < 50, f"the loop stalled for {worst:.1f} ms"
    with BlobCache(store) as cache:  # compared after the heartbeat: 64 MiB on the loop
        assert bytes(cache["large-2"]) == large and cache["small-99"] == b"s" * 100


def _value(tag: int) -> bytes:
    return bytes([tag]) * 300_000


@pytest.mark.parametrize("seed", range(6))
def test_a_cancelled_put_either_completed_or_left_no_trace(store: str, seed: int) -> None:
    rng = random.Random(seed)

    async def slow_chunks(tag: int) -> AsyncIterator[bytes]:
        for _ in range(6):
            await asyncio.sleep(rng.random() * 0.002)
            yield bytes([tag]) * 50_000

    async def main() -> dict[str, bytes]:
        async with AsyncBlobCache(store, inline_limit=1024) as cache:
            for key in ("whole", "stream"):
                await cache.put(key, _value(1))
            put = asyncio.ensure_future(cache.put("whole", _value(2)))
            stream = asyncio.ensure_future(cache.put_stream("stream", slow_chunks(2)))
            await asyncio.sleep(rng.random() * 0.01)
            put.cancel()
            stream.cancel()
            for task in (put, stream):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            got = {k: bytes(await cache.get(k)) for k in ("whole", "stream")}  # type: ignore[arg-type]
            return got

    got = asyncio.run(main())
    assert got["whole"] in (_value(1), _value(2))
    assert got["stream"] in (_value(1), bytes([2]) * 300_000)
    assert files_named(store, F.TEMP_PREFIX) == []
    with BlobCache(store) as cache:
        assert {k: bytes(cache[k]) for k in got} == got


def test_an_async_stream_that_raises_leaves_the_previous_value(store: str) -> None:
    async def failing() -> AsyncIterator[bytes]:
        yield b"x" * 300_000
        raise OSError("the upstream connection dropped")

    async def main() -> None:
        async with AsyncBlobCache(store, inline_limit=1024) as cache:
            await cache.put("k", b"previous")
            with pytest.raises(OSError, match="dropped"):
                await cache.put_stream("k", failing())
            assert await cache.get("k") == b"previous"

    asyncio.run(main())
    assert files_named(store, F.TEMP_PREFIX) == []
