"""The remote tier's objects on an S3-compatible store (FORMAT.md, "The remote tier").

Under the remote's prefix:

* ``blobcache-remote``: the marker, created once; a prefix holding another format is refused;
* ``r/<key hash>/<version>``: a key's version records, each made by a create-only put
  (If-None-Match), so a version is taken once, by one writer, on every machine. Per key
  the highest version wins; a record names its value (inline, or a blob) or is a
  tombstone;
* ``b/<xxh3-128>-<length>``: a large value, immutable and content-addressed, uploaded
  (multipart when large) before the record that names it: the record is the commit,
  and nothing half-uploaded is ever named.

This module is the layout and the client; ``_tier`` decides when to call it. Every
failure of the client comes out as a ``RemoteError`` whose sentence says what and where,
and never a credential (obstore's messages name the request, not the keys).
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import xxhash

from . import _format as F
from .errors import CorruptionError, RemoteError

# What a remote that says nothing else gets: a hung server fails a request in
# seconds, not obstore's 181 s (docs/remote-notes.md); the caller's options win.
_CLIENT_DEFAULTS: dict[str, Any] = {"connect_timeout": "5s", "timeout": "60s"}
_RETRY_DEFAULTS: dict[str, Any] = {"max_retries": 3, "retry_timeout": timedelta(seconds=30)}
# Multipart: a large value goes up in parts of this size, this many at a time, so
# an upload from a file holds about (concurrency + 1) parts in memory.
PART_BYTES = 8 << 20
PART_CONCURRENCY = 4
_URL = re.compile(r"^s3://(?P<bucket>[^/]+)/?(?P<prefix>.*?)/?$")


@dataclass(frozen=True)
class RemoteRecord:
    """One version record of a key, as FORMAT.md specifies it."""

    tag: bytes
    raw: bytes
    put_id: str  # the writer's id for this put: a retried create meeting its own record
    deleted: bool = False
    codec: int = F.CODEC_RAW
    expires: int = 0  # ms since the epoch; 0: never
    length: int = 0
    digest: str = ""  # xxh3-128 of the value, 32 hex digits
    blob: str | None = None  # the value's object (under b/), or None: inline
    inline: bytes = b""

    def encode(self) -> bytes:
        head = {
            "key": base64.b64encode(self.tag + self.raw).decode("ascii"),
            "put": self.put_id,
            "deleted": self.deleted,
            "codec": self.codec,
            "expires": self.expires,
            "length": self.length,
            "xxh3": self.digest,
            "blob": self.blob,
        }
        line = json.dumps(head, separators=(",", ":"), sort_keys=True).encode("ascii")
        return F.REMOTE_RECORD_MAGIC + line + b"\n" + self.inline

    @classmethod
    def decode(cls, data: bytes, where: str) -> RemoteRecord:
        """:raises CorruptionError: ``data`` is not a record of this format."""
        if not data.startswith(F.REMOTE_RECORD_MAGIC):
            raise CorruptionError(where, "not a blobcache remote record (no magic)", 0)
        end = data.find(b"\n", len(F.REMOTE_RECORD_MAGIC))
        try:
            head = json.loads(data[len(F.REMOTE_RECORD_MAGIC) : end])
            key = base64.b64decode(head["key"], validate=True)
            record = cls(
                key[:1],
                key[1:],
                str(head["put"]),
                bool(head["deleted"]),
                int(head["codec"]),
                int(head["expires"]),
                int(head["length"]),
                str(head["xxh3"]),
                head["blob"],
                bytes(data[end + 1 :]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptionError(where, f"unreadable remote record header ({exc})", 0) from exc
        if (
            record.blob is None
            and not record.deleted
            and (
                len(record.inline) != record.length
                or value_digest([record.inline]) != record.digest
            )
        ):
            raise CorruptionError(where, "remote record's inline value fails its xxh3", 0)
        return record


def value_digest(parts: Iterable[bytes | memoryview]) -> str:
    """xxh3-128 of the concatenation of ``parts``: the content address of a value."""
    h = xxhash.xxh3_128()
    for part in parts:
        h.update(part)
    return h.hexdigest()


def blob_name(digest: str, length: int) -> str:
    return f"{F.REMOTE_BLOBS}/{digest}-{length}"


def record_path(key_hash: str, version: int) -> str:
    return f"{F.REMOTE_RECORDS}/{key_hash}/{version:0{F.REMOTE_VERSION_DIGITS}d}"


def _version_of(path: str) -> int | None:
    name = path.rsplit("/", 1)[-1]
    return int(name) if len(name) == F.REMOTE_VERSION_DIGITS and name.isdigit() else None


def new_put_id() -> str:
    return uuid.uuid4().hex


def parse_url(url: object) -> tuple[str, str]:
    """(bucket, prefix) of ``s3://bucket/prefix``.

    :raises TypeError: not a str.
    :raises ValueError: not an ``s3://`` URL with a bucket.
    """
    if not isinstance(url, str):
        raise TypeError(f"remote must be an s3:// URL (str), not {type(url).__name__}")
    match = _URL.match(url)
    if match is None or "//" in match["prefix"]:
        raise ValueError(f"remote must look like s3://bucket/prefix, not {url!r}")
    return match["bucket"], match["prefix"]


class Remote:
    """A remote tier's client: one bucket and prefix of an S3-compatible store."""

    def __init__(self, url: str, options: dict[str, Any] | None) -> None:
        """Build the client (no request yet: ``check`` makes the first).

        :raises TypeError: ``options`` is not a dict.
        :raises ValueError: the URL or an option is not one obstore takes.
        """
        from obstore.store import S3Store

        bucket, prefix = parse_url(url)
        if options is None:
            options = {}
        if not isinstance(options, dict):
            raise TypeError(f"remote_options must be a dict, not {type(options).__name__}")
        given = dict(options)
        given["client_options"] = {**_CLIENT_DEFAULTS, **given.get("client_options", {})}
        given["retry_config"] = {**_RETRY_DEFAULTS, **given.get("retry_config", {})}
        self.url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        self.bucket = bucket
        self.endpoint = _without_userinfo(str(options.get("endpoint", "the default endpoint")))
        try:
            self.store = S3Store(bucket, prefix=prefix or None, **given)
        except Exception as exc:  # obstore's config errors: several classes, all "bad option"
            raise ValueError(
                f"remote_options for {self.url} were refused: {_sentence(exc)}"
            ) from exc

    # --- errors ---------------------------------------------------------------------

    def error(self, exc: BaseException, doing: str) -> RemoteError:
        """``exc``, raised by the client while ``doing``, as one sentence."""
        from obstore import exceptions as ox

        if isinstance(exc, (ox.PermissionDeniedError, ox.UnauthenticatedError)):
            why = "the remote refused the credentials (check the access key and secret)"
        elif isinstance(exc, FileNotFoundError) and "NoSuchBucket" in str(exc):
            why = f"bucket {self.bucket!r} does not exist there"
        elif "error sending request" in str(exc) or "timed out" in str(exc).lower():
            why = "the remote did not answer (is the endpoint right and the server up?)"
        else:
            why = _sentence(exc)
        return RemoteError(self.url, f"{doing} failed at {self.endpoint}: {why}")

    # --- the marker -------------------------------------------------------------------

    def check(self, *, create: bool) -> None:
        """Make sure the prefix is a remote tier of this format: create the marker
        (``create``) or find it. A wrong bucket, endpoint or credential fails here.

        :raises RemoteError: unreachable, refused, or a prefix of another format.
        """
        import obstore
        from obstore import exceptions as ox

        try:
            if create:
                try:
                    obstore.put(
                        self.store, F.REMOTE_MARKER_NAME, F.REMOTE_MARKER_CONTENT, mode="create"
                    )
                    return
                except ox.AlreadyExistsError:
                    pass
            try:
                found = bytes(obstore.get(self.store, F.REMOTE_MARKER_NAME).bytes())
            except FileNotFoundError as exc:
                if "NoSuchBucket" in str(exc):
                    raise
                # A reader of an empty prefix: nothing there yet, nothing to refuse.
                return
        except RemoteError:
            raise
        except Exception as exc:
            raise self.error(exc, "opening the remote") from exc
        if found != F.REMOTE_MARKER_CONTENT:
            raise RemoteError(
                self.url,
                f"{F.REMOTE_MARKER_NAME} there holds {found[:40]!r}, not a remote tier of this "
                "format: pick another prefix",
            )

    # --- records ---------------------------------------------------------------------

    def versions(self, key_hash: str) -> list[int]:
        """The versions a key has on the remote, ascending.

        :raises RemoteError:"""
        import obstore

        try:
            metas = [
                m
                for chunk in obstore.list(self.store, f"{F.REMOTE_RECORDS}/{key_hash}")
                for m in chunk
            ]
        except Exception as exc:
            raise self.error(exc, "listing a key's versions") from exc
        return sorted(v for m in metas if (v := _version_of(m["path"])) is not None)

    def all_versions(self) -> dict[str, list[tuple[int, float, int]]]:
        """Every key hash's (version, last modified as epoch seconds, size), ascending.

        :raises RemoteError:"""
        import obstore

        found: dict[str, list[tuple[int, float, int]]] = {}
        try:
            for chunk in obstore.list(self.store, F.REMOTE_RECORDS, chunk_size=1000):
                for meta in chunk:
                    parts = meta["path"].split("/")
                    version = _version_of(meta["path"])
                    if version is None or len(parts) < 3:
                        continue
                    stamp = meta["last_modified"].timestamp()
                    found.setdefault(parts[-2], []).append((version, stamp, meta["size"]))
        except Exception as exc:
            raise self.error(exc, "listing the remote's records") from exc
        for versions in found.values():
            versions.sort()
        return found

    def blobs(self) -> list[tuple[str, float, int]]:
        """Every blob's (name, last modified as epoch seconds, size).

        :raises RemoteError:"""
        import obstore

        try:
            return [
                (meta["path"], meta["last_modified"].timestamp(), meta["size"])
                for chunk in obstore.list(self.store, F.REMOTE_BLOBS, chunk_size=1000)
                for meta in chunk
            ]
        except Exception as exc:
            raise self.error(exc, "listing the remote's blobs") from exc

    def record(self, key_hash: str, version: int) -> RemoteRecord | None:
        """The record of ``version``; None if there is none (collected meanwhile).

        :raises RemoteError: unreachable or refused.
        :raises CorruptionError: the object is not a record."""
        import obstore

        path = record_path(key_hash, version)
        try:
            data = bytes(obstore.get(self.store, path).bytes())
        except FileNotFoundError as exc:
            if "NoSuchBucket" in str(exc):
                raise self.error(exc, "reading a record") from exc
            return None
        except Exception as exc:
            raise self.error(exc, "reading a record") from exc
        return RemoteRecord.decode(data, f"{self.url}/{path}")

    def create(self, key_hash: str, version: int, record: RemoteRecord) -> bool:
        """Create ``version``'s record, only if no record of that version exists.
        True if this call made it, or an earlier attempt of the same put did (a
        retry whose first try landed: its put id is in the record); False if
        another put has that version.

        :raises RemoteError:"""
        import obstore
        from obstore import exceptions as ox

        path = record_path(key_hash, version)
        try:
            obstore.put(self.store, path, record.encode(), mode="create")
            return True
        except (ox.AlreadyExistsError, ox.PreconditionError):
            pass
        except Exception as exc:
            raise self.error(exc, "creating a version record") from exc
        there = self.record(key_hash, version)
        return there is not None and there.put_id == record.put_id

    def overwrite(self, key_hash: str, version: int, record: RemoteRecord) -> None:
        """Replace a superseded record (gc's stub of version 1). :raises RemoteError:"""
        import obstore

        try:
            obstore.put(self.store, record_path(key_hash, version), record.encode())
        except Exception as exc:
            raise self.error(exc, "replacing a record") from exc

    def delete(self, paths: Sequence[str]) -> None:
        """:raises RemoteError:"""
        import obstore

        try:
            for start in range(0, len(paths), 1000):
                obstore.delete(self.store, list(paths[start : start + 1000]))
        except Exception as exc:
            raise self.error(exc, "deleting superseded objects") from exc

    # --- blobs ------------------------------------------------------------------------

    def upload(self, name: str, body: Sequence[bytes | memoryview] | Path) -> None:
        """Upload a blob (not conditional: obstore would send a conditional put whole,
        from memory; a content address makes a second upload harmless, and it is
        always made: an upload skipped because the blob is there would let gc,
        which spares only blobs younger than its grace or named by a record it
        read, delete it under the record about to name it). From a file
        it streams, in parts; from memory, the parts are slices of the caller's
        buffers. An upload that fails is aborted by obstore (best effort).

        :raises RemoteError:"""
        import obstore

        source: Path | Iterator[memoryview] = body if isinstance(body, Path) else _slices(body)
        try:
            obstore.put(
                self.store,
                name,
                source,
                chunk_size=PART_BYTES,
                max_concurrency=PART_CONCURRENCY,
            )
        except Exception as exc:
            raise self.error(exc, "uploading a value") from exc

    def download(self, name: str, chunk: int) -> Iterator[memoryview]:
        """A blob's bytes, ``chunk`` bytes or so at a time. :raises RemoteError:"""
        import obstore

        try:
            stream = obstore.get(self.store, name).stream(min_chunk_size=chunk)
            for piece in stream:
                yield memoryview(piece)
        except FileNotFoundError as exc:
            raise RemoteError(self.url, f"the blob {name} a record names is missing") from exc
        except Exception as exc:
            raise self.error(exc, "downloading a value") from exc


def _slices(parts: Sequence[bytes | memoryview]) -> Iterator[memoryview]:
    """``parts`` cut into multipart-sized views (no copy); a part's tail is joined
    to the next part's head only where a part would be smaller than S3 allows."""
    pending = bytearray()
    for part in parts:
        view = memoryview(part).cast("B")
        offset = 0
        if pending:
            take = min(PART_BYTES - len(pending), view.nbytes)
            pending += view[:take]
            offset = take
            if len(pending) < PART_BYTES:
                continue
            yield memoryview(bytes(pending))
            pending = bytearray()
        while view.nbytes - offset >= PART_BYTES:
            yield view[offset : offset + PART_BYTES]
            offset += PART_BYTES
        pending += view[offset:]
    if pending:
        yield memoryview(bytes(pending))


def _sentence(exc: BaseException) -> str:
    """The first line of an error's message, without obstore's debug dump."""
    text = str(exc).strip().splitlines()
    return text[0].rstrip(":") if text else type(exc).__name__


def _without_userinfo(endpoint: str) -> str:
    """``endpoint`` as errors name it: without a ``user:password@`` it may hold."""
    scheme, sep, rest = endpoint.partition("://")
    if not sep:
        return endpoint
    host, slash, path = rest.partition("/")
    return f"{scheme}://{host.rpartition('@')[2]}{slash}{path}"
