"""Every option of a :class:`~blobcache.BlobCache`: effect, default, trade-off."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Durability = Literal["fsync", "os"]
DURABILITY_LEVELS: tuple[Durability, ...] = ("fsync", "os")


@dataclass(frozen=True)
class Options:
    """The options of one open store; ``BlobCache(path, **fields)`` takes them by name."""

    durability: Durability = "fsync"
    """What an acknowledged ``put``/``delete`` survives.

    ``"fsync"`` (default): power loss and kernel crashes. The value file and every
    directory entry it depends on are fsynced before ``put`` returns; costs a few
    fsyncs per put (about 0.5 ms for a small value on the reference machine).

    ``"os"``: a crash of this process (SIGKILL, OOM kill, an exception). The bytes
    are in the kernel when ``put`` returns; a background thread fsyncs them every
    ``sync_interval`` seconds, and ``sync()`` does it on demand. A power cut may
    lose puts made since the last sync (never a value that was synced)."""

    sync_interval: float = 1.0
    """Seconds between background fsyncs with ``durability="os"`` (ignored with
    ``"fsync"``). Shorter loses less on power loss and costs more fsyncs."""

    verify_on_get: bool = True
    """Check a large value's xxh3 checksum on its first ``get`` in this process
    (one pass over the bytes, about 15 GB/s) and raise ``CorruptionError``
    rather than return bad bytes. Turn off for huge values read only in part,
    and run ``blobcache verify`` instead; sizes are always checked at open."""

    def __post_init__(self) -> None:
        if self.durability not in DURABILITY_LEVELS:
            raise ValueError(
                f"durability must be one of {', '.join(map(repr, DURABILITY_LEVELS))}; "
                f"got {self.durability!r}"
            )
        interval = self.sync_interval
        if isinstance(interval, bool) or not isinstance(interval, (int, float)):
            raise TypeError(
                f"sync_interval must be a number of seconds, not {type(interval).__name__}"
            )
        if not (math.isfinite(interval) and interval > 0):
            raise ValueError(
                f"sync_interval must be a positive, finite number of seconds; got {interval!r}"
            )
        if not isinstance(self.verify_on_get, bool):
            raise TypeError(
                f"verify_on_get must be True or False, not {type(self.verify_on_get).__name__}"
            )
