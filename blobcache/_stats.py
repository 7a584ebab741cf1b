"""What an open store says of itself, from memory: ``Stats`` for users, ``Inventory``
for the maintenance command. Neither scans the disk."""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from . import _names as N
from ._index import Index, Mapped, Value, length, seq_of
from ._options import Durability

if TYPE_CHECKING:
    from ._writes import Writes


@dataclass(frozen=True)
class Stats:
    """A snapshot of an open store, from memory (no disk scan)."""

    path: str
    durability: Durability
    keys: int  # live keys
    live_bytes: int  # sum of the live values' lengths
    inline_keys: int  # keys whose value is in the log (the rest have a file each)
    next_seq: int  # the sequence number the next put or delete takes
    segments: int  # log segment files
    log_record_bytes: int  # bytes of records in the log
    log_stale_bytes: int  # of those, overwritten values and deletes: compaction's to free
    dirs_awaiting_gc: int  # key directories holding superseded or deleted records
    problems: int  # unusable files reported at open (see ``BlobCache.problems``)
    temps_removed_at_open: int  # orphaned temp files of crashed puts, deleted by recovery
    torn_bytes_at_open: int  # a torn log tail (a crash mid-write) cut off at open
    # How open used the index snapshot (INDEX): "loaded"; "none" (there was none:
    # no close since the store's first puts, or salvage); "stale: why" (a crash
    # between a compaction and its snapshot); "damaged: why" (also in problems).
    snapshot_at_open: str = "none"
    max_bytes: int | None = None  # the cap this handle keeps (None: unbounded)
    pinned_keys: int = 0  # live keys pinned (never evicted)
    evicted: int = 0  # keys this handle evicted to keep under max_bytes, since its open
    evicting_writes: int = 0  # of its puts, deletes and batches, those that had to evict
    remote: str | None = None  # the remote tier's URL (never its credentials), or None
    remote_mode: str | None = None  # "write-through" or "write-back"
    remote_pending: int = 0  # keys put or deleted here and not yet on the remote
    remote_pending_bytes: int = 0  # their bytes: what a machine loss would lose now
    remote_error: str | None = None  # the uploader's or refresher's last failure, if unresolved

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def of(
        cls,
        index: Index,
        writes: Writes,
        *,
        problems: int,
        temps_removed_at_open: int,
        torn_bytes_at_open: int,
    ) -> Stats:
        writer = writes.held.writer
        cap = writes.cap
        # No lock in a forked child, where no thread changes the book (the child
        # cannot write) and a parent thread may have held it at the fork.
        inherited = writes.held.inherited()
        with contextlib.nullcontext() if inherited else index.lock:
            # The keys the snapshot holds still count without being loaded (all
            # of them values in the log): statistics never load the index.
            values: list[Value] = [*dict.values(index.values), *index.values.files.values()]
            cold = index.cold
            cold_keys = 0 if cold is None else cold.left
            cold_bytes = 0 if cold is None else cold.untaken_bytes()
            stale, total = index.book.stale()
            segments = len(index.book.total.keys() | ({writer.number} if writer else set()))
        return cls(
            path=writes.path,
            durability=writes.options.durability,
            keys=len(values) + cold_keys,
            live_bytes=sum(map(length, values)) + cold_bytes,
            inline_keys=sum(1 for v in values if type(v) is not Mapped) + cold_keys,
            next_seq=writes.next_seq(),
            segments=segments,
            log_record_bytes=total,
            log_stale_bytes=stale,
            dirs_awaiting_gc=len(index.dirty),
            problems=problems,
            temps_removed_at_open=temps_removed_at_open,
            torn_bytes_at_open=torn_bytes_at_open,
            max_bytes=cap.max_bytes if cap is not None else None,
            pinned_keys=len(index.pins),
            evicted=cap.evicted if cap is not None else 0,
            evicting_writes=cap.evicting if cap is not None else 0,
        )


@dataclass(frozen=True)
class Inventory:
    """What the maintenance command (``_maintenance``, ``_collect``) reads of an open store,
    and all it may read: a snapshot, taken by ``BlobCache._inventory``, so the
    command never reaches into the handle's index or its bookkeeping."""

    sizes: list[tuple[N.Key, int]]  # (key, value length) of every live key
    live_versions: list[tuple[int, str]]  # (seq, path) of every live value in a file
    # The sequence number of each key's live record, or of its delete record
    # while compaction keeps it (older versions may lie in its directory).
    record_seqs: dict[N.Key, int]

    @classmethod
    def of(cls, index: Index) -> Inventory:
        """Taken without the index's lock (compaction holds it for long): each
        copy is of one moment, the three not necessarily of the same one."""
        values = index.values.stored_now()
        seqs = {key: dead.seq for key, dead in list(index.deleted.items())}
        seqs.update((key, seq_of(meta)) for key, meta in list(index.meta.items()))
        return cls(
            sizes=[(key, length(value)) for key, value in values],
            live_versions=[
                (value.record.seq, value.record.path)
                for _, value in values
                if isinstance(value, Mapped)
            ],
            record_seqs=seqs,
        )
