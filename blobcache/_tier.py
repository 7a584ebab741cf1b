"""The remote tier as a handle uses it: write-through and write-back puts, read-through
on a miss, refresh, and the local account of what the remote holds (``REMOTE``).

Local store first, always: a value is put in the local store as without a remote,
and the remote adds the machine-loss crash model (DESIGN.md, "The remote tier").

* **Order across machines.** Per key, remote versions 1, 2, 3... are taken by
  create-only puts (``_remote.Remote.create``): a version is taken once, on every
  machine, and the highest wins. A put takes one above the highest it knows; if that
  is taken it lists the key's versions and tries above them.

  Invariant (no gaps below the newest, where it matters): a version is only ever
  made as one above a version seen to exist, so versions fill in from 1 up, and
  ``blobcache gc --remote`` never deletes the newest, never version 1 (it leaves a
  stub there), and nothing younger than its grace. So a put whose create of
  version 1 succeeds made the key's only version, and a put that creates one above
  a version it saw less than ``HINT_SECONDS`` ago (far inside gc's grace) made the
  newest: neither needs the list first. Anything else lists first.
* **Write-through.** The remote half of a put runs before the local commit, a large
  value's upload beside its local write; the record is created last, then the local
  value is published. A remote failure raises ``RemoteError`` and the local store
  keeps the previous value.
* **Write-back.** A put is local; a thread uploads the keys not yet uploaded, oldest
  put first, resuming after a crash from ``REMOTE`` and the local records.
* **Read-through.** A local miss reads the key's newest record; its value is
  streamed into the local store and checked (length, xxh3-128) before it is served.
* **Staleness.** A thread lists every record each ``remote_refresh`` seconds and
  brings in newer versions of the keys this store holds.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import mmap
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import xxhash

from . import _format as F
from . import _fsio
from . import _names as N
from ._blob import TempVersion
from ._clock import now_ms
from ._index import CODEC_OF, Mapped, Values, seq_of
from ._remote import Remote, RemoteRecord, blob_name, new_put_id, value_digest
from .errors import BlobCacheError, ClosedError, CorruptionError, RemoteError

log = logging.getLogger("blobcache")

RemoteMode = Literal["write-through", "write-back"]
REMOTE_MODES: tuple[RemoteMode, ...] = ("write-through", "write-back")
# A version seen this recently is one a put may create above without listing first:
# far below gc's least grace (MIN_GRACE_SECONDS), so the version above it cannot
# have been collected meanwhile (see the module's invariant).
HINT_SECONDS = 300.0
MIN_GRACE_SECONDS = 1800.0
# How many of a key's newest records a value found at open is looked for in.
SETTLE_LOOKBACK = 8
# A create that meets another put's version lists and tries again this many times.
CREATE_TRIES = 16
# Write-back: waits between tries after a failure, doubling up to the last.
BACKOFF_SECONDS = (0.25, 30.0)
_LOCKS = 64


@dataclass
class Known:
    """What ``REMOTE`` says of a key: remote ``version`` holds local value ``seq``."""

    version: int
    seq: int


class Ledger:
    """``<root>/REMOTE`` (FORMAT.md, "The remote tier"): appended by every handle of
    the store that has this remote, read by all. Lines, not fsynced but for deletes:
    a lost ``V`` line only makes a key checked against the remote again, while a lost
    ``D`` line would lose a delete (its local record is durable before it returns).

    REQUIRES: ``lock`` for the maps and the file's offset.
    """

    def __init__(self, root: str, url: str) -> None:
        self.path = os.path.join(root, F.REMOTE_LEDGER_NAME)
        self.url = url
        self.lock = threading.Lock()
        self.versions: dict[str, Known] = {}  # key hash -> what the remote holds of it
        self.deletes: dict[str, bytes] = {}  # key hash -> tag + key bytes, delete to upload
        header = f"remote {url}\n".encode()
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        except FileNotFoundError:
            fd = None
        if fd is not None:
            with open(fd, "rb", closefd=False) as f:
                first = f.readline()
            if first != header:  # another remote's account (or torn): not this one's
                os.close(fd)
                fd = None
        if fd is None:
            _fsio.write_file_atomically(
                root, F.REMOTE_LEDGER_NAME, header, replacing=True, mode=0o644
            )
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        self.fd = fd
        self.offset = len(header)
        self.read()

    def read(self) -> None:
        """Take in the lines appended since the last read (other handles' too)."""
        with self.lock:
            self._check_open()
            data = b""
            while chunk := os.pread(self.fd, 1 << 20, self.offset + len(data)):
                data += chunk
            end = data.rfind(b"\n") + 1
            for line in data[:end].split(b"\n")[:-1]:
                self._apply(line)
            self.offset += end

    def _apply(self, line: bytes) -> None:
        body, _, crc = line.rpartition(b" ")
        if crc != b"%08x" % xxhash.xxh32_intdigest(body):
            return  # torn or damaged: the key is checked against the remote again
        fields = body.split(b" ")
        if fields[0] == b"V" and len(fields) == 4:
            digest = fields[1].decode()
            self.versions[digest] = Known(int(fields[2]), int(fields[3]))
            self.deletes.pop(digest, None)
        elif fields[0] == b"D" and len(fields) == 3:
            self.deletes[fields[1].decode()] = base64.b64decode(fields[2])

    def _check_open(self) -> None:
        """REQUIRES: ``lock``. :raises ClosedError: closed (its fd may be another
        file's by now: never written after ``close``)."""
        if self.fd < 0:
            raise ClosedError(self.path)

    def _append(self, body: bytes, *, sync: bool = False) -> None:
        line = body + b" %08x\n" % xxhash.xxh32_intdigest(body)
        with self.lock:
            self._check_open()
            # One write of a line: O_APPEND puts it whole at the end, beside other
            # processes'.
            written = os.write(self.fd, line)
            if written != len(line):
                raise OSError(f"short write to {self.path}")
            if sync:
                _fsio.fdatasync(self.fd)
        self.read()

    def note(self, digest: str, version: int, seq: int) -> None:
        """Remote ``version`` of the key holds local value ``seq`` (0: none, a tombstone)."""
        self._append(b"V %s %d %d" % (digest.encode(), version, seq))

    def note_delete(self, digest: str, tag: bytes, raw: bytes, *, sync: bool) -> None:
        """A write-back delete to upload; durable (with ``sync``) before the local one."""
        self._append(b"D %s %s" % (digest.encode(), base64.b64encode(tag + raw)), sync=sync)

    def close(self) -> None:
        with self.lock:
            fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


class Local:
    """What the tier needs of its handle: the index to read, and puts and deletes
    that go to the local store only. Given by ``cache.BlobCache`` at open."""

    def __init__(
        self,
        values: Callable[[], Values],
        meta: Callable[[], dict[N.Key, int]],
        expiry: Callable[[N.Key], int],
        put_value: Callable[[N.Key, Sequence[bytes | memoryview], int, int, int], None],
        put_chunks: Callable[[N.Key, Iterable[memoryview], int, int], None],
        delete: Callable[[N.Key], None],
    ) -> None:
        self.values = values
        self.meta = meta
        self.expiry = expiry
        self.put_value = put_value  # (key, parts, length, codec, expires)
        self.put_chunks = put_chunks  # (key, chunks, codec, expires)
        self.delete = delete

    def seq(self, key: N.Key) -> int | None:
        meta = self.meta().get(key)
        return None if meta is None else seq_of(meta)


class Tier:
    """One handle's remote tier."""

    def __init__(
        self,
        root: str,
        remote: Remote,
        mode: RemoteMode,
        refresh_seconds: float,
        local: Local,
        *,
        sync_deletes: bool,
    ) -> None:
        self.remote = remote
        self.mode = mode
        self.through = mode == "write-through"
        self.refresh_seconds = refresh_seconds
        self.local = local
        self.sync_deletes = sync_deletes
        self.ledger = Ledger(root, remote.url)
        self.hints: dict[str, tuple[int, float]] = {}  # key hash -> (newest seen, when)
        self._locks = [threading.Lock() for _ in range(_LOCKS)]
        self._range_fd = _fsio.open_range_locks(os.path.join(root, F.LOCK_NAME))
        # Who is using ``_range_fd`` now: ``close`` leaves it to the last of them
        # to close (closed under one, its unlock would hit EBADF, or the file
        # that took its number meanwhile). REQUIRES: ``_range_guard``.
        self._range_users = 0
        self._range_closed = False
        self._range_guard = threading.Lock()
        self.pending: dict[N.Key, int] = {}  # keys to upload, oldest put first: a ticket each
        self.found_at_open: set[N.Key] = set()  # leftovers of before this open: find_pending
        self._tickets = 0
        self.pending_lock = threading.Lock()
        self.drain_lock = threading.Lock()  # one drain at a time: the thread's or flush's
        self.wake = threading.Event()
        self.stop = threading.Event()  # set by close(): the handle's, or its finalizer's
        self.last_error: str | None = None
        self._threads: list[threading.Thread] = []

    # --- start and stop ---------------------------------------------------------------

    def start(self) -> None:
        """Queue what this store holds that the remote may not (write-back's puts a
        crash left, values put before the remote was attached, a write-through put
        whose ``REMOTE`` line was lost), then start the uploader and refresher."""
        self.find_pending()
        for name, loop in (("uploader", self._upload_loop), ("remote-refresh", self._refresh_loop)):
            thread = threading.Thread(target=loop, name=f"blobcache-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        self.stop.set()
        self.wake.set()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join()
        self.ledger.close()
        with self._range_guard:
            self._range_closed = True
            if self._range_users == 0:
                _fsio.unlock(self._range_fd)  # (closes it)

    @contextlib.contextmanager
    def _using_range_fd(self) -> Iterator[None]:
        """:raises ClosedError: the tier is closed."""
        with self._range_guard:
            if self._range_closed:
                raise ClosedError(self.ledger.path)
            self._range_users += 1
        try:
            yield
        finally:
            with self._range_guard:
                self._range_users -= 1
                if self._range_closed and self._range_users == 0:
                    _fsio.unlock(self._range_fd)  # close() left it to the last user

    def find_pending(self) -> None:
        """Queue every local key whose value ``REMOTE`` does not say is on the remote,
        oldest first, and every delete it says is not uploaded."""
        self.ledger.read()
        versions = self.ledger.versions
        found = []
        for key, meta in list(self.local.meta().items()):
            known = versions.get(N.key_hash(*N.encode_key(key)))
            if known is None or known.seq != seq_of(meta):
                found.append((seq_of(meta), key))
        found.sort(key=lambda item: item[0])
        with self.pending_lock:
            for _, key in found:
                self._enqueue(key)
                # Not a put of this handle's: a write-back put a crash left, a value
                # put before the remote was attached, or one whose V line a crash lost:
                # checked against the remote before it goes up (``_settled_at_open``).
                self.found_at_open.add(key)
            for raw in list(self.ledger.deletes.values()):
                self._enqueue(N.decode_key(raw[:1], raw[1:]))
        if self.pending:
            self.wake.set()

    @contextlib.contextmanager
    def key_lock(self, digest: str) -> Iterator[None]:
        """Serialises the remote and local halves of puts, read-throughs and refreshes
        of one key, among the threads of this handle (a striped lock) and the handles
        of every process of the store (an OFD lock on a byte of ``LOCK``, FORMAT.md,
        "The remote tier"): so the local store's order of a key's values is the
        remote's, and its ``REMOTE`` line is the last one written for it."""
        with self._locks[int(digest[:4], 16) % _LOCKS], self._using_range_fd():
            self._lock_range(digest)
            try:
                yield
            finally:
                self._unlock_range(digest)

    def _lock_range(self, digest: str) -> None:
        _fsio.lock_range(self._range_fd, F.REMOTE_LOCK_BASE + int(digest[:15], 16))

    def _unlock_range(self, digest: str) -> None:
        _fsio.unlock_range(self._range_fd, F.REMOTE_LOCK_BASE + int(digest[:15], 16))

    # --- versions -------------------------------------------------------------------

    def _create(self, digest: str, record: RemoteRecord) -> int:
        """Create the key's next version with ``record``; return its number.

        :raises RemoteError: unreachable, or beaten ``CREATE_TRIES`` times running."""
        hint = self.hints.get(digest)
        guess: int | None
        if hint is not None and time.monotonic() - hint[1] < HINT_SECONDS:
            guess = hint[0] + 1
        elif hint is None and digest not in self.ledger.versions:
            guess = 1  # a key never seen here: version 1 exists if any does
        else:
            guess = None
        for _ in range(CREATE_TRIES):
            if guess is None:
                versions = self.remote.versions(digest)
                guess = versions[-1] + 1 if versions else 1
            if self.remote.create(digest, guess, record):
                self.hints[digest] = (guess, time.monotonic())
                return guess
            guess = None
        raise RemoteError(
            self.remote.url,
            f"{CREATE_TRIES} other puts of one key took each version this put tried; "
            "nothing changed",
        )

    def newest(self, digest: str) -> tuple[int, RemoteRecord | None]:
        """The key's newest version and its record ((0, None): none on the remote)."""
        versions = self.remote.versions(digest)
        while versions:
            record = self.remote.record(digest, versions[-1])
            if record is not None:
                self.hints[digest] = (versions[-1], time.monotonic())
                return versions[-1], record
            versions = self.remote.versions(digest)  # collected meanwhile: a newer is there
        self.hints[digest] = (0, time.monotonic())
        return 0, None

    # --- write-through ----------------------------------------------------------------

    @contextlib.contextmanager
    def putting(self, tag: bytes, raw: bytes, codec: int, expires: int) -> Iterator[Gate]:
        """Around a put's local write: the gate the write path calls before its local
        commit, then the put noted (write-through) or queued (write-back). Under the
        key's lock from the gate's last step before the commit (after a stream's
        chunks are read: they may use the cache) to that note: a read-through and a
        refresh of the key hold it from their look at the local store to their local
        write, else they could write an older remote value over this put's."""
        key = N.decode_key(tag, raw)
        gate = Gate(self, key, tag, raw, codec, expires)
        try:
            yield gate
            gate.hold()  # (taken by the write path already)
            if self.through:
                self.landed(key, gate.digest, gate.version)
            else:
                self.queue(key)
        finally:
            gate.release()

    def landed(self, key: N.Key, digest: str, version: int) -> None:
        """The local commit of remote ``version`` returned: note it."""
        self.ledger.note(digest, version, self.local.seq(key) or 0)

    def delete_through(self, key: N.Key, tag: bytes, raw: bytes, digest: str) -> tuple[bool, int]:
        """Write-through delete's remote half: a tombstone over a live newest version.
        Returns (whether the remote had the key, the tombstone's version or 0)."""
        version, record = self.newest(digest)
        if record is None or record.deleted:
            return False, 0
        tombstone = RemoteRecord(tag, raw, new_put_id(), deleted=True)
        self.hints[digest] = (version, time.monotonic())
        return True, self._create(digest, tombstone)

    # --- write-back -----------------------------------------------------------------

    def queue(self, key: N.Key) -> None:
        with self.pending_lock:
            self._enqueue(key)
        self.wake.set()

    def _enqueue(self, key: N.Key) -> None:
        """REQUIRES: ``pending_lock``."""
        self.found_at_open.discard(key)  # put again here: this put is the newest
        self.pending.pop(key, None)  # queued before: a newer put's place is at the end
        self._tickets += 1
        self.pending[key] = self._tickets

    def queue_delete(self, key: N.Key, tag: bytes, raw: bytes, digest: str) -> None:
        """Before a write-back delete: durably noted, so a crash cannot lose it, and
        no read-through brings the value back before its tombstone is up."""
        self.ledger.note_delete(digest, tag, raw, sync=self.sync_deletes)

    @contextlib.contextmanager
    def batch(self, ops: Sequence[Any]) -> Iterator[Callable[[], None]]:
        """Around a batch's local commit (``_batch.Batch``): before it, its deletes
        noted (as ``queue_delete``) and its keys' locks taken (as a put's, so no
        read-through or refresh writes an older remote value over the batch's);
        after it, its keys queued. Yields what the batch calls last: with
        write-through, the upload of its keys before it returns (not under the
        keys' locks: a drain takes them after its own). A batch is one commit
        locally; the remote takes it key by key (a remote has no multi-key commit)."""
        deletes = [op for op in ops if op.value is None]
        for i, op in enumerate(deletes):
            digest = N.key_hash(op.tag, op.raw)
            last = i == len(deletes) - 1
            self.ledger.note_delete(digest, op.tag, op.raw, sync=self.sync_deletes and last)
        keys = list(dict.fromkeys(op.key for op in ops))
        digests = sorted({N.key_hash(*N.encode_key(key)) for key in keys})
        stripes = sorted({int(digest[:4], 16) % _LOCKS for digest in digests})
        with contextlib.ExitStack() as held:
            for number in stripes:  # in order: two batches never wait for each other
                held.enter_context(self._locks[number])
            held.enter_context(self._using_range_fd())
            for digest in digests:  # in order too, in every process
                self._lock_range(digest)
                held.callback(self._unlock_range, digest)
            yield self._after_batch
            for key in keys:
                self.queue(key)

    def _after_batch(self) -> None:
        if self.through:
            try:
                self.flush()
            except RemoteError as exc:
                raise RemoteError(
                    self.remote.url,
                    f"the batch is stored locally and queued for the remote, which "
                    f"failed: {exc.why}",
                ) from exc

    def flush(self) -> None:
        """Upload everything queued so far, here and now.

        :raises RemoteError: the remote failed; what is left stays queued."""
        with self.drain_lock:
            self._drain()

    def _drain(self) -> None:
        """REQUIRES: ``drain_lock``."""
        while True:
            with self.pending_lock:
                if not self.pending:
                    return
                key, ticket = next(iter(self.pending.items()))
            self.upload(key)
            with self.pending_lock:
                if self.pending.get(key) == ticket:  # (else queued again meanwhile: kept)
                    del self.pending[key]

    def upload(self, key: N.Key) -> None:
        """Bring the remote up to the local store for ``key``: its value, or a
        tombstone for a delete to upload; nothing if ``REMOTE`` shows it there."""
        tag, raw = N.encode_key(key)
        digest = N.key_hash(tag, raw)
        with self.key_lock(digest):
            self.ledger.read()
            stored = self.local.values().stored(key)
            seq = self.local.seq(key)
            if stored is None or seq is None:
                if digest in self.ledger.deletes:
                    _, version = self.delete_through(key, tag, raw, digest)
                    self.ledger.note(digest, version, 0)
                return  # else gone meanwhile (expired, or deleted through): nothing to do
            known = self.ledger.versions.get(digest)
            if known is not None and known.seq == seq:
                return
            codec = stored.codec if isinstance(stored, Mapped) else CODEC_OF.get(type(stored), 0)
            expires = self.local.expiry(key)
            with contextlib.ExitStack() as held:
                try:
                    parts, path = held.enter_context(_body_of(stored))
                except FileNotFoundError:
                    return  # its file collected: a newer put superseded it, queued itself
                length = sum(memoryview(p).nbytes for p in parts)
                content = value_digest(parts)
                if key in self.found_at_open and self._settled_at_open(
                    key, digest, seq, (content, length, codec, expires)
                ):
                    return
                record = _record(tag, raw, codec, expires, content, length, parts)
                if record.blob is not None:
                    self.remote.upload(record.blob, path if path is not None else parts)
                version = self._create(digest, record)
            self.ledger.note(digest, version, seq)
            self.found_at_open.discard(key)

    def _settled_at_open(
        self, key: N.Key, digest: str, seq: int, value: tuple[str, int, int, int]
    ) -> bool:
        """For a key found at open with a value ``REMOTE`` does not name: whether the
        remote settles it without an upload. It does if one of the key's newest
        ``SETTLE_LOOKBACK`` records holds that very value (uploaded before a crash
        lost its line): then it is noted, and a newer version than it, if any, is
        brought in (another machine's later put wins). With write-through it does
        too if the remote has any other version: that one is brought in (a value put
        before the remote was attached does not overwrite it). ``value``: (xxh3,
        length, codec, expiry). REQUIRES: the key's lock.

        Only a version above the one ``REMOTE`` last names for the key can be this
        value's upload: every version noted was there before the value went up
        (an upload takes one above all), and any noted after it would be of a
        later value. A version at or below it holding the same value is an
        earlier put of the same bytes (x, y, then x again, killed before its
        upload): taking it for this one would bring y back over the newest put."""
        versions = self.remote.versions(digest)
        if not versions:
            return False
        self.hints[digest] = (versions[-1], time.monotonic())
        known = self.ledger.versions.get(digest)
        floor = 0 if known is None else known.version
        newest: tuple[int, RemoteRecord] | None = None
        mine = 0  # the version holding this value, if found
        for version in reversed(versions[-SETTLE_LOOKBACK:]):
            record = self.remote.record(digest, version)
            if record is None:
                continue  # collected meanwhile
            if newest is None:
                newest = (version, record)
            if version <= floor:
                break  # neither it nor any below is this value's (see above)
            if not record.deleted and (
                (record.digest, record.length, record.codec, record.expires) == value
            ):
                mine = version
                break
        if mine:
            assert newest is not None
            self.ledger.note(digest, mine, seq)
            if newest[0] != mine:
                self._bring(key, digest, *newest)
        elif newest is None or not self.through:
            return False  # a write-back put a crash left: it goes up, ordered at its upload
        else:
            self._bring(key, digest, *newest)
        self.found_at_open.discard(key)
        return True

    def _upload_loop(self) -> None:
        backoff = 0.0
        while not self.stop.is_set():
            self.wake.wait(backoff or None)
            self.wake.clear()
            if self.stop.is_set():
                return
            try:
                with self.drain_lock:
                    self._drain()
                backoff, self.last_error = 0.0, None
            except Exception as exc:  # logged and tried again: the thread must not die
                self.last_error = str(exc)
                backoff = min(max(2 * backoff, BACKOFF_SECONDS[0]), BACKOFF_SECONDS[1])
                log.warning(
                    "blobcache: upload to %s failed, trying again: %s", self.remote.url, exc
                )
                self.wake.set()  # (waits ``backoff`` first: the set is cleared on wake)
                self.stop.wait(backoff)

    def pending_bytes(self) -> tuple[int, int]:
        """(keys, bytes) put here and not yet on the remote: a machine loss's cost now."""
        with self.pending_lock:
            keys = list(self.pending)
        values = self.local.values()
        total = 0
        for key in keys:
            stored = values.stored(key)
            if stored is not None:
                total += stored.record.length if isinstance(stored, Mapped) else len(stored)
        return len(keys), total

    # --- read-through and refresh -----------------------------------------------------

    def fetch(self, key: N.Key) -> bool:
        """Read ``key`` through from the remote into the local store (a local miss);
        True if it is stored now. Nothing for a delete not yet uploaded.

        :raises RemoteError: unreachable. :raises CorruptionError: the value fails
            its length or xxh3 (nothing stored)."""
        tag, raw = N.encode_key(key)
        digest = N.key_hash(tag, raw)
        with self.key_lock(digest):
            # REMOTE read first: another handle's write-back delete, not yet
            # uploaded, is there (and its local delete is what made this miss).
            self.ledger.read()
            if digest in self.ledger.deletes:
                return False
            if self.local.values().stored(key) is not None:
                return True  # another thread's fetch (or put) came first
            version, record = self.newest(digest)
            if record is None:
                return False
            return self._bring(key, digest, version, record)

    def _bring(self, key: N.Key, digest: str, version: int, record: RemoteRecord) -> bool:
        """Make the local store hold remote ``version`` (a delete for a tombstone or an
        expired value). REQUIRES: the key's lock."""
        if record.deleted or (record.expires and record.expires <= now_ms()):
            if self.local.values().stored(key) is not None:
                self.local.delete(key)
            self.ledger.note(digest, version, 0)
            return False
        if record.blob is None:
            self.local.put_value(key, (record.inline,), record.length, record.codec, record.expires)
        else:
            chunks = _checked(self.remote.download(record.blob, 4 << 20), record, self.remote.url)
            self.local.put_chunks(key, chunks, record.codec, record.expires)
        self.ledger.note(digest, version, self.local.seq(key) or 0)
        return True

    def refresh_key(self, key: N.Key) -> None:
        """Bring in the key's newest remote version if it is newer than the local one."""
        tag, raw = N.encode_key(key)
        digest = N.key_hash(tag, raw)
        with self.key_lock(digest):
            if key in self.pending or self.local.values().stored(key) is None:
                return
            self.ledger.read()
            known = self.ledger.versions.get(digest)
            version, record = self.newest(digest)
            if record is not None and (known is None or version > known.version):
                self._bring(key, digest, version, record)

    def refresh(self) -> int:
        """Bring in every newer remote version of a key this store holds; how many."""
        self.ledger.read()
        listing = self.remote.all_versions()
        now = time.monotonic()
        brought = 0
        for digest, versions in listing.items():
            newest = versions[-1][0]
            self.hints[digest] = (newest, now)
            known = self.ledger.versions.get(digest)
            if known is None or known.version >= newest:
                continue  # not held here, or up to date
            with self.key_lock(digest):
                # Again under the lock: a put of this handle that held it may
                # have made a version above the listing's newest meanwhile.
                self.ledger.read()
                known = self.ledger.versions.get(digest)
                if known is None or known.version >= newest:
                    continue
                record = self.remote.record(digest, newest)
                if record is None:
                    continue
                key = N.decode_key(record.tag, record.raw)
                if key in self.pending or self.local.values().stored(key) is None:
                    continue
                self._bring(key, digest, newest, record)
                brought += 1
        return brought

    def _refresh_loop(self) -> None:
        while not self.stop.wait(self.refresh_seconds):
            try:
                self.refresh()
            except (OSError, BlobCacheError) as exc:
                self.last_error = str(exc)
                log.warning("blobcache: refresh from %s failed: %s", self.remote.url, exc)


class Gate:
    """One put's remote half, run by the local write path before it publishes:
    ``inline`` for a value going to the log, ``early`` then ``around`` for a value
    going to a file (its upload beside the local write). Each takes the key's lock
    (``Tier.key_lock``) at its last step before the commit, not before: a stream's
    chunks and a file object's reads, the caller's code, run outside it (they may
    use the cache, keys of the same stripe included); ``release`` lets go of it
    after the commit's note. With write-through it also makes the remote record
    (``version`` is set then); an exception leaves the local store as it was. With
    write-back it only takes the lock."""

    def __init__(self, tier: Tier, key: N.Key, tag: bytes, raw: bytes, codec: int, expires: int):
        self.tier = tier
        self.key = key
        self.tag = tag
        self.raw = raw
        self.digest = N.key_hash(tag, raw)
        self.codec = codec
        self.expires = expires
        self.version = 0
        self._upload: _Upload | None = None
        self._held = contextlib.ExitStack()
        self.holding = False

    def hold(self) -> None:
        """Take the key's lock, if not yet taken."""
        if not self.holding:
            self._held.enter_context(self.tier.key_lock(self.digest))
            self.holding = True

    def release(self) -> None:
        self.holding = False
        self._held.close()

    def inline(self, value: bytes) -> None:
        self.hold()
        if not self.tier.through:
            return
        record = _record(
            self.tag, self.raw, self.codec, self.expires, value_digest([value]), len(value), [value]
        )
        self.version = self.tier._create(self.digest, record)

    def early(self, parts: Sequence[bytes | memoryview], length: int) -> None:
        """Start uploading a value held in memory now, beside the local write."""
        if self.tier.through:
            self._upload = _Upload(self.tier.remote, parts, length)

    def around(
        self, write: Callable[[str, bool], contextlib.AbstractContextManager[TempVersion]]
    ) -> Callable[[str, bool], contextlib.AbstractContextManager[TempVersion]]:
        """``write`` (the local temp file's), then the upload and the record, before
        the temp file is published."""

        @contextlib.contextmanager
        def gated(keydir: str, sync: bool) -> Iterator[TempVersion]:
            with write(keydir, sync) as temp:
                if not self.tier.through:
                    self.hold()
                    yield temp
                    return
                upload = self._upload
                if upload is None:  # a stream's: its bytes are in the temp file only
                    upload = _Upload(self.tier.remote, Path(temp.path), temp.length)
                name, content = upload.wait()
                record = RemoteRecord(
                    self.tag,
                    self.raw,
                    new_put_id(),
                    codec=self.codec,
                    expires=self.expires,
                    length=temp.length,
                    digest=content,
                    blob=name,
                )
                if upload.length != temp.length:
                    raise BlobCacheError("the value changed length while it was put")
                self.hold()
                self.version = self.tier._create(self.digest, record)
                yield temp

        return gated


class _Upload:
    """A blob's upload in a thread of its own (hash, then upload)."""

    def __init__(self, remote: Remote, body: Sequence[bytes | memoryview] | Path, length: int):
        self.remote = remote
        self.body = body
        self.length = length
        self.result: tuple[str, str] | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="blobcache-upload", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            if isinstance(self.body, Path):
                with open(self.body, "rb") as f, _mapped(f.fileno(), self.length) as view:
                    content = value_digest([view])
            else:
                content = value_digest(self.body)
            name = blob_name(content, self.length)
            self.remote.upload(name, self.body)
            self.result = (name, content)
        except BaseException as exc:  # handed to the put's thread by wait()
            self.error = exc

    def wait(self) -> tuple[str, str]:
        self.thread.join()
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def _record(
    tag: bytes,
    raw: bytes,
    codec: int,
    expires: int,
    content: str,
    length: int,
    parts: Sequence[bytes | memoryview],
) -> RemoteRecord:
    """The record of a value: inline below ``INLINE_REMOTE``, else naming its blob."""
    small = length < INLINE_REMOTE
    return RemoteRecord(
        tag,
        raw,
        new_put_id(),
        codec=codec,
        expires=expires,
        length=length,
        digest=content,
        blob=None if small else blob_name(content, length),
        inline=b"".join(bytes(p) for p in parts) if small else b"",
    )


# Values shorter than this go into their record; longer ones are blobs. One request
# instead of two for a small put; a record is read whole, so not larger.
INLINE_REMOTE = 256 << 10


@contextlib.contextmanager
def _body_of(stored: bytes | Mapped) -> Iterator[tuple[Sequence[bytes | memoryview], Path | None]]:
    """A local value's bytes as parts (a mapping of its file), and its file if any."""
    if not isinstance(stored, Mapped):
        yield (stored,), None
        return
    path = stored.record.path
    with open(path, "rb") as f, _mapped(f.fileno(), stored.record.length) as view:
        yield (view,), Path(path)


@contextlib.contextmanager
def _mapped(fd: int, length: int) -> Iterator[memoryview]:
    if length == 0:
        yield memoryview(b"")
        return
    with mmap.mmap(fd, length, access=mmap.ACCESS_READ) as m:
        view = memoryview(m)
        try:
            yield view
        finally:
            view.release()


def _checked(chunks: Iterator[memoryview], record: RemoteRecord, url: str) -> Iterator[memoryview]:
    """``chunks`` as they come, then a check of their length and xxh3-128 against the
    record, raising before the local write publishes them."""
    h = xxhash.xxh3_128()
    length = 0
    for chunk in chunks:
        h.update(chunk)
        length += chunk.nbytes
        if length > record.length:
            break
        yield chunk
    if length != record.length or h.hexdigest() != record.digest:
        raise CorruptionError(
            f"{url}/{record.blob}",
            f"downloaded {length} bytes of xxh3 {h.hexdigest()}, the record says "
            f"{record.length} of {record.digest}; nothing was stored",
            0,
        )


def check_mode(mode: object) -> RemoteMode:
    if mode not in REMOTE_MODES:
        raise ValueError(f"remote_mode must be one of {REMOTE_MODES}, not {mode!r}")
    return mode


def describe(tier: Tier | None) -> dict[str, Any]:
    if tier is None:
        return {}
    keys, size = tier.pending_bytes()
    return {
        "remote": tier.remote.url,
        "remote_mode": tier.mode,
        "remote_pending": keys,
        "remote_pending_bytes": size,
        "remote_error": tier.last_error,
    }
