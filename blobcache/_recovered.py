"""What open found, and how recovery reports a file it cannot use.

``Recovered`` is what ``_recovery.recover`` fills and the cache takes over: the
index, the highest sequence number, and what the janitor and compaction owe.
Damage that may have lost records raises unless the open salvages
(``damage``); an entry of a name blobcache never writes is reported
(``stray``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import _log
from . import _names as N
from ._dirbook import Book
from ._index import Deleted, Values
from ._keydir import Record
from ._problems import Problem
from ._snapshot import Cold
from .errors import CorruptionError


@dataclass
class Recovered:
    """What open found: the index, the highest sequence number, and what needs the janitor."""

    values: Values = field(default_factory=lambda: Values({}, {}))  # the index (see _index)
    meta: dict[N.Key, int] = field(default_factory=dict)
    max_seq: int = 0
    key_dirs: set[str] = field(default_factory=set)  # dirs with a valid key file
    dirty: set[str] = field(default_factory=set)  # dirs holding something the janitor removes
    empty_fanouts: set[str] = field(default_factory=set)  # fan-out dirs with nothing inside
    dir_of: dict[N.Key, str] = field(default_factory=dict)  # key -> its directory
    deleted: dict[N.Key, Deleted] = field(default_factory=dict)  # deletes compaction keeps
    segments: list[_log.SegmentRead] = field(default_factory=list)  # in force, oldest first
    segment_total: dict[int, int] = field(default_factory=dict)  # record bytes per segment
    segment_live: dict[int, int] = field(default_factory=dict)  # live put bytes per segment
    torn_bytes: int = 0  # cut off the active segment's tail (a crash mid-write)
    log_deletes: list[N.Key] = field(default_factory=list)  # keys of deletes newest when read
    # key -> its key directory's versions, newest first, when the newest is one
    # of a batch: the log decides which of them counts (_recovery._commit_batches)
    batch_versions: dict[N.Key, list[Record]] = field(default_factory=dict)
    # The numbers of the log's version records -> (when their values expire, 0 for
    # never; their segment; their size; their codec)
    noted: dict[int, tuple[int, int, int, int]] = field(default_factory=dict)
    # key -> (segment, size) of the version record its live file counts by (a b-
    # file's, or one with an expiry): booked live, see Index.notes
    notes: dict[N.Key, tuple[int, int]] = field(default_factory=dict)
    # key -> the number of its newest record with a say on its pin, negated for
    # an unpin (_log.replay); ``pins``: the keys pinned, once merged
    pin_says: dict[N.Key, int] = field(default_factory=dict)
    pins: set[N.Key] = field(default_factory=set)
    now: int = 0  # the time expiry was judged by (ms since the epoch)
    # key -> when its live value in the log expires (ms since the epoch), for those that do
    expiry: dict[N.Key, int] = field(default_factory=dict)
    blob_over_log: dict[N.Key, str] = field(default_factory=dict)  # key -> dir, see _merge
    # key -> (seq, value or None for a delete, codec) of the log record its blob beat
    log_under_blob: dict[N.Key, tuple[int, bytes | None, int]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    temps_removed: int = 0
    readonly: bool = False  # beside a live writer: read, never change a file
    # (segment, offset) the log is read up to in that segment: beside live
    # handles, the end of what STATE says was appended (what lies past it is an
    # append under way, or a dead or failed one, and never anyone's to serve).
    bound: tuple[int, int] | None = None
    # The keys the index snapshot holds that recovery did not need (_snapshot.Cold),
    # loaded as they are looked up; None without a snapshot.
    cold: Cold | None = None
    # (segment, offset, max_seq) of the snapshot loaded, when nothing came after it.
    snapshot_mark: tuple[int, int, int] | None = None
    # The snapshot's directory book (_dirbook), and how many directories it did
    # not vouch for that a new one could (a reason to write the snapshot again).
    book: Book = field(default_factory=lambda: ({}, {}))
    book_misses: int = 0
    # How open used the snapshot: "loaded", "none", "stale: why", "damaged: why".
    snapshot: str = "none"
    # STATE's count of compactions the index's log positions are of (None: unknown).
    generation: int | None = None


def damage(result: Recovered, path: str, why: str, *, salvage: bool) -> Problem:
    """Raise for damage that may have lost records, or with ``salvage`` report it.

    :raises CorruptionError: unless ``salvage``.
    """
    if not salvage:
        raise CorruptionError(path, f"{why}; open with salvage=True to open with what is left")
    problem = Problem(path, f"{why}: opened with what is left")
    result.problems.append(problem)
    return problem
