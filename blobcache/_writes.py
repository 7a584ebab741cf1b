"""The write path: the store-wide sequence, the stripe locks, routing by size, publishing.

A put of a value shorter than ``inline_limit`` is one record appended to the
log (group commit: ``_logwriter.LogWriter``); a larger one is a version file in its
key's directory (``_blob``). Either way the record takes the next sequence
number and is published in the index (``_index.Index``) under its key's
stripe lock, so the records of one key are published in the order of their
numbers and the index and the disk agree on the winner.

Locking, from outermost to innermost: a stripe lock per key (1024 by key
hash), then ``tree_lock`` (making or removing fan-out directories), then the
index's ``lock``. A large value is written and fsynced before its put takes the
stripe lock (see ``put_version``): no lock is held while the caller's code runs
(a stream's chunks, a file object's reads), nor across a large value's write.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from typing import TYPE_CHECKING, BinaryIO, NamedTuple

from . import _blob, _fsio, _keydir, _log
from . import _format as F
from . import _names as N
from ._buffers import read_chunks
from ._cap import Behind, Cap
from ._follow import Change, Follower, PinChange
from ._held import Held
from ._index import Index, Mapped, length
from ._keydir import Record
from ._logwriter import LogWriter
from ._options import Options
from ._problems import Problem

if TYPE_CHECKING:
    from ._tier import Gate
from .errors import (
    BlobCacheError,
    CacheFullError,
    ClosedError,
    CorruptionError,
    ReadOnlyError,
)

log = logging.getLogger("blobcache")

_RECORD_HEAD = F.RECORD_HEADER.size

# Puts of one key are serialised by its stripe lock, held through a small
# value's durable append (and a large one's rename and directory fsync): 1024
# stripes make two of 8 busy threads share one (and so wait out a whole
# fdatasync for each other) about 3% of the time, against 37% with 64.
STRIPES = 1024

# A key's stripe lock, to take with `with` (a StripeGuard), or a nullcontext
# where the caller holds it already.
Stripe = contextlib.AbstractContextManager[None]
# What put_file reads: a path, or a binary file object from where it stands.
Source = str | bytes | os.PathLike[str] | os.PathLike[bytes] | BinaryIO


class Writes:
    """Puts and deletes of one handle, from the sequence number to the index.

    Invariant: every number handed out is above every number on disk.
    Invariant: a directory in ``key_dirs`` has its key file.
    """

    def __init__(
        self,
        path: str,
        options: Options,
        held: Held,
        index: Index,
        recovered_max_seq: int,
        key_dirs: set[str],
    ) -> None:
        self.path = path
        self.blobs = os.path.join(path, F.BLOBS_DIR)
        self.options = options
        self.held = held
        self.index = index
        self.key_dirs = key_dirs  # directories whose key file is there
        self.stripes = [threading.Lock() for _ in range(STRIPES)]
        self.tree_lock = threading.Lock()
        self.closed = False  # set by close() with every stripe held
        self.warnings: list[Problem] = []  # to log once no lock is held: warn_unlocked
        self.follower: Follower  # set by the handle, which makes it after this
        self.cap: Cap | None = None  # set by the handle with max_bytes (a writer's)
        self.recovered_next = recovered_max_seq + 1
        writer = held.writer
        self.active_seen = writer.number if writer is not None else 0

    @property
    def log(self) -> LogWriter:
        if self.held.writer is None:
            raise ReadOnlyError(self.path)
        return self.held.writer

    def next_seq(self) -> int:
        """The sequence number the next put of any process takes."""
        state = self.held.state
        return state.next_seq if state is not None else self.recovered_next

    # --- locks -------------------------------------------------------------------

    def writing(self, digest: str) -> StripeGuard:
        """The stripe lock of the key hashing to ``digest``, once this handle may write."""
        self.check_writer()
        return StripeGuard(self, self.stripes[int(digest[:3], 16) % STRIPES])

    def check_writer(self) -> None:
        """Refuse to change the store through a readonly handle. (A handle
        inherited across fork opens the store anew first: ``BlobCache._here``.)"""
        if self.held.writer is None:
            raise ReadOnlyError(self.path)

    @contextlib.contextmanager
    def all_stripes(self) -> Iterator[None]:
        """Hold every stripe lock: no put or delete is under way meanwhile."""
        for lock in self.stripes:
            lock.acquire()
        try:
            yield
        finally:
            for lock in self.stripes:
                lock.release()

    def warn_unlocked(self, note: Problem) -> None:
        """Log ``note`` once the stripe lock is released (``StripeGuard`` does):
        logging handlers are the caller's code, and may be slow or use this
        cache, even keys of the same stripe. REQUIRES: a ``StripeGuard`` held."""
        self.warnings.append(note)

    def log_warnings(self) -> None:
        while self.warnings:
            try:
                note = self.warnings.pop(0)
            except IndexError:  # logged by another thread meanwhile
                return
            log.warning("blobcache: %s", note)

    # --- appending -----------------------------------------------------------------

    # A put or delete applies its own record to the index once acknowledged
    # (``LogWriter.claim``), without reading what other processes appended
    # before it: the follower does that later, passing over records older than
    # the index's (``Index.publish``, ``Index.gone``). If the follower got to
    # the record first (a catch-up of the refresh thread, compaction or the
    # expiry sweep), it applies it, and the put returns once it has.

    def _stale(self, old_segment: int | None) -> bool:
        """Whether a publish that superseded a record of ``old_segment`` made a
        sealed segment staler (or the log rolled): compaction may be due."""
        active = self.log.number
        rolled, self.active_seen = active != self.active_seen, active
        return rolled or (old_segment is not None and old_segment != active)

    def put_inline(
        self,
        key: N.Key,
        tag: bytes,
        raw: bytes,
        value: bytes,
        expires: int = 0,
        pin: bool = False,
        codec: int = F.CODEC_RAW,
    ) -> bool:
        """REQUIRES: the key's stripe lock. Returns whether a sealed segment got staler."""
        return self._append([Op(key, tag, raw, value, expires, pin, codec)])

    def delete(self, key: N.Key, tag: bytes, raw: bytes) -> bool:
        """REQUIRES: the key's stripe lock. Returns whether a sealed segment got staler."""
        return self._append([Op(key, tag, raw, None)])

    def pin(self, key: N.Key, tag: bytes, raw: bytes, pinned: bool) -> bool:
        """Write a pin record: pin (or unpin) the key's live value.
        REQUIRES: the key's stripe lock. Returns whether a sealed segment got staler."""
        return self._append([Op(key, tag, raw, Pin(pinned))])

    def check_fits(self, length: int) -> None:
        """Refuse a value larger than ``max_bytes``, before anything is written.

        :raises CacheFullError: (a ValueError) it is."""
        cap = self.cap
        if cap is not None and length > cap.max_bytes:
            raise CacheFullError(
                f"a value of {length:,} bytes is larger than max_bytes ({cap.max_bytes:,})"
            )

    def enforce_cap(self) -> bool:
        """Evict what the cap asks for with no put (a store found over its cap at
        open: the cap lowered, a crash mid-eviction, an uncapped writer)."""
        if self.cap is None or self.index.live_bytes <= self.cap.max_bytes:
            return False
        return self._append([])

    def put_blob(
        self,
        key: N.Key,
        tag: bytes,
        raw: bytes,
        stripe: Stripe,
        data: memoryview,
        expires: int = 0,
        pin: bool = False,
        codec: int = F.CODEC_RAW,
    ) -> bool:
        """Write ``data`` as the key's new version; ``stripe`` takes the key's
        stripe lock (a no-op where the caller holds it). Returns whether a
        sealed segment got staler."""
        return self.put_version(
            key,
            tag,
            raw,
            stripe,
            lambda keydir, sync: _blob.write_parts(keydir, (data,), sync=sync),
            expires,
            pin,
            codec,
        )

    def put_version(
        self,
        key: N.Key,
        tag: bytes,
        raw: bytes,
        stripe: Stripe,
        write: Callable[[str, bool], contextlib.AbstractContextManager[_blob.TempVersion]],
        expires: int = 0,
        pin: bool = False,
        codec: int = F.CODEC_RAW,
        gate: Gate | None = None,
    ) -> bool:
        """Publish the version ``write(keydir, sync)`` writes to a temp file
        (with a remote tier's write-through ``gate``, once its remote half is done:
        ``_tier.Gate.around``).

        Invariant: the stripe lock is not held while ``write`` runs, since the
        caller's code runs there (a stream's chunks, a file object's reads) and
        a large value's write and fsync take long: ``gc()``, compaction,
        ``close()`` and puts of keys sharing the stripe go on meanwhile. It is
        taken twice, briefly: to make the key directory and hold it, and to
        take the sequence number, rename the temp file to its final name and
        publish the value -- so two puts of one key are published in the order
        of their numbers, and the index and the disk agree on the winner.
        (``_reads`` calls this with the lock held and ``stripe`` a no-op:
        what it writes is an older version's mapped bytes, no caller code.)
        Returns whether a sealed segment got staler.
        """
        keydir = N.key_dir(self.blobs, N.key_hash(tag, raw))
        sync = self.options.durability == "fsync"
        if gate is not None:
            write = gate.around(write)
        try:
            with (
                self._in_key_dir(key, tag, raw, keydir, stripe),  # takes the stripe lock briefly
                write(keydir, sync) as temp,  # no lock held
                stripe,
            ):
                staged = Staged(keydir, temp, batch=False)
                return self._append([Op(key, tag, raw, staged, expires, pin, codec)])
        except BaseException:
            # The directory may hold nothing but the key file it made: for gc.
            self.index.mark_dirty(keydir)
            raise

    # --- batches -----------------------------------------------------------------

    def stage_version(
        self, tag: bytes, raw: bytes, parts: Sequence[bytes | memoryview], hold: ExitStack
    ) -> Staged:
        """Write a batch's large value to a temp version in its key directory now
        (no lock held: this is the long part), holding the directory (as
        ``_in_key_dir``) and the temp file in ``hold`` until the batch commits or
        is dropped.

        Durably whatever the durability level: with "os" too, the file, its key
        file and its directories are fsynced (and its name, at commit), so that
        after a power cut the batch's records, never fsynced then, are either
        gone whole or find every file they name (FORMAT.md, "Batches").
        """
        key = N.decode_key(tag, raw)
        digest = N.key_hash(tag, raw)
        keydir = N.key_dir(self.blobs, digest)
        hold.enter_context(self._in_key_dir(key, tag, raw, keydir, self.writing(digest)))
        temp = hold.enter_context(_blob.write_parts(keydir, parts, sync=True))
        if self.options.durability != "fsync":
            self.held.owed.make_durable(keydir, temp.path, parents=True)
        return Staged(keydir, temp, batch=True)

    def put_batch(self, ops: list[Op]) -> bool:
        """Commit a batch (``_batch``): its ops in order, with the stripe locks of
        all their keys taken here, in order, and held until the batch is
        applied, so the keys' records are applied in the order of their
        numbers. Returns whether a sealed segment got staler.
        REQUIRES: none of this handle's stripe locks held."""
        stripes = sorted({int(N.key_hash(op[1], op[2])[:3], 16) % STRIPES for op in ops})
        with contextlib.ExitStack() as held:
            for number in stripes:
                held.enter_context(StripeGuard(self, self.stripes[number]))
            return self._append(ops)

    def _append(self, ops: list[Op]) -> bool:
        """Append the records of ``ops`` (see ``Op``), numbered one after the
        other, with one write, acknowledged together (with "fsync", one
        fdatasync); then apply each to the index, in order. More than one: a
        batch, every record but the last with ``FLAG_MORE`` (FORMAT.md,
        "Batches"). With ``max_bytes``, the evict records the cap asks for
        (``_cap``) come first in the same batch. Returns whether a sealed
        segment got staler.

        Crash policy: the staged versions are named under the append flock,
        before the records (durably, with "fsync": their directories fsynced),
        so no process reads a record naming a file a power cut could take away;
        a batch's get b- names, which count only once their records are in the
        log: a crash leaves no whole batch, and every b- file of it garbage, or
        the whole batch with every file it names.
        REQUIRES: the stripe lock of every key of ``ops``.
        """
        named: list[Record] = []
        members: list[tuple[int, Change | PinChange]] = []
        cap = self.cap
        victims: list[N.Key] = []

        def plan() -> int:
            nonlocal victims
            assert cap is not None
            victims = cap.plan(
                [(op.key, _length(op.value)) for op in ops if not _is_pin(op)],
                frozenset(op.key for op in ops if _is_pin(op)),
                # An open's eviction, a pin or unpin: never refused for the cap.
                best_effort=all(_is_pin(op) for op in ops),
            )
            return len(victims) + len(ops)

        def make(first: int) -> tuple[bytes, object]:
            chunks = []
            changes = [(victim, *N.encode_key(victim)) for victim in victims]
            last = first + len(changes) + len(ops) - 1
            seq = first
            for key, tag, raw in changes:
                keydir = N.key_dir(self.blobs, N.key_hash(tag, raw))
                more = F.FLAG_MORE if seq < last else 0
                record = _log.encode_record(seq, F.RECORD_EVICT, tag, raw, b"", more)
                chunks.append(record)
                members.append((len(record), Change(key, None, _has(keydir, self.key_dirs))))
                seq += 1
            pins = self.index.pins
            for key, tag, raw, value, expires, pin, codec in ops:
                flags = (F.FLAG_MORE if seq < last else 0) | (F.FLAG_EXPIRES if expires else 0)
                pinned = pin or (cap.pinned(key) if cap is not None else key in pins)
                if pinned and value is not None and not isinstance(value, Pin):
                    flags |= F.FLAG_PINNED  # a plain put keeps the key's pin
                change: Change | PinChange
                if value is None:
                    keydir = N.key_dir(self.blobs, N.key_hash(tag, raw))
                    record = _log.encode_record(seq, F.RECORD_DELETE, tag, raw, b"", flags)
                    change = Change(key, None, _has(keydir, self.key_dirs))
                elif isinstance(value, Pin):
                    flags |= F.FLAG_PINNED if value.pinned else 0
                    record = _log.encode_record(seq, F.RECORD_PIN, tag, raw, b"", flags)
                    change = PinChange(key, value.pinned)
                elif isinstance(value, Staged):
                    temp = value.temp
                    # Bound to its record (a b- name) in a batch, when only the
                    # record holds its expiry or its codec, or when evictions
                    # come with it: a crash between the rename and the records
                    # must not leave it counting without them.
                    bound = value.batch or bool(expires or codec) or bool(victims)
                    named.append(temp.name(seq, batch=bound))
                    temp.publish(named[-1])  # a failure removes the file: these ops fail alone
                    record = _log.encode_version(
                        seq,
                        tag,
                        raw,
                        temp.length,
                        temp.checksum,
                        flags | (F.FLAG_BOUND if bound else 0),
                        expires,
                        codec,
                    )
                    pinned = bool(flags & F.FLAG_PINNED)
                    change = Change(key, Mapped(named[-1]), None, expires, pinned, codec)
                else:
                    record = _log.encode_record(
                        seq, F.RECORD_PUT, tag, raw, value, flags, expires, codec
                    )
                    pinned = bool(flags & F.FLAG_PINNED)
                    change = Change(key, value, None, expires, pinned, codec)
                chunks.append(record)
                members.append((len(record), change))
                seq += 1
            if cap is not None:
                cap.commit(_framed(first, members))
            data = b"".join(chunks)
            # (None at all: an open's eviction the log's end made needless.)
            return data, (members if len(members) != 1 else members[0][1])

        hint = sum(_RECORD_HEAD + len(op.raw) + _body_size(op.value, op.expires) for op in ops)
        try:
            for attempt in range(3):
                try:
                    first, segment, offset, _size = self.log.append(
                        make, hint, len(ops), plan if cap is not None else None
                    )
                    break
                except Behind:  # (raised by plan: nothing was framed or named)
                    if attempt == 2:
                        raise CacheFullError(
                            "max_bytes: other processes' writes count toward the cap but "
                            "are not yet applied here; try again"
                        ) from None
                    self.follower.catch_up()
        except BaseException:
            for record in named:
                # Named, but the put fails: a v- file must not win at the next
                # open. Not a b- one: its record may stay in the log all the same
                # (another process appended after it: see LogWriter._undo), and
                # without its record a b- file is only garbage for the janitor.
                if not N.is_batch_version(record.path):
                    _fsio.discard(record.path)
            if victims:
                assert cap is not None
                cap.restore(victims)
            raise
        if victims:
            assert cap is not None
            cap.counted(victims)
        stale = False
        for seq, (size, change) in enumerate(members, first):
            stale |= self._apply(seq, segment, offset, size, change)
            offset += size
        return stale

    def _apply(
        self, seq: int, segment: int, offset: int, size: int, change: Change | PinChange
    ) -> bool:
        """Apply this process's acknowledged record ``seq`` (``size`` bytes at
        ``offset`` of ``segment``) to the index, unless the follower did: it is
        this writer's when the follower stands right at it (all there is with
        one process: ``passed_own``), or will step over it (``claim``). Until it
        is applied, the cap reads the log from it (``Follower.hold_floor``).
        Returns whether a sealed segment got staler.
        REQUIRES: the key's stripe lock."""
        value = change.value
        if isinstance(value, Mapped) and self.options.durability != "fsync":
            self.held.owed.owe_file(value.record.path, os.path.dirname(value.record.path))
        follower = self.follower
        if self.cap is None:  # (only the cap reads the floor: no bookkeeping without it)
            return self._apply_mine(seq, segment, offset, size, change)
        follower.hold_floor(segment, offset)  # before the follower may pass it
        try:
            return self._apply_mine(seq, segment, offset, size, change)
        finally:
            follower.applied(segment, offset)

    def _apply_mine(
        self, seq: int, segment: int, offset: int, size: int, change: Change | PinChange
    ) -> bool:
        """``_apply``'s choice of who applies the record, and the applying."""
        follower = self.follower
        if not follower.passed_own(segment, offset, size) and not self.log.claim(
            segment, offset, gone=change.key if change.value is None else None
        ):
            # The follower took it: not yet applied, maybe (taken out of ``own``,
            # not yet published). Returning now let a get right after the put
            # serve the key's older value (the model test found a typed value
            # put as a file back in the log: the older record).
            follower.settle()
            return False
        return self._stale(change.apply(self.index, seq, segment, offset, size, ahead=True))

    def put_chunks(
        self,
        tag: bytes,
        raw: bytes,
        stripe: StripeGuard,
        chunks: Iterable[memoryview],
        expires: int = 0,
        pin: bool = False,
        gate: Gate | None = None,
        codec: int = F.CODEC_RAW,
    ) -> bool:
        """Store the concatenation of ``chunks`` (of ``codec``); returns whether a
        sealed segment got staler. A value that ends below inline_limit goes to
        the log, as put's would: it is read that far first (at most inline_limit
        plus one chunk in memory)."""
        head = bytearray()
        rest = iter(chunks)
        limit = self.options.inline_limit
        key = N.decode_key(tag, raw)
        for chunk in rest:
            head += chunk
            if len(head) >= limit:
                break
        else:
            inline = bytes(head)
            if gate is not None:
                gate.inline(inline)
            with stripe:
                return self.put_inline(key, tag, raw, inline, expires, pin, codec)
        first = bytes(head)
        return self.put_version(
            key,
            tag,
            raw,
            stripe,
            lambda keydir, sync: _blob.write_version_from(keydir, first, rest, sync=sync),
            expires,
            pin,
            codec,
            gate,
        )

    def put_file(
        self,
        tag: bytes,
        raw: bytes,
        stripe: StripeGuard,
        src: Source,
        chunk: int,
        expires: int = 0,
        pin: bool = False,
        gate: Gate | None = None,
    ) -> bool:
        """``BlobCache.put_file``: a regular file of ``inline_limit`` bytes or more
        is copied by the kernel (and the copy hashed as stored); anything else is
        read ``chunk`` bytes at a time. Returns whether a sealed segment got staler."""
        if not isinstance(src, (str, bytes, os.PathLike)):
            return self.put_chunks(tag, raw, stripe, read_chunks(src, chunk), expires, pin, gate)
        with open(os.fsdecode(src), "rb", buffering=0) as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_size < self.options.inline_limit:
                return self.put_chunks(tag, raw, stripe, read_chunks(f, chunk), expires, pin, gate)
            fd, size = f.fileno(), st.st_size
            return self.put_version(
                N.decode_key(tag, raw),
                tag,
                raw,
                stripe,
                lambda keydir, sync: _blob.write_version_copy(keydir, fd, size, sync=sync),
                expires,
                pin,
                gate=gate,
            )

    # --- key directories ---------------------------------------------------------------

    @contextlib.contextmanager
    def _in_key_dir(
        self, key: N.Key, tag: bytes, raw: bytes, keydir: str, stripe: Stripe
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
                self.key_dirs.discard(keydir)  # removed meanwhile: make it again
            else:
                raise BlobCacheError(f"{keydir} was removed three times while a put went in")
        assert held is not None
        try:
            yield
        finally:
            _fsio.unlock(held)

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
        sync = self.options.durability == "fsync"
        made = keydir in self.key_dirs
        if not made:
            with self.tree_lock:
                _fsio.makedirs(self.blobs, keydir, sync=sync)
            if not sync:
                # Every directory on the way, not only those just made: one left
                # unsynced by a killed process must not stay so after our sync().
                self.held.owed.owe_dirs(keydir)
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
                self.held.owed.owe_file(key_file, keydir)
        else:
            if found != key:
                raise CorruptionError(
                    os.path.join(keydir, F.KEY_FILE_NAME),
                    f"holds the key {found!r}, which hashes like {key!r}: an xxh3-128 "
                    "collision or a tampered store; move this directory away",
                )
        self.key_dirs.add(keydir)


class Staged(NamedTuple):
    """A large value, written to a temp version of its key directory."""

    keydir: str
    temp: _blob.TempVersion
    batch: bool  # one of a batch's: named b- (FORMAT.md, "Batches")


class Pin(NamedTuple):
    """A pin record's op: pin or unpin the key's live value."""

    pinned: bool


class Op(NamedTuple):
    """One put, delete or pin: the key, its tag and bytes, the value (bytes for the
    log, a staged version, None for a delete, a ``Pin``), its expiry (ms since
    the epoch, 0: never), whether the put pins it (``put(..., pin=True)``), and
    what its bytes encode (``codec``: FORMAT.md, "Typed values")."""

    key: N.Key
    tag: bytes
    raw: bytes
    value: bytes | Staged | Pin | None
    expires: int = 0
    pin: bool = False
    codec: int = F.CODEC_RAW


def _is_pin(op: Op) -> bool:
    return isinstance(op.value, Pin)


def _length(value: bytes | Staged | Pin | None) -> int | None:
    """The length of the value an op leaves live (None: a delete)."""
    if value is None:
        return None
    return value.temp.length if isinstance(value, Staged) else len(value)


def _has(keydir: str, key_dirs: set[str]) -> str | None:
    return keydir if keydir in key_dirs else None


def _framed(
    first: int, members: list[tuple[int, Change | PinChange]]
) -> Iterator[tuple[int, N.Key, int | None, bool | None]]:
    """(seq, key, the length it leaves, its pin bit or None) of framed records."""
    for seq, (_size, change) in enumerate(members, first):
        if isinstance(change, PinChange):
            yield seq, change.key, None, change.pinned
        elif change.value is None:
            yield seq, change.key, None, None
        else:
            yield seq, change.key, length(change.value), change.pinned


def _body_size(value: bytes | Staged | Pin | None, expires: int) -> int:
    """A record's bytes after its key (about: for cutting group commits)."""
    extra = F.EXPIRES.size if expires else 0
    if value is None or isinstance(value, Pin):
        return extra
    return extra + (F.VERSION_BODY.size if isinstance(value, Staged) else len(value))


class StripeGuard:
    """Holds a stripe lock and checks, once inside, that the cache is still open."""

    __slots__ = ("_lock", "_writes")

    def __init__(self, writes: Writes, lock: threading.Lock) -> None:
        self._writes = writes
        self._lock = lock

    def __enter__(self) -> None:
        self._lock.acquire()
        if self._writes.closed:
            self._lock.release()
            raise ClosedError(self._writes.path)

    def __exit__(self, *exc: object) -> None:
        self._lock.release()
        if self._writes.warnings:
            self._writes.log_warnings()
