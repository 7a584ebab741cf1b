"""BlobCache: the face a user holds, over the parts that do the work.

Each public method checks its arguments and hands the work to the part that
owns it:

* ``_writes.Writes``: a put or delete, from its sequence number to the index
  (stripe locks, routing by size, publishing);
* ``_index.Index``: what each key's live record is; ``get`` is one lookup in
  its ``values``;
* ``_ledger.Ledger``: the fsyncs "os" durability owes, and the failed-fsync rule;
* ``_garbage.Garbage``: ``gc()`` and compaction, in the foreground or background;
* ``_reads.Reads``: a large value's first get (map, check), ``open()``, and
  serving the older record when a version fails its check;
* ``_held``: opening, the lock and active segment a handle holds, its threads;
* ``_stats``: what the store says of itself.

``get`` takes no lock: it is one dict lookup plus, on a large value's first
read in this process, an mmap.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, MutableMapping, Sequence
from types import TracebackType
from typing import Any, BinaryIO, Literal, TypeVar, cast

from . import _codecs, _held, _memoize, _storedir, _tier, _typed
from . import _format as F
from . import _names as N
from ._batch import Batch
from ._buffers import as_buffer
from ._cap import Cap
from ._clock import check_ttl, expires_at
from ._expiry import Expiry
from ._follow import Follower
from ._garbage import Garbage
from ._index import ClosedIndex, Index, Mapped, SegmentBook, Values
from ._index import Value as Stored
from ._janitor import GcResult
from ._logwriter import LogWriter
from ._memoize import KeyLocks
from ._options import Durability, Options, check_flag
from ._problems import Problem
from ._reads import Reads
from ._recovered import Recovered
from ._remote import Remote
from ._stats import Inventory, Stats
from ._writes import Source, StripeGuard, Writes
from .errors import BatchError, BlobCacheError, ClosedError

_T = TypeVar("_T")
Value = bytes | memoryview  # what get returns: bytes from the log, a view of a file

__all__ = ["Batch", "BlobCache", "Inventory", "Stats", "Value", "as_buffer"]


_TYPED_TRIES = 100  # looks at a key a put replaces between get and codec, before giving up
_CODEC_NAMES = {
    F.CODEC_RAW: "bytes put with put()",
    F.CODEC_NPY: "an array",
    F.CODEC_SAFETENSORS: "a dict of arrays",
    F.CODEC_JSON: "plain data (JSON)",
    F.CODEC_PICKLE: "a pickle",
}


def _not_typed(key: N.Key, codec: int, wanted: str, getter: str) -> str:
    return (
        f"{key!r} holds {_CODEC_NAMES[codec]}, not {wanted}: {getter} reads what "
        "put_object stored as one; use get_object (or get, for bytes)"
    )


def _codecs_trusted(paths: Callable[[], tuple[list[str], set[str]]]) -> Callable[[], None]:
    """What ``_codecs.decode`` calls before it unpickles: the store must be private."""
    return lambda: _codecs.check_private(*paths())


def _key_type_error(key: object) -> TypeError:
    return TypeError(f"keys must be str or bytes, not {type(key).__name__}")


class BlobCache(MutableMapping[N.Key, Value]):
    """A durable key-value cache in a directory: puts survive crashes, gets come from memory.

    :param path: the store's directory; created if missing. A non-empty
        directory that is not a store is refused.
    :param durability: ``"fsync"`` (default; a put survives power loss) or
        ``"os"`` (a put survives a process crash; fsynced in the background).
    :param sync_interval: seconds between background fsyncs with ``"os"``.
    :param verify_on_get: check each value's checksum on its first ``get``.
    :param refresh_interval: seconds between catching up with other processes'
        puts and deletes (a hit may be that old; a miss always catches up).
    :raises LockedError: a program holds the store alone (blobcache 0.1's writer).
        Handles of this version, in any processes, share it.
    :raises UnsafeFilesystemError: ``path`` is on NFS, SMB, FUSE or the like, where
        flock or fsync may not hold (see ``trust_filesystem``); nothing was changed.
    :raises BlobCacheError: ``path`` is not a directory, or not a store.

    >>> import tempfile
    >>> with BlobCache(tempfile.mkdtemp()) as cache:
    ...     cache.put("config", b'{"lr": 0.001}')
    ...     bytes(cache["config"])
    b'{"lr": 0.001}'
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durability: Durability = "fsync",
        sync_interval: float = 1.0,
        verify_on_get: bool = True,
        inline_limit: int = Options.inline_limit,
        segment_bytes: int = Options.segment_bytes,
        compact_ratio: float = Options.compact_ratio,
        salvage: bool = False,
        gc_interval: float | None = None,
        readonly: bool = False,
        trust_filesystem: bool = False,
        refresh_interval: float = Options.refresh_interval,
        default_ttl: float | None = None,
        max_bytes: int | None = None,
        remote: str | None = None,
        remote_options: dict[str, Any] | None = None,
        remote_mode: str = "write-through",
        remote_refresh: float = Options.remote_refresh,
    ) -> None:
        self._options = options = Options(
            durability,
            sync_interval,
            verify_on_get,
            inline_limit,
            segment_bytes,
            compact_ratio,
            salvage,
            gc_interval,
            readonly,
            trust_filesystem,
            refresh_interval,
            default_ttl,
            max_bytes,
            remote,
            remote_mode,
            remote_refresh,
        )
        if remote is None and remote_options is not None:
            raise ValueError("remote_options need a remote (remote='s3://bucket/prefix')")
        self._tier: _tier.Tier | None = None
        self._threads: list[threading.Thread] = []
        # The client's settings (credentials among them): held here for a reopen
        # (fork, pickling), never written to the store or a log.
        self._remote_options = remote_options
        client = None if remote is None else Remote(remote, remote_options)
        if client is not None:
            # Before the store is touched: a wrong bucket, endpoint or credential
            # fails here, in one sentence, and leaves the directory as it was.
            client.check(create=True)
        self._path = os.path.abspath(os.fspath(path))
        if not hasattr(self, "_forked_lock"):  # not again when adopted (see _adopt)
            self._forked_lock = threading.Lock()
            self._adopting = False
        self._batches = _BatchOf()
        self._memo_locks: KeyLocks | None = None
        self._held, found = _held.open_store(self._path, options)
        # close() lets go of it; for a handle dropped without close(), this does
        # once the handle is collected. Not at interpreter exit: the process's end
        # releases the lock, and "os" durability promises nothing at a crash.
        # A remote tier, once attached, is in ``_tiers``: its threads use the store,
        # so a dropped handle's finalizer stops them first.
        self._tiers: list[_tier.Tier] = []
        self._release = weakref.finalize(self, _held.let_go_of_dropped, self._held, self._tiers)
        self._release.atexit = False
        book = SegmentBook(found.segment_total, found.segment_live)
        self._index = Index(
            found.values,
            found.meta,
            found.deleted,
            book,
            found.dirty | found.empty_fanouts,
            self._held.expiry_soon,
        )
        self._index.set_expiry(found.expiry)
        self._index.notes = found.notes
        self._index.pins = found.pins
        self._index.take_cold(found.cold)
        if max_bytes is not None or remote is not None:
            self._index.warm()  # (the cap orders every key; the tier walks them)
        self._values = found.values  # get's one lookup; a ClosedIndex once closed
        self._writes = Writes(
            self._path, options, self._held, self._index, found.max_seq, found.key_dirs
        )
        self._follower = self._writes.follower = Follower(
            self._path,
            self._index,
            found.key_dirs,
            self._held.writer,
            self._held.state,
            *_follow_from(found, self._held.writer),
            _reloader(self),
        )
        self._held.follower = self._follower
        follower = self._follower  # (not self: the sweep thread must not keep the handle alive)
        self._expiry = Expiry(
            self._index,
            self._writes.blobs,
            found.key_dirs,
            follower.catch_up,
            lambda: follower.active_seen,
        )
        self._reads = Reads(self._writes, found.log_under_blob, found.max_seq)
        self._values.first_get = self._reads.first_get
        self._values.inherited = self._held.inherited
        # Without salvage the only log problems are cut tails: nothing to rewrite.
        salvaged = salvage and any(s.problems for s in found.segments)
        self._garbage = Garbage(
            self._writes, self._reads, set(found.dirty), found.blob_over_log, salvaged=salvaged
        )
        # A snapshot whose book missed directories is written again (at close):
        # the next open then stats them instead of listing them.
        if not found.book_misses:
            self._garbage.snapshot_mark = found.snapshot_mark
        self._garbage.book = found.book
        self._garbage.generation = found.generation
        self._problems = tuple(found.problems)
        self._temps_removed_at_open = found.temps_removed
        self._torn_bytes_at_open = found.torn_bytes
        self._snapshot_at_open = found.snapshot
        writer = self._held.writer
        if writer is not None:
            book.add(writer.number, 0, live=False)
            if durability == "os":
                self._held.owed.owe_found(found.dir_of, self._values.files)
        self._follower.catch_up()  # what others appended since recovery read the log
        if max_bytes is not None and writer is not None:
            self._writes.cap = Cap(
                max_bytes, self._index, writer, self._follower, os.path.join(self._path, F.LOG_DIR)
            )
            # A hit sets its key's visited bit: get bound to the variant that does
            # (close() unbinds it).
            self.get = _visiting_get(  # type: ignore[method-assign]
                self._values, self._writes.cap.sieve.visited, self._miss
            )
            try:
                self._writes.enforce_cap()  # over the cap at open: lowered, a crash mid-eviction
            except BaseException:
                self.close()
                raise
        if client is not None:
            try:
                self._tier = _attach(self, client)
                self._tiers.append(self._tier)
                # get(key, default, refresh=True): bound to the variant that takes it
                # (the class's stays one lookup; close() unbinds it).
                cap = self._writes.cap
                self.get = _remote_get(  # type: ignore[method-assign]
                    self._values,
                    None if cap is None else cap.sieve.visited,
                    self._miss,
                    self._refresh_key,
                )
            except BaseException:
                self.close()
                raise
        _open_handles[id(self)] = self
        self._threads = _held.start_background(self, options)

    # --- reading -------------------------------------------------------------------

    def get(self, key: N.Key, default: _T | None = None) -> Value | _T | None:  # type: ignore[override]
        """The value of ``key``, or ``default``.

        A value stored in the log (shorter than ``inline_limit``) comes back as
        ``bytes``; a larger one as a read-only, zero-copy ``memoryview`` of its
        file, valid as long as you hold it, even after the key is overwritten,
        deleted and garbage-collected, or the cache closed. Each get returns a
        view of its own: releasing it (``with cache.get(k) as view:``) leaves
        the key readable.

        With a remote tier, a miss reads through (and may raise ``RemoteError``),
        and ``get(key, default, refresh=True)`` first brings in the remote's newest
        version of the key. (Only then: a keyword-only parameter would cost every
        get about 18 ns, a fifth, as CPython cannot specialise the call.)

        :raises TypeError: ``key`` is not str or bytes.
        :raises CorruptionError: a large value's checksum failed on its first read.
        :raises ClosedError: the cache was closed.
        """
        try:
            return self._values[key]  # a value in a file: see _index.Values.__missing__
        except (KeyError, TypeError):
            return self._miss(key, default)

    def get_object(self, key: N.Key, default: Any = None) -> Any:
        """The value ``put_object`` stored under ``key``, decoded by its codec, or
        ``default``: an array comes back read-only, over the stored bytes (for a
        large one, its file's mapping: no copy); a dict of arrays likewise; plain
        data as it was put. A value put with ``put`` comes back as ``get``
        returns it.

        :raises BlobCacheError: the value is a pickle and the store's directories
            or files are writable by others (or not owned by you or root): the
            sentence says which; ``chmod go-w`` it, or read it with ``get``.
        :raises CorruptionError: as ``get``, or the stored bytes are not what
            their codec says.
        """
        found = self._typed_get(key)
        if found is None:
            return default
        got, codec = found
        return _codecs.decode(codec, got, trusted=self._pickle_check(key))

    def get_array(self, key: N.Key, default: Any = None) -> Any:
        """The numpy array ``put_object`` stored under ``key``, or ``default``:
        read-only, over the stored bytes with no copy (for a value in a file,
        over its mapping, whatever its size).

        :raises TypeError: the key holds something other than an array.
        """
        got = self._typed_get_as(key, F.CODEC_NPY, "an array", "get_array")
        return default if got is None else _codecs.decode_array(got)

    def get_tensors(self, key: N.Key, default: Any = None, *, framework: str = "numpy") -> Any:
        """The dict of arrays ``put_object`` stored under ``key`` (as safetensors),
        or ``default``: read-only numpy arrays over the stored bytes, no copy;
        ``framework="torch"`` gives torch tensors (bfloat16 needs it).

        :raises TypeError: the key holds something other than a dict of arrays.
        :raises ValueError: ``framework`` is neither ``"numpy"`` nor ``"torch"``.
        """
        if framework not in ("numpy", "torch"):
            raise ValueError(f'framework must be "numpy" or "torch", not {framework!r}')
        got = self._typed_get_as(key, F.CODEC_SAFETENSORS, "a dict of arrays", "get_tensors")
        if got is None:
            return default
        return _codecs.decode_tensors(got, cast(Literal["numpy", "torch"], framework))

    def memoize(
        self,
        version: str | int | Callable[..., Any] | None = None,
        ignore: Iterable[str] = (),
        ttl: float | None = None,
        *,
        serializer: str | None = None,
        device_policy: str = "error",
    ) -> Any:
        """A decorator: the function's results are stored in this cache under a key
        derived from its code and its arguments, and a call whose key is stored
        returns the stored result without running the function. For plain and
        ``async`` functions (and methods: below). ``@cache.memoize`` works
        without the parentheses too.

        >>> import tempfile
        >>> cache = BlobCache(tempfile.mkdtemp())
        >>> @cache.memoize()
        ... def scale(x, factor=2):
        ...     return x * factor
        >>> scale(21), scale(x=21), scale(21, 2)  # one computation: one key
        (42, 42, 42)
        >>> scale.cache_info()
        MemoInfo(hits=2, misses=1)
        >>> cache.close()

        The key is xxh3-128 over the function's module, qualified name and code
        (its bytecode, constants and names, those of the functions of its own
        package it calls by a global name, and its closure's values -- not its
        line numbers: a comment leaves the key alone) and over its arguments
        bound to its signature (defaults applied, so ``f(1)`` and ``f(x=1)``
        agree), each encoded with its type: None, bool, int, float, complex,
        str, bytes, tuples, lists, dicts, sets, dataclasses, NamedTuples,
        enums, paths, numpy arrays (by dtype, shape and values in C order) and
        torch tensors. An object may give its own key with a
        ``__blobcache_key__()`` method returning any of those.

        Results are stored as ``put_object`` stores them (arrays as ``.npy``,
        plain data as JSON...); a result no codec takes raises ``TypeError``
        unless ``serializer="pickle"``. A hit returns what ``get_object``
        returns (an array comes back read-only, over the stored file); the call
        that computed returns its own result.

        Concurrent calls with one key, in threads or processes, compute once:
        the others wait (in the kernel, not spinning) and return the stored
        result. If the function raises, nothing is stored, and each waiting
        call then computes in turn (raising too, if the function raises for it).

        Methods: ``self`` is an argument like any other, so its class must be
        one the key takes (a dataclass, say) or define ``__blobcache_key__``;
        or leave it out with ``ignore=("self",)`` when the result does not
        depend on the instance.

        :param version: when given, the key's function part is the module,
            name and this version alone: bump it to say the code's meaning
            changed (keys of old versions are never wiped: the cap and ``gc``
            age them out, or ``fn.clear()``).
        :param ignore: names of parameters left out of the key.
        :param ttl: seconds each stored result lasts (else ``default_ttl``).
        :param serializer: as for ``put_object``.
        :param device_policy: ``"error"`` (a tensor not on the CPU raises) or
            ``"copy"`` (copied to the CPU to derive the key).

        The wrapper has ``__wrapped__``, ``cache_key(*args, **kwargs)`` (the
        store key of a call), ``invalidate(*args, **kwargs)`` (delete that
        key; True if it was there), ``clear()`` (delete this function's keys,
        of every version; returns how many) and ``cache_info()`` (hits and
        misses in this process).

        :raises TypeError: (at a call) an argument the key cannot take, named
            with its type; or a result no codec takes.
        :raises ValueError: an ``ignore`` name the function does not have, a
            bad ``ttl``, ``serializer`` or ``device_policy``.
        """
        if callable(version):  # @cache.memoize, without parentheses
            return _memoize.memoize(self, version, None, ignore, ttl, serializer, device_policy)

        def decorate(fn: Callable[..., Any]) -> Any:
            return _memoize.memoize(self, fn, version, ignore, ttl, serializer, device_policy)

        return decorate

    def _key_locks(self) -> KeyLocks:
        """memoize's per-key locks (made on first use)."""
        locks = self._memo_locks
        if locks is None:
            with self._forked_lock:
                if self._memo_locks is None:
                    self._memo_locks = KeyLocks(os.path.join(self._path, F.LOCK_NAME))
                locks = self._memo_locks
        return locks

    def _pickle_check(self, key: N.Key) -> Callable[[], None]:
        return _codecs_trusted(_typed.private_paths(self._path, self._values, key))

    def _typed_get_as(self, key: N.Key, codec: int, wanted: str, getter: str) -> Value | None:
        """What ``get`` returns for ``key``, if its codec is ``codec``; None for a miss.

        :raises TypeError: another codec (``wanted``, ``getter``: for the sentence).
        """
        found = self._typed_get(key)
        if found is None:
            return None
        if found[1] != codec:
            raise TypeError(_not_typed(key, found[1], wanted, getter))
        return found[0]

    def _typed_get(self, key: N.Key) -> tuple[Value, int] | None:
        """What ``get`` returns for ``key`` and its codec; None for a miss. Exact
        about expiry (as every call but ``get`` is): a memoized result whose ttl
        passed is computed again, not served until the background sweep."""
        for _ in range(_TYPED_TRIES):
            got: Any = self.get(key, _MISSING)
            if got is _MISSING:
                return None
            if self._index.expiry and self._expiry.is_expired(key):
                self._expiry.sweep()
                continue
            codec = _typed.codec_of_got(self._values, key, got)
            if codec is not None:
                return got, codec
        raise BlobCacheError(f"{key!r} was replaced {_TYPED_TRIES} times while it was read")

    def _miss(self, key: object, default: _T | None) -> Value | _T | None:
        """get's slow path: a miss, or a key of the wrong type. A put moving the
        key between the index's two dicts may have come between: ``stored``
        settles whether it is there."""
        while self._lookup(key) is not None:
            try:
                return self._values[key]  # type: ignore[index]
            except KeyError:
                continue  # deleted or moved again meanwhile: ask again
        return default

    def _lookup(self, key: object, *, remote: bool = True) -> Stored | None:
        """The stored value of ``key`` or None; the slow path, with the type checks.
        A miss reads what other processes appended first: a put acknowledged
        anywhere is never reported missing afterwards.

        :raises TypeError: ``key`` is not str or bytes (a dict would just say "missing",
            or "unhashable" for a bytearray).
        """
        if not isinstance(key, (str, bytes)):
            raise _key_type_error(key)
        found = self._values.stored(key)
        if found is None:
            self._catch_up()
            found = self._values.stored(key)
            if found is None and remote and self._tier is not None and self._tier.fetch(key):
                found = self._values.stored(key)  # read through: a miss asks the remote
        elif self._expiry.is_expired(key):
            self._expiry.sweep()  # exact here, not waiting for the background sweep
            found = self._values.stored(key)
        return found

    def refresh(self) -> None:
        """Catch up at once with every put and delete other processes made: a hit
        is otherwise up to ``refresh_interval`` seconds old (a miss always
        catches up first); and take out of memory every value whose ``ttl`` has
        passed (a background thread does it at each deadline). With a remote
        tier, also bring in every newer remote version of a key held here (a
        background thread does it every ``remote_refresh`` seconds).

        :raises RemoteError: the remote could not be listed (local catch-up done).
        """
        self._catch_up()
        if self._tier is not None:
            self._tier.refresh()

    def flush_remote(self) -> None:
        """Return once every put and delete made so far is on the remote (with
        ``remote_mode="write-back"``; with write-through they already are, but for
        values put before the remote was attached, which this uploads too).

        :raises RemoteError: the remote failed; what is not uploaded stays queued,
            and the background uploader keeps trying.
        :raises BlobCacheError: the handle has no remote.
        """
        self._here()
        self._check_open()
        if self._tier is None:
            raise BlobCacheError(f"{self._path} was opened without a remote: nothing to flush")
        self._tier.flush()

    def _catch_up(self) -> None:
        """``refresh`` of the local store: other processes' puts, and expiries."""
        self._here()
        if self._follower.catch_up() and self._held.writer is not None:
            self._maybe_compact()
        self._expiry.sweep()

    def _refresh_key(self, key: object) -> None:
        """``get(key, refresh=True)``'s first step: a key held here is checked against
        the remote; a missing one is left to the get's miss, which reads it through."""
        held = self._lookup(key, remote=False)  # (the type checks, the local catch-up)
        if held is not None and self._tier is not None:
            self._tier.refresh_key(cast(N.Key, key))

    def _expire(self) -> None:
        """The sweep thread's work: take expired values out of memory; a writer
        then compacts if that left sealed segments stale enough (the space of
        an expired value in a file comes back at the next ``gc()``)."""
        if self._expiry.sweep() and self._held.writer is not None:
            self._maybe_compact()

    def _here(self) -> None:
        """In a process forked from the one that opened this handle: open the
        store anew here, once (the parent's threads, locks and descriptors are
        not this process's), then carry on."""
        if self._adopting or self._held.inherited():
            _adopt(self)  # (or wait for the thread adopting it)

    def _reload(self) -> tuple[int, int, int]:
        """Rebuild the index from the files: the follower fell behind a
        compaction. Returns where the log was read to."""
        state = self._held.state
        live = self._held.writer is not None or _storedir.handles_open(self._path)
        bound = state.bound() if state is not None and live else None
        generation = state.generation if state is not None else None  # (before the reading)
        found = _held.recover_beside(self._path, self._options.salvage, readonly=True, bound=bound)
        self._garbage.generation = generation
        self._writes.key_dirs.update(found.key_dirs)  # (the set the parts share)
        # Versions it found that won over a log record: compaction makes them
        # durable before it drops that record, as for those found at open.
        self._garbage.blob_over_log.update(found.blob_over_log)
        self._index.replace(
            found.values,
            found.meta,
            found.deleted,
            found.segment_total,
            found.segment_live,
            found.expiry,
            found.notes,
            found.pins,
            found.cold,
        )
        return _follow_from(found, None)

    def __getitem__(self, key: N.Key) -> Value:
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return cast(Value, value)

    def __contains__(self, key: object) -> bool:
        return self._lookup(key) is not None

    def __len__(self) -> int:
        self._expiry.sweep()
        return self._values.count()

    def __iter__(self) -> Iterator[N.Key]:
        """Iterate over a snapshot of the keys taken when iteration starts."""
        self._expiry.sweep()
        return iter(self._values.keys_now())

    def path(self, key: N.Key) -> str | None:
        """The file holding ``key``'s live value, exactly its bytes, for programs
        that open files themselves (``numpy.load(path, mmap_mode="r")``, safetensors);
        None for a value short enough to live in the log (see ``inline_limit``).

        The path stays valid until the key is overwritten or deleted *and* the
        janitor (``gc()``) runs; a file already opened or mapped keeps working
        after that, since an unlinked file lives on while it is open.

        :raises KeyError: ``key`` is not in the cache.
        """
        value = self._lookup(key)
        if value is None:
            raise KeyError(key)
        return value.record.path if isinstance(value, Mapped) else None

    def open(self, key: N.Key) -> BinaryIO:
        """A read-only, seekable binary file object over ``key``'s value.

        A value in a file is read from that file (no copy in memory); the object
        stays readable after the key is overwritten, deleted or collected, since
        an open file outlives its unlink. Its checksum is not checked: use
        ``get`` (checked on first use) or ``blobcache verify`` for that.

        :raises KeyError: ``key`` is not in the cache.
        """
        return self._reads.open(key, self._lookup)

    # --- writing -------------------------------------------------------------------

    def put(
        self, key: N.Key, value: object, *, ttl: float | None = None, pin: bool = False
    ) -> None:
        """Store ``value`` (any C-contiguous buffer, copied) under ``key``; with
        ``ttl`` (or the handle's ``default_ttl``), for that many seconds; with
        ``pin``, pinned (see ``pin``: a put without it keeps the key's pin).

        Returns once the value survives a crash of the kind ``durability`` names:
        power loss for ``"fsync"``, a process crash for ``"os"``. A value shorter
        than ``inline_limit`` is appended to the log, a larger one written to a
        file of its own. On any error the previous value stays stored and served.

        The buffer is read while the put runs and no longer once it returns. If
        another thread changes it meanwhile, what is stored is what the put
        read: for a value in the log one state of the buffer (it is copied
        first); for a value in a file, possibly a mix of the states it went
        through during the write. Either way the checksum covers exactly the
        bytes stored, so ``get`` serves them, never an older version.

        An expired key misses, in every process and after a reopen (FORMAT.md,
        "Expiry"); a ``get`` in the moment after the deadline may still return
        the value, until the background sweep takes it out of memory (every
        other call checks the clock).

        :raises TypeError: ``key`` is not str/bytes, ``value`` is not bytes-like,
            or ``ttl`` is not a number.
        :raises ValueError: the key is too long, the buffer is not contiguous, or
            ``ttl`` is not a positive, finite number of seconds.
        :raises CacheFullError: (a ValueError) with ``max_bytes``: the value is
            larger than it, or what is left to evict is pinned; nothing changed.
        :raises OSError: the disk failed (full, read-only, ...); nothing changed.
        """
        data = as_buffer(value)
        self._put(key, (data,), data.nbytes, F.CODEC_RAW, ttl, pin)

    def _put(
        self,
        key: N.Key,
        parts: Sequence[bytes | memoryview],
        length: int,
        codec: int,
        ttl: float | None,
        pin: bool,
    ) -> None:
        """``put``'s and ``put_object``'s: the arguments checked, then the write."""
        self._here()
        tag, raw = N.encode_key(key)
        expires = self._expires(ttl)
        check_flag("pin", pin)
        key = N.decode_key(tag, raw)  # a plain str or bytes, even for a subclass
        stripe = self._writes.writing(N.key_hash(tag, raw))
        with self._remote_half(tag, raw, codec, expires) as gate:
            stale = _typed.write(
                self._writes, key, tag, raw, stripe, parts, length, codec, expires, pin, gate
            )
        if stale:
            self._maybe_compact()

    def _remote_half(
        self, tag: bytes, raw: bytes, codec: int, expires: int
    ) -> contextlib.AbstractContextManager[_tier.Gate | None]:
        """Around a put's local write: with a remote tier, its half of the put
        (``_tier.Tier.putting``); without one, nothing (a shared null context: a
        generator's would cost every put about 1.4 us)."""
        tier = self._tier
        return _NO_GATE if tier is None else tier.putting(tag, raw, codec, expires)

    def put_object(
        self,
        key: N.Key,
        value: object,
        *,
        serializer: str | None = None,
        ttl: float | None = None,
        pin: bool = False,
    ) -> None:
        """Store a typed value under ``key``, its codec in its record: a numpy array
        as a ``.npy`` file, a dict of str to arrays (or torch tensors) as
        safetensors, plain data (None, bool, int, float, str, lists, str-keyed
        dicts) as JSON; bytes, bytearray and memoryview as they are (as ``put``
        stores them); ``get_object`` gives it back, ``get`` its encoded bytes,
        and ``path(key)`` of a large one is a file numpy's or safetensors' own
        loaders open (``numpy.load(path, mmap_mode="r")``). Durable as ``put``.

        Nothing is pickled unless ``serializer="pickle"`` asks for it: unsafe
        in a directory that others can write, since unpickling runs code
        (``get_object`` refuses to unpickle from such a store).

        >>> import tempfile
        >>> with BlobCache(tempfile.mkdtemp()) as cache:
        ...     cache.put_object("cfg", {"lr": 0.001, "layers": [64, 64]})
        ...     cache.get_object("cfg")
        {'lr': 0.001, 'layers': [64, 64]}

        :param serializer: None (by the value's type), or ``"npy"``,
            ``"safetensors"``, ``"json"``, ``"pickle"`` to say which.
        :raises TypeError: no codec takes the value (the sentence says which
            would, and suggests ``serializer="pickle"``); nothing changed.
        :raises ValueError: an unknown ``serializer``.
        """
        self._put(key, *_typed.encode(value, serializer), ttl, pin)

    def __setitem__(self, key: N.Key, value: object) -> None:
        self.put(key, value)

    def pin(self, key: N.Key) -> None:
        """Pin the key's value: ``max_bytes`` never evicts it. The pin is stored
        (a pin record, FORMAT.md "Pins and evictions"), so it survives a reopen
        and holds in every process; a later put of the key keeps it; a delete or
        an expiry ends it. Without ``max_bytes`` a pin only says so.

        :raises KeyError: the key is not in the cache.
        """
        self._set_pin(key, True)

    def unpin(self, key: N.Key) -> None:
        """Undo ``pin``: the key may be evicted again.

        :raises KeyError: the key is not in the cache.
        """
        self._set_pin(key, False)

    def pinned(self, key: N.Key) -> bool:
        """Whether the key is in the cache and pinned (caught up with the other
        processes first: a pin made anywhere is seen)."""
        self._catch_up()
        return self._lookup(key, remote=False) is not None and key in self._index.pins

    def _set_pin(self, key: N.Key, pinned: bool) -> None:
        self._here()
        tag, raw = N.encode_key(key)
        key = N.decode_key(tag, raw)
        if self._lookup(key) is None:  # (caught up with the others, and expiries swept)
            raise KeyError(key)
        with self._writes.writing(N.key_hash(tag, raw)):
            if self._index.values.stored(key) is None:  # deleted meanwhile
                raise KeyError(key)
            # Written even when this index says it is so already: another
            # process may have changed the pin since the last catch-up.
            stale = self._writes.pin(key, tag, raw, pinned)
        if stale:
            self._maybe_compact()

    def _expires(self, ttl: float | None) -> int:
        """When a put now with ``ttl`` (None: ``default_ttl``) expires; 0: never."""
        if ttl is None:
            ttl = self._options.default_ttl
            if ttl is None:
                return 0
        return expires_at(check_ttl("ttl", ttl))

    def batch(self) -> Batch:
        """A batch of puts and deletes applied all together, durably, when its
        ``with`` block ends: after a crash of any kind the store holds all of it
        or none of it, small and large values alike. An exception inside the
        block applies nothing. It costs one log fdatasync (plus the fsyncs of
        its large values' files), not one per operation.

        >>> import tempfile
        >>> with BlobCache(tempfile.mkdtemp()) as cache:
        ...     with cache.batch() as b:
        ...         b.put("a", b"1")
        ...         b.delete("b")
        ...     bytes(cache["a"])
        b'1'

        :raises BatchError: a batch is already open in this thread (batches do
            not nest).
        :raises ReadOnlyError: the handle is read-only.
        """
        self._here()
        self._writes.check_writer()
        self._check_open()
        if self._batches.batch is not None:
            raise BatchError(
                "a batch is already open in this thread: batches do not nest; "
                "put into that one, or end it first"
            )
        batch = self._batches.batch = Batch(
            self._writes,
            self._options.inline_limit,
            self._batches,
            self._maybe_compact,
            self._expires,
            None if self._tier is None else self._tier.batch,
        )
        return batch

    def put_many(self, items: Iterable[tuple[N.Key, object]]) -> None:
        """Put every (key, value) pair of ``items`` as one batch (see ``batch``):
        all of them land, or none.

        :raises TypeError: an item is not a (key, value) pair of the right types;
            nothing is applied.
        """
        with self.batch() as b:
            for item in items:
                if not isinstance(item, tuple) or len(item) != 2:
                    raise TypeError(f"put_many takes (key, value) pairs, not {type(item).__name__}")
                b.put(*item)

    # Streaming puts read and write this much at a time: what they hold in memory.
    CHUNK_BYTES = 1 << 20

    def put_file(
        self, key: N.Key, src: Source, *, ttl: float | None = None, pin: bool = False
    ) -> None:
        """Store the bytes of ``src`` -- a path (str, bytes or path-like), or a
        binary file object read from where it stands to its end -- under ``key``,
        as ``put`` would store them.

        Memory holds one chunk (``CHUNK_BYTES``), never the whole value. No lock
        is held while ``src`` is read: a slow source holds up no other call.
        The checksum is of the bytes stored, read back from the new file. On any
        error, a source that fails midway included, the previous value stays
        stored and served.

        :raises TypeError: ``src`` is neither a path nor a binary file object.
        :raises OSError: reading ``src`` or writing the store failed; nothing changed.
        """
        if not isinstance(src, (str, bytes, os.PathLike)) and not callable(
            getattr(src, "read", None)
        ):
            raise TypeError(f"src must be a path or a binary file object, not {type(src).__name__}")
        tag, raw, stripe = self._stream_target(key)
        expires = self._expires(ttl)
        check_flag("pin", pin)
        with self._remote_half(tag, raw, F.CODEC_RAW, expires) as gate:
            stale = self._writes.put_file(
                tag, raw, stripe, src, self.CHUNK_BYTES, expires, pin, gate
            )
        if stale:
            self._maybe_compact()

    def put_stream(
        self, key: N.Key, chunks: Iterable[object], *, ttl: float | None = None, pin: bool = False
    ) -> None:
        """Store the concatenation of ``chunks`` (bytes-like objects) under ``key``,
        holding one chunk at a time. No lock is held while ``chunks`` is
        iterated: a slow iterable holds up no other call, and it may itself use
        the cache. If the iterable raises, the previous value stays stored and
        served.

        :raises TypeError: ``key`` is not str or bytes, or a chunk is not bytes-like.
        """
        tag, raw, stripe = self._stream_target(key)
        expires = self._expires(ttl)
        check_flag("pin", pin)
        chunked = (as_buffer(chunk) for chunk in chunks)
        with self._remote_half(tag, raw, F.CODEC_RAW, expires) as gate:
            stale = self._writes.put_chunks(tag, raw, stripe, chunked, expires, pin, gate)
        if stale:
            self._maybe_compact()

    def _stream_target(self, key: N.Key) -> tuple[bytes, bytes, StripeGuard]:
        """Check ``key`` and that this handle may write, before a stream is read:
        a bad key or a read-only handle fails at once, consuming nothing."""
        self._here()
        tag, raw = N.encode_key(key)
        stripe = self._writes.writing(N.key_hash(tag, raw))
        self._check_open()
        return tag, raw, stripe

    def delete(self, key: N.Key) -> bool:
        """Delete ``key``; True if it was there. Durable like a put: a delete record
        is appended to the log, whichever layout held the value.

        :raises TypeError: ``key`` is not str or bytes.
        """
        self._here()
        tag, raw = N.encode_key(key)
        key = N.decode_key(tag, raw)
        digest = N.key_hash(tag, raw)
        tier = self._tier
        if tier is not None:
            return self._delete_with(tier, key, tag, raw, digest)
        with self._writes.writing(digest):
            if self._lookup(key) is None:
                return False
            stale = self._writes.delete(key, tag, raw)
        if stale:
            self._maybe_compact()
        return True

    def _delete_with(
        self, tier: _tier.Tier, key: N.Key, tag: bytes, raw: bytes, digest: str
    ) -> bool:
        """``delete`` with a remote tier. Write-through: a tombstone on the remote
        first (if the remote has the key live), then the local delete; True if
        either had it. Write-back: the delete noted durably, then made locally,
        and its tombstone queued; True if the local store had it."""
        self._writes.check_writer()
        with tier.key_lock(digest):
            had_remote, version = False, 0
            if tier.through:
                had_remote, version = tier.delete_through(key, tag, raw, digest)
            else:
                tier.queue_delete(key, tag, raw, digest)
            with self._writes.writing(digest):
                had = self._lookup(key, remote=False) is not None
                stale = had and self._writes.delete(key, tag, raw)
            if tier.through:
                if version:
                    tier.ledger.note(digest, version, 0)
                had = had or had_remote
        if not tier.through:
            tier.queue(key)
        if stale:
            self._maybe_compact()
        return had

    def __delitem__(self, key: N.Key) -> None:
        if not self.delete(key):
            raise KeyError(key)

    def clear(self) -> None:
        """Delete every key (each as ``delete`` does, with a delete record).

        MutableMapping's own clear pops one item at a time: it reads every value
        and copies the key list for each key, quadratic in the number of keys.
        """
        self._here()
        self._check_open()
        self._writes.check_writer()
        for key in self._values.keys_now():
            self.delete(key)

    def sync(self) -> None:
        """Make every acknowledged put and delete survive power loss.

        With ``durability="fsync"`` that is already so and this does nothing; with
        ``"os"`` it fsyncs the log and the files and directories written since
        the last sync.
        """
        self._here()
        self._check_open()
        self._writes.check_writer()
        self._held.sync()

    # --- garbage ---------------------------------------------------------------------

    def gc(self) -> GcResult:
        """Delete superseded versions, deleted keys and orphaned temp files, then
        compact the log (whatever its stale ratio).

        A version goes only once its key's newer record is durable; a reader's
        mapped view of a removed file stays valid. Returns what was removed. After
        a failed fsync it refuses, as ``sync()`` does: a retried fsync could
        wrongly report success, and gc would then delete the older versions.
        """
        self._here()
        self._check_open()
        self._writes.check_writer()
        self._expiry.sweep()
        return self._garbage.gc()

    def _maybe_compact(self) -> None:
        self._garbage.maybe_compact()

    def _compact(self, *, force: bool) -> GcResult:
        return self._garbage.compact(force=force)

    # --- state -----------------------------------------------------------------------

    @property
    def problems(self) -> tuple[Problem, ...]:
        """Files found unusable at open, and values served from an older record
        since (see ``_reads``), each with its path and what was wrong."""
        return self._problems + tuple(self._reads.notes)

    @property
    def options(self) -> Options:
        return self._options

    @property
    def directory(self) -> str:
        """The store's directory, as an absolute path."""
        return self._path

    def stats(self) -> Stats:
        """Counts from memory: keys, live bytes, log segments, what awaits ``gc()``."""
        self._here()
        self._check_open()
        self._expiry.sweep()
        stats = Stats.of(
            self._index,
            self._writes,
            problems=len(self.problems),
            temps_removed_at_open=self._temps_removed_at_open,
            torn_bytes_at_open=self._torn_bytes_at_open,
        )
        return dataclasses.replace(
            stats, snapshot_at_open=self._snapshot_at_open, **_tier.describe(self._tier)
        )

    def _inventory(self) -> Inventory:
        """What ``blobcache stats | verify | gc`` read of this handle: all of it."""
        self._here()
        self._check_open()
        return Inventory.of(self._index)

    def _check_open(self) -> None:
        if self._writes.closed:
            raise ClosedError(self._path)

    def close(self) -> None:
        """Sync (with ``"os"``), release the lock, and refuse further use.

        Values returned by ``get`` stay valid. Closing twice is harmless. In a
        forked child, closing a handle inherited from the parent only closes the
        child's copy: the files, the lock and the threads are the parent's.
        """
        self.__dict__.pop("get", None)  # a bound variant (max_bytes): the class's raises now
        tier, self._tier = self._tier, None
        if tier is not None and not self._held.inherited():
            tier.close()  # its threads stopped first: they use the local store
        if self._held.inherited():
            # No lock taken: a parent thread may have held one at the fork.
            self._writes.closed = True
            self._values = ClosedIndex(self._path)
            return
        with self._garbage.compact_lock, self._writes.all_stripes():
            if self._writes.closed:
                return
            self._garbage.write_snapshot()  # (never raises: the next open replays the log)
            self._writes.closed = True
            self._values = ClosedIndex(self._path)
            self._index.close(self._path)
            if self._release.detach() is not None:  # the finalizer will not run: let go here
                self._held.let_go()
            if self._memo_locks is not None:
                self._memo_locks.close()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join()

    def __reduce__(self) -> tuple[Callable[..., BlobCache], tuple[str, dict[str, Any]]]:
        """Pickled by path and options: unpickling opens the store anew (in a
        process of a ``spawn`` pool, say), beside every other handle."""
        return _reopen, (self._path, self._reopen_options())

    def _reopen_options(self) -> dict[str, Any]:
        options = dataclasses.asdict(self._options)
        if self._options.remote is not None:
            options["remote_options"] = self._remote_options
        return options

    def __enter__(self) -> BlobCache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._writes.closed else f"{self._values.count()} keys"
        return f"BlobCache({self._path!r}, durability={self._options.durability!r}, {state})"


_MISSING: Any = object()


class _BatchOf(threading.local):
    """The batch each thread has open on a handle (None: none)."""

    batch: Batch | None = None


# Every open handle of this process, for the fork hook below.
# (A mapping is unhashable: keyed by identity.)
_NO_GATE: contextlib.nullcontext[None] = contextlib.nullcontext()  # _remote_half's without a tier

_open_handles: weakref.WeakValueDictionary[int, BlobCache] = weakref.WeakValueDictionary()


def _visiting_get(
    values: Values, visited: set[N.Key], miss: Callable[[Any, Any], Any]
) -> Callable[..., Any]:
    """``get`` with ``max_bytes``: a hit also sets the key's visited bit (SIEVE),
    and nothing else (no lock, no write). A closure over the index's dict and the
    bit set, not a method: the attribute lookups of one cost 1.6x the dict floor
    where the goal is 1.4x (issue 15)."""
    add = visited.add

    def get(key: N.Key, default: Any = None) -> Any:
        try:
            value = values[key]  # a value in a file: see _index.Values.__missing__
        except (KeyError, TypeError):
            return miss(key, default)
        add(key)
        return value

    get.__doc__ = BlobCache.get.__doc__
    return get


def _remote_get(
    values: Values,
    visited: set[N.Key] | None,
    miss: Callable[[Any, Any], Any],
    refresh_key: Callable[[Any], None],
) -> Callable[..., Any]:
    """``get`` with a remote tier: ``refresh=True`` first brings in the remote's
    newest version of the key; with ``max_bytes`` (``visited``) a hit also sets its
    visited bit."""
    visit: Callable[[N.Key], object] = (lambda _key: None) if visited is None else visited.add

    def get(key: N.Key, default: Any = None, *, refresh: bool = False) -> Any:
        if refresh:
            refresh_key(key)
        try:
            value = values[key]  # a value in a file: see _index.Values.__missing__
        except (KeyError, TypeError):
            return miss(key, default)
        visit(key)
        return value

    get.__doc__ = BlobCache.get.__doc__
    return get


def _attach(cache: BlobCache, client: Remote) -> _tier.Tier:
    """Open the handle's remote tier (its client checked already): the ledger, what
    is not uploaded yet, and its threads. Its puts and
    deletes of the local store close over the write path, not the handle, so its
    threads do not keep a dropped handle alive."""
    options = cache._options
    writes, index = cache._writes, cache._index

    def put_value(
        key: N.Key, parts: Sequence[bytes | memoryview], length: int, codec: int, expires: int
    ) -> None:
        tag, raw = N.encode_key(key)
        stripe = writes.writing(N.key_hash(tag, raw))
        _typed.write(writes, key, tag, raw, stripe, parts, length, codec, expires, False)

    def put_chunks(key: N.Key, chunks: Iterable[memoryview], codec: int, expires: int) -> None:
        tag, raw = N.encode_key(key)
        stripe = writes.writing(N.key_hash(tag, raw))
        writes.put_chunks(tag, raw, stripe, chunks, expires, False, None, codec)

    def delete(key: N.Key) -> None:
        tag, raw = N.encode_key(key)
        with writes.writing(N.key_hash(tag, raw)):
            writes.delete(key, tag, raw)

    local = _tier.Local(
        lambda: index.values,
        lambda: index.meta,
        lambda key: index.expiry.get(key, 0),
        put_value,
        put_chunks,
        delete,
    )
    tier = _tier.Tier(
        cache._path,
        client,
        _tier.check_mode(options.remote_mode),
        options.remote_refresh,
        local,
        sync_deletes=options.durability == "fsync",
    )
    tier.start()
    return tier


def _reopen(path: str, options: dict[str, Any]) -> BlobCache:
    return BlobCache(path, **options)


def _adopt(cache: BlobCache) -> None:
    """Open ``cache``'s store anew in this forked process, in place: the handle
    keeps its identity, every part of it is this process's own."""
    with cache._forked_lock:
        if not cache._held.inherited():
            return  # another thread of this process did
        if cache._options.remote is not None:
            # obstore's runtime (its threads) is the parent's: every request of
            # the child, even a new client's, would hang for good.
            raise BlobCacheError(
                f"{cache._path} has a remote tier, which cannot be used in a forked child "
                "(the object-store client does not survive fork): use a spawn or "
                "forkserver pool, to which a pickled handle reopens with its remote"
            )
        cache._release.detach()  # the parent's: its parts are not ours to let go
        # Half of the handle is its own midway: another thread's put or delete
        # waits here (``_adopting``) rather than use the parent's half.
        BlobCache.__init__(cache, cache._path, **cache._reopen_options())
        cache._adopting = False


class _Forked(Values):
    """Stands in for ``values`` in a forked child until its first use, which opens
    the store anew in the child (``_adopt``): ``get`` stays one lookup. Empty, so
    every lookup comes through ``__missing__``."""

    def __init__(self, cache: BlobCache) -> None:
        super().__init__({}, {})
        self.cache = cache

    def _adopted(self) -> Values:
        _adopt(self.cache)
        return self.cache._values

    def __missing__(self, key: N.Key) -> Value:
        return self._adopted()[key]

    def __contains__(self, key: object) -> bool:
        return key in self._adopted()

    def __len__(self) -> int:
        return len(self._adopted())

    def get(self, key: N.Key, default: object = None) -> Any:
        return self._adopted().get(key, default)

    def stored(self, key: N.Key) -> Stored | None:
        return self._adopted().stored(key)

    def count(self) -> int:
        return self._adopted().count()

    def keys_now(self) -> list[N.Key]:
        return self._adopted().keys_now()

    def stored_now(self) -> list[tuple[N.Key, Stored]]:
        return self._adopted().stored_now()


def _after_fork_in_child() -> None:
    for cache in list(_open_handles.values()):
        if not cache._writes.closed:
            cache._forked_lock = threading.Lock()
            cache._adopting = True
            cache._values = _Forked(cache)
            # A variant of get bound at open (max_bytes) reads the parent's dict:
            # the class's get reads ``_values``, so the child adopts the store.
            cache.__dict__.pop("get", None)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _reloader(cache: BlobCache) -> Callable[[], tuple[int, int, int]]:
    """``cache._reload`` through a weak reference: the follower is reached from
    the handle's finalizer (``Held.follower``), which must not keep it alive."""
    me = weakref.ref(cache)
    path = cache.directory

    def reload() -> tuple[int, int, int]:
        handle = me()
        if handle is None:
            raise ClosedError(path)
        return handle._reload()

    return reload


def _follow_from(found: Recovered, writer: LogWriter | None) -> tuple[int, int, int]:
    """Where a handle starts following the log: where recovery stopped reading
    it (or where ``attach`` started a segment recovery did not read), and the
    inode of the segment file recovery read there (0: none)."""
    head = F.SEGMENT_HEADER.size
    last = found.segments[-1] if found.segments else None
    if last is None or last.end < head or last.damaged_header:
        return (writer.number if writer is not None else 1), head, 0
    if writer is not None and last.head != F.RECORD_HEADER.size:
        return writer.number, head, 0  # format 1's segment, sealed by attach
    return last.number, last.end, last.inode
