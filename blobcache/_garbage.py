"""Garbage in an open store: the janitor's visits and log compaction, both online.

The rule (DESIGN.md): a record is garbage once its key's live record has a
higher number and is durable; the last durable copy of a value is never
deleted. ``Garbage.gc`` visits each key directory the index marked dirty
(under the key's stripe lock and the directory's exclusive flock) and then
compacts the log; ``compact`` also runs on its own, in the background, once
sealed segments are stale enough. What is garbage in one directory is
``_janitor``'s to say; how segments are rewritten is ``_compaction``'s; this
module decides when, and keeps the index right meanwhile.

Locking: ``gc_lock`` (one gc at a time) is taken before a stripe lock;
``compact_lock`` (one compaction, or close, at a time) before every stripe.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
from collections.abc import Callable

from . import _compaction, _fsio, _janitor, _keydir, _log, _mapping, _snapshotwrite
from . import _format as F
from . import _names as N
from ._dirbook import Book
from ._follow import Follower
from ._index import IN_A_FILE, Deleted, Mapped, codec_of, pack, segment_of, seq_of
from ._janitor import GcResult
from ._reads import Reads
from ._shared import SharedState
from ._writes import Writes
from .errors import BlobCacheError, ClosedError, CorruptionError

log = logging.getLogger("blobcache")


class Garbage:
    """The janitor and compaction of one writing handle.

    ``found_at_open``: key directories recovery found holding garbage, whose live
    version may never have been made durable (checked, and fsynced, first).
    ``blob_over_log``: key -> directory of a version found at open that won over
    a log record; it is made durable before compaction drops that record.
    """

    def __init__(
        self,
        writes: Writes,
        reads: Reads,
        found_at_open: set[str],
        blob_over_log: dict[N.Key, str],
        *,
        salvaged: bool,
    ) -> None:
        self.writes = writes
        self.index = writes.index
        self.reads = reads
        self.options = writes.options
        self.snapshots_written = 0  # (gc() writes one if its compaction did not)
        # (follower segment, offset, highest number handed out) the store's
        # snapshot stands for, if known: no need to write it again.
        self.snapshot_mark: tuple[int, int, int] | None = None
        # The directory book of the last snapshot written or loaded (_dirbook):
        # the next one lists only the directories changed since.
        self.book: Book = ({}, {})
        # STATE's count of compactions the index's log positions are of: another
        # process's compaction moves records without telling this index (its
        # follower goes on in the active segment), so a snapshot of it would name
        # places that hold other bytes. None: unknown, no snapshot is written.
        self.generation: int | None = None
        self.owed = writes.held.owed
        self.logdir = os.path.join(writes.path, F.LOG_DIR)
        self.found_at_open = found_at_open
        self.blob_over_log = blob_over_log
        self.salvaged = salvaged  # a segment salvage cut short: gc() rewrites it
        self.gc_lock = threading.Lock()
        self.compact_lock = threading.Lock()
        self.compact_wanted = writes.held.compact_wanted  # wakes the compaction thread

    def gc(self) -> GcResult:
        """``BlobCache.gc``. REQUIRES: a writer; no earlier fsync failed."""
        self.owed.refuse_after_failure()
        total = GcResult()
        self.index.warm()  # (the janitor asks of each key directory's key whether it is live)
        self.writes.follower.catch_up()  # the others' newer records, before judging
        with self.gc_lock:
            todo = sorted(self.index.take_dirty())
            for done, keydir in enumerate(todo):
                try:
                    name = os.path.basename(keydir)
                    if not N.is_key_dir_name(name):
                        total.add(self._prune(keydir))
                        continue
                    with self.writes.writing(name):
                        total.add(self._clean(keydir))
                except BaseException:
                    for left in todo[done:]:  # not cleaned: still garbage for next time
                        self.index.mark_dirty(left)
                    raise
        written = self.snapshots_written
        total.add(self.compact(force=True))
        with self.compact_lock:
            if self.snapshots_written == written:  # (compaction wrote one if it ran)
                self.write_snapshot(loud=True)
        return total

    def _make_others_durable(self) -> None:
        """Make durable the versions other processes wrote that this one applied
        since the last call, and those adopted (found at open)."""
        for keydir, path in self.writes.follower.take_foreign_files():
            with contextlib.suppress(FileNotFoundError):  # collected: superseded
                self.owed.make_durable(keydir, path, parents=True)
        self._make_adopted_durable()

    def write_snapshot(self, *, loud: bool = False) -> bool:
        """Write the index snapshot (``_snapshotwrite``), once the log is synced.
        Returns whether it was written. A failure raises with ``loud`` (gc(): the
        caller asked for the work, and an ENOSPC is worth hearing of); else it is
        logged (close(): every acknowledged record is in the log, whose replay
        the next open falls back to; compaction in the background: no caller).
        REQUIRES: ``compact_lock`` (a compaction meanwhile would replace segments
        it names)."""
        writes = self.writes
        if writes.closed or writes.held.writer is None or writes.held.state is None:
            return False
        state, follower = writes.held.state, writes.follower
        # No compaction in any process meanwhile: one would move records after
        # the capture, and the segments checked would be its output's. COMPACT's
        # flock, if the file is there (only a compaction makes it: a store that
        # never compacted has none, and this does not make one); if it is not,
        # it must still not be there once the segments are checked.
        compact = os.path.join(writes.path, F.COMPACT_NAME)
        try:
            held = _fsio.lock_existing(compact)
            if held is None:
                return False  # a compaction is running
        except FileNotFoundError:
            held = None
        except OSError:
            return False  # something else under its name: compaction says so (gc())
        try:
            unchanged = (
                (lambda: True) if held is not None else (lambda: not os.path.lexists(compact))
            )
            return self._write_snapshot_held(state, follower, unchanged, loud=loud)
        finally:
            if held is not None:
                _fsio.unlock(held)

    def _write_snapshot_held(
        self,
        state: SharedState,
        follower: Follower,
        unchanged: Callable[[], bool],
        *,
        loud: bool,
    ) -> bool:
        """``write_snapshot``. REQUIRES: ``compact_lock``; ``COMPACT``'s flock,
        or ``unchanged`` says no compaction started."""
        writes = self.writes
        try:
            writes.held.sync()  # "os": a snapshot never names a record a power cut takes back
            follower.catch_up()
            # Every version file it knows is durable: other processes' too (an
            # "os" one's may not be), as compaction makes them before it drops
            # a record they supersede, which the next open will not see.
            self._make_others_durable()
            if self.generation is None or state.generation != self.generation:
                return False  # (see generation)
            mark = (follower.segment, follower.offset, state.next_seq - 1)
            if mark == self.snapshot_mark:
                return True  # nothing written, nor any number taken, since the last one
            self.snapshots_written += 1
            book = _snapshotwrite.write(
                writes.path,
                self.index,
                follower,
                self.blob_over_log,
                mark[2],
                unchanged,
                self.book,
            )
        except (OSError, BlobCacheError) as exc:
            if loud:
                raise
            log.warning("blobcache: index snapshot not written: %s", exc)
            return False
        if book is None:
            return False
        self.snapshot_mark, self.book = mark, book
        return True

    # --- the janitor ---------------------------------------------------------------

    def _clean(self, keydir: str) -> GcResult:
        """REQUIRES: the stripe lock of ``keydir``. Holds ``keydir`` exclusively
        (see ``Writes._in_key_dir``) against a put writing a version into it and a
        `blobcache gc` in another process.

        The flock is taken without waiting: a put holds it shared, without the
        stripe lock, while it writes (from a stream that may take any time, or
        that waits for this very thread), so waiting here with the stripe lock
        held could stall every key of the stripe or deadlock. A busy directory
        is left for the next gc.
        """
        if keydir in self.found_at_open and not self._live_version_intact(keydir):
            return GcResult()  # nothing intact to keep: left as found, reported
        try:
            held = _fsio.lock_dir(keydir, exclusive=True, wait=False)
        except FileNotFoundError:
            held = None  # gone already: _clean_held prunes its empty parents
        else:
            if held is None:  # a version is going in: its garbage stays for next time
                self.index.mark_dirty(keydir)
                return GcResult()
        try:
            # With the directory held no put is between naming a version and
            # appending its record: every version here is in the log, and the
            # follower brings the newest into the index before we judge.
            self.writes.follower.catch_up()
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
        value = self.index.values.stored(key)
        if not isinstance(value, Mapped) or os.path.dirname(value.record.path) != keydir:
            return True
        try:
            _mapping.map_version(value.record, check=True)
        except CorruptionError as damage:
            try:
                self.reads.fall_back(key, value, damage)
            except CorruptionError:
                return False
        return True

    def _clean_held(self, keydir: str) -> GcResult:
        writes = self.writes
        try:
            scan = _keydir.scan_key_dir(keydir)
        except FileNotFoundError:  # removed by a gc() that failed right after, or another
            return self._prune(os.path.dirname(keydir))
        meta = self.index.meta.get(scan.key) if scan.key is not None else None
        live_seq = seq_of(meta) if meta is not None else None
        if any(
            N.is_batch_version(r.path) and (live_seq is None or r.seq > live_seq)
            for r in scan.records
        ):
            # A b- file above the live record: its batch was never committed, or
            # its records are appended but not yet acknowledged (a writer killed
            # during its fdatasync: the next one's covers them, and they land).
            # Only once nothing is appended past ``acked`` does the follower,
            # caught up again, know which.
            if not self._settled():
                self.index.mark_dirty(keydir)  # for the next gc
                return GcResult()
            writes.follower.catch_up()
            meta = self.index.meta.get(scan.key) if scan.key is not None else None
            live_seq = seq_of(meta) if meta is not None else None
        # Records found at open may never have been made durable (a crash between
        # a rename and its directory fsync, or "os" puts never synced): make the
        # live one durable before deleting anything older, whatever the mode.
        unsure = keydir in self.found_at_open or self.options.durability == "os"
        in_log = meta is None or segment_of(meta) != IN_A_FILE
        if unsure and (in_log or (scan.live is not None and N.is_batch_version(scan.live.path))):
            # The newer record (a put or a delete) is in the log, maybe another
            # "os" process's, which this one's own sync would not cover; or it
            # is a batch's version, which counts only with its record there.
            writes.log.sync(force=True)
        try:
            if unsure and scan.live is not None and scan.live.seq == live_seq:
                self.owed.make_durable(keydir, scan.live.path, parents=False)
            result = _janitor.clean_key_dir(scan, live_seq=live_seq)
        finally:
            # Invariant: a directory in key_dirs has its key file. The janitor may
            # have removed it and then failed (or found a stray) before the rmdir:
            # the next put into it must write the key file again.
            if not os.path.exists(os.path.join(keydir, F.KEY_FILE_NAME)):
                writes.key_dirs.discard(keydir)
        self.found_at_open.discard(keydir)
        if result.dirs_removed:
            result.dirs_removed += self._prune(os.path.dirname(keydir)).dirs_removed
        return result

    def _settled(self) -> bool:
        """Whether every record appended to the log is acknowledged (so none is
        a killed writer's, still to land), under the append flock for an instant."""
        state = self.writes.held.state
        if state is None:
            return True
        with state.locked():
            return state.acked >= state.appended

    def _prune(self, directory: str) -> GcResult:
        """Remove ``directory`` if empty (a fan-out directory found so at open, or a
        key directory's parent), and its empty parents."""
        with self.writes.tree_lock:
            return GcResult(dirs_removed=_janitor.prune_empty_dirs(directory, self.writes.blobs))

    # --- compaction ------------------------------------------------------------------

    def maybe_compact(self) -> None:
        """Wake the compaction thread once sealed segments are stale enough."""
        with self.index.lock:
            stale, total = self.index.book.stale(below=self.writes.log.number)
        if total and stale >= self.options.compact_ratio * total:
            self.compact_wanted.set()

    def compact(self, *, force: bool) -> GcResult:
        """Rewrite the live records of every sealed segment into one segment that
        replaces them (numbered as the highest of them; see ``_compaction``).

        Reads never wait (they are served from memory) and puts go on into the
        active segment meanwhile. With ``force``, the active segment is sealed
        and compacted too, if it holds anything stale.
        """
        writes, index = self.writes, self.index
        # Here too, not only in gc(): compaction through a handle inherited by a
        # fork would cut the parent's active segment back and delete it.
        writes.check_writer()
        with self.compact_lock:
            if writes.closed:
                raise ClosedError(writes.path)
            with index.lock:
                stale, total = index.book.stale(below=None if force else writes.log.number)
            damaged = force and self.salvaged  # rewrite a segment salvage cut short
            if not damaged and (
                stale == 0 or (not force and stale < self.options.compact_ratio * total)
            ):
                return GcResult()
            index.warm()  # (compaction rewrites every live record: it needs them all)
            held = _fsio.lock_file(os.path.join(writes.path, F.COMPACT_NAME))
            if held is None:
                return GcResult()  # another process is compacting the log
            try:
                result = self._compact_held(force=force)
            finally:
                _fsio.unlock(held)
            # The segments the last snapshot named are replaced: a new one, or the
            # next open would replay the log whole. (Loud for gc(), which forces.)
            self.write_snapshot(loud=force)
            return result

    def _compact_held(self, *, force: bool) -> GcResult:
        """``compact`` once this process holds ``COMPACT``: the only compaction of
        the store under way. REQUIRES: ``compact_lock`` and ``COMPACT``'s flock."""
        writes, index = self.writes, self.index
        # Invariant: every record in an input is in the index (or deleted)
        # when the inputs are chosen. Sealing the active segment (the roll)
        # fixes what the inputs hold, whoever wrote it; the follower then
        # applies all of it, ours and other processes' alike, and later
        # records go to the new active segment.
        # Seal the active segment: it is the highest input, and the
        # output takes its number (see _compaction).
        active = writes.log.roll()
        output = active - 1
        writes.follower.catch_up()
        with index.lock:
            # Every live record, the catch-up's rebuild's too (Index.replace keeps a
            # loaded index loaded; this says so where the inputs are chosen).
            index._warm_locked()
            index.book.add(active, 0, live=False)
            index.book.add(output, 0, live=False)  # sealed here, maybe empty
            inputs = sorted(n for n in index.book.total if n < active)
            chosen = set(inputs)
            # Three flat lists, not a list of tuples: 24 bytes per live
            # record beside the index, which holds the values. The values
            # are taken now, with the records' places: a put after the
            # stripes are let go must not lend its value to an old number.
            keys: list[N.Key] = []
            metas: list[int] = []
            values: list[bytes] = []
            # dict.get, not [], which would map a key in a file (never one here).
            get_value = index.values.get
            for key, meta in index.meta.items():
                if segment_of(meta) in chosen:  # never IN_A_FILE
                    keys.append(key)
                    metas.append(meta)
                    value = get_value(key)
                    assert value is not None, "a key in the log has its bytes"
                    values.append(value)
            # Below the new active segment, not only in the inputs: a delete booked
            # in a segment a compaction removed meanwhile (an expiry swept during
            # it, see Index.expire) is written out now.
            deleted = [(k, d) for k, d in index.deleted.items() if d.segment < active]
            # A batch's version counts only while the log holds its record, and
            # a version's expiry is only there: copied forward for every live
            # one of those, wherever it was.
            # A pin is in the records too: in the PINNED bit of a put copied, and
            # in a copy of the version record of a file pinned.
            # And a value's codec (FORMAT.md, "Typed values"), only in its record.
            expiry, pins = index.expiry, set(index.pins)
            notes = [
                (k, m.record, expiry.get(k, 0), m.codec)
                for k, m in index.values.files.items()
                if N.is_batch_version(m.record.path) or k in expiry or k in pins
            ]
            expiries = [expiry.get(k, 0) for k in keys] if expiry else [0] * len(keys)
        assert inputs[-1] == output, "the segment just sealed is always in the book"
        # Never delete the last durable copy: a value that supersedes a record
        # about to be dropped must be durable first ("os" puts are owed to
        # sync(); versions found at open may never have been fsynced).
        if self.options.durability == "os":
            writes.held.sync()
        # Other processes' records that supersede an input's are in the active
        # segment, or in files, maybe never synced (an "os" process's): made
        # durable here, whoever wrote them.
        writes.log.sync(force=True)
        self._make_others_durable()
        kept = [(k, d) for k, d in deleted if self.still_needs_delete(k, d.seq)]
        # Encoded one at a time as the output is written: the records are
        # never all in memory beside the values they copy.
        records = itertools.chain(
            (
                _log.encode_record(
                    seq_of(m),
                    F.RECORD_PUT,
                    *N.encode_key(k),
                    v,
                    _expiring(e, k in pins),
                    e,
                    codec_of(v),
                )
                for k, m, v, e in zip(keys, metas, values, expiries, strict=True)
            ),
            (_log.encode_record(d.seq, F.RECORD_DELETE, *N.encode_key(k), b"") for k, d in kept),
            (
                _log.encode_version(
                    r.seq,
                    *N.encode_key(k),
                    r.length,
                    r.checksum,
                    _bound(r.path, e, k in pins),
                    e,
                    r_codec,
                )
                for k, r, e, r_codec in notes
            ),
        )
        sizes, replaced = _compaction.write_compacted(self.logdir, output, records)
        written = sum(sizes)
        with index.lock:
            for key, dead in deleted:
                if index.deleted.get(key) is dead:
                    del index.deleted[key]
            # The notes count as live while their version is (``Index.notes``
            # tells publish which to count stale once it is superseded).
            live_bytes = 0
            index.notes = {}
            for (key, record, _expires, _codec), size in zip(
                notes, sizes[len(keys) + len(kept) :], strict=True
            ):
                mapped = index.values.files.get(key)
                if mapped is not None and mapped.record == record:
                    index.notes[key] = (output, size)
                    live_bytes += size
            del sizes[len(keys) + len(kept) :]
            for (key, dead), size in zip(kept, sizes[len(keys) :], strict=True):
                # Not if a newer delete took its place, nor a put to the log.
                live = index.values.peek(key)
                if key not in index.deleted and (live is None or type(live) is Mapped):
                    index.deleted[key] = Deleted(dead.seq, output, size)
            del sizes[len(keys) :]
            # Where each put lies in the output: the live values come first.
            end = F.SEGMENT_HEADER.size + sum(sizes)
            # Popped as they are replaced, so an old meta is freed as soon as
            # its new one is in: never two per key at once.
            while keys:
                key, meta, size = keys.pop(), metas.pop(), sizes.pop()
                end -= size
                # Keys replaced meanwhile keep pointing where their new record is
                # (a new record has a new number, so a meta never comes back).
                if index.meta.get(key) == meta:
                    index.meta[key] = pack(seq_of(meta), output, end, size)
                    live_bytes += size
            index.book.replace(inputs, output, written, live_bytes)
        lower = inputs[:-1]  # the highest input was replaced by the rename
        try:
            freed = _compaction.remove_segments(self.logdir, lower) + replaced
        except BaseException:
            # The inputs still there are garbage: booked as all stale, the
            # next gc() takes them as inputs again and deletes them.
            with index.lock:
                for number in lower:
                    path = os.path.join(self.logdir, _log.segment_name(number))
                    if os.path.exists(path):
                        index.book.add(number, os.path.getsize(path), live=False)
            raise
        self.salvaged = False
        self.generation = writes.held.compacted()  # (under COMPACT: no other one meanwhile)
        output_size = F.SEGMENT_HEADER.size + written
        return GcResult(segments_compacted=len(inputs), bytes_reclaimed=max(0, freed - output_size))

    def _make_adopted_durable(self) -> None:
        """fsync the live versions found at open that won over a log record, with
        every directory entry they depend on. REQUIRES: ``compact_lock``."""
        adopted, self.blob_over_log = self.blob_over_log, {}
        for key, keydir in adopted.items():
            value = self.index.values.stored(key)
            if not isinstance(value, Mapped) or os.path.dirname(value.record.path) != keydir:
                continue  # replaced since open by a record that was made durable
            self.owed.make_durable(keydir, value.record.path, parents=True)

    def still_needs_delete(self, key: N.Key, seq: int) -> bool:
        """Whether compaction must copy ``key``'s delete record ``seq`` forward: while
        it is what hides an older version still in the key's directory.

        The key still deleted: while the directory is there (the janitor removes
        it). Put again as a version: while a version numbered below the delete
        is there, since a fall back from a damaged newer version must find the
        delete, not that version (dropping it served a deleted value again). Put
        again to the log: never, as a log record newer than any version wins at
        open and is never damaged unseen (its checksum is read then).
        """
        keydir = N.key_dir(self.writes.blobs, N.key_hash(*N.encode_key(key)))
        if keydir not in self.writes.key_dirs:
            return False
        value = self.index.values.stored(key)
        if value is None:
            return True
        if type(value) is not Mapped:
            return False
        try:
            names = os.listdir(keydir)
        except FileNotFoundError:
            return False
        return any(
            (version := N.parse_version_name(name)) is not None and version.seq < seq
            for name in names
        )


def _expiring(expires: int, pinned: bool) -> int:
    """The flags of a record copied forward with expiry ``expires`` (0: none)."""
    return (F.FLAG_EXPIRES if expires else 0) | (F.FLAG_PINNED if pinned else 0)


def _bound(path: str, expires: int, pinned: bool) -> int:
    """The flags of a version record copied forward, for its file at ``path``."""
    return _expiring(expires, pinned) | (F.FLAG_BOUND if N.is_batch_version(path) else 0)
