"""What a store reports instead of serving: the vocabulary both layouts share.

The log (``_log``) and the key directories (``_keydir``) each find files they
cannot use; neither knows the other, so the word for it lives here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """A file the store could not use, with what was wrong; reported, never served."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def stray(path: str) -> Problem:
    """An entry whose name blobcache never writes: reported, left alone."""
    return Problem(path, "stray entry: not a name blobcache writes")
