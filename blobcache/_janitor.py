"""What is garbage in a key directory, and deleting it without losing a value.

Garbage is any record whose sequence number is below its key's live number,
once the live record is durable; a key whose live record is a tombstone goes
entirely, directory included. Never delete the last durable copy of a value.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from . import _format as F
from . import _fsio
from ._blob import KeyDirScan
from ._recovery import remove_orphan_temp


@dataclass
class GcResult:
    """What one ``gc()`` removed."""

    files_removed: int = 0  # superseded versions and tombstones of deleted keys
    temps_removed: int = 0  # temp files no writer held
    dirs_removed: int = 0  # key and fan-out directories left empty
    bytes_reclaimed: int = 0  # file sizes of everything removed

    def add(self, other: GcResult) -> None:
        self.files_removed += other.files_removed
        self.temps_removed += other.temps_removed
        self.dirs_removed += other.dirs_removed
        self.bytes_reclaimed += other.bytes_reclaimed


def clean_key_dir(scan: KeyDirScan, *, make_live_durable: bool) -> GcResult:
    """Remove the garbage of one key directory; the directory too when the key is gone.

    REQUIRES: no writer changes this directory meanwhile (the cache holds the
    key's lock), and the records in ``scan`` are what the directory holds.
    With ``make_live_durable`` (records acknowledged without fsync, "os"
    durability) the live record is fsynced before anything older is removed.
    """
    result = GcResult()
    for temp in scan.temps:
        size = remove_orphan_temp(temp)
        if size is not None:
            result.temps_removed += 1
            result.bytes_reclaimed += size
    live = scan.live
    if scan.key is None and (scan.records or scan.unusable):
        return result  # versions whose key is unreadable: reported, kept for a human
    if live is not None:
        if make_live_durable:
            if not live.is_tombstone:
                _fsio.fsync_path(live.path)
            _fsio.fsync_dir(scan.path)
        superseded = scan.records[1:] + [u for u in scan.unusable if u.seq < live.seq]
        for record in superseded:
            result.bytes_reclaimed += _remove(record.path)
            result.files_removed += 1
        if not live.is_tombstone:
            return result
        if any(u.seq > live.seq for u in scan.unusable):
            return result  # something newer but damaged is here: keep the tombstone over it
        # Invariant: the unlinks of older versions are durable before the tombstone
        # that hides them goes, or a power cut could bring a deleted value back.
        if superseded:
            _fsio.fsync_dir(scan.path)
        result.bytes_reclaimed += _remove(live.path)
        result.files_removed += 1
    key_file = os.path.join(scan.path, F.KEY_FILE_NAME)
    if os.path.exists(key_file):
        result.bytes_reclaimed += _remove(key_file)
    try:
        _fsio.rmdir(scan.path)
    except OSError:
        return result  # not empty: a file we do not know is reported by recovery
    result.dirs_removed += 1
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
        except OSError:
            break  # not empty (it holds other keys), or already gone
        removed += 1
        _fsio.fsync_dir(os.path.dirname(directory))
        directory = os.path.dirname(directory)
    return removed


def _remove(path: str) -> int:
    size = os.stat(path, follow_symlinks=False).st_size
    _fsio.unlink(path)
    return size
