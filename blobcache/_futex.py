"""Sleeping on a word of a shared mapping until another process changes it.

Linux's futex(2), through ctypes: ``wait`` sleeps while the 32-bit word at an
address still holds the value its caller read, for at most a timeout; ``wake``
wakes every sleeper on the word. A futex on a shared file mapping is keyed by
the file and offset, so processes that map ``STATE`` wait on one word. Where
there is no futex (another system or architecture, a 32-bit Python, a sandbox
that refuses the call: a probe at import tells), ``available`` is False and
nothing here is called: the log's writers then fdatasync each for itself
(``_shared.SharedState.sync_shared``).
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Any, Final

# futex(2)'s number, per architecture, where Linux defines one (64-bit only).
_SYSCALL: Final = {"x86_64": 202, "aarch64": 98}
_WAIT: Final = 0  # FUTEX_WAIT, shared (no FUTEX_PRIVATE_FLAG: across processes)
_WAKE: Final = 1  # FUTEX_WAKE
_EVERYONE: Final = 1 << 30


class _Timespec(ctypes.Structure):
    _fields_ = (("seconds", ctypes.c_long), ("nanoseconds", ctypes.c_long))


def _syscall() -> tuple[Any, int] | None:
    """libc's ``syscall`` and futex's number, if a probe wake succeeds."""
    if not sys.platform.startswith("linux") or sys.maxsize <= 2**32:
        return None
    number = _SYSCALL.get(os.uname().machine)
    if number is None:
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).syscall
    except (OSError, AttributeError):
        return None
    function.restype = ctypes.c_long
    word = ctypes.c_uint32(0)
    woken = function(
        ctypes.c_long(number),
        ctypes.byref(word),
        ctypes.c_int(_WAKE),
        ctypes.c_int(1),
        None,
        None,
        ctypes.c_int(0),
    )
    return (function, number) if woken == 0 else None


_FUTEX = _syscall()
available: Final = _FUTEX is not None


def wait(address: int, seen: int, timeout: float) -> None:
    """Sleep until the u32 at ``address`` is woken or no longer ``seen``, or for
    ``timeout`` seconds, whichever is first (or not at all: a signal, a change
    before the call). The caller looks again at what it waits for, whatever
    the reason it woke. REQUIRES: ``available``; ``address`` is in a shared
    mapping that stays mapped (an unmapped one fails the call, harmlessly)."""
    assert _FUTEX is not None
    function, number = _FUTEX
    whole = int(timeout)
    span = _Timespec(whole, int((timeout - whole) * 1e9))
    function(
        ctypes.c_long(number),
        ctypes.c_void_p(address),
        ctypes.c_int(_WAIT),
        ctypes.c_uint32(seen),
        ctypes.byref(span),
        None,
        ctypes.c_int(0),
    )


def wake(address: int) -> None:
    """Wake every process and thread sleeping on the u32 at ``address``."""
    assert _FUTEX is not None
    function, number = _FUTEX
    function(
        ctypes.c_long(number),
        ctypes.c_void_p(address),
        ctypes.c_int(_WAKE),
        ctypes.c_int(_EVERYONE),
        None,
        None,
        ctypes.c_int(0),
    )


def address_of(buffer: Any, offset: int) -> int:
    """The address of byte ``offset`` of a writable buffer (a mapping), taken
    without keeping an export of it (so the mapping can still be closed)."""
    cell = ctypes.c_char.from_buffer(buffer, offset)
    try:
        return ctypes.addressof(cell)
    finally:
        del cell
