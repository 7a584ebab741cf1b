"""blobcache: a durable key-value cache for ML artifacts.

``put`` returns once the value survives a crash; ``get`` is served from memory
(large values as zero-copy views of their files); a new process recovers every
acknowledged put. See README.md for the guarantees and FORMAT.md for the bytes.
"""

from ._batch import Batch
from ._janitor import GcResult
from ._options import Options
from ._problems import Problem
from .aio import AsyncBlobCache
from .cache import BlobCache, Stats
from .errors import (
    BatchError,
    BlobCacheError,
    CacheFullError,
    ClosedError,
    CorruptionError,
    LockedError,
    ReadOnlyError,
    RemoteError,
    UnsafeFilesystemError,
)

__all__ = [
    "AsyncBlobCache",
    "Batch",
    "BatchError",
    "BlobCache",
    "BlobCacheError",
    "CacheFullError",
    "ClosedError",
    "CorruptionError",
    "GcResult",
    "LockedError",
    "Options",
    "Problem",
    "ReadOnlyError",
    "RemoteError",
    "Stats",
    "UnsafeFilesystemError",
]
__version__ = "0.1.0"
