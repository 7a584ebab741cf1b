"""Rewriting the log: live records into one new segment, swapped in atomically.

Compaction takes every sealed segment as input and writes one output segment
whose header says COMPACTED: "I replace every lower-numbered segment". It is
written as a temp file, fsynced, renamed to its number and the directory
fsynced; only then are the inputs deleted. A crash before the rename leaves the
inputs in force (and an orphan temp file); a crash after it leaves an output
that recovery prefers, deleting the inputs unread. Either way the store
recovers to the same contents. The cache picks which records are live; this
module only moves bytes.
"""

from __future__ import annotations

import os
import threading

from . import _format as F
from . import _fsio
from ._log import segment_header, segment_name


def write_compacted(logdir: str, number: int, records: list[bytes]) -> list[int]:
    """Publish segment ``number`` holding ``records``, durably; return their offsets.

    REQUIRES: ``number`` is above every input and below the active segment, so
    the active segment stays the highest-numbered one (the only one whose tail
    recovery may cut).
    """
    offsets = []
    offset = F.SEGMENT_HEADER.size
    for record in records:
        offsets.append(offset)
        offset += len(record)
    body = b"".join([segment_header(F.SEGMENT_FLAG_COMPACTED), *records])
    # WRITABLE, as every segment: the newest one is reopened to append after a restart.
    _fsio.write_file_atomically(logdir, segment_name(number), body, mode=_fsio.WRITABLE)
    return offsets


def remove_segments(logdir: str, numbers: list[int]) -> int:
    """Delete replaced segments; return the bytes freed.

    REQUIRES: the COMPACTED segment replacing them is durable. The directory is
    fsynced so their space is not counted on after a power cut.
    """
    freed = 0
    for number in numbers:
        path = os.path.join(logdir, segment_name(number))
        freed += os.stat(path).st_size
        _fsio.unlink(path)
    if numbers:
        _fsio.fsync_dir(logdir)
    return freed


class SegmentBook:
    """How many record bytes each log segment holds, and how many are still live.

    A record is live while it is its key's newest record in the log and a put;
    overwritten values and delete records count as stale. The ratio of stale
    bytes in sealed segments decides when compaction pays.
    REQUIRES: callers serialise through ``lock``.
    """

    def __init__(self, total: dict[int, int], live: dict[int, int]) -> None:
        self.lock = threading.Lock()
        self.total = total
        self.live = live

    def add(self, segment: int, size: int, *, live: bool) -> None:
        self.total[segment] = self.total.get(segment, 0) + size
        if live:
            self.live[segment] = self.live.get(segment, 0) + size
        else:
            self.live.setdefault(segment, 0)

    def supersede(self, segment: int, size: int) -> None:
        if segment in self.live:  # not if its segment was compacted away meanwhile
            self.live[segment] -= size

    def stale(self, *, below: int | None = None) -> tuple[int, int]:
        """(stale bytes, total bytes) over the segments numbered below ``below`` (all: None)."""
        numbers = [n for n in self.total if below is None or n < below]
        total = sum(self.total[n] for n in numbers)
        return total - sum(self.live[n] for n in numbers), total

    def replace(self, inputs: list[int], output: int, total: int, live: int) -> None:
        for number in inputs:
            self.total.pop(number, None)
            self.live.pop(number, None)
        self.total[output] = total
        self.live[output] = live
