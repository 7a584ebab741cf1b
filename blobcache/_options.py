"""Every option of a :class:`~blobcache.BlobCache`: effect, default, trade-off."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from . import _format as F
from ._clock import check_ttl

Durability = Literal["fsync", "os"]
DURABILITY_LEVELS: tuple[Durability, ...] = ("fsync", "os")


@dataclass(frozen=True)
class Options:
    """The options of one open store; ``BlobCache(path, **fields)`` takes them by name."""

    durability: Durability = "fsync"
    """What an acknowledged ``put``/``delete`` survives.

    ``"fsync"`` (default): power loss and kernel crashes. Before ``put`` returns,
    a small value's log record is fdatasynced (one fdatasync shared by concurrent
    puts: about 0.11 ms on the reference machine), or a large value's file and
    every directory entry it depends on are fsynced (about 0.5 ms more than the
    bytes' own writing).

    ``"os"``: a crash of this process (SIGKILL, OOM kill, an exception). The bytes
    are in the kernel when ``put`` returns; a background thread fsyncs them every
    ``sync_interval`` seconds, and ``sync()`` does it on demand. A power cut may
    lose puts made since the last sync (never a value that was synced). About
    90,000 small puts a second from one process on the reference machine
    (``tools/bench.py --only processes``, 2026-12-01; 130,000 before several
    processes could write a store: the append's flock and shared state cost
    about 4 us a put)."""

    sync_interval: float = 1.0
    """Seconds between background fsyncs with ``durability="os"`` (ignored with
    ``"fsync"``). Shorter loses less on power loss and costs more fsyncs."""

    verify_on_get: bool = True
    """Check a large value's xxh3 checksum on its first ``get`` in this process
    (one pass over the bytes, about 15 GB/s) and raise ``CorruptionError``
    rather than return bad bytes. Turn off for huge values read only in part,
    and run ``blobcache verify`` instead; sizes are always checked at open."""

    inline_limit: int = 256 << 10
    """Values shorter than this many bytes (default 256 KiB) go to the log and are
    held in memory as ``bytes``; longer ones get a file of their own, mapped on
    ``get``. A durable put to the log costs one append and one fdatasync shared
    with concurrent puts; a file costs a create, two fsyncs and a rename, and
    for a new key its directories and key file too. Raising it holds more bytes
    in memory and makes compaction copy more; 0 puts every value in a file.

    The default is the crossover measured by ``tools/bench.py --only crossover``
    (then ``tools/bench_floor.py``; 2026-11-28,
    git 1c2dfcf, one thread, durability="fsync"): a file's put costs 3.4x /
    3.3x / 3.1x / 1.9x / 1.23x / 0.81x the log's for 1 KiB / 4 / 16 / 64 /
    256 KiB / 1 MiB values of an existing key (3.1x at 256 KiB for a new key).
    From 256 KiB on a file costs little more, reads zero-copy, and keeps the
    bytes out of memory and out of compaction."""

    # --- performance knobs: effects on speed and space, never on what survives ---

    segment_bytes: int = 64 << 20
    """Size at which the active log segment is sealed and a new one started
    (default 64 MiB). Smaller segments are compacted sooner but mean more files."""

    compact_ratio: float = 0.5
    """Compact the log in the background once this fraction of the sealed
    segments' bytes is stale (overwritten or deleted values). Lower keeps the
    disk smaller and costs more rewriting; ``gc()`` compacts whatever the ratio."""

    salvage: bool = False
    """Open a store whose sealed log segment has a bad record by dropping the
    rest of that segment (each drop reported in ``problems``) instead of raising
    ``CorruptionError``. Values in the dropped part fall back to older records.
    The same for a missing log segment, ``log/`` or ``blobs/``: open with what
    is left (a key deleted or overwritten there may come back or roll back)."""

    gc_interval: float | None = None
    """Run ``gc()`` (the janitor, then log compaction) in a background thread
    every this many seconds; None (the default) leaves it to calls of ``gc()``
    and to ``blobcache gc``. A failed background gc is logged and retried at the
    next interval; what it left is still garbage then."""

    readonly: bool = False
    """Open without the writer lock, beside a live writer (another process, or
    another handle): the index is what the files held at open, nothing on disk
    is changed, and put, delete, gc and sync raise ``ReadOnlyError``. A value
    file the writer's janitor removes after the open reads as ``CorruptionError``
    ("missing"); open again to see the writer's newer values."""

    trust_filesystem: bool = False
    """Write a store on a file system where flock or fsync may not hold: NFS,
    SMB/CIFS, Lustre, GPFS, FUSE, 9P, Ceph, AFS, told by statfs(2) on Linux
    (elsewhere nothing is refused). By default (False) a writer there raises
    ``UnsafeFilesystemError`` before anything is made or changed: a second
    writer that flock did not keep out, or an fsync that returned before the
    bytes were durable, would corrupt the store without a sign. True skips the
    check, for a file system known to honour both (a FUSE file system made for
    tests, say); the guarantees are then that file system's. A ``readonly=True``
    handle is never refused: it changes nothing, so it cannot corrupt."""

    refresh_interval: float = 0.05
    """Seconds between catching up with the puts and deletes of other processes
    (default 50 ms): a hit may serve a value that long out of date. A miss, and
    ``refresh()``, always catch up first, so a put acknowledged in another
    process is never reported missing. Catching up when nothing changed costs
    a look at the mapped ``STATE`` (about a microsecond); shorter intervals cost
    a background wake-up each."""

    default_ttl: float | None = None
    """Seconds after which a value put without a ``ttl`` of its own expires
    (default None: never). An expired key misses in every process and after a
    reopen; ``gc()``, compaction and a background sweep reclaim its space.
    Measured by the wall clock (FORMAT.md, "Expiry"): a clock set forward
    expires values early, one set back keeps them longer."""

    max_bytes: int | None = None
    """A bound on the live bytes of the store (the sum of its live values'
    lengths), or None (the default): unbounded. A put, delete or batch of this
    handle returns with the store's live bytes at or under it, counting what
    every process wrote: it first evicts other keys, chosen by SIEVE, with
    evict records (FORMAT.md, "Pins and evictions"). It never evicts the key it
    puts, a key of its own batch, nor a pinned key; a value larger than the
    bound raises ``CacheFullError`` (a ``ValueError``), as does a put the
    pinned keys leave no room for. A store found over it at open is brought
    under it then (but for what pinned keys alone hold: logged). The bound is
    this handle's: a writer opened without it evicts nothing (the next capped
    put brings the store back under). Disk use is the live bytes plus what
    awaits ``gc()``."""

    remote: str | None = None
    """A remote tier: ``"s3://bucket/prefix"`` on an S3-compatible object store
    (default None: none). The store then survives the loss of the machine, and
    stores of other machines on the same remote share its values: a local miss
    reads through (checked before it is served), and per key the highest remote
    version wins everywhere (README, "A remote tier"). The client's settings
    (endpoint, region, credentials, ``client_options={"allow_http": True}`` for a
    local server) are ``BlobCache(remote_options=...)``'s, never written anywhere."""

    remote_mode: str = "write-through"
    """``"write-through"`` (default): ``put`` returns once the value is durable
    locally and on the remote (a machine loss loses no acknowledged put; it
    costs a request to the remote per put). ``"write-back"``: ``put`` returns
    once local; a background thread uploads in put order, and ``flush_remote()``
    waits for everything put so far (a machine loss loses what ``stats()`` shows
    as ``remote_pending``)."""

    remote_refresh: float = 60.0
    """Seconds between lists of the remote's records (default 60): a local hit
    may be older than the remote's newest version by that much (plus a list's
    time; while the remote is unreachable, hits are served as they are). A miss
    always asks the remote; ``get(key, refresh=True)`` and ``refresh()`` ask at
    once. Each list costs one request per 1,000 record objects."""

    def __post_init__(self) -> None:
        if self.durability not in DURABILITY_LEVELS:
            raise ValueError(
                f"durability must be one of {', '.join(map(repr, DURABILITY_LEVELS))}; "
                f"got {self.durability!r}"
            )
        _check_seconds("sync_interval", self.sync_interval)
        _check_seconds("refresh_interval", self.refresh_interval)
        if self.gc_interval is not None:
            _check_seconds("gc_interval", self.gc_interval)
        if self.default_ttl is not None:
            check_ttl("default_ttl", self.default_ttl)
        for name in ("verify_on_get", "salvage", "readonly", "trust_filesystem"):
            check_flag(name, getattr(self, name))
        _check_int("inline_limit", self.inline_limit, 0, F.MAX_INLINE_VALUE)
        if self.max_bytes is not None:
            _check_int("max_bytes", self.max_bytes, 1, 2**63)
        _check_int("segment_bytes", self.segment_bytes, 4096, 2**40)
        if self.remote is not None:
            _check_remote(self)
        elif (self.remote_mode, self.remote_refresh) != (
            Options.remote_mode,
            Options.remote_refresh,
        ):
            raise ValueError("remote_mode and remote_refresh need a remote (remote=...)")
        ratio = self.compact_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
            raise TypeError(f"compact_ratio must be a number, not {type(ratio).__name__}")
        if not 0 < ratio <= 1:
            raise ValueError(f"compact_ratio must be in (0, 1]; got {ratio!r}")


def _check_remote(options: Options) -> None:
    from ._remote import parse_url
    from ._tier import check_mode

    parse_url(options.remote)
    check_mode(options.remote_mode)
    _check_seconds("remote_refresh", options.remote_refresh)
    if options.readonly:
        raise ValueError(
            "a readonly handle cannot have a remote: reading through stores the value locally"
        )
    if options.remote_mode == "write-back" and options.max_bytes is not None:
        raise ValueError(
            "remote_mode='write-back' with max_bytes is refused: an eviction could drop "
            "a value not yet uploaded"
        )


def check_flag(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, not {type(value).__name__}")


def _check_seconds(name: str, interval: object) -> None:
    if isinstance(interval, bool) or not isinstance(interval, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(interval).__name__}")
    if not (math.isfinite(interval) and interval > 0):
        raise ValueError(f"{name} must be a positive, finite number of seconds; got {interval!r}")


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}; got {value}")
