"""The in-memory index: key -> where its live record is, and its bytes.

Every ``get`` is a dict lookup here; nothing on its path touches the disk after
the first mapping of a large value.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NoReturn

from ._names import Key
from .errors import ClosedError

if TYPE_CHECKING:  # the index names the layouts' records; it imports neither layout
    from ._keydir import Record

# Entries are positional, not objects with named fields: opening a store makes
# one entry per log record, and building a tuple costs far less than calling a class
# with __slots__ (an open of 1,000,000 small keys: 1.15 s of replay against 1.45 s,
# measured 2026-11-28). ``get`` reads ``entry[VALUE]`` of either kind.
#
#   log entry:  (seq, value: bytes, segment, size)      a tuple, never changed;
#               compaction replaces it with one naming the new segment.
#               value is None only in replay, for a delete record.
#   blob entry: [seq, None, record, view: memoryview | None]  a BlobEntry; the
#               view is filled in by the first get that maps the file. It is
#               never handed out itself: each get returns a slice of it, which
#               the caller may release (``with cache.get(k) as v:``) without
#               breaking the key for everyone else.
SEQ: Final = 0
VALUE: Final = 1  # the value's bytes (log entries); None: not in memory, see VIEW
SEGMENT: Final = 2  # log entries
SIZE: Final = 3  # log entries: the record's bytes in its segment
RECORD: Final = 2  # blob entries
VIEW: Final = 3  # blob entries: the mapping of the file, once mapped

LogEntry = tuple[int, bytes | None, int, int]


class BlobEntry(list[Any]):
    """The live record of a key whose value is a version file: [seq, None, record, view].

    ``entry[VALUE]`` is None, so ``get`` tells the two kinds apart by the one
    subscript it makes of either; a list, so the view can be set once mapped.
    """

    __slots__ = ()

    def __init__(self, record: Record) -> None:
        super().__init__((record.seq, None, record, None))


Entry = LogEntry | BlobEntry


def blob_of(entry: Entry) -> Record | None:
    """The version file of a blob entry; None for a log entry."""
    if type(entry) is BlobEntry:
        record: Record = entry[RECORD]
        return record
    return None


def length(entry: Entry) -> int:
    """The value's length in bytes."""
    record = blob_of(entry)
    if record is not None:
        return record.length
    value = entry[VALUE]
    assert value is not None, "an entry in the index is never a delete"
    return len(value)


def inline_value(entry: Entry) -> bytes:
    """The bytes of a log entry."""
    value = entry[VALUE]
    assert isinstance(value, bytes), "log entries hold their value as bytes"
    return value


@dataclass
class Deleted:
    """A delete record in the log, kept in memory while versions older than it
    may lie in its key's directory (the key deleted, or put again as a newer
    version): compaction must copy it forward until the janitor removes them,
    or they would come back (see ``BlobCache._still_needs_delete``)."""

    seq: int
    segment: int
    size: int


class ClosedIndex(dict[Key, Entry]):
    """Stands in for the index after ``close()``: every use raises ``ClosedError``.

    Swapping the index for this keeps the "is it closed?" test off the ``get``
    hot path: a lookup in a closed cache fails by itself.
    """

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def _closed(self, *_: object) -> NoReturn:
        raise ClosedError(self.path)

    __getitem__ = __contains__ = __setitem__ = __delitem__ = get = pop = _closed

    def __len__(self) -> int:
        self._closed()

    def __iter__(self) -> Iterator[Key]:
        self._closed()
