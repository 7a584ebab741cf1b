"""BlobCache: the durable, memory-served key-value cache.

Routes each call to the on-disk structures (``_blob``), keeps the index
(``_index``) current, and owns the locks and the background sync thread.

Locking, from outermost to innermost:

* a stripe lock per key directory (64 stripes by key hash): every change of a
  key directory -- put, delete, the janitor's deletions -- holds it, so versions
  of one key are numbered in the order they are published;
* ``_tree_lock``: creating or removing fan-out directories;
* ``_pending_lock``: the sets of files and directories "os" durability owes an
  fsync, and of key directories awaiting the janitor.

``get`` takes none of them: it is one dict lookup plus, on a key's first read in
this process, an mmap.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator, MutableMapping
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any, TypeVar

from . import _blob, _fsio, _janitor, _recovery
from . import _format as F
from . import _names as N
from ._blob import Problem
from ._index import ClosedIndex, Entry
from ._janitor import GcResult
from ._options import Durability, Options
from .errors import BlobCacheError, ClosedError, CorruptionError

log = logging.getLogger("blobcache")

_STRIPES = 64
_T = TypeVar("_T")


@dataclass(frozen=True)
class Stats:
    """A snapshot of an open store, from memory (no disk scan)."""

    path: str
    durability: Durability
    keys: int  # live keys
    live_bytes: int  # sum of the live values' lengths
    next_seq: int  # the sequence number the next put or delete takes
    dirs_awaiting_gc: int  # key directories holding superseded or deleted records
    problems: int  # unusable files reported at open (see ``BlobCache.problems``)
    temps_removed_at_open: int  # orphaned temp files of crashed puts, deleted by recovery

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def as_buffer(value: object) -> memoryview:
    """A flat byte view of ``value`` (bytes, bytearray, memoryview, numpy array, ...).

    :raises TypeError: ``value`` is a ``str`` or has no buffer protocol.
    :raises ValueError: the buffer is not C-contiguous (e.g. a strided numpy slice).
    """
    if isinstance(value, str):
        raise TypeError("values must be bytes-like, not str: encode the text first")
    try:
        view = memoryview(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            "values must be bytes-like (bytes, bytearray, memoryview, numpy array: "
            f"anything with the buffer protocol), not {type(value).__name__}"
        ) from None
    if not view.c_contiguous:
        raise ValueError(
            "values must be C-contiguous buffers; this one is strided "
            "(for numpy, pass numpy.ascontiguousarray(value))"
        )
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def _key_type_error(key: object) -> TypeError:
    return TypeError(f"keys must be str or bytes, not {type(key).__name__}")


class BlobCache(MutableMapping[N.Key, memoryview]):
    """A durable key-value cache in a directory: puts survive crashes, gets come from memory.

    :param path: the store's directory; created if missing. A non-empty
        directory that is not a store is refused.
    :param durability: ``"fsync"`` (default; a put survives power loss) or
        ``"os"`` (a put survives a process crash; fsynced in the background).
    :param sync_interval: seconds between background fsyncs with ``"os"``.
    :param verify_on_get: check each value's checksum on its first ``get``.
    :raises LockedError: another handle, in this or another process, has the store open.
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
    ) -> None:
        self._options = Options(durability, sync_interval, verify_on_get)
        self._path = os.path.abspath(os.fspath(path))
        self._blobs = os.path.join(self._path, F.BLOBS_DIR)
        self._lock_fd = _recovery.open_store(self._path)
        try:
            recovered = _recovery.recover(self._path)
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._index: dict[N.Key, Entry] = recovered.entries
        self._key_dirs = recovered.key_dirs
        self._dirty = recovered.dirty | recovered.empty_fanouts
        self._found_at_open = set(recovered.dirty)
        self._problems = tuple(recovered.problems)
        self._temps_removed_at_open = recovered.temps_removed
        # Invariant: every number handed out is above every number on disk.
        self._seq = _Sequence(recovered.max_seq + 1)
        self._stripes = [threading.Lock() for _ in range(_STRIPES)]
        self._tree_lock = threading.Lock()
        self._gc_lock = threading.Lock()
        self._pending_lock = threading.Lock()
        self._pending_files: set[str] = set()
        self._pending_dirs: set[str] = set()
        self._closed = False
        self._pid = os.getpid()
        self._stop = threading.Event()
        self._syncer: threading.Thread | None = None
        if self._options.durability == "os":
            self._syncer = threading.Thread(
                target=self._sync_loop, name="blobcache-sync", daemon=True
            )
            self._syncer.start()

    # --- reading -------------------------------------------------------------------

    def get(self, key: N.Key, default: _T | None = None) -> memoryview | _T | None:  # type: ignore[override]
        """The value of ``key`` as a read-only, zero-copy ``memoryview``, or ``default``.

        The view maps the value's file and stays valid as long as you hold it,
        even after the key is overwritten, deleted and garbage-collected.

        :raises TypeError: ``key`` is not str or bytes.
        :raises CorruptionError: the value's checksum failed on its first read.
        :raises ClosedError: the cache was closed.
        """
        try:
            entry = self._index[key]
        except (KeyError, TypeError):
            found = self._lookup(key)  # raises TypeError for a key of the wrong type
            if found is None:
                return default
            entry = found  # put by another thread in the meantime
        view = entry.view
        return view if view is not None else self._map(entry)

    def _lookup(self, key: object) -> Entry | None:
        """The entry of ``key`` or None; the slow path, with the type checks.

        :raises TypeError: ``key`` is not str or bytes (a dict would just say "missing",
            or "unhashable" for a bytearray).
        """
        if not isinstance(key, (str, bytes)):
            raise _key_type_error(key)
        return self._index.get(key)

    def __getitem__(self, key: N.Key) -> memoryview:
        view = self.get(key, _MISSING)
        if view is _MISSING:
            raise KeyError(key)
        assert isinstance(view, memoryview)
        return view

    def __contains__(self, key: object) -> bool:
        return self._lookup(key) is not None

    def __len__(self) -> int:
        return len(self._index)

    def __iter__(self) -> Iterator[N.Key]:
        """Iterate over a snapshot of the keys taken when iteration starts."""
        return iter(list(self._index))

    def path(self, key: N.Key) -> str:
        """The file holding ``key``'s live value, exactly its bytes, for programs
        that open files themselves (``numpy.load(path, mmap_mode="r")``, safetensors).

        The path stays valid until the key is overwritten or deleted *and* the
        janitor (``gc()``) runs; a file already opened or mapped keeps working
        after that, since an unlinked file lives on while it is open.

        :raises KeyError: ``key`` is not in the cache.
        """
        entry = self._lookup(key)
        if entry is None:
            raise KeyError(key)
        return entry.record.path

    def _map(self, entry: Entry) -> memoryview:
        # Two threads may both map on a first get; both views are good, one is kept.
        view = _blob.map_version(entry.record, check=self._options.verify_on_get)
        entry.view = view
        return view

    # --- writing -------------------------------------------------------------------

    def put(self, key: N.Key, value: object) -> None:
        """Store ``value`` (any C-contiguous buffer, copied) under ``key``.

        Returns once the value survives a crash of the kind ``durability`` names:
        power loss for ``"fsync"``, a process crash for ``"os"``. On any error
        the previous value stays stored and served.

        :raises TypeError: ``key`` is not str/bytes, or ``value`` is not bytes-like.
        :raises ValueError: the key is too long, or the buffer is not contiguous.
        :raises OSError: the disk failed (full, read-only, ...); nothing changed.
        """
        tag, raw = N.encode_key(key)
        data = as_buffer(value)
        key = N.decode_key(tag, raw)  # a plain str or bytes, even for a subclass
        digest = N.key_hash(tag, raw)
        keydir = N.key_dir(self._blobs, digest)
        sync = self._options.durability == "fsync"
        with self._writing(digest):
            self._ensure_key_dir(key, tag, raw, keydir)
            try:
                record = _blob.write_version(keydir, self._seq.take(), data, sync=sync)
            except FileNotFoundError:
                # The directory was removed behind our back (by hand): make it again, once.
                self._key_dirs.discard(keydir)
                self._ensure_key_dir(key, tag, raw, keydir)
                record = _blob.write_version(keydir, self._seq.take(), data, sync=sync)
            if not sync:
                self._owe_sync(record.path, keydir)
            if self._index.get(key) is not None:
                self._mark_dirty(keydir)
            self._index[key] = Entry(record)

    def __setitem__(self, key: N.Key, value: object) -> None:
        self.put(key, value)

    def delete(self, key: N.Key) -> bool:
        """Delete ``key``; True if it was there. Durable like a put, via a tombstone.

        :raises TypeError: ``key`` is not str or bytes.
        """
        tag, raw = N.encode_key(key)
        key = N.decode_key(tag, raw)
        digest = N.key_hash(tag, raw)
        sync = self._options.durability == "fsync"
        with self._writing(digest):
            entry = self._index.get(key)
            if entry is None:
                return False
            keydir = os.path.dirname(entry.record.path)
            _blob.write_tombstone(keydir, self._seq.take(), sync=sync)
            if not sync:
                self._owe_sync(None, keydir)
            del self._index[key]
            self._mark_dirty(keydir)
            return True

    def __delitem__(self, key: N.Key) -> None:
        if not self.delete(key):
            raise KeyError(key)

    def _writing(self, digest: str) -> _StripeGuard:
        if os.getpid() != self._pid:
            raise BlobCacheError(
                f"this BlobCache handle for {self._path} was opened by process {self._pid} and "
                "inherited by a fork; a child must open its own handle (the parent holds the lock)"
            )
        return _StripeGuard(self, self._stripes[int(digest[:2], 16) % _STRIPES])

    def _ensure_key_dir(self, key: N.Key, tag: bytes, raw: bytes, keydir: str) -> None:
        """Make ``keydir`` exist with its key file before any version goes in.

        Invariant ("fsync"): a version file is only ever published in a directory
        whose key file is already durable, so recovery never finds a value
        without its key. With "os" the directories and key file are owed to the
        next ``sync()``, which fsyncs files before directories: after it, the
        same holds. REQUIRES: the key's stripe lock.
        """
        if keydir in self._key_dirs:
            return
        sync = self._options.durability == "fsync"
        with self._tree_lock:
            created = _fsio.makedirs(self._blobs, keydir, sync=sync)
        if not sync:
            for new_dir in created:
                self._owe_sync(None, os.path.dirname(new_dir))
        try:
            found = _blob.read_key_file(keydir)
        except FileNotFoundError:
            key_file = _blob.write_key_file(keydir, tag, raw, sync=sync)
            if not sync:
                self._owe_sync(key_file, keydir)
        else:
            if found != key:
                raise CorruptionError(
                    os.path.join(keydir, F.KEY_FILE_NAME),
                    f"holds the key {found!r}, which hashes like {key!r}: an xxh3-128 "
                    "collision or a tampered store; move this directory away",
                )
        self._key_dirs.add(keydir)

    # --- durability ----------------------------------------------------------------

    def _owe_sync(self, path: str | None, keydir: str) -> None:
        with self._pending_lock:
            if path is not None:
                self._pending_files.add(path)
            self._pending_dirs.add(keydir)

    def _mark_dirty(self, keydir: str) -> None:
        """Note that ``keydir`` holds garbage for the next ``gc()``."""
        with self._pending_lock:
            self._dirty.add(keydir)

    def sync(self) -> None:
        """Make every acknowledged put and delete survive power loss.

        With ``durability="fsync"`` that is already so and this does nothing; with
        ``"os"`` it fsyncs the files and directories written since the last sync.
        """
        self._check_open()
        with self._pending_lock:
            files, self._pending_files = self._pending_files, set()
            dirs, self._pending_dirs = self._pending_dirs, set()
        try:
            for path in sorted(files):
                # A missing file was superseded and collected; the janitor synced its successor.
                with contextlib.suppress(FileNotFoundError):
                    _fsio.fsync_path(path)
            for keydir in sorted(dirs):
                # A missing directory was removed by the janitor, after it made
                # the key's last record (a tombstone) durable.
                with contextlib.suppress(FileNotFoundError):
                    _fsio.fsync_dir(keydir)
        except BaseException:
            with self._pending_lock:  # still owed: try again next time
                self._pending_files |= files
                self._pending_dirs |= dirs
            raise

    def _sync_loop(self) -> None:
        while not self._stop.wait(self._options.sync_interval):
            try:
                self.sync()
            except ClosedError:
                return
            except OSError as exc:
                log.error("blobcache: background sync of %s failed: %s", self._path, exc)

    # --- the janitor -----------------------------------------------------------------

    def gc(self) -> GcResult:
        """Delete superseded versions, deleted keys and orphaned temp files.

        A version goes only once its key's newer record is durable; a reader's
        mapped view of a removed file stays valid. Returns what was removed.
        """
        self._check_open()
        total = GcResult()
        with self._gc_lock:
            with self._pending_lock:
                dirty, self._dirty = self._dirty, set()
            todo = sorted(dirty)
            for done, keydir in enumerate(todo):
                try:
                    name = os.path.basename(keydir)
                    if not N.is_key_dir_name(name):
                        total.add(self._prune(keydir))
                        continue
                    with self._writing(name):
                        total.add(self._clean(keydir))
                except BaseException:
                    for left in todo[done:]:  # not cleaned: still garbage for next time
                        self._mark_dirty(left)
                    raise
        return total

    def _clean(self, keydir: str) -> GcResult:
        """REQUIRES: the stripe lock of ``keydir``."""
        try:
            scan = _blob.scan_key_dir(keydir)
        except FileNotFoundError:
            return GcResult()
        # Records found at open may never have been made durable (a crash between
        # a rename and its directory fsync, or "os" puts never synced): make the
        # live one durable before deleting anything older, whatever the mode.
        found_at_open = keydir in self._found_at_open
        result = _janitor.clean_key_dir(
            scan, make_live_durable=found_at_open or self._options.durability == "os"
        )
        self._found_at_open.discard(keydir)
        if result.dirs_removed:
            self._key_dirs.discard(keydir)
            with self._tree_lock:
                result.dirs_removed += _janitor.prune_empty_dirs(
                    os.path.dirname(keydir), self._blobs
                )
        return result

    def _prune(self, directory: str) -> GcResult:
        """Remove an empty fan-out directory found at open, and empty parents."""
        with self._tree_lock:
            return GcResult(dirs_removed=_janitor.prune_empty_dirs(directory, self._blobs))

    # --- state -----------------------------------------------------------------------

    @property
    def problems(self) -> tuple[Problem, ...]:
        """Files found unusable at open, each with its path and what was wrong."""
        return self._problems

    @property
    def options(self) -> Options:
        return self._options

    @property
    def directory(self) -> str:
        """The store's directory, as an absolute path."""
        return self._path

    def stats(self) -> Stats:
        """Counts from memory: keys, live bytes, what awaits ``gc()``; no disk scan."""
        self._check_open()
        entries = list(self._index.values())
        return Stats(
            path=self._path,
            durability=self._options.durability,
            keys=len(entries),
            live_bytes=sum(e.record.length for e in entries),
            next_seq=self._seq.peek(),
            dirs_awaiting_gc=len(self._dirty),
            problems=len(self._problems),
            temps_removed_at_open=self._temps_removed_at_open,
        )

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(self._path)

    def close(self) -> None:
        """Sync (with ``"os"``), release the lock, and refuse further use.

        Views returned by ``get`` stay valid. Closing twice is harmless.
        """
        for lock in self._stripes:
            lock.acquire()
        try:
            if self._closed:
                return
            self._stop.set()
            if self._syncer is not None and self._syncer is not threading.current_thread():
                self._syncer.join()
            try:
                self.sync()
            finally:
                self._closed = True
                self._index = ClosedIndex(self._path)
                os.close(self._lock_fd)
        finally:
            for lock in self._stripes:
                lock.release()

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
        state = "closed" if self._closed else f"{len(self._index)} keys"
        return f"BlobCache({self._path!r}, durability={self._options.durability!r}, {state})"


class _Sequence:
    """The store-wide sequence: each ``take`` returns a number above all before it."""

    __slots__ = ("_lock", "_next")

    def __init__(self, first: int) -> None:
        if first > F.MAX_SEQ:
            raise BlobCacheError(f"sequence numbers are exhausted (next would be {first})")
        self._lock = threading.Lock()
        self._next = first

    def take(self) -> int:
        with self._lock:
            seq = self._next
            self._next += 1
        return seq

    def peek(self) -> int:
        return self._next


class _StripeGuard:
    """Holds a stripe lock and checks, once inside, that the cache is still open."""

    __slots__ = ("_cache", "_lock")

    def __init__(self, cache: BlobCache, lock: threading.Lock) -> None:
        self._cache = cache
        self._lock = lock

    def __enter__(self) -> None:
        self._lock.acquire()
        if self._cache._closed:
            self._lock.release()
            raise ClosedError(self._cache._path)

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


_MISSING: Any = object()
