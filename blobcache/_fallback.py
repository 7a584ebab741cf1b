"""Falling back: when a key's live version fails its check, serve the record before it.

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
import os

from . import _format as F
from . import _keydir, _log, _mapping
from . import _names as N
from ._index import Mapped, Value
from ._keydir import Record
from ._problems import Problem
from ._writes import Writes
from .errors import CorruptionError


class FallBack:
    """What a fall back reads besides the disk, and the damage it reported.

    ``log_under_blob``: key -> (seq, value; None for a delete) of the log record
    a version won over at open, which compaction drops from the log.
    """

    def __init__(
        self,
        writes: Writes,
        log_under_blob: dict[N.Key, tuple[int, bytes | None]],
        max_seq_at_open: int,
    ) -> None:
        self.writes = writes
        self.logdir = os.path.join(writes.path, F.LOG_DIR)
        self.log_under_blob = log_under_blob
        self.max_seq_at_open = max_seq_at_open
        self.notes: list[Problem] = []  # what each fall back reported, in order

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
        if values.get(key) is not bad:
            return values.get(key)  # replaced meanwhile
        record = bad.record
        keydir = os.path.dirname(record.path)
        older = self._newest_intact_below(key, record)
        if older is None:
            raise damage
        seq, value = older
        what = "a delete: the key is deleted" if value is None else "its value"
        note = Problem(
            record.path, f"{damage.detail}; serving the older record {seq} instead ({what})"
        )
        writes.warn_unlocked(note)
        self.notes.append(note)
        tag, raw = N.encode_key(key)
        if value is None:
            writes.delete(key, tag, raw, keydir)
        elif len(value) < writes.options.inline_limit:
            writes.put_inline(key, tag, raw, bytes(value))
        else:
            writes.put_blob(key, tag, raw, contextlib.nullcontext(), memoryview(value))
        return values.get(key)

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
        found: dict[int, Record | bytes | None] = dict(_log.records_of(self.logdir, tag, raw))
        under = self.log_under_blob.get(key)
        if under is not None and bad.seq <= self.max_seq_at_open:
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
