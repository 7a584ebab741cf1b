"""The in-memory index, in two dicts: what ``get`` reads, and what only writers read.

* ``values``: key -> the value itself (``bytes``) for a value in the log, or a
  ``Mapped`` for a value in a file. ``get`` is one lookup here: a small value
  comes back as the very object stored, with nothing to follow (issue 13:
  chasing an entry tuple made a get 1.65-1.84x a bare ``dict.get``).
* ``meta``: key -> where its live record is, packed into one int (``pack``):
  the sequence number, the log segment (0 for a version file) and the record's
  bytes in that segment. Only puts, deletes, compaction, recovery and the
  statistics read it; it is one object per key, which is what replay builds
  per record besides the value.

Invariant: the two have the same keys, outside a writer's stripe lock (and,
during recovery, until ``_recovery._merge`` drops the deletes).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, NoReturn

from ._names import Key
from .errors import ClosedError

if TYPE_CHECKING:  # the index names the layouts' records; it imports neither layout
    from ._blob import Record


class Mapped:
    """A value in a version file, as ``values`` holds it: the file, and its
    mapping once the first ``get`` made it.

    The view is never handed out itself: each get returns a slice of it, which
    the caller may release (``with cache.get(k) as v:``) without breaking the
    key for everyone else.
    """

    __slots__ = ("record", "view")

    def __init__(self, record: Record) -> None:
        self.record = record
        self.view: memoryview | None = None


Value = bytes | Mapped  # what ``values`` holds

# meta's packing: seq << SEQ_SHIFT | segment << SEGMENT_SHIFT | size. An int,
# not a tuple: opening a store makes one per log record, and an int is one
# object where a (seq, segment, size) tuple is two or three. Each field is 64
# bits: segment numbers have 16 hex digits in their names, and a record's size
# can pass 4 GiB (a u32 value plus its key and header).
SEQ_SHIFT: Final = 128
SEGMENT_SHIFT: Final = 64
FIELD_MASK: Final = (1 << 64) - 1
IN_A_FILE: Final = 0  # the segment of a value in a version file (segments start at 1)


def pack(seq: int, segment: int, size: int) -> int:
    """A key's ``meta``: its record ``seq``, in log ``segment`` (``IN_A_FILE``
    for a version file), taking ``size`` bytes there."""
    return seq << SEQ_SHIFT | segment << SEGMENT_SHIFT | size


def seq_of(meta: int) -> int:
    return meta >> SEQ_SHIFT


def segment_of(meta: int) -> int:
    return meta >> SEGMENT_SHIFT & FIELD_MASK


def size_of(meta: int) -> int:
    return meta & FIELD_MASK


def length(value: Value) -> int:
    """The value's length in bytes."""
    return value.record.length if isinstance(value, Mapped) else len(value)


@dataclass
class Deleted:
    """A delete record in the log, kept in memory while versions older than it
    may lie in its key's directory (the key deleted, or put again as a newer
    version): compaction must copy it forward until the janitor removes them,
    or they would come back (see ``BlobCache._still_needs_delete``)."""

    seq: int
    segment: int
    size: int


class ClosedIndex(dict[Key, Value]):
    """Stands in for ``values`` after ``close()``: every use raises ``ClosedError``.

    Swapping the dict for this keeps the "is it closed?" test off the ``get``
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
