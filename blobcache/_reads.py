"""Reading what is in a file: a version's first get maps and checks it, ``open``
reads it as a file object, and when a check fails the record before it is served.

A version file never fsynced can come back from a power cut with its name and
size but not its bytes ("os" durability on XFS, say); a disk can rot one. The
newest intact older record of the key -- a version in its directory, a record
in any log segment, or the log record the version won over at open -- is
written anew with a new sequence number (so the damaged file is plain garbage
for the janitor), and the damage is reported. Never does a get return bytes
whose checksum failed.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable
from typing import BinaryIO

from . import _filekinds, _keydir, _log, _mapping
from . import _format as F
from . import _names as N
from ._index import Mapped, Value
from ._keydir import Record
from ._problems import Problem
from ._writes import Writes
from .errors import CorruptionError


class Reads:
    """The reads of one handle that go to a version file, and the damage they met.

    ``log_under_blob``: key -> (seq, value; None for a delete) of the log record
    a version won over at open, which compaction drops from the log.
    """

    def __init__(
        self,
        writes: Writes,
        log_under_blob: dict[N.Key, tuple[int, bytes | None, int]],
        max_seq_at_open: int,
    ) -> None:
        self.writes = writes
        self.logdir = os.path.join(writes.path, F.LOG_DIR)
        self.log_under_blob = log_under_blob
        self.max_seq_at_open = max_seq_at_open
        self.notes: list[Problem] = []  # what each fall back reported, in order

    def open(self, key: N.Key, lookup: Callable[[N.Key], Value | None]) -> BinaryIO:
        """``BlobCache.open``; ``lookup`` is the face's checked lookup."""
        while True:
            value = lookup(key)
            if value is None:
                raise KeyError(key)
            if not isinstance(value, Mapped):
                # Read-only, as a file's: a BytesIO alone would take writes (into
                # a copy of its own, but a caller would think they stuck).
                return io.BufferedReader(io.BytesIO(value))
            record = value.record
            try:
                # Never through a link, never a FIFO: see _filekinds.open_regular.
                return os.fdopen(_filekinds.open_regular(record.path), "rb")
            except FileNotFoundError:
                self.writes.follower.catch_up()  # replaced in another process, maybe
                if self.writes.index.values.stored(key) is value:
                    raise CorruptionError(
                        record.path,
                        "version file is missing: something other than blobcache removed it",
                    ) from None
                # replaced and collected between our lookup and the open: again

    def first_get(self, key: N.Key, value: Mapped) -> bytes | memoryview | None:
        """Map a version on its first get in this process (checking its checksum
        with ``verify_on_get``) and return a view of its own, as ``get`` does; on damage,
        fall back. None: the key is gone (deleted, or fell back to a delete).
        Two threads may both map it; both views are good, one is kept."""
        writes = self.writes
        while True:
            mapped = value.view
            if mapped is not None:  # mapped meanwhile, or a replacement already was
                return mapped[:]
            try:
                mapped = _mapping.map_version(value.record, check=writes.options.verify_on_get)
            except CorruptionError as damage:
                # get takes no lock: between its lookup and this open, another
                # thread (or process: caught up with first) may have replaced the
                # key and a janitor removed the old file. Only a value that is
                # still live is really damaged.
                writes.follower.catch_up()
                current = writes.index.values.stored(key)
                if current is value:
                    if writes.held.writer is None or writes.held.inherited():
                        # A reader, or a forked child, changes nothing: the
                        # writer falls back; here the damage is what to say.
                        raise
                    # The caller's key may be a str or bytes subclass: its methods
                    # run here (encode_key), not under the stripe lock.
                    key = N.decode_key(*N.encode_key(key))
                    with writes.writing(os.path.basename(os.path.dirname(value.record.path))):
                        current = self.fall_back(key, value, damage)
                if current is None or not isinstance(current, Mapped):
                    return current
                value = current
                continue
            value.view = mapped
            return mapped[:]

    def fall_back(self, key: N.Key, bad: Mapped, damage: CorruptionError) -> Value | None:
        """``bad``, the live version of ``key``, failed its check: make the newest
        intact older record of the key live again -- whatever its layout -- by
        writing it anew, and report the damage. Returns the key's value now
        (None: that older record was a delete).

        REQUIRES: the key's stripe lock.
        :raises CorruptionError: ``damage``, when there is no intact older record.
        """
        writes = self.writes
        values = writes.index.values
        if values.stored(key) is not bad:
            return values.stored(key)  # replaced meanwhile
        record = bad.record
        older = self._newest_intact_below(key, record)
        if older is None:
            raise damage
        seq, value, expires, codec = older
        what = "a delete: the key is deleted" if value is None else "its value"
        note = Problem(
            record.path, f"{damage.detail}; serving the older record {seq} instead ({what})"
        )
        writes.warn_unlocked(note)
        self.notes.append(note)
        tag, raw = N.encode_key(key)
        if value is None:
            writes.delete(key, tag, raw)
        elif len(value) < writes.options.inline_limit:
            writes.put_inline(key, tag, raw, bytes(value), expires, codec=codec)
        else:
            stripe = contextlib.nullcontext()
            writes.put_blob(key, tag, raw, stripe, memoryview(value), expires, codec=codec)
        return values.stored(key)

    def _newest_intact_below(
        self, key: N.Key, bad: Record
    ) -> tuple[int, bytes | memoryview | None, int, int] | None:
        """The newest intact record of ``key`` numbered below ``bad``, as (seq,
        value: None for a delete or an expired value, expiry: 0 for none,
        codec), or None if there is none.

        It may lie in the key's directory (a version), or in any log segment
        (the index forgot those records once a version superseded them), or be
        the log record that ``bad`` won over at open, which is kept in memory
        because compaction drops it from the log. That one counts only while
        ``bad`` is the version found at open: any record put since may have been
        compacted away, a delete among them, and must not be jumped over.
        Versions are checked (read whole); log records were checked as read.
        """
        tag, raw = N.encode_key(key)
        logged, noted, expiring, codecs = _log.records_of(self.logdir, tag, raw)
        found: dict[int, Record | bytes | None] = dict(logged)
        under = self.log_under_blob.get(key)
        if under is not None and bad.seq <= self.max_seq_at_open:
            under_seq, under_value, under_codec = under
            found.setdefault(under_seq, under_value)
            codecs.setdefault(under_seq, under_codec)
        with contextlib.suppress(FileNotFoundError):  # removed by hand: reported at open
            # A batch's version only with its record in the log: without, it may
            # be of a batch never committed.
            # Not one whose record says it expired (found holds None for it).
            found.update(
                (v.seq, v)
                for v in _keydir.scan_key_dir(os.path.dirname(bad.path)).records
                if (not N.is_batch_version(v.path) or v.seq in noted) and v.seq not in found
            )
        for seq in sorted((s for s in found if s < bad.seq), reverse=True):
            candidate = found[seq]
            expires, codec = expiring.get(seq, 0), codecs.get(seq, F.CODEC_RAW)
            if not isinstance(candidate, Record):
                return seq, candidate, expires, codec
            with contextlib.suppress(CorruptionError):
                return seq, _mapping.map_version(candidate, check=True), expires, codec
        return None
