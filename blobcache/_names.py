"""Keys to directories, and the names of version and temp files.

Pure functions over strings (but for ``temp_name``'s random bits): no I/O.
``FORMAT.md`` gives the grammar these format and parse; the constants come
from ``_format``.
"""

from __future__ import annotations

import os
import re
import secrets
from typing import NamedTuple

import xxhash

from . import _format as F

Key = str | bytes


def encode_key(key: object) -> tuple[bytes, bytes]:
    """Return (tag, key bytes) for a str or bytes key; raise for anything else.

    :raises TypeError: the key is neither ``str`` nor ``bytes``.
    :raises ValueError: the key is too long, or a str that UTF-8 cannot encode.
    """
    if isinstance(key, str):
        tag = F.KEY_TAG_STR
        try:
            raw = key.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"str keys must be encodable as UTF-8; this one is not ({exc.reason} "
                f"at position {exc.start}): use a bytes key for arbitrary bytes"
            ) from None
    elif isinstance(key, bytes):
        tag = F.KEY_TAG_BYTES
        raw = bytes(key)
    else:
        raise TypeError(f"keys must be str or bytes, not {type(key).__name__}")
    if len(raw) > F.MAX_KEY_BYTES:
        raise ValueError(
            f"keys may be at most {F.MAX_KEY_BYTES} bytes long (UTF-8 for str keys); "
            f"this one is {len(raw)} bytes"
        )
    return tag, raw


def decode_key(tag: bytes, raw: bytes) -> Key:
    """Inverse of :func:`encode_key`: the key with its type."""
    if tag == F.KEY_TAG_STR:
        return raw.decode("utf-8")
    if tag == F.KEY_TAG_BYTES:
        return raw
    raise ValueError(f"unknown key tag {tag!r}")


def key_hash(tag: bytes, raw: bytes) -> str:
    """The 32 hex digits that name a key's directory."""
    return xxhash.xxh3_128_hexdigest(tag + raw)


def key_dir(blobs: str, digest: str) -> str:
    """``blobs/ab/cd/abcd…``: two fan-out levels keep every directory small."""
    w = F.FANOUT_HEX_DIGITS
    return os.path.join(blobs, digest[:w], digest[w : 2 * w], digest)


def is_fanout_name(name: str) -> bool:
    return len(name) == F.FANOUT_HEX_DIGITS and _is_lower_hex(name)


def is_key_dir_name(name: str) -> bool:
    return len(name) == F.KEY_HASH_HEX_DIGITS and _is_lower_hex(name)


class VersionName(NamedTuple):
    """What a version file's name says: sequence number, length, xxh3_64 checksum."""

    seq: int
    length: int
    checksum: int
    batch: bool = False  # a b- name: one of a batch, valid while the log notes it


def _hex(value: int) -> str:
    return format(value, f"0{F.FIELD_HEX_DIGITS}x")


def version_name(seq: int, length: int, checksum: int) -> str:
    """``v-<seq>-<length>-<checksum>``, each 16 lower-case hex digits."""
    return F.VERSION_PREFIX + F.FIELD_SEPARATOR.join((_hex(seq), _hex(length), _hex(checksum)))


def batch_version_name(seq: int, length: int, checksum: int) -> str:
    """``b-<seq>-<length>-<checksum>``: a version put by a batch."""
    return F.BATCH_VERSION_PREFIX + version_name(seq, length, checksum)[len(F.VERSION_PREFIX) :]


def is_batch_version(path: str) -> bool:
    """Whether the version file at ``path`` is one of a batch (a b- name)."""
    # (Not os.path.basename: an open asks it twice per key directory.)
    return path.startswith(F.BATCH_VERSION_PREFIX, path.rfind(os.sep) + 1)


# Compiled once: recovery parses every name in the store, and a regex match is
# about 3x faster than checking characters one by one in Python.
_LOWER_HEX = re.compile("[0-9a-f]+")
_FIELD = f"([0-9a-f]{{{F.FIELD_HEX_DIGITS}}})"
_VERSION = re.compile(
    "("
    + re.escape(F.VERSION_PREFIX)
    + "|"
    + re.escape(F.BATCH_VERSION_PREFIX)
    + ")"
    + re.escape(F.FIELD_SEPARATOR).join([_FIELD] * 3)
)


def _is_lower_hex(text: str) -> bool:
    return _LOWER_HEX.fullmatch(text) is not None


def parse_version_name(name: str) -> VersionName | None:
    """The fields of a version file name, or None if ``name`` is not one."""
    match = _VERSION.fullmatch(name)
    if match is None:
        return None
    prefix, seq, length, checksum = match.groups()
    batch = prefix == F.BATCH_VERSION_PREFIX
    return VersionName(int(seq, 16), int(length, 16), int(checksum, 16), batch)


def temp_name() -> str:
    """A fresh temp file name; 64 random bits make a clash practically impossible."""
    return F.TEMP_PREFIX + secrets.token_hex(F.TEMP_RANDOM_HEX_DIGITS // 2)


def is_temp_name(name: str) -> bool:
    return name.startswith(F.TEMP_PREFIX)
