"""The in-memory index: key -> where its live record is, and its bytes.

Every ``get`` is a dict lookup here; nothing on its path touches the disk after
the first mapping of a large value.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import NoReturn

from ._blob import Record
from ._names import Key
from .errors import ClosedError


class Entry:
    """The live record of one key, in the log or in a blob version file.

    * log: ``value`` holds the bytes, ``segment``/``size`` where the record lies
      (for compaction's accounting), ``blob`` is None;
    * blob: ``blob`` is the version file, ``value`` its mapped view once a
      ``get`` has mapped it (lazily), ``segment`` is ``NOT_IN_LOG``.

    Invariant: an entry is never a delete; a deleted key has no entry.
    """

    __slots__ = ("blob", "segment", "seq", "size", "value")

    def __init__(
        self,
        seq: int,
        value: bytes | memoryview | None,
        blob: Record | None,
        segment: int,
        size: int,
    ) -> None:
        self.seq = seq
        self.value = value
        self.blob = blob
        self.segment = segment
        self.size = size

    @classmethod
    def for_blob(cls, record: Record) -> Entry:
        return cls(record.seq, None, record, NOT_IN_LOG, 0)

    @property
    def length(self) -> int:
        """The value's length in bytes."""
        if self.blob is not None:
            return self.blob.length
        assert self.value is not None
        return len(self.value)


NOT_IN_LOG = -1


@dataclass
class Deleted:
    """A delete record in the log, kept in memory while its key still has a blob
    directory: compaction must copy it forward until the janitor removes that
    directory, or older versions there would come back."""

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
