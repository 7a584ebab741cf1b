"""``AsyncBlobCache``: the same store for asyncio programs, never blocking the loop.

A thin wrapper over the sync core (as filelock's asyncio module is): every call
that touches the disk runs in a worker thread, so the event loop only waits.
Small puts therefore share the sync store's group commit with every other
thread, and an awaited put has exactly the sync put's durability. The copies,
writes, hashing (xxhash releases the GIL) and fsyncs of large values all run in
that thread, outside the loop. Large values are written by the sync core's one
writer (temp file, fsync, rename, directory fsync: the path the crash tests
cover) in a worker thread, rather than by a second writer built on aiofiles;
aiofiles file objects are taken as sources by ``put_file``.

Cancellation: a put whose value is all in hand runs to completion in its
thread even if the awaiting task is cancelled (so it either completed or, if
it failed, left no trace; the task sees ``CancelledError`` only once the put
has finished). A streaming put fed from the loop (``put_stream`` with an async
iterable, ``put_file`` of an async file object) stops at the next chunk: its
temp file is removed and the previous value stays. When that put fails instead
(a full disk, a bad key, a read-only handle), the source is read no further and
the awaiting task gets the put's error at once; either way nothing is left
running when the call returns.
"""

from __future__ import annotations

import asyncio
import functools
import os
import queue
import threading
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, BinaryIO, TypeVar, cast

from ._buffers import as_buffer
from ._janitor import GcResult
from ._names import Key
from .cache import BlobCache, Stats, Value

_T = TypeVar("_T")

_END = object()  # the async side has no more chunks
_STOP = object()  # wakes the worker after the async side stopped: see _Handoff.stop


class _Cancelled(Exception):
    """The async side of a streaming put stopped (cancelled or failed)."""


class _Handoff:
    """Chunks passed from the event loop to a put running in a worker thread,
    at most ``depth`` in flight: memory holds a few chunks, never the value.

    Nothing here blocks a thread on the other side: the loop waits for room on
    an asyncio semaphore (released by the worker through the loop), the worker
    on a queue that the loop never waits to put into. So when either side
    stops -- the source fails, the task is cancelled, or the put fails (a full
    disk, a bad key, a read-only handle) -- the other can be stopped at once
    and nothing is left waiting.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, depth: int = 2) -> None:
        self._loop = loop
        self._room = asyncio.Semaphore(depth)
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._stopped = threading.Event()

    def __iter__(self) -> Iterator[memoryview]:
        """The worker's side: the chunks, in order (runs in the worker thread)."""
        while True:
            item = self._queue.get()
            if self._stopped.is_set():  # also with chunks still queued: they go unwritten
                raise _Cancelled("the stream feeding this put was cancelled or failed")
            if item is _END:
                return
            assert isinstance(item, memoryview)
            yield item  # returns once the put has written it: room for one more
            self._loop.call_soon_threadsafe(self._room.release)

    async def feed(self, chunks: AsyncIterable[object]) -> None:
        """Pass every chunk on, then the end (runs on the loop)."""
        async for chunk in chunks:
            view = as_buffer(chunk)
            await self._room.acquire()
            self._queue.put(view)
        self._queue.put(_END)

    def stop(self) -> None:
        """Make the worker's iterator raise at its next chunk, so its put leaves no trace."""
        self._stopped.set()
        self._queue.put(_STOP)


async def _settle(*futures: asyncio.Future[Any]) -> None:
    """Wait until every one of ``futures`` is done, even through cancellation
    (re-raised after), and mark their errors retrieved: the caller raises the
    one that matters, asyncio must not report the others as lost."""
    cancelled = False
    while True:
        try:
            await asyncio.wait(futures)
            break
        except asyncio.CancelledError:
            cancelled = True
    for future in futures:
        if not future.cancelled():
            future.exception()
    if cancelled:
        raise asyncio.CancelledError


class AsyncBlobCache:
    """``BlobCache`` for asyncio: ``async with AsyncBlobCache(path) as cache``.

    Takes the same keyword options as :class:`BlobCache`; opening (recovery)
    runs in a worker thread too.

    >>> import asyncio, tempfile
    >>> async def main() -> bytes:
    ...     async with AsyncBlobCache(tempfile.mkdtemp()) as cache:
    ...         await cache.put("config", b'{"lr": 0.001}')
    ...         return bytes(await cache.get("config"))
    >>> asyncio.run(main())
    b'{"lr": 0.001}'
    """

    def __init__(self, path: str | os.PathLike[str], **options: Any) -> None:
        self._path = path
        self._options = options
        self._cache: BlobCache | None = None

    async def __aenter__(self) -> AsyncBlobCache:
        await self.open_store()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def open_store(self) -> None:
        """Open (recover) the store off the loop; ``async with`` does this."""
        if self._cache is None:
            self._cache = await asyncio.to_thread(BlobCache, self._path, **self._options)

    @property
    def sync_cache(self) -> BlobCache:
        """The underlying sync handle (for calls that never touch the disk)."""
        if self._cache is None:
            raise RuntimeError("open the AsyncBlobCache first: async with AsyncBlobCache(...)")
        return self._cache

    async def _run(self, call: Callable[..., _T], *args: Any) -> _T:
        """Run ``call`` in a worker thread; if the awaiting task is cancelled,
        wait for the call to finish first (it cannot be stopped halfway)."""
        task = asyncio.ensure_future(asyncio.to_thread(call, *args))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            await _settle(task)
            raise

    async def put(
        self, key: Key, value: object, *, ttl: float | None = None, pin: bool = False
    ) -> None:
        """As :meth:`BlobCache.put`, awaited; same durability."""
        await self._run(functools.partial(self.sync_cache.put, ttl=ttl, pin=pin), key, value)

    async def put_object(
        self,
        key: Key,
        value: object,
        *,
        serializer: str | None = None,
        ttl: float | None = None,
        pin: bool = False,
    ) -> None:
        """As :meth:`BlobCache.put_object`, awaited; same durability."""
        put = functools.partial(self.sync_cache.put_object, serializer=serializer, ttl=ttl, pin=pin)
        await self._run(put, key, value)

    async def get_object(self, key: Key, default: Any = None) -> Any:
        """As :meth:`BlobCache.get_object`."""
        return await self._run(self.sync_cache.get_object, key, default)

    async def get_array(self, key: Key, default: Any = None) -> Any:
        """As :meth:`BlobCache.get_array`."""
        return await self._run(self.sync_cache.get_array, key, default)

    async def get_tensors(self, key: Key, default: Any = None, *, framework: str = "numpy") -> Any:
        """As :meth:`BlobCache.get_tensors`."""
        get = functools.partial(self.sync_cache.get_tensors, framework=framework)
        return await self._run(get, key, default)

    def memoize(self, *args: Any, **kwargs: Any) -> Any:
        """As :meth:`BlobCache.memoize` (a plain decorator: a memoized ``async``
        function runs its lookups and waits in worker threads, never on the loop).

        :raises RuntimeError: the cache is not open yet (``async with`` it first).
        """
        return self.sync_cache.memoize(*args, **kwargs)

    async def pin(self, key: Key) -> None:
        await self._run(self.sync_cache.pin, key)

    async def unpin(self, key: Key) -> None:
        await self._run(self.sync_cache.unpin, key)

    async def pinned(self, key: Key) -> bool:
        return await self._run(self.sync_cache.pinned, key)

    async def get(
        self, key: Key, default: _T | None = None, *, refresh: bool = False
    ) -> Value | _T | None:
        """As :meth:`BlobCache.get`. A large value's first get maps and checks its
        file, and a miss may read through from a remote, so it runs in a thread;
        later gets are dict lookups."""
        if refresh:  # (a handle with a remote: its get takes it)
            get: Any = functools.partial(cast(Any, self.sync_cache.get), refresh=True)
            return await self._run(get, key, default)
        return await self._run(self.sync_cache.get, key, default)

    async def refresh(self) -> None:
        """As :meth:`BlobCache.refresh` (with a remote tier, one list of it)."""
        await self._run(self.sync_cache.refresh)

    async def flush_remote(self) -> None:
        """As :meth:`BlobCache.flush_remote`: every write-back upload done."""
        await self._run(self.sync_cache.flush_remote)

    async def delete(self, key: Key) -> bool:
        return await self._run(self.sync_cache.delete, key)

    async def put_many(self, items: Iterable[tuple[Key, object]]) -> None:
        """As :meth:`BlobCache.put_many`: one batch, all or none, in a worker thread.
        ``items`` is read whole on the loop first (the batch belongs to the
        thread that runs it)."""
        await self._run(self.sync_cache.put_many, list(items))

    async def put_file(
        self,
        key: Key,
        src: str | os.PathLike[str] | BinaryIO | Any,
        *,
        ttl: float | None = None,
        pin: bool = False,
    ) -> None:
        """As :meth:`BlobCache.put_file`, for a path (copied by the kernel, in a
        worker thread), a binary file object, or an async one such as
        ``aiofiles.open(path, "rb")`` gives (read chunk by chunk on the loop,
        each chunk handed to the put running in a worker thread)."""
        read = getattr(src, "read", None)
        if read is None or not asyncio.iscoroutinefunction(read):
            put_file = functools.partial(self.sync_cache.put_file, ttl=ttl, pin=pin)
            await self._run(put_file, key, src)
            return
        size = BlobCache.CHUNK_BYTES

        async def chunks() -> AsyncIterator[bytes]:
            while chunk := await read(size):
                yield chunk

        await self.put_stream(key, chunks(), ttl=ttl, pin=pin)

    async def put_stream(
        self,
        key: Key,
        chunks: AsyncIterable[object] | Iterable[object],
        *,
        ttl: float | None = None,
        pin: bool = False,
    ) -> None:
        """As :meth:`BlobCache.put_stream`, for an async or a plain iterable. A
        chunk must not be changed after it is yielded (it is written later)."""
        put_stream = functools.partial(self.sync_cache.put_stream, ttl=ttl, pin=pin)
        if not isinstance(chunks, AsyncIterable):
            await self._run(put_stream, key, chunks)
            return
        handoff = _Handoff(asyncio.get_running_loop())
        writer = asyncio.ensure_future(asyncio.to_thread(put_stream, key, handoff))
        feeder = asyncio.ensure_future(handoff.feed(chunks))
        try:
            await asyncio.wait([writer, feeder], return_when=asyncio.FIRST_COMPLETED)
            if not feeder.done():
                writer.result()  # the put ended before its stream: it failed, raise why
            feeder.result()  # the source failed, or a chunk was not bytes-like: raise that
            await asyncio.wait([writer])  # fed to the end: the put finishes
            writer.result()
        finally:
            # Whatever ended it (an error on either side, or our cancellation),
            # neither side is left running: the worker's put stops at its next
            # chunk, leaving no trace; the source is read no further.
            if not writer.done():
                handoff.stop()
            feeder.cancel()
            await _settle(writer, feeder)

    async def open(self, key: Key) -> BinaryIO:
        return await self._run(self.sync_cache.open, key)

    async def sync(self) -> None:
        await self._run(self.sync_cache.sync)

    async def gc(self) -> GcResult:
        return await self._run(self.sync_cache.gc)

    async def stats(self) -> Stats:
        return self.sync_cache.stats()  # from memory: no disk, no thread

    async def close(self) -> None:
        if self._cache is not None:
            await self._run(self._cache.close)
