"""The in-memory index: key -> the live record and, once mapped, its bytes.

Every ``get`` is a dict lookup here; nothing on its path touches the disk after
the first mapping of a version.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NoReturn

from ._blob import Record
from ._names import Key
from .errors import ClosedError


class Entry:
    """The live record of one key. ``view`` is filled on first ``get`` (mapped lazily).

    Invariant: ``record`` is never a tombstone; a deleted key has no entry.
    """

    __slots__ = ("record", "view")

    def __init__(self, record: Record) -> None:
        self.record = record
        self.view: memoryview | None = None


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
