"""``blobcache gc --remote``: the remote tier's garbage, collected beside live writers.

What goes, once older than ``grace`` (by the remote's own last-modified times):

* a superseded version record (one below its key's newest). Version 1 is not
  deleted but replaced by a small stub, so that "version 1 exists" keeps meaning
  "the key was ever put" (``_tier``'s invariant: a put that creates version 1 made
  the key's only version);
* a blob that no record left in place names.

Never the newest version of a key (a tombstone included: without it an older
version would win again on a machine that still holds it), nothing younger than
``grace`` (a put in flight has uploaded its blob and not yet made its record; a
reader has listed a version and not yet read it), and never below
``_tier.MIN_GRACE_SECONDS``, which the puts' version hints rely on.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from . import _format as F
from ._remote import Remote, RemoteRecord, record_path
from ._tier import MIN_GRACE_SECONDS

DEFAULT_GRACE_SECONDS = 3600.0
# What a collected version 1 becomes: a tombstone of no key, never read (it is
# never a key's newest version), recognised by its size.
STUB = RemoteRecord(b"s", b"", "superseded", deleted=True)


@dataclass
class RemoteGcResult:
    records_deleted: int = 0
    records_stubbed: int = 0
    blobs_deleted: int = 0
    bytes_freed: int = 0
    removed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_grace(grace: object) -> None:
    """:raises TypeError: not a number. :raises ValueError: below ``MIN_GRACE_SECONDS``
    (NaN included)."""
    if isinstance(grace, bool) or not isinstance(grace, (int, float)):
        raise TypeError(f"grace must be a number of seconds, not {type(grace).__name__}")
    if not grace >= MIN_GRACE_SECONDS:
        raise ValueError(
            f"grace must be at least {MIN_GRACE_SECONDS:.0f} seconds (puts rely on a version "
            f"seen that recently not being collected); got {grace}"
        )


def collect(
    remote: Remote,
    *,
    grace: float = DEFAULT_GRACE_SECONDS,
    dry_run: bool = False,
    now: float | None = None,
) -> RemoteGcResult:
    """Remove the remote's superseded records and unnamed blobs older than ``grace``
    seconds (``now``: the clock, for tests).

    :raises ValueError: ``grace`` is below ``MIN_GRACE_SECONDS``.
    :raises RemoteError: the remote failed (what was removed before stays removed:
        every step is safe alone).
    """
    check_grace(grace)
    clock = time.time() if now is None else now
    result = RemoteGcResult()
    stub = STUB.encode()
    named: set[str] = set()
    doomed: list[str] = []
    for digest, versions in remote.all_versions().items():
        *older, newest = versions
        kept = [newest[0]]
        for version, stamp, size in older:
            if clock - stamp <= grace:
                kept.append(version)
            elif version == 1:
                if size != len(stub):
                    result.records_stubbed += 1
                    result.removed.append(record_path(digest, version))
                    if not dry_run:
                        remote.overwrite(digest, version, STUB)
            else:
                doomed.append(record_path(digest, version))
        for version in kept:
            record = remote.record(digest, version)
            if record is not None and record.blob is not None:
                named.add(record.blob)
    result.records_deleted = len(doomed)
    # Listed after the records: a blob uploaded (or uploaded again: puts always
    # upload) before this list and named by a record made after that one's is
    # young here. Left: a blob's bytes uploaded again between this list and the
    # delete below, by a put whose record comes after (FORMAT.md, "Remote garbage").
    for name, stamp, size in remote.blobs():
        if name.startswith(F.REMOTE_BLOBS + "/") and name not in named and clock - stamp > grace:
            doomed.append(name)
            result.blobs_deleted += 1
            result.bytes_freed += size
    result.removed += doomed
    if not dry_run:
        remote.delete(doomed)
    return result
