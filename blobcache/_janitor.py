"""What is garbage in a key directory, and deleting it without losing a value.

Garbage is any version whose sequence number is below its key's live number,
once the live record is durable. When the live record is not in the directory
(the key was deleted, or its value moved to the log), the directory goes
entirely. Never delete the last durable copy of a value.
"""

from __future__ import annotations

import contextlib
import errno
import os
from dataclasses import dataclass

from . import _format as F
from . import _fsio
from . import _names as N
from ._keydir import KeyDirScan
from ._storedir import remove_orphan_temp


@dataclass
class GcResult:
    """What one ``gc()`` removed."""

    files_removed: int = 0  # superseded versions and key files of gone keys
    temps_removed: int = 0  # temp files no writer held
    dirs_removed: int = 0  # key and fan-out directories left empty
    segments_compacted: int = 0  # log segments rewritten into one
    bytes_reclaimed: int = 0  # file sizes of everything removed, less what was rewritten

    def add(self, other: GcResult) -> None:
        self.files_removed += other.files_removed
        self.temps_removed += other.temps_removed
        self.dirs_removed += other.dirs_removed
        self.segments_compacted += other.segments_compacted
        self.bytes_reclaimed += other.bytes_reclaimed


def clean_key_dir(scan: KeyDirScan, *, live_seq: int | None) -> GcResult:
    """Remove the garbage of one key directory; the directory too when nothing here is live.

    ``live_seq`` is the key's live sequence number wherever its record lies, or
    None when the key is deleted.

    REQUIRES: no writer changes this directory meanwhile (the cache holds the
    key's lock, and the directory's flock exclusively); the records in ``scan``
    are what the directory holds; the live record is durable, here (with its
    key file and directory entry: the caller fsyncs one acknowledged without
    fsync, or found after a crash) or in the log.
    """
    result = GcResult()
    for temp in scan.temps:
        size = remove_orphan_temp(temp, directory_held=True)
        if size is not None:
            result.temps_removed += 1
            result.bytes_reclaimed += size
    if scan.key is None and (scan.records or scan.unusable):
        return result  # versions whose key is unreadable: reported, kept for a human
    if live_seq is not None:
        # A b- version above the live record: never committed (the caller made
        # sure: caught up, holding the directory, with nothing appended past
        # ``acked``, so no record naming it can land any more).
        for record in [r for r in scan.records if r.seq > live_seq and N.is_batch_version(r.path)]:
            result.bytes_reclaimed += _remove(record.path)
            result.files_removed += 1
            scan.records.remove(record)
    newest = scan.live
    if newest is not None and newest.seq == live_seq:
        for record in scan.records[1:] + [u for u in scan.unusable if u.seq < newest.seq]:
            result.bytes_reclaimed += _remove(record.path)
            result.files_removed += 1
        return result
    # Nothing here is live: the key was deleted, or its live record is in the log.
    bound = live_seq if live_seq is not None else F.MAX_SEQ
    for record in scan.records + scan.unusable:
        if record.seq < bound:
            result.bytes_reclaimed += _remove(record.path)
            result.files_removed += 1
    if any(r.seq >= bound for r in scan.records + scan.unusable):
        return result  # something newer but damaged is here: left for a human
    # Invariant: the unlinks are durable before the directory (and so, later, the
    # log's delete record that compaction may then drop) goes, or a power cut
    # could bring a deleted value back.
    if result.files_removed:
        _fsio.fsync_dir(scan.path)
    key_file = os.path.join(scan.path, F.KEY_FILE_NAME)
    if os.path.exists(key_file):
        result.bytes_reclaimed += _remove(key_file)
        result.files_removed += 1
    try:
        _fsio.rmdir(scan.path)
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
        return result  # not empty: a file we do not know, reported by recovery
    result.dirs_removed += 1
    with contextlib.suppress(FileNotFoundError):  # see prune_empty_dirs
        _fsio.fsync_dir(os.path.dirname(scan.path))
    return result


def prune_empty_dirs(directory: str, blobs: str) -> int:
    """Remove ``directory`` and then each parent up to (not including) ``blobs``
    while they are empty: fan-out directories left by removed keys or by a put
    killed while making them. Each removal is made durable by fsyncing its parent.

    REQUIRES: no directory is being created under ``blobs`` meanwhile (the cache's
    tree lock). Returns how many were removed.
    """
    removed = 0
    while directory != blobs and directory.startswith(blobs + os.sep):
        try:
            _fsio.rmdir(directory)
        except FileNotFoundError:
            pass  # removed by a gc() that failed before pruning its parents
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                break  # it holds other keys
            raise
        else:
            removed += 1
            # A parent gone meanwhile was removed, once empty, by `blobcache gc`
            # in another process, which fsynced its own parent: our removal,
            # inside it, is durable with it.
            with contextlib.suppress(FileNotFoundError):
                _fsio.fsync_dir(os.path.dirname(directory))
        directory = os.path.dirname(directory)
    return removed


def _remove(path: str) -> int:
    try:
        size = os.stat(path, follow_symlinks=False).st_size
        _fsio.unlink(path)
    except FileNotFoundError:
        return 0  # removed meanwhile by `blobcache gc` in another process
    return size
