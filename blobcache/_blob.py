"""Writing version files: temp file, write, fsync and hash, then one rename.

A version file of a key directory (``_keydir``) is exactly the value's bytes,
named ``v-<seq>-<length>-<checksum>``, so its metadata is published by the same
rename as its data. This module writes it; ``_keydir`` reads directories back
and ``_mapping`` serves a version's bytes. It knows nothing of the cache.
"""

from __future__ import annotations

import errno
import functools
import itertools
import mmap
import os
import threading
from collections.abc import Callable, Iterator, Sequence

import xxhash

from . import _fsio
from . import _names as N
from ._keydir import Record

# A version is written in two steps, so that the cache can hold its locks only
# for the second: ``write_version*`` fill a temp file in the key directory,
# fsync it and hash it, with no lock of the cache held (the caller's chunks and
# file objects are read here); ``TempVersion.publish(seq)`` then gives it its
# name -- sequence number, length and checksum -- by one rename, under the
# key's lock, where the number is taken.


class TempVersion:
    """A version's bytes in a flocked temp file of its key directory, fsynced
    (with ``sync``) and hashed, waiting for its sequence number.

    Use it as a context manager: ``name(seq)`` inside the block names it;
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

    @property
    def path(self) -> str:
        """The temp file, until it is named."""
        return self._tmp

    def name(self, seq: int, *, batch: bool = False) -> Record:
        """Rename the temp file to version ``seq``'s name (a b- name for one of a
        ``batch``: FORMAT.md, "Batches").

        REQUIRES: the log's append flock, held from taking ``seq`` to appending
        the version's record: the record follows its file, in number order.
        """
        assert self._fd is not None, "a temp version is named once"
        naming = N.batch_version_name if batch else N.version_name
        final = os.path.join(self.keydir, naming(seq, self.length, self.checksum))
        _fsio.rename(self._tmp, final)
        _fsio.unlock(self._fd)  # releases the flock: the file now has its final name
        self._fd = None
        return Record(seq, final, self.length, self.checksum)

    def publish(self, record: Record) -> None:
        """With ``sync``, fsync the key directory, so the name is durable. On a
        failed fsync the name is taken back: the put fails, so its version must
        not win at the next open (after a power cut it still may, as may any put
        that had not returned)."""
        if self._sync:
            try:
                _fsio.fsync_dir(self.keydir)
            except BaseException:
                _fsio.discard(record.path)
                raise

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


def write_parts(keydir: str, parts: Sequence[bytes | memoryview], *, sync: bool) -> TempVersion:
    """Write the concatenation of ``parts`` (a value's buffer; a typed value's
    header and data) to a temp version in ``keydir``: temp file (flocked),
    write, fsync with ``sync`` ("os" durability leaves it to the caller's next
    ``sync``).

    The checksum is computed over the file, not over ``parts``: a buffer that
    another thread changes meanwhile may leave any mix of its states in the
    file, and the name then carries the checksum of that mix, so what is served
    later is exactly what was written (never a false CorruptionError).
    """

    def fill(fd: int) -> int:
        offset = 0
        for part in parts:
            view = memoryview(part).cast("B")
            _fsio.pwrite_all(fd, view, offset)
            offset += view.nbytes
        return offset

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
