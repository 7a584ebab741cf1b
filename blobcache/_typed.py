"""Typed values between the face and the write path: a put of encoded parts, and
which codec a get's value has.

``_codecs`` turns an array, a dict of arrays, plain data (or, asked by name, a
pickle) into parts of bytes and back; this module stores those parts under a
key with their codec in the record (FORMAT.md, "Typed values") and, for a get,
tells the codec of the very value it returned:

* a small value is held in the index as a bytes subclass per codec
  (``_index.NpyBytes``...), so the object ``get`` returned says its codec;
* a value in a file is a view of its mapping: the codec is its ``Mapped``'s if
  that mapping is the key's live one, else a put came between the two looks
  and the caller looks again.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from . import _blob, _codecs
from . import _format as F
from . import _names as N
from ._buffers import as_buffer
from ._index import CODEC_OF, Mapped, Values
from ._writes import StripeGuard, Writes

if TYPE_CHECKING:
    from ._tier import Gate


def encode(value: object, serializer: str | None) -> tuple[Sequence[bytes | memoryview], int, int]:
    """``put_object``'s value as (parts, length, codec): bytes-like values as they
    are (codec raw, as ``put`` stores them), anything else by ``_codecs.encode``.

    :raises TypeError: as ``_codecs.encode``; a buffer that is not contiguous.
    :raises ValueError: as ``_codecs.encode``.
    """
    if serializer is None and isinstance(value, (bytes, bytearray, memoryview)):
        data = as_buffer(value)
        return (data,), data.nbytes, F.CODEC_RAW
    encoded = _codecs.encode(value, serializer)
    return encoded.parts, encoded.length, encoded.codec


def write(
    writes: Writes,
    key: N.Key,
    tag: bytes,
    raw: bytes,
    stripe: StripeGuard,
    parts: Sequence[bytes | memoryview],
    length: int,
    codec: int,
    expires: int,
    pin: bool,
    gate: Gate | None = None,
) -> bool:
    """Store the concatenation of ``parts`` (``length`` bytes) as the key's value
    of ``codec``: in the log below ``inline_limit``, else a version file
    written part by part (an array's data straight from the array, no copy);
    with a write-through ``gate``, once the remote has it (a file's upload runs
    beside its local write). Returns whether a sealed segment got staler.
    REQUIRES: the key checked."""
    writes.check_fits(length)
    if length < writes.options.inline_limit:
        inline = bytes(parts[0]) if len(parts) == 1 else b"".join(parts)
        if gate is not None:
            gate.inline(inline)
        with stripe:
            return writes.put_inline(key, tag, raw, inline, expires, pin, codec)
    if gate is not None:
        gate.early(parts, length)
    return writes.put_version(
        key,
        tag,
        raw,
        stripe,
        lambda keydir, sync: _blob.write_parts(keydir, parts, sync=sync),
        expires,
        pin,
        codec,
        gate,
    )


def codec_of_got(values: Values, key: N.Key, got: Any) -> int | None:
    """The codec of ``got``, what a get of ``key`` just returned; None if it was
    a version that is no longer the key's live one (get again)."""
    if type(got) is not memoryview:
        return CODEC_OF.get(type(got), F.CODEC_RAW)  # bytes, or a typed value's bytes
    mapped = values.files.get(key)
    if mapped is None or mapped.view is None or mapped.view.obj is not got.obj:
        return None
    return mapped.codec


def private_paths(
    root: str, values: Values, key: N.Key
) -> Callable[[], tuple[list[str], set[str]]]:
    """The directories and files whose writers could have planted the value of
    ``key``: the store's, the log's and its segments, or the key's directories
    and its file; to check before unpickling. Returned with those of them that
    may vanish before they are looked at (the log's entries: compaction)."""

    def paths() -> tuple[list[str], set[str]]:
        logdir = os.path.join(root, F.LOG_DIR)
        found = [root, logdir, os.path.join(root, F.BLOBS_DIR)]
        entries = [os.path.join(logdir, name) for name in sorted(os.listdir(logdir))]
        found += entries
        mapped = values.files.get(key)
        if isinstance(mapped, Mapped):
            keydir = os.path.dirname(mapped.record.path)
            fanout2 = os.path.dirname(keydir)
            found += [os.path.dirname(fanout2), fanout2, keydir, mapped.record.path]
        return found, set(entries)

    return paths
