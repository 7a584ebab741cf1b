"""Atomic batches: puts and deletes that land together, or not at all.

``BlobCache.batch()`` hands out a ``Batch``; its puts and deletes are only
gathered (a large value is written to a temp file of its key directory at once,
the long part, with no lock held) until the ``with`` block ends. Then
``_writes.Writes.put_batch`` commits them as one write of consecutive log
records, the last without ``FLAG_MORE``, with one fdatasync: after a crash of
any kind the store holds all of the batch or none of it (FORMAT.md, "Batches").
An exception inside the block, or ``discard()``, applies nothing and removes
the temp files.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, ExitStack, nullcontext
from types import TracebackType

from . import _format as F
from . import _names as N
from . import _typed
from ._buffers import as_buffer
from ._options import check_flag
from ._writes import Op, Writes
from .errors import BatchError


class Batch:
    """Puts and deletes applied all together when the ``with`` block ends.

    Operations apply in order (a key put twice keeps the second value). Nothing
    is visible to any reader, in this process or another, before the block
    ends; once it has ended, every reader that looks sees all of it. Use it
    from the thread that opened it.

    >>> import tempfile, blobcache
    >>> with blobcache.BlobCache(tempfile.mkdtemp()) as cache:
    ...     with cache.batch() as b:
    ...         b.put("weights/0", b"...")
    ...         b.put("manifest", b'{"shards": 1}')
    ...     bytes(cache["manifest"])
    b'{"shards": 1}'
    """

    def __init__(
        self,
        writes: Writes,
        inline_limit: int,
        active: threading.local,
        on_stale: Callable[[], None],
        expires: Callable[[float | None], int],
        remote: Callable[[list[Op]], AbstractContextManager[Callable[[], None]]] | None = None,
    ) -> None:
        self._expires = expires  # the handle's: ttl -> when (0: never)
        # A remote tier's: called with the ops, the context the commit runs in,
        # which gives what to call once it is done (``_tier.Tier.batch``).
        self._remote = remote
        self._writes = writes
        self._on_stale = on_stale  # the handle's: a sealed segment got staler
        self._inline_limit = inline_limit
        self._thread = threading.get_ident()
        self._pid = os.getpid()
        self._ops: list[Op] = []
        self._staged = ExitStack()  # temp files and key directories held until the end
        self._active = active  # the handle's: which batch this thread has open
        self._open = True

    def put(
        self, key: N.Key, value: object, *, ttl: float | None = None, pin: bool = False
    ) -> None:
        """Add a put of ``value`` (bytes-like, copied or written now) under ``key``,
        for ``ttl`` seconds if given (counted from now; else the handle's
        ``default_ttl``); ``pin``: as ``BlobCache.put``'s.

        :raises TypeError: ``key`` is not str/bytes, or ``value`` is not bytes-like.
        :raises ValueError: ``ttl`` is not a positive, finite number of seconds, or
            the value is larger than ``max_bytes`` (``CacheFullError``).
        :raises BatchError: the batch has ended, or this is not its thread.
        """
        self._check()
        data = as_buffer(value)
        self._put(key, (data,), data.nbytes, F.CODEC_RAW, ttl, pin)

    def put_object(
        self,
        key: N.Key,
        value: object,
        *,
        serializer: str | None = None,
        ttl: float | None = None,
        pin: bool = False,
    ) -> None:
        """Add a put of a typed value, as ``BlobCache.put_object`` stores it.

        :raises TypeError: as ``BlobCache.put_object``; and as ``put``.
        """
        self._check()
        self._put(key, *_typed.encode(value, serializer), ttl, pin)

    def _put(
        self,
        key: N.Key,
        parts: Sequence[bytes | memoryview],
        length: int,
        codec: int,
        ttl: float | None,
        pin: bool,
    ) -> None:
        tag, raw = N.encode_key(key)
        expires = self._expires(ttl)
        key = N.decode_key(tag, raw)
        check_flag("pin", pin)
        self._writes.check_fits(length)
        if length < self._inline_limit:
            self._ops.append(Op(key, tag, raw, b"".join(parts), expires, pin, codec))
        else:
            staged = self._writes.stage_version(tag, raw, parts, self._staged)
            self._ops.append(Op(key, tag, raw, staged, expires, pin, codec))

    def delete(self, key: N.Key) -> None:
        """Add a delete of ``key`` (nothing happens to a key that is not there).

        :raises TypeError: ``key`` is not str or bytes.
        :raises BatchError: the batch has ended, or this is not its thread.
        """
        self._check()
        tag, raw = N.encode_key(key)
        self._ops.append(Op(N.decode_key(tag, raw), tag, raw, None))

    def __len__(self) -> int:
        return len(self._ops)

    def _check(self) -> None:
        if not self._open:
            raise BatchError("this batch has ended (committed or discarded): open a new one")
        if threading.get_ident() != self._thread or os.getpid() != self._pid:
            raise BatchError(
                "a batch belongs to the thread (and process) that opened it: open one here"
            )

    def commit(self) -> None:
        """Apply every operation, durably, at once; what the ``with`` block does
        at its end. Returns once the batch survives a crash of the kind the
        store's ``durability`` names.

        :raises OSError: the disk failed; nothing of the batch is applied.
        """
        self._check()
        self._end()
        remote = self._remote
        around = remote(self._ops) if remote is not None and self._ops else nullcontext(_nothing)
        try:
            with around as after:
                stale = bool(self._ops) and self._writes.put_batch(self._ops)
        finally:
            self._staged.close()  # temp files not named: removed
        if stale:
            self._on_stale()
        after()

    def discard(self) -> None:
        """Drop every operation: nothing of the batch is applied."""
        self._check()
        self._end()
        self._staged.close()

    def _end(self) -> None:
        self._open = False
        self._active.batch = None

    def __enter__(self) -> Batch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._open:
            return  # committed or discarded inside the block
        if exc_type is not None:
            self.discard()
        else:
            self.commit()


def _nothing() -> None:
    """A batch's last step without a remote tier."""
