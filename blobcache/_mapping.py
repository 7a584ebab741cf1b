"""Serving a version file: a read-only, zero-copy mapping of it, checked.

``map_version`` maps a version file (``_keydir.Record``) through libc, so the
mapping holds no file descriptor, and checks its bytes against the checksum in
its name. ``get`` serves slices of the view it returns; ``verify`` and ``gc``
check versions through it.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

import xxhash

from . import _filekinds
from .errors import CorruptionError

if TYPE_CHECKING:
    from ._keydir import Record


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
