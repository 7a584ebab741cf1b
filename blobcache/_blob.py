"""Key directories: the key file, version files, and reading them back.

One directory per key (``_names.key_dir``) holds:

* ``key``: the key itself, written once and durably before any version;
* ``v-<seq>-<length>-<checksum>``: one file per version, exactly the value's bytes;
* ``.tmp-*``: a version or key file being written, flocked by its writer.

This module knows nothing of the cache: it writes and reads these files and says
what a directory holds. The cache decides what is live; the janitor what is garbage.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import itertools
import mmap
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NoReturn

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


# --- Writing versions -------------------------------------------------------------------
#
# A version is written in two steps, so that the cache can hold its locks only
# for the second: ``write_version*`` fill a temp file in the key directory,
# fsync it and hash it, with no lock of the cache held (the caller's chunks and
# file objects are read here); ``TempVersion.publish(seq)`` then gives it its
# name -- sequence number, length and checksum -- by one rename, under the
# key's lock, where the number is taken.


class TempVersion:
    """A version's bytes in a flocked temp file of its key directory, fsynced
    (with ``sync``) and hashed, waiting for its sequence number.

    Use it as a context manager: ``publish(seq)`` inside the block names it;
    leaving the block without that (an error, a closed cache) removes the temp
    file, so a failed put leaves no trace.
    """

    def __init__(self, keydir: str, fd: int, tmp: str, length: int, checksum: int, *, sync: bool):
        self.keydir = keydir
        self.length = length
        self.checksum = checksum  # xxh3_64 of the file's bytes, as read back from it
        self._fd: int | None = fd  # open (holding the temp's flock) until the rename
        self._tmp = tmp
        self._sync = sync

    def publish(self, seq: int) -> Record:
        """Rename the temp file to version ``seq``'s name; with ``sync``, fsync the
        key directory, so the name is durable. On a failed fsync the name is
        taken back: the put fails, so its version must not win at the next open
        (after a power cut it still may, as may any put that had not returned).

        REQUIRES: the key's lock, held from taking ``seq`` to publishing the
        record: versions of one key get their names in sequence order.
        """
        assert self._fd is not None, "a temp version is published once"
        final = os.path.join(self.keydir, N.version_name(seq, self.length, self.checksum))
        _fsio.rename(self._tmp, final)
        _fsio.unlock(self._fd)  # releases the flock: the file now has its final name
        self._fd = None
        if self._sync:
            try:
                _fsio.fsync_dir(self.keydir)
            except BaseException:
                _fsio.discard(final)
                raise
        return Record(seq, final, self.length, self.checksum)

    def abandon(self) -> None:
        """Remove the temp file unless it was published."""
        if self._fd is not None:
            _fsio.unlock(self._fd)
            self._fd = None
            _fsio.discard(self._tmp)

    def __enter__(self) -> TempVersion:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abandon()


def write_version(keydir: str, data: memoryview, *, sync: bool) -> TempVersion:
    """Write ``data`` to a temp version in ``keydir``: temp file (flocked), write,
    fsync with ``sync`` ("os" durability leaves it to the caller's next ``sync``).

    The checksum is computed over the file, not over ``data``: a buffer that
    another thread changes meanwhile may leave any mix of its states in the
    file, and the name then carries the checksum of that mix, so what is served
    later is exactly what was written (never a false CorruptionError).
    """

    def fill(fd: int) -> int:
        _fsio.pwrite_all(fd, data, 0)
        return data.nbytes

    return _write_temp(keydir, fill, sync=sync)


def write_version_from(
    keydir: str, head: bytes, chunks: Iterator[memoryview], *, sync: bool
) -> TempVersion:
    """As ``write_version``, for a value given as ``head`` then ``chunks``, each
    written as it comes: memory holds one chunk, not the value."""

    def fill(fd: int) -> int:
        offset = 0
        for chunk in itertools.chain([memoryview(head)], chunks):
            _fsio.pwrite_all(fd, chunk, offset)
            offset += chunk.nbytes
        return offset

    return _write_temp(keydir, fill, sync=sync)


def write_version_copy(keydir: str, src_fd: int, size: int, *, sync: bool) -> TempVersion:
    """As ``write_version``, for the first ``size`` bytes of an open file, copied by
    the kernel (fewer if the source is shorter now). Falls back to reading and
    writing where the kernel cannot copy."""
    return _write_temp(keydir, functools.partial(_copy, src_fd, size=size), sync=sync)


_COPY_CHUNK = 64 << 20  # per copy_file_range call, and per read when falling back


def _copy(src_fd: int, fd: int, *, size: int) -> int:
    """Copy ``size`` bytes (fewer if the source is shorter now); return how many."""
    copied = 0
    try:
        while copied < size:
            n = _fsio.copy_range(src_fd, fd, min(size - copied, _COPY_CHUNK), copied)
            if n == 0:
                return copied
            copied += n
        return copied
    except OSError as exc:
        if copied or exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
    while copied < size:  # the kernel cannot copy between these two: read and write
        data = os.pread(src_fd, min(size - copied, 1 << 20), copied)
        if not data:
            break
        _fsio.pwrite_all(fd, data, copied)
        copied += len(data)
    return copied


def _write_temp(keydir: str, fill: Callable[[int], int], *, sync: bool) -> TempVersion:
    """temp file, ``fill(fd)`` -> length, then (with ``sync``) its fsync, while the
    file's bytes are hashed: the one path of every writer.

    Invariant: the checksum is of the bytes in the file, read back through
    read-only mappings, whatever the source did meanwhile (a buffer changed by
    another thread, a file growing under the copy): a version never fails its
    check for a reason other than damage after it was written.
    """
    fd, tmp = _fsio.open_temp(keydir, readable=True)
    try:
        length = fill(fd)
        hash_it = functools.partial(_checksum_file, fd, length)
        checksum = _checksum_while(_fsio.fsync_file, fd, hash_it, length) if sync else hash_it()
    except BaseException:
        _fsio.unlock(fd)
        _fsio.discard(tmp)
        raise
    return TempVersion(keydir, fd, tmp, length, checksum, sync=sync)


# Below this size a thread costs more than hashing takes (xxh3 runs at ~30 GB/s).
_OVERLAP_MIN_BYTES = 1 << 20

# A file is hashed through mappings of this much at a time: they count in the
# process's RSS while mapped, and put_file must not grow it by the value's size.
_HASH_WINDOW = 16 << 20


def _checksum_file(fd: int, length: int) -> int:
    """xxh3_64 of the first ``length`` bytes of ``fd`` (readable), a window at a time."""
    hasher = xxhash.xxh3_64()
    for start in range(0, length, _HASH_WINDOW):
        size = min(_HASH_WINDOW, length - start)
        with mmap.mmap(fd, size, offset=start, access=mmap.ACCESS_READ) as window:
            hasher.update(window)
    return hasher.intdigest()


def _checksum_while(
    fsync: Callable[[int], None], fd: int, hash_it: Callable[[], int], nbytes: int
) -> int:
    """Run ``hash_it()`` (over ``nbytes``) while ``fsync(fd)`` runs in another
    thread; return the hash.

    The checksum is needed only for the name given at the rename, after the
    fsync, and fsync releases the GIL: overlapping them takes the hash (5-7% of
    a large put) off the critical path. A failed fsync re-raises here.
    """
    if nbytes < _OVERLAP_MIN_BYTES:
        fsync(fd)
        return hash_it()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            fsync(fd)
        except BaseException as exc:
            failure.append(exc)

    worker = threading.Thread(target=run, name="blobcache-fsync")
    worker.start()
    try:
        checksum = hash_it()
    finally:
        worker.join()
    if failure:
        raise failure[0]
    return checksum


# --- Reading back ------------------------------------------------------------------------


def scan_key_dir(keydir: str) -> KeyDirScan:
    """List ``keydir`` and sort its files into records, temps and problems.

    Checks what is cheap (names, sizes, kinds, the key file), not value checksums:
    those cost a pass over every byte and are checked on first ``get`` or by
    ``verify``. Only regular files count: a symbolic link, a FIFO, a device or a
    directory under a name of ours is reported and left alone.
    """
    scan = KeyDirScan(keydir)
    key_kind = None
    with os.scandir(keydir) as entries:
        for entry in entries:
            if entry.name == F.KEY_FILE_NAME:
                with contextlib.suppress(FileNotFoundError):
                    key_kind = _filekinds.entry_kind(entry)
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
        scan.key = read_key_file(keydir)
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


def map_version(record: Record, *, check: bool) -> memoryview:
    """A read-only, zero-copy view of a version file's bytes (a mapping of it).

    With ``check``, one pass of xxh3_64 over the mapped bytes must match the
    checksum in the name. The mapping outlives an unlink of the file, so a view
    stays valid after the janitor removes a superseded version; it holds no file
    descriptor, and goes when the last view of it (slices included) is released.

    :raises CorruptionError: the size or checksum does not match the name.
    :raises OSError: the file cannot be mapped (out of address space, say).
    """
    if record.length == 0:
        view = memoryview(b"")
    else:
        try:
            fd = _filekinds.open_regular(record.path)  # never through a link, never a FIFO
        except FileNotFoundError:
            raise CorruptionError(
                record.path, "version file is missing: something other than blobcache removed it"
            ) from None
        try:
            size = os.fstat(fd).st_size
            if size != record.length:
                raise CorruptionError(
                    record.path, f"version file is {size} bytes; its name says {record.length}"
                )
            view = _map_read_only(fd, record.length)
        finally:
            os.close(fd)  # the mapping stays valid without it
    if check and xxhash.xxh3_64_intdigest(view) != record.checksum:
        raise CorruptionError(record.path, "checksum mismatch: the value's bytes were changed")
    return view


# --- Mapping without holding a descriptor -------------------------------------------------
#
# mmap.mmap keeps a dup() of the file's descriptor for the object's life (until
# Python 3.13's trackfd=False), so the index's cached views held one descriptor
# per large value ever read: at the usual limit of 1,024, about a thousand
# dataset shards ended in EMFILE. libc's mmap is called directly instead and the
# descriptor closed at once; the mapping is exported through a ctypes array that
# unmaps it when the last view of it goes. Cost, measured: a first get of 64 MiB
# (open, fstat, map, close) ~10 us, as with mmap.mmap; later gets unchanged.

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,  # addr
    ctypes.c_size_t,  # length
    ctypes.c_int,  # prot
    ctypes.c_int,  # flags
    ctypes.c_int,  # fd
    ctypes.c_int64,  # offset: off_t, 64 bits on every platform blobcache runs on
]
_libc.munmap.restype = ctypes.c_int
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_MAP_FAILED = ctypes.c_void_p(-1).value


class _Unmaps:
    """Owns one read-only mapping, as the base of its exact-length ctypes array
    type (``_mapping_type``); unmaps it when collected, i.e. once no view of it
    is left (every memoryview of it holds a reference).

    A caller can reach it as ``view.obj``: it is exactly the value's length
    (a read past it would touch memory that is not the value's), and writing
    raises, as a read-only mmap's would, rather than touch a page mapped
    read-only (a crash, not an error).
    """

    __slots__ = ()
    _length_: int

    # Bound here: a view alive at interpreter exit may outlive the module globals.
    def __del__(
        self,
        munmap: Callable[[int, int], int] = _libc.munmap,
        address_of: Callable[[Any], int] = ctypes.addressof,
    ) -> None:
        munmap(address_of(self), self._length_)

    def __setitem__(self, index: object, value: object) -> NoReturn:
        raise TypeError("a value's mapping is read-only")


def _mapping_type(length: int) -> type[ctypes.Array[ctypes.c_char]]:
    """A ctypes array type of exactly ``length`` bytes whose instances unmap.

    Made through the metaclass, not ``c_char * length``: ctypes caches the
    types the latter makes for good, one per length ever mapped; these go
    with their last instance. About 6 us, once per value's first get.
    """
    namespace = {"_type_": ctypes.c_char, "_length_": length, "__slots__": ()}
    metaclass: Any = type(ctypes.Array)
    made: type[ctypes.Array[ctypes.c_char]] = metaclass(
        "_Mapping", (_Unmaps, ctypes.Array), namespace
    )
    return made


def _map_read_only(fd: int, length: int) -> memoryview:
    """A read-only view of the first ``length`` bytes of ``fd``, mapped shared.

    REQUIRES: ``length`` > 0 and the file is at least that long.
    """
    address = _libc.mmap(None, length, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    if address is None or address == _MAP_FAILED:
        code = ctypes.get_errno()
        raise OSError(code, f"mmap of {length} bytes failed: {os.strerror(code)}")
    return memoryview(_mapping_type(length).from_address(address)).cast("B").toreadonly()
