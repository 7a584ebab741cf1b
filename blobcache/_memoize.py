"""``BlobCache.memoize``: a function's results stored under keys derived from its code
and arguments, computed once per key across threads and processes.

The key (``_fingerprint``) is ``b"memoize:<module>:<qualname>:"`` and the
xxh3-128 digest of the function's code and its bound arguments; the result is
stored through the typed codecs (``_codecs``: arrays as ``.npy``, dicts of arrays
as safetensors, plain data as JSON; pickle only when asked), with the
decorator's ``ttl`` and under the handle's ``max_bytes``.

One computation per key: a call that misses takes the key's lock -- a lock per
key among the threads of this process, then one byte of the store's ``LOCK``
file among processes (``_fsio.lock_range``, waited on in the kernel, released
by the kernel if the process dies) -- and looks again before it computes: the
callers that waited find the result stored and return it. A call whose function
raises stores nothing and lets go of the lock: each caller that waited then
computes in turn, and raises too if the function raises again for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import os
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, ParamSpec, Protocol, TypeVar, cast

import xxhash

from . import _codecs, _fsio
from . import _format as F
from ._clock import check_ttl
from ._fingerprint import Fingerprint, function_digest
from ._index import CODEC_OF
from .errors import BlobCacheError

if TYPE_CHECKING:
    from .cache import BlobCache

log = logging.getLogger("blobcache")

_P = ParamSpec("_P")
_R = TypeVar("_R")
_R_co = TypeVar("_R_co", covariant=True)

_SERIALIZERS = (None, "npy", "safetensors", "json", "pickle")
_SLOW = 1 << 8  # no codec: what the hit's path says of what is not a small typed value
_FAST_CODECS = {**CODEC_OF, bytes: F.CODEC_RAW}  # (a small raw value: the bytes themselves)
_RANGE_OFFSETS = 1 << 62  # the bytes of LOCK a key's lock may fall on (an off_t is signed)

# Taken by a KeyLocks' first use in a process (``_here``): threads making their
# first memoized calls at once must share one descriptor, or one locks a byte on
# its own and releases it on the other's, and the byte stays locked. Module-wide,
# made anew in a forked child (a thread of the parent may hold it at the fork).
_first_use = threading.Lock()


def _new_first_use_lock() -> None:
    global _first_use
    _first_use = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_first_use_lock)


class MemoInfo(NamedTuple):
    """A memoized function's counts in this process: calls served from the store
    (``hits``, a call that waited for another's computation included) and calls
    that computed (``misses``)."""

    hits: int
    misses: int


class Memoized(Protocol[_P, _R_co]):
    """What ``memoize`` returns: the function, and the functools-style extras."""

    __wrapped__: Callable[_P, Any]

    def __call__(self, *args: _P.args, **kwargs: _P.kwargs) -> _R_co: ...

    def cache_key(self, *args: _P.args, **kwargs: _P.kwargs) -> bytes: ...

    def invalidate(self, *args: _P.args, **kwargs: _P.kwargs) -> bool: ...

    def clear(self) -> int: ...

    def cache_info(self) -> MemoInfo: ...


class KeyLocks:
    """The per-key locks of one handle's memoized calls: a thread lock per key
    (created on demand, dropped when no caller holds or waits for it), then a
    byte of the store's ``LOCK`` file.

    Invariant: a key's byte is locked by at most one thread of this process,
    the one holding its thread lock (an OFD lock excludes other descriptors,
    not other threads on ours).
    """

    def __init__(self, lock_path: str) -> None:
        self._path = lock_path
        self._guard = threading.Lock()
        self._threads: dict[bytes, list[Any]] = {}  # key -> [its Lock, holders and waiters]
        self._fd = -1
        self._pid = 0  # the process _fd was opened in: a forked child opens its own

    def acquire(self, key: bytes) -> bytes:
        """Wait for ``key``'s lock (in this process, then among processes);
        ``release(key)`` lets go of it."""
        if self._pid != os.getpid():
            with _first_use:
                if self._pid != os.getpid():  # (another thread's first use came first)
                    self._here()
        with self._guard:
            entry = self._threads.setdefault(key, [threading.Lock(), 0])
            entry[1] += 1
        entry[0].acquire()
        try:
            _fsio.lock_range(self._fd, _offset(key))
        except BaseException:
            self._let_go(key, entry)
            raise
        return key

    def release(self, key: bytes) -> None:
        with self._guard:
            entry = self._threads[key]
            fd = self._fd
        try:
            # -1: the handle closed meanwhile, and closing the descriptor let go
            # of every lock on it; the call that computed still returns its result.
            if fd >= 0:
                _fsio.unlock_range(fd, _offset(key))
        finally:
            self._let_go(key, entry)

    def _let_go(self, key: bytes, entry: list[Any]) -> None:
        entry[0].release()
        with self._guard:
            entry[1] -= 1
            if not entry[1]:
                del self._threads[key]

    def _here(self) -> None:
        """First use in this process (a forked child: the parent's threads' locks
        are not ours, and its descriptor's copy was closed, see ``_fsio``).
        REQUIRES: ``_first_use``. ``_pid`` is set last: a thread that sees it
        sees the rest."""
        self._guard = threading.Lock()
        self._threads = {}
        self._fd = _fsio.open_range_locks(self._path)
        self._pid = os.getpid()

    def close(self) -> None:
        with self._guard:
            if self._pid == os.getpid():
                _fsio.unlock(self._fd)
            self._pid, self._fd = 0, -1


def _offset(key: bytes) -> int:
    return xxhash.xxh3_64_intdigest(key) % _RANGE_OFFSETS


class _Memo(Generic[_R]):
    """One memoized function's state: its key derivation, options and counts."""

    def __init__(
        self,
        cache: BlobCache,
        fn: Callable[..., Any],
        version: str | int | None,
        ignore: Iterable[str],
        ttl: float | None,
        serializer: str | None,
        device_policy: str,
    ) -> None:
        if serializer not in _SERIALIZERS:
            raise ValueError(
                f"serializer must be one of {', '.join(map(repr, _SERIALIZERS))}, "
                f"not {serializer!r}"
            )
        self.cache = cache
        self.fn = fn
        self.fingerprint = Fingerprint(
            fn, version=version, ignore=ignore, device_policy=device_policy
        )
        # ":" between the two, which neither can hold: "a" + "b.c" is not "a.b" + "c".
        self.prefix = f"memoize:{fn.__module__}:{fn.__qualname__}:".encode()
        self.ttl = None if ttl is None else check_ttl("ttl", ttl)
        self.serializer = serializer
        self.counts = [0, 0]  # hits, misses; changed under count_lock
        self.count_lock = threading.Lock()

    def key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
        return self.prefix + self.fingerprint.key(args, kwargs)

    def stored(self, key: bytes) -> tuple[bool, Any]:
        """(True, the stored result) or (False, None)."""
        cache = self.cache
        found = cache._typed_get(key)
        if found is None:
            return False, None
        got, codec = found
        trusted = cache._pickle_check(key) if codec == F.CODEC_PICKLE else None
        return True, _codecs.decode(codec, got, trusted=trusted)

    def count(self, hit: bool) -> None:
        with self.count_lock:
            self.counts[0 if hit else 1] += 1

    def keep(self, key: bytes, result: Any) -> None:
        """Store ``result`` under ``key``. An unencodable result raises (every call
        would fail alike: the function or the serializer must change); a store
        that fails (disk full, a cap all pinned) is logged and the result
        returned all the same: the computation is not lost to the cache's
        trouble."""
        try:
            self.cache.put_object(key, result, serializer=self.serializer, ttl=self.ttl)
        except (OSError, BlobCacheError) as error:  # first: CacheFullError is a ValueError too
            log.warning(
                "blobcache: memoize(%s) could not store a result: %s", self.fn.__qualname__, error
            )
        except (TypeError, ValueError) as error:
            raise type(error)(
                f"memoize({self.fn.__qualname__}): its result cannot be stored: {error}"
            ) from None

    def clear(self) -> int:
        cache = self.cache
        cache._catch_up()
        gone = 0
        for key in list(cache):
            if isinstance(key, bytes) and key.startswith(self.prefix):
                gone += cache.delete(key)
        return gone


def memoize(
    cache: BlobCache,
    fn: Callable[_P, _R],
    version: str | int | None,
    ignore: Iterable[str],
    ttl: float | None,
    serializer: str | None,
    device_policy: str,
) -> Memoized[_P, _R]:
    """``BlobCache.memoize``'s wrapper of ``fn`` (see there).

    :raises TypeError: ``fn`` is not a function (a ``functools.partial``, a
        callable object: they have no code or name to key by).
    """
    if not inspect.isfunction(cast(object, fn)):  # (cast: no narrowing of fn's type)
        raise TypeError(
            f"memoize takes a function (def or async def), not {type(fn).__name__}: wrap it in one"
        )
    memo: _Memo[_R] = _Memo(cache, fn, version, ignore, ttl, serializer, device_policy)
    locks = cache._key_locks

    # The hit's path, flat: a memoized call whose result is stored is this and
    # no more (issue 16: <= 3 us with a small argument).
    # A small result is the index's bytes object itself, its type the codec
    # (_index.CODEC_OF); anything else -- a miss, a value in a file, an expiry
    # to check, a pickle -- takes memo.stored, the whole way.
    prefix, derive, codec_of = memo.prefix, memo.fingerprint.key, _FAST_CODECS.get
    counts, count_lock, decode, missing = memo.counts, memo.count_lock, _codecs.decode, object()

    def sync_call(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        key = prefix + derive(args, kwargs)
        got: Any = cache.get(key, missing)
        codec = codec_of(type(got), _SLOW)
        if codec < F.CODEC_PICKLE and not cache._index.expiry:
            result = decode(codec, got)
            with count_lock:
                counts[0] += 1
            return result  # type: ignore[return-value]
        hit, result = memo.stored(key)
        if hit:
            memo.count(True)
            return result  # type: ignore[no-any-return]
        if cache.options.readonly:  # nothing can be stored: computed, not kept
            memo.count(False)
            return fn(*args, **kwargs)
        locks().acquire(key)
        try:
            hit, result = memo.stored(key)  # (a miss asks the other processes first)
            memo.count(hit)
            if hit:
                return result  # type: ignore[no-any-return]
            result = fn(*args, **kwargs)
            memo.keep(key, result)
            return result
        finally:
            locks().release(key)

    async def async_call(*args: _P.args, **kwargs: _P.kwargs) -> Any:
        key = memo.key(args, kwargs)
        hit, result = await asyncio.to_thread(memo.stored, key)
        if hit:
            memo.count(True)
            return result
        if cache.options.readonly:
            memo.count(False)
            return await fn(*args, **kwargs)  # type: ignore[misc]
        await _acquire_async(locks(), key)
        try:
            hit, result = await asyncio.to_thread(memo.stored, key)
            memo.count(hit)
            if hit:
                return result
            result = await fn(*args, **kwargs)  # type: ignore[misc]
            await asyncio.to_thread(memo.keep, key, result)
            return result
        finally:
            locks().release(key)

    wrapper: Any = async_call if inspect.iscoroutinefunction(fn) else sync_call
    functools.update_wrapper(wrapper, fn)
    wrapper.cache_key = lambda *args, **kwargs: memo.key(args, kwargs)
    wrapper.invalidate = lambda *args, **kwargs: cache.delete(memo.key(args, kwargs))
    wrapper.clear = memo.clear
    wrapper.cache_info = lambda: MemoInfo(*memo.counts)
    wrapper.__blobcache_key__ = functools.partial(_wrapped_key, fn, version)
    return wrapper  # type: ignore[no-any-return]


_deriving = threading.local()  # the memoized functions whose keys this thread is deriving


def _wrapped_key(fn: Callable[..., Any], version: str | int | None) -> bytes | str:
    """What a memoized function is keyed by where another function's key meets
    it (it calls it by a global name): the function it wraps, not the wrapper,
    whose closure holds the cache. One that calls itself (a memoized recursion)
    meets its own name the second time round."""
    busy: set[int] = _deriving.__dict__.setdefault("busy", set())
    if id(fn) in busy:
        return f"{fn.__module__}.{fn.__qualname__}"
    busy.add(id(fn))
    try:
        return function_digest(fn, version=version)
    finally:
        busy.discard(id(fn))


async def _acquire_async(locks: KeyLocks, key: bytes) -> None:
    """``locks.acquire(key)`` in a thread of its own, without blocking the loop.

    Not in the loop's executor: the call holding the key needs the executor's
    threads (``to_thread(memo.stored)``, ``memo.keep``), and as many waiters as
    it has threads would take them all, each waiting for that call: a deadlock
    (issue 16 review). If the waiting task is cancelled, or the loop is gone,
    the lock is let go of as soon as the thread gets it: nobody else would."""
    loop = asyncio.get_running_loop()
    waiting: asyncio.Future[bytes] = loop.create_future()

    def settle(error: BaseException | None) -> None:
        if waiting.done():  # (never: shielded) the lock must not be kept by nobody
            if error is None:
                locks.release(key)
        elif error is not None:
            waiting.set_exception(error)
        else:
            waiting.set_result(key)

    def wait() -> None:
        try:
            locks.acquire(key)
        except BaseException as error:  # handed to the waiting task
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
                loop.call_soon_threadsafe(settle, error)
            return
        try:
            loop.call_soon_threadsafe(settle, None)
        except RuntimeError:  # the loop closed meanwhile: nobody will release it
            locks.release(key)

    threading.Thread(target=wait, name="blobcache-memoize-wait", daemon=True).start()
    try:
        await asyncio.shield(waiting)
    except asyncio.CancelledError:

        def let_go(done: asyncio.Future[bytes]) -> None:
            with contextlib.suppress(BaseException):
                locks.release(done.result())

        waiting.add_done_callback(let_go)
        raise
