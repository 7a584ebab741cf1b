"""Rewriting the log: live records into one new segment, swapped in atomically.

Compaction seals the active segment and takes every sealed segment as input.
Its output is one segment whose header says COMPACTED ("I replace every
lower-numbered segment") and which takes the number of the highest input: it is
written as a temp file, fsynced, renamed over that input and the directory
fsynced; only then are the other inputs deleted. A crash before the rename
leaves the inputs in force (and an orphan temp file); a crash after it leaves
an output that recovery prefers, deleting the inputs below it unread. Either
way the store recovers to the same contents, and the segments in force run
without a gap from the lowest (1, or a COMPACTED one) to the active one, so a
gap always means a lost segment. The cache picks which records are live; this
module only moves bytes.
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Iterable, Iterator

from . import _format as F
from . import _fsio
from ._log import segment_header, segment_name

# Records are gathered into writes of about this size: few system calls, and
# never more than this much of the output in memory besides the index itself.
BATCH_BYTES = 1 << 20


def write_compacted(logdir: str, number: int, records: Iterable[bytes]) -> tuple[array[int], int]:
    """Replace segment ``number`` with a COMPACTED one holding ``records``, durably;
    return each record's size, in order, and the size of the segment replaced.

    ``records`` is consumed as it is written, ``BATCH_BYTES`` at a time, so the
    output is never whole in memory (the live records' values are, in the index).
    REQUIRES: ``number`` is the highest input, sealed; the active segment is the
    next number.
    """
    path = os.path.join(logdir, segment_name(number))
    replaced = os.path.getsize(path)
    sizes: array[int] = array("Q")
    # WRITABLE, as every segment: the newest one is reopened to append after a restart.
    fd, tmp = _fsio.open_temp(logdir, mode=_fsio.WRITABLE)
    try:
        offset = 0
        for batch in _batches(records, sizes):
            _fsio.pwrite_all(fd, memoryview(batch), offset)
            offset += len(batch)
        _fsio.fsync_file(fd)
        _fsio.rename(tmp, path)
    except BaseException:
        _fsio.unlock(fd)
        _fsio.discard(tmp)
        raise
    _fsio.unlock(fd)
    # Not _fsio.write_file_atomically: the rename replaced an input, so if this
    # fsync fails the name must stay as it is (old or new content, both whole);
    # taking it back would delete that input's records.
    _fsio.fsync_dir(logdir)
    return sizes, replaced


def _batches(records: Iterable[bytes], sizes: array[int]) -> Iterator[bytearray]:
    """The segment's bytes (header, then ``records``) in pieces of about
    ``BATCH_BYTES``; appends each record's size to ``sizes`` as it goes."""
    batch = bytearray(segment_header(F.SEGMENT_FLAG_COMPACTED))  # format 2
    for record in records:
        sizes.append(len(record))
        batch += record
        if len(batch) >= BATCH_BYTES:
            yield batch
            batch = bytearray()  # a new one: the last may still be referenced
    yield batch


def remove_segments(logdir: str, numbers: list[int]) -> int:
    """Delete replaced segments; return the bytes freed.

    REQUIRES: the COMPACTED segment replacing them is durable. The directory is
    fsynced so their space is not counted on after a power cut.
    """
    freed = 0
    for number in numbers:
        path = os.path.join(logdir, segment_name(number))
        try:  # gone: replaced by another process's compaction, which this one follows
            freed += os.stat(path).st_size
            _fsio.unlink(path)
        except FileNotFoundError:
            continue
    if numbers:
        _fsio.fsync_dir(logdir)
    return freed
