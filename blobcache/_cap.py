"""``max_bytes``: the store's live bytes, exactly, under the append flock, and the
victims SIEVE picks to keep a put under the cap (FORMAT.md, "Pins and evictions").

A capped put decides under the append flock, where the log's end is fixed: its
total is what the index holds (``Index.live_bytes``) plus what the log holds
past what the index applied. That part is read from the file (``_pending``):
every record from the follower's ``floor`` (where it stood at its last step,
never past where it stands) to ``appended``, other processes' and this one's,
each compared with the index by number, so one applied already counts once.
Records past ``acked`` are in flight (another process's fdatasync): they may
still fail, so a put of theirs counts at the larger of its old and new size, a
delete of theirs as nothing freed. What one write's earlier requests framed
(group commit) is added to that view as they are framed (``commit``).

Reading from a floor that lags only reads records applied already: for a key
deleted since, its old put counts again, which errs on the side of the cap
(an extra eviction), never past it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

from . import _clock, _filekinds, _log
from . import _format as F
from . import _names as N
from ._follow import Follower
from ._index import Index, seq_of
from ._logwriter import LogWriter
from ._sieve import Sieve
from .errors import CacheFullError

log = logging.getLogger("blobcache")

# key -> (seq, the length of the value it leaves live (None: none), in flight)
View = dict[N.Key, tuple[int, int | None, bool]]


class Behind(Exception):
    """``Cap.plan`` found too little to evict among the keys this index holds,
    while keys it has yet to apply count toward the cap (``Writes._append``
    catches up, and plans again)."""


class Cap:
    """The cap of one handle: its view of the log's unapplied end, and its counts."""

    def __init__(
        self, max_bytes: int, index: Index, writer: LogWriter, follower: Follower, logdir: str
    ) -> None:
        self.max_bytes = max_bytes
        self.index = index
        self.writer = writer
        self.follower = follower
        self.logdir = logdir
        self.sieve = Sieve()
        index.track(self.sieve)
        self._epoch = -1  # the write (LogWriter.writes_begun) the view is of
        self._view: View = {}
        self._pins: dict[N.Key, tuple[int, bool]] = {}  # pending pin bits: key -> (seq, pinned)
        # Counted by the writer once its records are acknowledged (stats()).
        self.evicted = 0  # keys this handle evicted
        self.evicting = 0  # puts, deletes and batches of this handle that had to evict

    def _current(self, key: N.Key) -> int:
        """The length of the key's value once the log's end is applied.
        REQUIRES: the index's lock."""
        pending = self._view.get(key)
        if pending is not None:
            meta = self.index.meta.get(key)
            if meta is None or pending[0] > seq_of(meta):
                size = pending[1] or 0
                return max(size, self.index.size(key)) if pending[2] else size
        return self.index.size(key)

    def pinned(self, key: N.Key) -> bool:
        """Whether the key is pinned, as far as the log's end says.
        REQUIRES: the append flock and a current view (``plan``); the index's
        lock, or a writer of the key (its stripe lock: its pin and number are
        then changed by no one else but the follower, whose dict writes each
        land whole)."""
        pending = self._pins.get(key)
        if pending is not None:
            meta = self.index.meta.get(key)
            if meta is None or pending[0] >= seq_of(meta):
                return pending[1]
        return key in self.index.pins

    def plan(
        self,
        effects: list[tuple[N.Key, int | None]],
        keep: frozenset[N.Key] = frozenset(),
        *,
        best_effort: bool = False,
    ) -> list[N.Key]:
        """The keys to evict so that applying ``effects`` ((key, the length it
        leaves, None for a delete), in order) leaves the store within the cap;
        never one of ``keep`` (the keys a write pins) nor of ``effects``. Taken
        out of the SIEVE (``restore`` puts them back if the write fails).
        ``best_effort`` (an open finding the store over the cap): when not
        enough can go, every key that can, instead of raising.

        :raises CacheFullError: not enough can be evicted (the rest is pinned, or
            the operation's own), or a single value is larger than the cap.
        REQUIRES: the append flock."""
        if self.writer.writes_begun != self._epoch:
            self._view, self._pins = self._pending()
            self._epoch = self.writer.writes_begun
        index = self.index
        with index.lock:
            total = index.live_bytes
            if not self._view and len(effects) == 1 and not keep:  # the common case, flat
                key, size = effects[0]
                if total + (size or 0) - index.size(key) <= self.max_bytes:
                    return []
            elif self._view:
                total += sum(self._current(key) - index.size(key) for key in self._view)
            final = dict(effects)  # (a key twice: its last)
            incoming = sum((size or 0) - self._current(key) for key, size in final.items())
            need = total + incoming - self.max_bytes
            if need <= 0:
                return []
            largest = max((size or 0 for size in final.values()), default=0)
            if largest > self.max_bytes:
                raise CacheFullError(
                    f"a value of {largest:,} bytes is larger than max_bytes ({self.max_bytes:,})"
                )
            current = self._current
            victims = self.sieve.victims(
                need,
                size=current,
                spare=lambda key: (
                    key in final or key in keep or self.pinned(key) or not current(key)
                ),
            )
            freed = sum(map(current, victims))
            if freed < need and any(key not in index.meta for key in self._view):
                # Keys others wrote that this index has yet to apply, so SIEVE
                # cannot offer them: the writer catches up, and plans again.
                self._restore(victims)
                raise Behind
            if freed < need and best_effort:
                log.warning(
                    "blobcache: the store holds %d bytes over max_bytes (%d) that are "
                    "pinned: unpin keys to bring it under",
                    need - freed,
                    self.max_bytes,
                )
            elif freed < need:
                self._restore(victims)

                own = sum(size or 0 for size in final.values())
                raise CacheFullError(
                    f"max_bytes ({self.max_bytes:,}) leaves no room for {own:,} bytes: "
                    f"{total - freed:,} of the {total:,} live bytes are pinned or this "
                    "operation's own keys, which are never evicted"
                )
        return victims

    def commit(self, seqs: Iterable[tuple[int, N.Key, int | None, bool | None]]) -> None:
        """Add one request's framed records to the view: (seq, key, the length it
        leaves or None, its PINNED bit or None for no pin change).
        REQUIRES: the append flock."""
        view, pins = self._view, self._pins
        for seq, key, size, pinned in seqs:
            if size is not None or pinned is None:  # (a pin record changes no length)
                view[key] = (seq, size, False)
            # A delete or an evict ends the key's pin.
            pins[key] = (seq, bool(pinned) and (size is not None or pinned is not None))

    def counted(self, victims: list[N.Key]) -> None:
        """Count an acknowledged write's evictions (``stats()``) and log them."""
        self.evicting += 1
        self.evicted += len(victims)
        log.debug("blobcache: max_bytes evicted %d keys: %r", len(victims), victims[:10])

    def restore(self, victims: list[N.Key]) -> None:
        """Put back the victims of a write that failed (those still live)."""
        with self.index.lock:
            self._restore(victims)

    def _restore(self, victims: list[N.Key]) -> None:
        meta = self.index.meta
        for key in victims:
            if key in meta:
                self.sieve.insert(key)

    def _pending(self) -> tuple[View, dict[N.Key, tuple[int, bool]]]:
        """The view of the records from the follower's floor to ``appended``.
        REQUIRES: the append flock."""
        state = self.writer.state
        active, appended, acked = state.segment, state.appended, state.acked
        # Where the follower stood, or this process's record it passed and
        # whose writer has yet to apply it, whichever comes first.
        segment, offset = min([self.follower.floor, *list(self.follower.unapplied)])
        view: View = {}
        pins: dict[N.Key, tuple[int, bool]] = {}
        if segment == active and offset >= appended:
            return view, pins  # all applied (one process: the follower passes its own records)
        now = _clock.now_ms()
        for number in range(segment, active + 1):
            path = os.path.join(self.logdir, _log.segment_name(number))
            try:
                fd = _filekinds.open_regular(path)
            except FileNotFoundError:
                continue  # compacted away: what was live in it is in the output, read too
            try:
                header = os.pread(fd, F.SEGMENT_HEADER.size, 0)
                flags = _log.header_flags(header)
                start = F.SEGMENT_HEADER.size
                if number == segment and flags is not None and not flags & F.SEGMENT_FLAG_COMPACTED:
                    start = max(offset, start)
                limit = appended if number == active else os.fstat(fd).st_size
                data = os.pread(fd, limit - start, start) if limit > start else b""
            finally:
                os.close(fd)
            # Where the records in flight begin, in ``data``: past `acked`.
            flight = acked - start if number == active else len(data)
            for record in _log.iter_records(data, 0, _log.header_size(header), path):
                key = N.decode_key(record.tag, record.raw)
                kind, seq = record.kind, record.seq
                in_flight = record.end > flight
                pinned = bool(record.flags & F.FLAG_PINNED)
                if kind == F.RECORD_PIN:
                    pins[key] = (seq, pinned)
                    continue
                size: int | None = None
                if kind == F.RECORD_PUT:
                    size = record.end - record.value_at
                elif kind == F.RECORD_VERSION:
                    size = F.VERSION_BODY.unpack_from(data, record.value_at)[0]
                if size is not None and record.expires and record.expires <= now:
                    size = None  # expired: a delete
                # A put or version says its pin; a delete, an evict, an expiry end it.
                pins[key] = (seq, pinned if size is not None else False)
                old = view.get(key)
                if old is None or old[0] < seq:
                    if in_flight and old is not None:
                        # If it fails, the record before it stands: the larger counts.
                        size = max(size or 0, old[1] or 0)
                    view[key] = (seq, size, in_flight)
        return view, pins
