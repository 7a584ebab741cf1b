"""BlobCache: the durable, memory-served key-value cache.

Routes each put by size to the log (``_log``) or a file (``_blob``), keeps the
index (``_index``) current, and owns the locks and the background threads
(compaction; the periodic sync of "os" durability).

Locking, from outermost to innermost:

* ``_compact_lock``: one compaction (or close) at a time;
* a stripe lock per key (1024 stripes by key hash): a put or delete holds it
  from taking its sequence number until its index update, and the janitor
  while it cleans the key's directory, so records of one key are published in
  sequence order; compaction holds all of them while it picks its inputs. A
  large value is written and fsynced before its put takes the lock (see
  ``_put_version``): no lock is held while the caller's code runs (a
  stream's chunks, a file object's reads), nor across a large value's write;
* ``_tree_lock``: creating or removing fan-out directories;
* ``_book.lock``: the index's updates and the log's per-segment byte counts;
* ``_dirty_lock``: the set of key directories awaiting the janitor;
  ``_Owed.lock``: the files and directories "os" durability owes an fsync.

``get`` takes none of them: it is one dict lookup plus, on a key's first read in
this process, an mmap.

What a handle holds beyond its memory (the lock, the active segment, the fsyncs
it owes) is in a ``_Held`` that does not point back at it: its background
threads hold only a weak reference, so a handle dropped without ``close()`` is
collected, and its finalizer lets go of the store as ``close()`` would.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import os
import re
import stat
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any, BinaryIO, NoReturn, TypeVar, cast

from . import _blob, _compaction, _fsio, _janitor, _keydir, _log, _mapping, _recovery
from . import _format as F
from . import _names as N
from ._compaction import SegmentBook
from ._index import (
    RECORD,
    SEGMENT,
    SEQ,
    SIZE,
    VALUE,
    VIEW,
    BlobEntry,
    ClosedIndex,
    Deleted,
    Entry,
    blob_of,
    inline_value,
    length,
)
from ._janitor import GcResult
from ._keydir import Record
from ._log import LogWriter
from ._options import Durability, Options
from ._problems import Problem
from .errors import BlobCacheError, ClosedError, CorruptionError, ReadOnlyError

log = logging.getLogger("blobcache")

# Puts of one key are serialised by its stripe lock, held through a small
# value's durable append (and a large one's rename and directory fsync): 1024
# stripes make two of 8 busy threads share one (and so wait out a whole
# fdatasync for each other) about 3% of the time, against 37% with 64.
_STRIPES = 1024

# Bumped in a forked child, so that a handle can tell it was inherited without
# a getpid() system call on every put (see _Held.inherited).
_forks = [0]
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _forks.__setitem__(0, _forks[0] + 1))
_T = TypeVar("_T")
Value = bytes | memoryview  # what get returns: bytes from the log, a view of a file
# A key's stripe lock, to take with `with` (a _StripeGuard), or a nullcontext
# where the caller holds it already.
_Stripe = contextlib.AbstractContextManager[None]


@dataclass(frozen=True)
class Stats:
    """A snapshot of an open store, from memory (no disk scan)."""

    path: str
    durability: Durability
    keys: int  # live keys
    live_bytes: int  # sum of the live values' lengths
    inline_keys: int  # keys whose value is in the log (the rest have a file each)
    next_seq: int  # the sequence number the next put or delete takes
    segments: int  # log segment files
    log_record_bytes: int  # bytes of records in the log
    log_stale_bytes: int  # of those, overwritten values and deletes: compaction's to free
    dirs_awaiting_gc: int  # key directories holding superseded or deleted records
    problems: int  # unusable files reported at open (see ``BlobCache.problems``)
    temps_removed_at_open: int  # orphaned temp files of crashed puts, deleted by recovery
    torn_bytes_at_open: int  # a torn log tail (a crash mid-write) cut off at open

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Inventory:
    """What the maintenance command (``_maintenance``) reads of an open store,
    and all it may read: a snapshot, taken by ``BlobCache._inventory``, so the
    command never reaches into the handle's index or its bookkeeping."""

    sizes: list[tuple[N.Key, int]]  # (key, value length) of every live key
    live_versions: list[tuple[int, str]]  # (seq, path) of every live value in a file
    # The sequence number of each key's live record, or of its delete record
    # while compaction keeps it (older versions may lie in its directory).
    record_seqs: dict[N.Key, int]


def as_buffer(value: object) -> memoryview:
    """A flat byte view of ``value`` (bytes, bytearray, memoryview, numpy array, ...).

    :raises TypeError: ``value`` is a ``str``, has no buffer protocol, or holds
        pointers (a numpy object array, ctypes pointers): their bytes are
        addresses in this process, meaningless once read back.
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
    return view if view.format == "B" and view.ndim == 1 else _flatten(view)


# The codes of PEP 3118 / struct formats whose items are pointers: "O" a Python
# object (numpy's object arrays), "P" void*, ctypes' "z" char*, "Z" wchar_t*
# (but "Zf", "Zd", "Zg" are complex numbers), "&" a pointer to the type after
# it, "X{}" a function. Field names of a record ("T{<i:name:}") are left out first.
_FIELD_NAMES = re.compile(r":[^:]*:")
_POINTER_CODES = re.compile(r"[OPz&X]|Z(?![fdg])")


def _flatten(view: memoryview) -> memoryview:
    """``view`` as flat bytes. REQUIRES: ``view`` is C-contiguous."""
    if _POINTER_CODES.search(_FIELD_NAMES.sub("", view.format)):
        raise TypeError(
            f"values must not hold pointers, and this buffer's items (format {view.format!r}) "
            "do: their bytes mean nothing to another process. Convert it first: to a "
            "numeric dtype, or pickle it explicitly (pickle.dumps(value)) if you trust "
            "whoever reads it back"
        )
    if view.nbytes == 0:  # a zero in the shape, as np.zeros((0, 5)): cast refuses those
        return memoryview(b"")
    return view.cast("B")


def _read_chunks(f: Any, size: int) -> Iterator[memoryview]:
    """Read ``f`` to its end, ``size`` bytes at a time, into one reused buffer.

    REQUIRES: each chunk is used before the next is read (written and hashed).
    """
    buffer = bytearray(size)
    view = memoryview(buffer)
    readinto = getattr(f, "readinto", None)
    while True:
        if readinto is not None:
            n = readinto(view)
            if not n:
                return
            yield view[:n]
        else:
            data = f.read(size)
            if not data:
                return
            yield as_buffer(data)


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
        inline_limit: int = Options.inline_limit,
        segment_bytes: int = Options.segment_bytes,
        compact_ratio: float = Options.compact_ratio,
        salvage: bool = False,
        gc_interval: float | None = None,
        readonly: bool = False,
    ) -> None:
        self._options = Options(
            durability,
            sync_interval,
            verify_on_get,
            inline_limit,
            segment_bytes,
            compact_ratio,
            salvage,
            gc_interval,
            readonly,
        )
        self._path = os.path.abspath(os.fspath(path))
        self._blobs = os.path.join(self._path, F.BLOBS_DIR)
        self._logdir = os.path.join(self._path, F.LOG_DIR)
        self._writer: LogWriter | None = None
        lock_fd = -1  # readonly: no lock is held
        if readonly:
            recovered = self._read_beside_writer()
        else:
            lock_fd = _recovery.open_store(self._path)
            try:
                recovered = _recovery.recover(self._path, salvage=salvage)
                self._writer = self._open_log(recovered)
            except BaseException:
                _fsio.unlock(lock_fd)
                raise
        self._held = _Held(self._path, lock_fd, self._writer)
        # close() lets go of it; for a handle dropped without close(), this does
        # once the handle is collected. Not at interpreter exit: the process's end
        # releases the lock, and "os" durability promises nothing at a crash.
        self._release = weakref.finalize(self, _let_go_of_dropped, self._held)
        self._release.atexit = False
        self._index: dict[N.Key, Entry] = recovered.entries
        self._deleted = recovered.deleted
        self._key_dirs = recovered.key_dirs
        self._dirty = recovered.dirty | recovered.empty_fanouts
        self._found_at_open = set(recovered.dirty)
        self._blob_over_log = recovered.blob_over_log
        self._log_under_blob = recovered.log_under_blob
        self._max_seq_at_open = recovered.max_seq  # see _newest_intact_below
        self._problems = tuple(recovered.problems)
        self._temps_removed_at_open = recovered.temps_removed
        self._torn_bytes_at_open = recovered.torn_bytes
        # Without salvage the only log problems are cut tails: nothing to rewrite.
        self._salvaged = salvage and any(s.problems for s in recovered.segments)
        self._book = SegmentBook(recovered.segment_total, recovered.segment_live)
        if self._writer is not None:
            self._book.add(self._writer.number, 0, live=False)
        # Invariant: every number handed out is above every number on disk.
        self._seq = _Sequence(recovered.max_seq + 1)
        self._stripes = [threading.Lock() for _ in range(_STRIPES)]
        self._tree_lock = threading.Lock()
        self._gc_lock = threading.Lock()
        self._compact_lock = threading.Lock()
        self._dirty_lock = threading.Lock()
        self._warnings: list[Problem] = []  # to log once no lock is held: _warn_unlocked
        if self._options.durability == "os" and not readonly:
            self._owe_what_was_found(recovered)
        self._closed = False
        self._pid = os.getpid()
        self._active_seen = self._writer.number if self._writer is not None else 0
        held = self._held
        self._compact_wanted = held.compact_wanted  # set by _maybe_compact
        loops: list[tuple[str, Callable[[], bool], Callable[[BlobCache], object]]] = []
        if not readonly:  # a reader changes nothing: no background work
            loops.append(("compaction", held.compaction_wanted, lambda c: c._compact(force=False)))
            if self._options.durability == "os":
                loops.append(("sync", held.every(sync_interval), BlobCache.sync))
            if gc_interval is not None:
                loops.append(("gc", held.every(gc_interval), BlobCache.gc))
        me = weakref.ref(self)
        self._threads = [
            threading.Thread(
                target=_background, args=(me, wake, work, n), name=f"blobcache-{n}", daemon=True
            )
            for n, wake, work in loops
        ]
        for thread in self._threads:
            thread.start()

    # How often a reader starts over when the writer removes a file it was reading.
    READ_ATTEMPTS = 10

    def _read_beside_writer(self) -> _recovery.Recovered:
        """Recover without the lock, changing nothing. A live writer may delete a
        segment (compaction) or a version (janitor) between our listing and our
        read: then read again; each attempt sees a newer state."""
        _recovery.check_store(self._path)
        for _ in range(self.READ_ATTEMPTS - 1):
            try:
                return _recovery.recover(self._path, salvage=self._options.salvage, readonly=True)
            except FileNotFoundError:
                continue
        return _recovery.recover(self._path, salvage=self._options.salvage, readonly=True)

    @property
    def _log(self) -> LogWriter:
        if self._writer is None:
            raise ReadOnlyError(self._path)
        return self._writer

    def _open_log(self, recovered: _recovery.Recovered) -> LogWriter:
        """Resume writing after the last good record of the newest segment, or start one."""
        sync = self._options.durability == "fsync"
        size = self._options.segment_bytes
        last = recovered.segments[-1] if recovered.segments else None
        if last is not None and last.damaged_header:  # salvaged: gc() rewrites it
            return LogWriter.create(self._logdir, last.number + 1, sync=sync, segment_bytes=size)
        if last is None or last.end < F.SEGMENT_HEADER.size:
            if last is not None:  # created by a process that died before its header was durable
                _fsio.unlink(last.path)
                recovered.segments.pop()
                recovered.segment_total.pop(last.number, None)
                recovered.segment_live.pop(last.number, None)
            number = last.number if last is not None else 1
            return LogWriter.create(self._logdir, number, sync=sync, segment_bytes=size)
        fd = _log.open_active(self._logdir, last.number, last.end, last.zero_tail)
        # Records found at open may sit only in the page cache (a crashed "os"
        # writer): unsynced=True makes the next sync() fdatasync them.
        return LogWriter(
            self._logdir,
            last.number,
            fd,
            last.end,
            sync=sync,
            segment_bytes=size,
            unsynced=True,
            allocated=last.end + last.zero_tail,
        )

    # --- reading -------------------------------------------------------------------

    def get(self, key: N.Key, default: _T | None = None) -> Value | _T | None:  # type: ignore[override]
        """The value of ``key``, or ``default``.

        A value stored in the log (shorter than ``inline_limit``) comes back as
        ``bytes``; a larger one as a read-only, zero-copy ``memoryview`` of its
        file, valid as long as you hold it, even after the key is overwritten,
        deleted and garbage-collected, or the cache closed. Each get returns a
        view of its own: releasing it (``with cache.get(k) as view:``) leaves
        the key readable.

        :raises TypeError: ``key`` is not str or bytes.
        :raises CorruptionError: a large value's checksum failed on its first read.
        :raises ClosedError: the cache was closed.
        """
        try:
            entry = self._index[key]
        except (KeyError, TypeError):
            found = self._lookup(key)  # raises TypeError for a key of the wrong type
            if found is None:
                return default
            entry = found  # put by another thread in the meantime
        value = entry[1]  # entry[VALUE], spelled as a literal on the hot path
        if value is not None:
            return value  # bytes: immutable, so the cached object itself
        mapped: memoryview | None = entry[3]  # type: ignore[assignment]  # a blob entry's VIEW
        # A slice, never the cached view itself: the caller may release it.
        return mapped[:] if mapped is not None else self._map(key, entry, default)

    def _lookup(self, key: object) -> Entry | None:
        """The entry of ``key`` or None; the slow path, with the type checks.

        :raises TypeError: ``key`` is not str or bytes (a dict would just say "missing",
            or "unhashable" for a bytearray).
        """
        if not isinstance(key, (str, bytes)):
            raise _key_type_error(key)
        return self._index.get(key)

    def __getitem__(self, key: N.Key) -> Value:
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return cast(Value, value)

    def __contains__(self, key: object) -> bool:
        return self._lookup(key) is not None

    def __len__(self) -> int:
        return len(self._index)

    def __iter__(self) -> Iterator[N.Key]:
        """Iterate over a snapshot of the keys taken when iteration starts."""
        return iter(list(self._index))

    def path(self, key: N.Key) -> str | None:
        """The file holding ``key``'s live value, exactly its bytes, for programs
        that open files themselves (``numpy.load(path, mmap_mode="r")``, safetensors);
        None for a value short enough to live in the log (see ``inline_limit``).

        The path stays valid until the key is overwritten or deleted *and* the
        janitor (``gc()``) runs; a file already opened or mapped keeps working
        after that, since an unlinked file lives on while it is open.

        :raises KeyError: ``key`` is not in the cache.
        """
        entry = self._lookup(key)
        if entry is None:
            raise KeyError(key)
        record = blob_of(entry)
        return record.path if record is not None else None

    def _map(self, key: N.Key, entry: Entry, default: _T | None) -> Value | _T | None:
        """Map a file value on its first get; return a view of its own, as get
        does. Two threads may both map it; both views are good, one is kept."""
        while True:
            assert type(entry) is BlobEntry, "log entries always hold their bytes"
            mapped: memoryview | None = entry[VIEW]
            if mapped is not None:  # mapped meanwhile, or a replacement already was
                return mapped[:]
            try:
                mapped = _mapping.map_version(entry[RECORD], check=self._options.verify_on_get)
            except CorruptionError as damage:
                # get takes no lock: between its lookup and this open, another
                # thread may have replaced the key and the janitor removed the old
                # file. Only an entry that is still live is really damaged.
                current = self._index.get(key)
                if current is entry:
                    if self._writer is None or self._held.inherited():
                        # A reader, or a forked child, changes nothing: the
                        # writer falls back; here the damage is what to say.
                        raise
                    # The caller's key may be a str or bytes subclass: its methods
                    # run here (encode_key), not under the stripe lock.
                    key = N.decode_key(*N.encode_key(key))
                    with self._writing(os.path.basename(os.path.dirname(entry[RECORD].path))):
                        current = self._fall_back(key, entry, damage)
                if current is None:
                    return default
                if current[VALUE] is not None:
                    return current[VALUE]
                entry = current
                continue
            entry[VIEW] = mapped
            return mapped[:]

    # --- writing -------------------------------------------------------------------

    def put(self, key: N.Key, value: object) -> None:
        """Store ``value`` (any C-contiguous buffer, copied) under ``key``.

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

        :raises TypeError: ``key`` is not str/bytes, or ``value`` is not bytes-like.
        :raises ValueError: the key is too long, or the buffer is not contiguous.
        :raises OSError: the disk failed (full, read-only, ...); nothing changed.
        """
        tag, raw = N.encode_key(key)
        data = as_buffer(value)
        key = N.decode_key(tag, raw)  # a plain str or bytes, even for a subclass
        digest = N.key_hash(tag, raw)
        stripe = self._writing(digest)
        if data.nbytes < self._options.inline_limit:
            inline = bytes(data)
            with stripe:
                stale = self._put_inline(key, tag, raw, inline)
        else:
            stale = self._put_blob(key, tag, raw, stripe, data)
        if stale:
            self._maybe_compact()

    def __setitem__(self, key: N.Key, value: object) -> None:
        self.put(key, value)

    def _put_inline(self, key: N.Key, tag: bytes, raw: bytes, value: bytes) -> bool:
        """REQUIRES: the key's stripe lock. Returns whether a sealed segment got staler."""
        seq = self._seq.take()
        record = _log.encode_record(seq, F.RECORD_PUT, tag, raw, value)
        segment, _offset = self._log.append(record)
        return self._publish(key, (seq, value, segment, len(record)))

    def _put_blob(
        self,
        key: N.Key,
        tag: bytes,
        raw: bytes,
        stripe: _Stripe,
        data: memoryview,
    ) -> bool:
        """Write ``data`` as the key's new version; ``stripe`` takes the key's
        stripe lock (a no-op where the caller holds it). Returns whether a
        sealed segment got staler."""
        return self._put_version(
            key,
            tag,
            raw,
            stripe,
            lambda keydir, sync: _blob.write_version(keydir, data, sync=sync),
        )

    def _put_version(
        self,
        key: N.Key,
        tag: bytes,
        raw: bytes,
        stripe: _Stripe,
        write: Callable[[str, bool], _blob.TempVersion],
    ) -> bool:
        """Publish the version ``write(keydir, sync)`` writes to a temp file.

        Invariant: the stripe lock is not held while ``write`` runs, since the
        caller's code runs there (a stream's chunks, a file object's reads) and
        a large value's write and fsync take long: ``gc()``, compaction,
        ``close()`` and puts of keys sharing the stripe go on meanwhile. It is
        taken twice, briefly: to make the key directory and hold it, and to
        take the sequence number, rename the temp file to its final name and
        publish the entry -- so two puts of one key are published in the order
        of their numbers, and the index and the disk agree on the winner.
        (``_fall_back`` calls this with the lock held and ``stripe`` a no-op:
        what it writes is an older version's mapped bytes, no caller code.)
        Returns whether a sealed segment got staler.
        """
        keydir = N.key_dir(self._blobs, N.key_hash(tag, raw))
        sync = self._options.durability == "fsync"
        with (
            self._in_key_dir(key, tag, raw, keydir, stripe),  # takes the stripe lock briefly
            write(keydir, sync) as temp,  # no lock held
            stripe,
        ):
            record = temp.publish(self._seq.take())
            return self._publish_blob(key, keydir, record)

    @contextlib.contextmanager
    def _in_key_dir(
        self,
        key: N.Key,
        tag: bytes,
        raw: bytes,
        keydir: str,
        stripe: _Stripe,
    ) -> Iterator[None]:
        """Make ``keydir`` exist with its key file (under ``stripe``, the key's
        stripe lock), and hold it (a shared flock) until the block ends, while a
        version goes in. ``blobcache gc`` in another process, and this process's
        janitor, hold it exclusively while they remove files from it, taking it
        without waiting: they never touch one a version is going into (they
        leave it for the next gc), and no version goes into one they removed.
        """
        with stripe:
            for _ in range(3):
                try:
                    held = self._hold_key_dir(key, tag, raw, keydir)
                except FileNotFoundError:
                    held = None  # removed (by gc beside us, or by hand) as it was made
                if held is not None:
                    break
                self._key_dirs.discard(keydir)  # removed meanwhile: make it again
            else:
                raise BlobCacheError(f"{keydir} was removed three times while a put went in")
        assert held is not None
        try:
            yield
        finally:
            _fsio.unlock(held)

    def _publish_blob(self, key: N.Key, keydir: str, record: Record) -> bool:
        """REQUIRES: the key's stripe lock. Returns whether a sealed segment got staler."""
        if self._options.durability != "fsync":
            self._owe_sync(record.path, keydir)
        return self._publish(key, BlobEntry(record))

    # Streaming puts read and write this much at a time: what they hold in memory.
    CHUNK_BYTES = 1 << 20

    def put_file(
        self, key: N.Key, src: str | bytes | os.PathLike[str] | os.PathLike[bytes] | BinaryIO
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
        if not isinstance(src, (str, bytes, os.PathLike)):
            stale = self._put_chunks(tag, raw, stripe, _read_chunks(src, self.CHUNK_BYTES))
        else:
            with open(os.fsdecode(src), "rb", buffering=0) as f:
                st = os.fstat(f.fileno())
                if stat.S_ISREG(st.st_mode) and st.st_size >= self._options.inline_limit:
                    # The kernel copies a regular file; the copy is hashed as stored.
                    fd, size = f.fileno(), st.st_size
                    stale = self._put_version(
                        N.decode_key(tag, raw),
                        tag,
                        raw,
                        stripe,
                        lambda keydir, sync: _blob.write_version_copy(keydir, fd, size, sync=sync),
                    )
                else:
                    stale = self._put_chunks(tag, raw, stripe, _read_chunks(f, self.CHUNK_BYTES))
        if stale:
            self._maybe_compact()

    def put_stream(self, key: N.Key, chunks: Iterable[object]) -> None:
        """Store the concatenation of ``chunks`` (bytes-like objects) under ``key``,
        holding one chunk at a time. No lock is held while ``chunks`` is
        iterated: a slow iterable holds up no other call, and it may itself use
        the cache. If the iterable raises, the previous value stays stored and
        served.

        :raises TypeError: ``key`` is not str or bytes, or a chunk is not bytes-like.
        """
        tag, raw, stripe = self._stream_target(key)
        if self._put_chunks(tag, raw, stripe, (as_buffer(chunk) for chunk in chunks)):
            self._maybe_compact()

    def _stream_target(self, key: N.Key) -> tuple[bytes, bytes, _StripeGuard]:
        """Check ``key`` and that this handle may write, before a stream is read:
        a bad key or a read-only handle fails at once, consuming nothing."""
        tag, raw = N.encode_key(key)
        stripe = self._writing(N.key_hash(tag, raw))
        self._check_open()
        return tag, raw, stripe

    def _put_chunks(
        self, tag: bytes, raw: bytes, stripe: _StripeGuard, chunks: Iterable[memoryview]
    ) -> bool:
        """Store the concatenation of ``chunks``; returns whether a sealed segment
        got staler. A value that ends below inline_limit goes to the log, as
        put's would: it is read that far first (at most inline_limit plus one
        chunk in memory)."""
        head = bytearray()
        rest = iter(chunks)
        limit = self._options.inline_limit
        key = N.decode_key(tag, raw)
        for chunk in rest:
            head += chunk
            if len(head) >= limit:
                break
        else:
            with stripe:
                return self._put_inline(key, tag, raw, bytes(head))
        first = bytes(head)
        return self._put_version(
            key,
            tag,
            raw,
            stripe,
            lambda keydir, sync: _blob.write_version_from(keydir, first, rest, sync=sync),
        )

    def open(self, key: N.Key) -> BinaryIO:
        """A read-only, seekable binary file object over ``key``'s value.

        A value in a file is read from that file (no copy in memory); the object
        stays readable after the key is overwritten, deleted or collected, since
        an open file outlives its unlink. Its checksum is not checked: use
        ``get`` (checked on first use) or ``blobcache verify`` for that.

        :raises KeyError: ``key`` is not in the cache.
        """
        while True:
            entry = self._lookup(key)
            if entry is None:
                raise KeyError(key)
            record = blob_of(entry)
            if record is None:
                # Read-only, as a file's: a BytesIO alone would take writes (into
                # a copy of its own, but a caller would think they stuck).
                return io.BufferedReader(io.BytesIO(inline_value(entry)))
            try:
                # Never through a link, never a FIFO: see _fsio.open_regular.
                return os.fdopen(_fsio.open_regular(record.path), "rb")
            except FileNotFoundError:
                if self._index.get(key) is entry:
                    raise CorruptionError(
                        record.path,
                        "version file is missing: something other than blobcache removed it",
                    ) from None
                # replaced and collected between our lookup and the open: again

    def _publish(self, key: N.Key, entry: Entry | None) -> bool:
        """Make ``entry`` the key's live record (None: deleted) and account for
        what it supersedes; return whether that was in a sealed log segment (or
        the log rolled over), so compaction may be due.

        REQUIRES: the key's stripe lock; the record is acknowledged."""
        with self._book.lock:
            old = self._index.get(key)
            if entry is None:
                self._index.pop(key, None)
            else:
                self._index[key] = entry
                if type(entry) is not BlobEntry:
                    self._deleted.pop(key, None)  # superseded in the log: see _still_needs_delete
                    self._book.add(entry[SEGMENT], entry[SIZE], live=True)
            old_segment = None if old is None or type(old) is BlobEntry else old[SEGMENT]
            if old is not None and old_segment is not None:
                self._book.supersede(old_segment, old[SIZE])
        old_blob = blob_of(old) if old is not None else None
        if old_blob is not None:
            # An older version to remove, or the whole directory if the key left it.
            self._mark_dirty(os.path.dirname(old_blob.path))
        active = self._log.number
        rolled, self._active_seen = active != self._active_seen, active
        return rolled or (old_segment is not None and old_segment != active)

    def delete(self, key: N.Key) -> bool:
        """Delete ``key``; True if it was there. Durable like a put: a delete record
        is appended to the log, whichever layout held the value.

        :raises TypeError: ``key`` is not str or bytes.
        """
        tag, raw = N.encode_key(key)
        key = N.decode_key(tag, raw)
        digest = N.key_hash(tag, raw)
        with self._writing(digest):
            if self._index.get(key) is None:
                return False
            stale = self._delete(key, tag, raw, N.key_dir(self._blobs, digest))
        if stale:
            self._maybe_compact()
        return True

    def _delete(self, key: N.Key, tag: bytes, raw: bytes, keydir: str) -> bool:
        """REQUIRES: the key's stripe lock. Returns whether a sealed segment got staler."""
        seq = self._seq.take()
        record = _log.encode_record(seq, F.RECORD_DELETE, tag, raw, b"")
        segment, _offset = self._log.append(record)
        with self._book.lock:
            self._book.add(segment, len(record), live=False)
            if keydir in self._key_dirs:
                # Older versions may lie in the key's directory until the janitor
                # removes it: compaction must keep this record until then.
                self._deleted[key] = Deleted(seq, segment, len(record))
        if keydir in self._key_dirs:
            self._mark_dirty(keydir)
        return self._publish(key, None)

    def _fall_back(self, key: N.Key, bad: Entry, damage: CorruptionError) -> Entry | None:
        """``bad``, the live version of ``key``, failed its check: make the newest
        intact older record of the key live again -- whatever its layout -- by
        writing it anew (a new sequence number, so the damaged file is plain
        garbage for the janitor), and report the damage. Returns the key's entry
        now (None: that older record was a delete). A version never fsynced can
        come back from a power cut with its name and size but not its bytes ("os"
        durability on XFS, say): this is how the synced value before it is still
        served.

        REQUIRES: the key's stripe lock.
        :raises CorruptionError: ``damage``, when there is no intact older record.
        """
        if self._index.get(key) is not bad:
            return self._index.get(key)  # replaced meanwhile
        assert type(bad) is BlobEntry, "only a version file can fail a check"
        record: Record = bad[RECORD]
        keydir = os.path.dirname(record.path)
        older = self._newest_intact_below(key, record)
        if older is None:
            raise damage
        seq, value = older
        what = "a delete: the key is deleted" if value is None else "its value"
        note = Problem(
            record.path, f"{damage.detail}; serving the older record {seq} instead ({what})"
        )
        self._warn_unlocked(note)
        self._problems += (note,)
        tag, raw = N.encode_key(key)
        if value is None:
            self._delete(key, tag, raw, keydir)
        elif len(value) < self._options.inline_limit:
            self._put_inline(key, tag, raw, bytes(value))
        else:
            self._put_blob(key, tag, raw, contextlib.nullcontext(), memoryview(value))
        return self._index.get(key)

    def _newest_intact_below(
        self, key: N.Key, bad: Record
    ) -> tuple[int, bytes | memoryview | None] | None:
        """The newest intact record of ``key`` numbered below ``bad``, as (seq,
        value; None for a delete), or None if there is none.

        It may lie in the key's directory (a version), or in any log segment
        (the index forgot those records once a version superseded them), or be
        the log record that ``bad`` won over at open, which is kept in memory
        because compaction drops it from the log. That one counts only while
        ``bad`` is the version found at open: any record put since may have been
        compacted away, a delete among them, and must not be jumped over.
        Versions are checked (read whole); log records were checked as read.
        """
        tag, raw = N.encode_key(key)
        found: dict[int, Record | bytes | None] = dict(_log.records_of(self._logdir, tag, raw))
        under = self._log_under_blob.get(key)
        if under is not None and bad.seq <= self._max_seq_at_open:
            found.setdefault(*under)
        with contextlib.suppress(FileNotFoundError):  # removed by hand: reported at open
            found.update(
                (v.seq, v) for v in _keydir.scan_key_dir(os.path.dirname(bad.path)).records
            )
        for seq in sorted((s for s in found if s < bad.seq), reverse=True):
            candidate = found[seq]
            if not isinstance(candidate, Record):
                return seq, candidate
            with contextlib.suppress(CorruptionError):
                return seq, _mapping.map_version(candidate, check=True)
        return None

    def __delitem__(self, key: N.Key) -> None:
        if not self.delete(key):
            raise KeyError(key)

    def _writing(self, digest: str) -> _StripeGuard:
        self._check_writer()
        return _StripeGuard(self, self._stripes[int(digest[:3], 16) % _STRIPES])

    def _check_writer(self) -> None:
        """Refuse to change the store through a readonly handle, or through one
        inherited across fork: the parent still writes through its own copy, and a
        child's gc() would cut the parent's active segment back to where it stood
        at the fork, then delete it with every put acknowledged since."""
        if self._writer is None:
            raise ReadOnlyError(self._path)
        if self._held.inherited():
            raise BlobCacheError(
                f"this BlobCache handle for {self._path} was opened by process {self._pid} "
                f"and inherited by a fork (this is process {os.getpid()}): it reads, but "
                f"only process {self._pid} changes the store through it (put, delete, gc, "
                "sync); open a handle in this process: BlobCache(path, readonly=True) "
                f"beside process {self._pid}'s writer, or BlobCache(path) once it has closed"
            )

    def _hold_key_dir(self, key: N.Key, tag: bytes, raw: bytes, keydir: str) -> int | None:
        """Make ``keydir`` exist, take its flock shared, then make sure of its key
        file; return the flock's descriptor, or None when the key file went
        (removed since we last made it: the caller makes it again).

        The flock comes before the key file: ``blobcache gc`` beside us removes
        a key directory only under its exclusive flock, and leaves one without a
        key file alone, so from the mkdir on no collection can take the
        directory from under the key file we are writing (it did, when the key
        file came first, often enough for a put to give up).
        Invariant ("fsync"): a version file is only ever published in a directory
        whose key file is already durable, so recovery never finds a value
        without its key. With "os" the directories and key file are owed to the
        next ``sync()``, which fsyncs files before directories: after it, the
        same holds. REQUIRES: the key's stripe lock.

        :raises FileNotFoundError: the directory was removed before we held it.
        """
        sync = self._options.durability == "fsync"
        made = keydir in self._key_dirs
        if not made:
            with self._tree_lock:
                _fsio.makedirs(self._blobs, keydir, sync=sync)
            if not sync:
                # Every directory on the way, not only those just made: one left
                # unsynced by a killed process must not stay so after our sync().
                self._owe_dirs(keydir)
        held = _fsio.lock_dir(keydir, exclusive=False)
        assert held is not None, "a lock taken with wait=True is always held"
        try:
            if not made:
                self._ensure_key_file(key, tag, raw, keydir, sync=sync)
            elif not os.path.exists(os.path.join(keydir, F.KEY_FILE_NAME)):
                _fsio.unlock(held)
                return None
        except BaseException:
            _fsio.unlock(held)
            raise
        return held

    def _ensure_key_file(
        self, key: N.Key, tag: bytes, raw: bytes, keydir: str, *, sync: bool
    ) -> None:
        """Check ``keydir``'s key file names ``key``, or write it (durably with
        ``sync``). REQUIRES: the key's stripe lock and ``keydir``'s flock."""
        try:
            found = _keydir.read_key_file(keydir)
        except (FileNotFoundError, CorruptionError):
            # Missing, or damaged (reported at open): a key file not yet synced
            # when the power went can come back empty. The key is the one that
            # hashes to this directory: write it again.
            key_file = _keydir.write_key_file(keydir, tag, raw, sync=sync)
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
        self._held.owed.add(path, [keydir])

    def _owe_what_was_found(self, recovered: _recovery.Recovered) -> None:
        """With "os", a killed process may have left versions, key files and
        directories that were never fsynced; they hold values this process
        serves, so its ``sync()`` owes them too. (With "fsync" every put made
        them durable before it returned.)"""
        for key, keydir in recovered.dir_of.items():
            self._owe_sync(os.path.join(keydir, F.KEY_FILE_NAME), keydir)
            self._owe_dirs(keydir)
            entry = self._index.get(key)
            record = blob_of(entry) if entry is not None else None
            if record is not None:
                self._owe_sync(record.path, keydir)

    def _owe_dirs(self, keydir: str) -> None:
        """Owe the next ``sync()`` an fsync of every directory from ``blobs`` down
        to ``keydir``'s parent (``keydir`` itself is owed by what goes in it)."""
        dirs = []
        directory = os.path.dirname(keydir)
        while directory != self._path:
            dirs.append(directory)
            directory = os.path.dirname(directory)
        self._held.owed.add(None, dirs)

    def _warn_unlocked(self, note: Problem) -> None:
        """Log ``note`` once the stripe lock is released (``_StripeGuard`` does):
        logging handlers are the caller's code, and may be slow or use this
        cache, even keys of the same stripe. REQUIRES: a ``_StripeGuard`` held."""
        self._warnings.append(note)

    def _log_warnings(self) -> None:
        while self._warnings:
            try:
                note = self._warnings.pop(0)
            except IndexError:  # logged by another thread meanwhile
                return
            log.warning("blobcache: %s", note)

    def _mark_dirty(self, keydir: str) -> None:
        """Note that ``keydir`` holds garbage for the next ``gc()``."""
        with self._dirty_lock:
            self._dirty.add(keydir)

    def sync(self) -> None:
        """Make every acknowledged put and delete survive power loss.

        With ``durability="fsync"`` that is already so and this does nothing; with
        ``"os"`` it fsyncs the log and the files and directories written since
        the last sync.
        """
        self._check_open()
        self._check_writer()
        self._held.sync()

    # --- the janitor and compaction --------------------------------------------------

    def gc(self) -> GcResult:
        """Delete superseded versions, deleted keys and orphaned temp files, then
        compact the log (whatever its stale ratio).

        A version goes only once its key's newer record is durable; a reader's
        mapped view of a removed file stays valid. Returns what was removed. After
        a failed fsync it refuses, as ``sync()`` does: a retried fsync could
        wrongly report success, and gc would then delete the older versions.
        """
        self._check_open()
        self._check_writer()
        self._held.owed.refuse_after_failure()
        total = GcResult()
        with self._gc_lock:
            with self._dirty_lock:
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
        total.add(self._compact(force=True))
        return total

    def _clean(self, keydir: str) -> GcResult:
        """REQUIRES: the stripe lock of ``keydir``. Holds ``keydir`` exclusively
        (see ``_in_key_dir``) against a put writing a version into it and a
        `blobcache gc` in another process.

        The flock is taken without waiting: a put holds it shared, without the
        stripe lock, while it writes (from a stream that may take any time, or
        that waits for this very thread), so waiting here with the stripe lock
        held could stall every key of the stripe or deadlock. A busy directory
        is left for the next gc.
        """
        if keydir in self._found_at_open and not self._live_version_intact(keydir):
            return GcResult()  # nothing intact to keep: left as found, reported
        try:
            held = _fsio.lock_dir(keydir, exclusive=True, wait=False)
        except FileNotFoundError:
            held = None  # gone already: _clean_held prunes its empty parents
        else:
            if held is None:  # a version is going in: its garbage stays for next time
                self._mark_dirty(keydir)
                return GcResult()
        try:
            return self._clean_held(keydir)
        finally:
            if held is not None:
                _fsio.unlock(held)

    def _live_version_intact(self, keydir: str) -> bool:
        """A version found at open may have lost its bytes to a power cut (never
        fsynced): read it whole before deleting the older ones it would fall back
        to, and fall back if it fails. False: it failed and nothing older is
        intact. REQUIRES: the stripe lock of ``keydir`` (not its flock: a fall
        back writes a version into it)."""
        try:
            key = _keydir.read_key_file(keydir)
        except (OSError, CorruptionError):
            return True  # nothing attributable here: clean_key_dir decides
        entry = self._index.get(key)
        if type(entry) is not BlobEntry or os.path.dirname(entry[RECORD].path) != keydir:
            return True
        try:
            _mapping.map_version(entry[RECORD], check=True)
        except CorruptionError as damage:
            try:
                self._fall_back(key, entry, damage)
            except CorruptionError:
                return False
        return True

    def _clean_held(self, keydir: str) -> GcResult:
        try:
            scan = _keydir.scan_key_dir(keydir)
        except FileNotFoundError:  # removed by a gc() that failed right after, or another
            with self._tree_lock:
                parents = _janitor.prune_empty_dirs(os.path.dirname(keydir), self._blobs)
            return GcResult(dirs_removed=parents)
        entry = self._index.get(scan.key) if scan.key is not None else None
        live_seq = entry[SEQ] if entry is not None else None
        # Records found at open may never have been made durable (a crash between
        # a rename and its directory fsync, or "os" puts never synced): make the
        # live one durable before deleting anything older, whatever the mode.
        unsure = keydir in self._found_at_open or self._options.durability == "os"
        if unsure and (entry is None or blob_of(entry) is None):
            self._log.sync()  # the newer record (a put or a delete) is in the log
        try:
            if unsure and scan.live is not None and scan.live.seq == live_seq:
                self._make_durable(keydir, scan.live.path, parents=False)
            result = _janitor.clean_key_dir(scan, live_seq=live_seq)
        finally:
            # Invariant: a directory in _key_dirs has its key file. The janitor may
            # have removed it and then failed (or found a stray) before the rmdir:
            # the next put into it must write the key file again.
            if not os.path.exists(os.path.join(keydir, F.KEY_FILE_NAME)):
                self._key_dirs.discard(keydir)
        self._found_at_open.discard(keydir)
        if result.dirs_removed:
            with self._tree_lock:
                result.dirs_removed += _janitor.prune_empty_dirs(
                    os.path.dirname(keydir), self._blobs
                )
        return result

    def _prune(self, directory: str) -> GcResult:
        """Remove an empty fan-out directory found at open, and empty parents."""
        with self._tree_lock:
            return GcResult(dirs_removed=_janitor.prune_empty_dirs(directory, self._blobs))

    def _maybe_compact(self) -> None:
        """Wake the compaction thread once sealed segments are stale enough."""
        with self._book.lock:
            stale, total = self._book.stale(below=self._log.number)
        if total and stale >= self._options.compact_ratio * total:
            self._compact_wanted.set()

    def _compact(self, *, force: bool) -> GcResult:
        """Rewrite the live records of every sealed segment into one segment that
        replaces them (numbered as the highest of them; see ``_compaction``).

        Reads never wait (they are served from memory) and puts go on into the
        active segment meanwhile. With ``force``, the active segment is sealed
        and compacted too, if it holds anything stale.
        """
        # Here too, not only in gc(): compaction through a handle inherited by a
        # fork would cut the parent's active segment back and delete it.
        self._check_writer()
        with self._compact_lock:
            self._check_open()
            with self._book.lock:
                stale, total = self._book.stale(below=None if force else self._log.number)
            damaged = force and self._salvaged  # rewrite a segment salvage cut short
            if not damaged and (
                stale == 0 or (not force and stale < self._options.compact_ratio * total)
            ):
                return GcResult()
            # Invariant: every record in an input is in the index (or _deleted)
            # when the inputs are chosen. A put or delete holds its key's stripe
            # lock from its append until its index update, so with every stripe
            # held none is between the two: records appended before the roll
            # are published, later ones go to the new active segment.
            with self._all_stripes():
                # Seal the active segment: it is the highest input, and the
                # output takes its number (see _compaction).
                active = self._log.roll()
                output = active - 1
                with self._book.lock:
                    self._book.add(active, 0, live=False)
                    inputs = sorted(n for n in self._book.total if n < active)
                    chosen = set(inputs)
                    # Two flat lists, not a list of (key, entry) pairs: 16 bytes
                    # per live record beside the index, which holds the values.
                    keys: list[N.Key] = []
                    entries: list[Entry] = []
                    for key, entry in self._index.items():
                        if type(entry) is not BlobEntry and entry[SEGMENT] in chosen:
                            keys.append(key)
                            entries.append(entry)
                    deleted = [(k, d) for k, d in self._deleted.items() if d.segment in chosen]
            assert inputs[-1] == output, "the segment just sealed is always in the book"
            # Never delete the last durable copy: a value that supersedes a record
            # about to be dropped must be durable first ("os" puts are owed to
            # sync(); versions found at open may never have been fsynced).
            if self._options.durability == "os":
                self.sync()
            self._make_adopted_durable()
            kept = [(k, d) for k, d in deleted if self._still_needs_delete(k, d.seq)]
            # Encoded one at a time as the output is written: the records are
            # never all in memory beside the values they copy.
            records = itertools.chain(
                (
                    _log.encode_record(e[SEQ], F.RECORD_PUT, *N.encode_key(k), inline_value(e))
                    for k, e in zip(keys, entries, strict=True)
                ),
                (
                    _log.encode_record(d.seq, F.RECORD_DELETE, *N.encode_key(k), b"")
                    for k, d in kept
                ),
            )
            sizes, replaced = _compaction.write_compacted(self._logdir, output, records)
            written = sum(sizes)
            live_bytes = 0
            with self._book.lock:
                for key, dead in deleted:
                    if self._deleted.get(key) is dead:
                        del self._deleted[key]
                for (key, dead), size in zip(kept, sizes[len(keys) :], strict=True):
                    # Not if a newer delete took its place, nor a put to the log.
                    live = self._index.get(key)
                    if key not in self._deleted and (live is None or type(live) is BlobEntry):
                        self._deleted[key] = Deleted(dead.seq, output, size)
                del sizes[len(keys) :]
                # Popped as they are replaced, so an old entry is freed as soon as
                # its new one is in: never two entries per key at once.
                while keys:
                    key, entry, size = keys.pop(), entries.pop(), sizes.pop()
                    # Entries replaced meanwhile keep pointing where their new record is.
                    if self._index.get(key) is entry:
                        self._index[key] = (entry[SEQ], entry[VALUE], output, size)
                        live_bytes += size
                self._book.replace(inputs, output, written, live_bytes)
            lower = inputs[:-1]  # the highest input was replaced by the rename
            try:
                freed = _compaction.remove_segments(self._logdir, lower) + replaced
            except BaseException:
                # The inputs still there are garbage: booked as all stale, the
                # next gc() takes them as inputs again and deletes them.
                with self._book.lock:
                    for number in lower:
                        path = os.path.join(self._logdir, _log.segment_name(number))
                        if os.path.exists(path):
                            self._book.add(number, os.path.getsize(path), live=False)
                raise
            self._salvaged = False
            output_size = F.SEGMENT_HEADER.size + written
            return GcResult(
                segments_compacted=len(inputs), bytes_reclaimed=max(0, freed - output_size)
            )

    def _make_adopted_durable(self) -> None:
        """fsync the live versions found at open that won over a log record, with
        every directory entry they depend on. REQUIRES: ``_compact_lock``."""
        adopted, self._blob_over_log = self._blob_over_log, {}
        for key, keydir in adopted.items():
            entry = self._index.get(key)
            record = blob_of(entry) if entry is not None else None
            if record is None or os.path.dirname(record.path) != keydir:
                continue  # replaced since open by a record that was made durable
            self._make_durable(keydir, record.path, parents=True)

    def _make_durable(self, keydir: str, version: str, *, parents: bool) -> None:
        """fsync a live version that may not be durable (found at open, or put with
        "os"), its key file (without it the version is unattributable) and its
        directory; with ``parents``, every directory up to the store's too. A failure
        is final, as in ``sync()``: see ``_fsio.earlier_sync_failed``."""
        try:
            _fsio.fsync_path(os.path.join(keydir, F.KEY_FILE_NAME))
            _fsio.fsync_path(version)
            _fsio.fsync_dir(keydir)
            directory = os.path.dirname(keydir)
            while parents and directory != self._path:
                _fsio.fsync_dir(directory)
                directory = os.path.dirname(directory)
        except FileNotFoundError:
            raise  # gone (by hand, or collected once superseded): no write was lost
        except OSError as exc:
            self._held.owed.failed(exc)
            raise

    @contextlib.contextmanager
    def _all_stripes(self) -> Iterator[None]:
        """Hold every stripe lock: no put or delete is under way meanwhile."""
        for lock in self._stripes:
            lock.acquire()
        try:
            yield
        finally:
            for lock in self._stripes:
                lock.release()

    def _still_needs_delete(self, key: N.Key, seq: int) -> bool:
        """Whether compaction must copy ``key``'s delete record ``seq`` forward: while
        it is what hides an older version still in the key's directory.

        The key still deleted: while the directory is there (the janitor removes
        it). Put again as a version: while a version numbered below the delete
        is there, since a fall back from a damaged newer version must find the
        delete, not that version (dropping it served a deleted value again). Put
        again to the log: never, as a log record newer than any version wins at
        open and is never damaged unseen (its checksum is read then).
        """
        keydir = N.key_dir(self._blobs, N.key_hash(*N.encode_key(key)))
        if keydir not in self._key_dirs:
            return False
        entry = self._index.get(key)
        if entry is None:
            return True
        if type(entry) is not BlobEntry:
            return False
        try:
            names = os.listdir(keydir)
        except FileNotFoundError:
            return False
        return any(
            (version := N.parse_version_name(name)) is not None and version.seq < seq
            for name in names
        )

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
        """Counts from memory: keys, live bytes, log segments, what awaits ``gc()``."""
        self._check_open()
        entries = list(self._index.values())
        with self._book_lock():
            stale, total = self._book.stale()
            active = {self._writer.number} if self._writer is not None else set()
            segments = len(self._book.total.keys() | active)
        return Stats(
            path=self._path,
            durability=self._options.durability,
            keys=len(entries),
            live_bytes=sum(map(length, entries)),
            inline_keys=sum(1 for e in entries if type(e) is not BlobEntry),
            next_seq=self._seq.peek(),
            segments=segments,
            log_record_bytes=total,
            log_stale_bytes=stale,
            dirs_awaiting_gc=len(self._dirty),
            problems=len(self._problems),
            temps_removed_at_open=self._temps_removed_at_open,
            torn_bytes_at_open=self._torn_bytes_at_open,
        )

    # --- for the maintenance command (_maintenance.py) ------------------------------

    def _inventory(self) -> Inventory:
        """What ``blobcache stats | verify | gc`` read of this handle: all of it."""
        entries = list(self._index.items())
        seqs = {key: dead.seq for key, dead in list(self._deleted.items())}
        seqs.update((key, int(entry[SEQ])) for key, entry in entries)
        return Inventory(
            sizes=[(key, length(entry)) for key, entry in entries],
            live_versions=[
                (int(entry[SEQ]), entry[RECORD].path)
                for _, entry in entries
                if type(entry) is BlobEntry
            ],
            record_seqs=seqs,
        )

    def _book_lock(self) -> contextlib.AbstractContextManager[object]:
        """The book's lock; none in a forked child, where no thread changes the book
        (the child cannot write) and a parent thread may have held the lock at the
        fork, never to release it there."""
        return contextlib.nullcontext() if self._held.inherited() else self._book.lock

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(self._path)

    def close(self) -> None:
        """Sync (with ``"os"``), release the lock, and refuse further use.

        Values returned by ``get`` stay valid. Closing twice is harmless. In a
        forked child, closing a handle inherited from the parent only closes the
        child's copy: the files, the lock and the threads are the parent's.
        """
        if self._held.inherited():
            # No lock taken: a parent thread may have held one at the fork.
            self._closed = True
            self._index = ClosedIndex(self._path)
            return
        with self._compact_lock, self._all_stripes():
            if self._closed:
                return
            self._closed = True
            self._index = ClosedIndex(self._path)
            if self._release.detach() is not None:  # the finalizer will not run: let go here
                self._held.let_go()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join()

    def clear(self) -> None:
        """Delete every key (each as ``delete`` does, with a delete record).

        MutableMapping's own clear pops one item at a time: it reads every value
        and copies the key list for each key, quadratic in the number of keys.
        """
        self._check_open()
        self._check_writer()
        for key in list(self._index):
            self.delete(key)

    def __reduce__(self) -> NoReturn:
        raise TypeError(
            f"a BlobCache handle cannot be pickled or copied: it holds {self._path}'s lock "
            "and open files. To share a store between processes, open a handle in each one "
            "by path: BlobCache(path) in the one writer, BlobCache(path, readonly=True) "
            "beside it"
        )

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


class _Owed:
    """The files and directories "os" durability owes the next ``sync()`` an fsync.

    REQUIRES: ``lock`` for every field."""

    def __init__(self, where: str) -> None:
        self.where = where  # named by the error after a failed fsync
        self.lock = threading.Lock()
        self.files: set[str] = set()
        self.dirs: set[str] = set()
        self.error: OSError | None = None  # a failed fsync of written data: final

    def add(self, path: str | None, dirs: Iterable[str]) -> None:
        with self.lock:
            if path is not None:
                self.files.add(path)
            self.dirs.update(dirs)

    def failed(self, error: OSError) -> None:
        """Never retried: see ``_fsio.earlier_sync_failed``."""
        with self.lock:
            self.error = error

    def refuse_after_failure(self) -> None:
        """Raise once an fsync of data not known durable has failed."""
        with self.lock:
            if self.error is not None:
                raise _fsio.earlier_sync_failed(self.where, self.error)

    def sync(self) -> None:
        """fsync every file owed, then every directory (files before their entries)."""
        self.refuse_after_failure()
        with self.lock:
            files, self.files = self.files, set()
            dirs, self.dirs = self.dirs, set()
        try:
            for path in sorted(files):
                # A missing file was superseded and collected; the janitor synced its successor.
                with contextlib.suppress(FileNotFoundError):
                    _fsio.fsync_path(path)
            for keydir in sorted(dirs):
                # A missing directory was removed by the janitor, after it made
                # the key's newer record durable.
                with contextlib.suppress(FileNotFoundError):
                    _fsio.fsync_dir(keydir)
        except OSError as exc:
            self.failed(exc)
            raise


class _Held:
    """What a handle holds beyond its memory: the store's writer lock, the active
    log segment, the fsyncs it owes, and the signals of its background threads.

    Invariant: nothing here refers to the handle, so its finalizer and its
    threads reach these without keeping a dropped handle alive.
    """

    def __init__(self, path: str, lock_fd: int, writer: LogWriter | None) -> None:
        self.path = path
        self.lock_fd = lock_fd  # -1: readonly, no lock held
        self.writer = writer  # None: readonly
        self.owed = _Owed(os.path.join(path, F.BLOBS_DIR))
        self.stop = threading.Event()  # set once let go: the threads end
        self.compact_wanted = threading.Event()
        self.forks = _forks[0]

    def inherited(self) -> bool:
        """Whether this process is a fork of the one that opened the store."""
        return _forks[0] != self.forks

    def compaction_wanted(self) -> bool:
        """Wait until compaction is asked for; False once let go."""
        self.compact_wanted.wait()
        self.compact_wanted.clear()
        return not self.stop.is_set()

    def every(self, seconds: float) -> Callable[[], bool]:
        """A wait of ``seconds``, False once let go."""
        return lambda: not self.stop.wait(seconds)

    def sync(self) -> None:
        """``BlobCache.sync``: the log, then what "os" owes. REQUIRES: a writer."""
        assert self.writer is not None, "a readonly handle has nothing to sync"
        self.writer.sync()
        self.owed.sync()

    def let_go(self) -> None:
        """Stop the threads; for a writer, sync, close the log and release the lock
        (all of it even when the sync fails, which then raises)."""
        self.stop.set()
        self.compact_wanted.set()
        # Invariant: in a forked child these are the parent's; the child's copy
        # of the lock descriptor was closed at the fork (see _fsio).
        if self.writer is None or self.inherited():
            return
        try:
            self.sync()
        finally:
            try:
                self.writer.close()
            finally:
                _fsio.unlock(self.lock_fd)


def _let_go_of_dropped(held: _Held) -> None:
    """The finalizer of a handle dropped without ``close()``: let go of the store
    as ``close()`` would. Nobody is left to raise to: a failure is logged."""
    try:
        held.let_go()
    except (OSError, BlobCacheError) as exc:
        log.error("blobcache: closing %s, dropped without close(), failed: %s", held.path, exc)


def _background(
    cache: weakref.ref[BlobCache],
    wake: Callable[[], bool],
    work: Callable[[BlobCache], object],
    what: str,
) -> None:
    """A background thread: ``work(handle)`` each time ``wake()`` says so, until it
    says stop, the handle is closed, or the handle is gone. A failure is logged and
    tried again next time.

    Invariant: the thread holds the handle only while it works, so a handle the
    program dropped is collected, and its finalizer lets go of the store.
    """
    while wake():
        handle = cache()
        if handle is None:
            return
        try:
            work(handle)
        except ClosedError:
            return
        except (OSError, BlobCacheError) as exc:
            log.error("blobcache: background %s of %s failed: %s", what, handle.directory, exc)
        del handle


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
        if self._cache._warnings:
            self._cache._log_warnings()


_MISSING: Any = object()
