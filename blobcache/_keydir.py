"""Key directories: what one holds, its key file, and sorting its files out.

One directory per key (``_names.key_dir``) holds:

* ``key``: the key itself, written once and durably before any version;
* ``v-<seq>-<length>-<checksum>``: one file per version, exactly the value's bytes;
* ``.tmp-*``: a version or key file being written, flocked by its writer.

This module knows nothing of the cache: it writes and reads the key file and
says what a directory holds (``scan_key_dir``). Version files are written by
``_blob`` and mapped by ``_mapping``. The cache decides what is live; the
janitor what is garbage.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

import xxhash

from . import _filekinds, _fsio
from . import _format as F
from . import _names as N
from ._problems import Problem
from .errors import CorruptionError


@dataclass(frozen=True)
class Record:
    """One version file of a key directory."""

    seq: int
    path: str
    length: int  # bytes of the value
    checksum: int  # xxh3_64 of the value


@dataclass
class KeyDirScan:
    """What one key directory holds, sorted out.

    ``records`` are the usable ones, highest sequence number first, so
    ``records[0]`` is the newest version here (live unless the log holds a
    newer record of the key).
    ``unusable`` holds version files that failed a check (with their sequence
    numbers, which still count for the next number), ``problems`` says why.
    """

    path: str
    key: N.Key | None = None
    records: list[Record] = field(default_factory=list)
    unusable: list[Record] = field(default_factory=list)
    temps: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    # Entries under our names that are no regular files (a symbolic link, a
    # directory...): reported, never read, never removed. The highest number a
    # version name among them gives counts: should the real file come back
    # there, it must not meet a newer put with its number.
    foreign: list[str] = field(default_factory=list)
    foreign_seq: int = 0

    @property
    def live(self) -> Record | None:
        return self.records[0] if self.records else None

    @property
    def max_seq(self) -> int:
        return max([self.foreign_seq, *(r.seq for r in self.records + self.unusable)])


# --- The key file ------------------------------------------------------------------


def key_file_bytes(tag: bytes, raw: bytes) -> bytes:
    body = F.KEY_FILE_HEADER.pack(F.KEY_FILE_MAGIC, tag, len(raw)) + raw
    return body + F.KEY_FILE_TRAILER.pack(xxhash.xxh3_64_intdigest(body))


def write_key_file(keydir: str, tag: bytes, raw: bytes, *, sync: bool) -> str:
    """Write ``keydir/key`` (durably with ``sync``); return its path.

    REQUIRES: ``keydir`` exists (durably, with ``sync``).
    """
    return _fsio.write_file_atomically(keydir, F.KEY_FILE_NAME, key_file_bytes(tag, raw), sync=sync)


def read_key_file(keydir: str) -> N.Key:
    """The key stored in ``keydir/key``, checked against its checksum and the directory name.

    :raises FileNotFoundError: there is no key file.
    :raises CorruptionError: it is short, has a bad checksum, names another key,
        or is no regular file (a symbolic link is never followed).
    """
    path = os.path.join(keydir, F.KEY_FILE_NAME)
    # os.read, not open(): recovery reads one key file per key, and a buffered
    # file object costs twice the system calls' time.
    fd = _filekinds.open_regular(path)
    try:
        data = os.read(fd, F.KEY_FILE_HEADER.size + F.MAX_KEY_BYTES + F.KEY_FILE_TRAILER.size + 1)
    finally:
        os.close(fd)
    head, trail = F.KEY_FILE_HEADER.size, F.KEY_FILE_TRAILER.size
    if len(data) < head + trail:
        raise CorruptionError(path, f"key file is {len(data)} bytes, shorter than its header")
    magic, tag, length = F.KEY_FILE_HEADER.unpack_from(data)
    if magic != F.KEY_FILE_MAGIC:
        raise CorruptionError(path, f"key file starts with {magic!r}, not {F.KEY_FILE_MAGIC!r}", 0)
    if len(data) != head + length + trail:
        raise CorruptionError(
            path, f"key file is {len(data)} bytes; its header says {head + length + trail}"
        )
    (checksum,) = F.KEY_FILE_TRAILER.unpack_from(data, head + length)
    if checksum != xxhash.xxh3_64_intdigest(data[: head + length]):
        raise CorruptionError(path, "key file checksum mismatch", head + length)
    raw = data[head : head + length]
    if tag not in (F.KEY_TAG_STR, F.KEY_TAG_BYTES):
        raise CorruptionError(path, f"key file has unknown key type tag {tag!r}", 4)
    if N.key_hash(tag, raw) != os.path.basename(keydir):
        raise CorruptionError(path, "key file holds a key that does not hash to its directory")
    try:
        return N.decode_key(tag, raw)
    except UnicodeDecodeError:
        raise CorruptionError(path, "str key in key file is not valid UTF-8", head) from None


# --- Reading back ------------------------------------------------------------------------


def scan_key_dir(keydir: str, known: N.Key | None = None) -> KeyDirScan:
    """List ``keydir`` and sort its files into records, temps and problems.

    Checks what is cheap (names, sizes, kinds, the key file), not value checksums:
    those cost a pass over every byte and are checked on first ``get`` or by
    ``verify``. Only regular files count: a symbolic link, a FIFO, a device or a
    directory under a name of ours is reported and left alone.

    ``known``: the key the index snapshot says the directory holds (its name is
    that key's hash): its key file, listed as a regular file, is not read again
    (written once, durably, before any version: ``_blob``). Reading the key files
    made an open of 1,000 large keys 1.6x a scan of the tree (issue 18).
    """
    scan = KeyDirScan(keydir)
    key_kind = None
    key_listed = False
    with os.scandir(keydir) as entries:
        for entry in entries:
            if entry.name == F.KEY_FILE_NAME:
                with contextlib.suppress(FileNotFoundError):
                    key_kind = _filekinds.entry_kind(entry)
                    key_listed = True
            else:
                _sort_entry(scan, entry)
    key_path = os.path.join(keydir, F.KEY_FILE_NAME)
    key_missing = False
    try:
        if key_kind is not None:
            scan.foreign.append(key_path)
            raise CorruptionError(key_path, _filekinds.misplaced(key_kind, "a regular file"))
        # Read even when the listing did not show it: a writer may have
        # published it since, before the versions the listing did show.
        scan.key = known if known is not None and key_listed else read_key_file(keydir)
    except FileNotFoundError:
        key_missing = True
    except CorruptionError as exc:
        scan.problems.append(Problem(exc.path, exc.detail))
    except OSError as exc:
        scan.problems.append(Problem(key_path, str(exc)))
    scan.records.sort(key=lambda r: r.seq, reverse=True)
    if key_missing and (scan.records or scan.unusable):
        # Without records this is only a put killed before its key file was
        # published: garbage for the janitor, not a problem to report.
        scan.problems.append(Problem(key_path, "key file missing"))
    return scan


def _sort_entry(scan: KeyDirScan, entry: os.DirEntry[str]) -> None:
    name = entry.name
    temp = N.is_temp_name(name)
    parsed = None if temp else N.parse_version_name(name)
    if not temp and parsed is None:
        scan.problems.append(Problem(entry.path, "stray file: not a name blobcache writes"))
        return
    try:
        kind = _filekinds.entry_kind(entry)
    except FileNotFoundError:
        return  # a temp file renamed, or a version removed by a janitor, since the listing
    if kind is not None:
        scan.foreign.append(entry.path)
        scan.problems.append(Problem(entry.path, _filekinds.misplaced(kind, "a regular file")))
        if parsed is not None:  # never used, but its number is not handed out again
            scan.foreign_seq = max(scan.foreign_seq, parsed.seq)
        return
    if parsed is None:
        scan.temps.append(entry.path)
        return
    record = Record(parsed.seq, entry.path, parsed.length, parsed.checksum)
    try:
        size = entry.stat(follow_symlinks=False).st_size
    except FileNotFoundError:
        return  # removed by a janitor since the listing (blobcache gc beside a writer)
    except OSError as exc:
        scan.unusable.append(record)
        scan.problems.append(Problem(entry.path, f"cannot stat version file: {exc}"))
        return
    if size != parsed.length:
        scan.unusable.append(record)
        scan.problems.append(
            Problem(entry.path, f"version file is {size} bytes; its name says {parsed.length}")
        )
        return
    scan.records.append(record)
