"""Values as the store takes them: a flat byte view of any buffer, or chunks of a file.

A value is anything with the buffer protocol (bytes, bytearray, memoryview, a
numpy array); it is refused when its bytes would mean nothing read back (a str,
pointers) or are not one contiguous run.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any


def as_buffer(value: object) -> memoryview:
    """A flat byte view of ``value`` (bytes, bytearray, memoryview, numpy array, ...).

    :raises TypeError: ``value`` is a ``str``, has no buffer protocol, or holds
        pointers (a numpy object array, ctypes pointers): their bytes are
        addresses in this process, meaningless once read back.
    :raises ValueError: the buffer is not C-contiguous (e.g. a strided numpy slice).
    """
    if isinstance(value, str):
        raise TypeError("values must be bytes-like, not str: encode the text first")
    try:
        view = memoryview(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            "values must be bytes-like (bytes, bytearray, memoryview, numpy array: "
            f"anything with the buffer protocol), not {type(value).__name__}"
        ) from None
    if not view.c_contiguous:
        raise ValueError(
            "values must be C-contiguous buffers; this one is strided "
            "(for numpy, pass numpy.ascontiguousarray(value))"
        )
    return view if view.format == "B" and view.ndim == 1 else _flatten(view)


# The codes of PEP 3118 / struct formats whose items are pointers: "O" a Python
# object (numpy's object arrays), "P" void*, ctypes' "z" char*, "Z" wchar_t*
# (but "Zf", "Zd", "Zg" are complex numbers), "&" a pointer to the type after
# it, "X{}" a function. Field names of a record ("T{<i:name:}") are left out first.
_FIELD_NAMES = re.compile(r":[^:]*:")
_POINTER_CODES = re.compile(r"[OPz&X]|Z(?![fdg])")


def _flatten(view: memoryview) -> memoryview:
    """``view`` as flat bytes. REQUIRES: ``view`` is C-contiguous."""
    if _POINTER_CODES.search(_FIELD_NAMES.sub("", view.format)):
        raise TypeError(
            f"values must not hold pointers, and this buffer's items (format {view.format!r}) "
            "do: their bytes mean nothing to another process. Convert it first: to a "
            "numeric dtype, or pickle it explicitly (pickle.dumps(value)) if you trust "
            "whoever reads it back"
        )
    if view.nbytes == 0:  # a zero in the shape, as np.zeros((0, 5)): cast refuses those
        return memoryview(b"")
    return view.cast("B")


def read_chunks(f: Any, size: int) -> Iterator[memoryview]:
    """Read ``f`` to its end, ``size`` bytes at a time, into one reused buffer.

    REQUIRES: each chunk is used before the next is read (written and hashed).
    """
    buffer = bytearray(size)
    view = memoryview(buffer)
    readinto = getattr(f, "readinto", None)
    while True:
        if readinto is not None:
            n = readinto(view)
            if not n:
                return
            yield view[:n]
        else:
            data = f.read(size)
            if not data:
                return
            yield as_buffer(data)
