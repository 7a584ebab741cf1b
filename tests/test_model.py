"""The model test: random puts, deletes, gets, gc, threads, batches, expiry and
reopens against a dict.

A Hypothesis state machine drives one store and a ``dict`` holding what the
store must return. "Close and reopen" is a rule, so every step's state must
also come back from the files alone. Crash model: none here (a clean close);
the crash models are exercised by ``test_kill.py``.

The store runs with a tiny ``inline_limit`` and ``segment_bytes``, so values
cross between the two layouts (log and file) in both directions every few
steps, segments roll over often, and background compaction runs while the
rules put and delete. The model remembers each key's layout: it is decided by
the limit in force when the value was put, and kept across reopens with another
limit and across compaction. Time is the machine's own (``blobcache._clock``
stood in for): puts with a ``ttl`` expire when a rule moves the clock past
them, and the model forgets them then.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from blobcache import BlobCache, GcResult, _clock, _codecs, _log
from blobcache import _format as F
from blobcache._names import encode_key
from blobcache._options import DURABILITY_LEVELS, Durability
from tests.crashsim import scratch_dir

Key = str | bytes

# The same text as str and as bytes: "a" and b"a" must be two different keys.
TEXTS = ["", "a", "k1", "é"]
KEYS: list[Key] = [t for text in TEXTS for t in (text, text.encode("utf-8"))]

INLINE_LIMIT = 256  # the limit of the first open; reopens draw from LIMITS
LIMITS = [INLINE_LIMIT, 0, 1024]  # 0: every value gets a file of its own
SEGMENT_BYTES = 4096  # the smallest allowed: a few records per segment
COMPACT_RATIOS = [0.25, 0.5, 1.0]
# Sizes just below, at and above each limit, and a few more. A value of exactly
# the limit is not "shorter than" it, so it gets a file.
SIZES = [0, 1, 100, 255, 256, 257, 1000, 1023, 1024, 1025, 5000]
# Large for every limit in LIMITS: always a file, so ``get`` returns a view.
LARGE_SIZES = [1025, 5000]


def _filled(size: int, fill: int) -> bytes:
    # One repeated byte, but the last one differs, so a value cut short or
    # padded with the wrong byte shows.
    return bytes([fill]) * (size - 1) + bytes([fill ^ 0x5A]) if size else b""


values = st.one_of(
    st.binary(max_size=32),
    st.builds(_filled, st.sampled_from(SIZES), st.integers(0, 255)),
)
large_values = st.builds(_filled, st.sampled_from(LARGE_SIZES), st.integers(0, 255))
keys = st.sampled_from(KEYS)
durabilities = st.sampled_from(DURABILITY_LEVELS)
limits = st.sampled_from(LIMITS)
ratios = st.sampled_from(COMPACT_RATIOS)
# What one thread of ``concurrent_writes`` does to its own key, in order: None deletes.
thread_ops = st.lists(st.one_of(st.none(), values), min_size=1, max_size=4)

ttls = st.sampled_from([1, 5, 30])  # seconds
# A batch's operations, in order: (key, value) puts, (key, None) deletes.
batch_ops = st.lists(st.tuples(keys, st.one_of(st.none(), values)), min_size=1, max_size=6)

# How many views of overwritten or deleted values the machine keeps checking.
MAX_HELD_VIEWS = 8
_ABSENT = object()


class _Abandon(Exception):
    """Raised inside a batch's block to drop it."""


def log_record_size(key: Key, value: bytes, expiring: bool) -> int:
    """Bytes of the one log record holding ``key``'s live value (FORMAT.md, "The log")."""
    expiry = F.EXPIRES.size if expiring else 0
    return F.RECORD_HEADER.size + len(encode_key(key)[1]) + expiry + len(value)


class BlobCacheModel(RuleBasedStateMachine):
    """A ``BlobCache`` must behave like ``dict[Key, bytes]``, across reopens, gc and threads."""

    def __init__(self) -> None:
        super().__init__()
        self.directory = tempfile.mkdtemp(prefix="blobcache-model-", dir=scratch_dir())
        self.store = os.path.join(self.directory, "store")
        self.model: dict[Key, bytes] = {}
        # Keys whose live value is in the log (the rest have a file each).
        self.inline: set[Key] = set()
        # Views returned by get before their key was overwritten or deleted, with
        # the bytes they showed then: an mmap outlives the unlink of its file.
        self.held: list[tuple[memoryview, bytes]] = []
        self.cache: BlobCache | None = None
        self.limit = INLINE_LIMIT
        self.expires: dict[Key, int] = {}  # key -> when its value expires, ms
        self.batched: set[Key] = set()  # keys whose live value a batch put
        self.arrays: dict[Key, np.ndarray] = {}  # keys put_object put an array under
        self.now = 1_796_148_000_000  # the machine's clock, ms since the epoch
        self._real_clock = _clock.now_ms
        _clock.now_ms = lambda: self.now

    def open(self, durability: Durability, inline_limit: int, compact_ratio: float) -> None:
        self.limit = inline_limit
        self.cache = BlobCache(
            self.store,
            durability=durability,
            inline_limit=inline_limit,
            segment_bytes=SEGMENT_BYTES,
            compact_ratio=compact_ratio,
        )
        assert self.cache.problems == ()
        stats = self.cache.stats()
        assert stats.temps_removed_at_open == 0
        assert stats.torn_bytes_at_open == 0  # a clean close tears nothing
        # Nothing runs in the background before the first put: the book must
        # describe exactly the segment files recovery read.
        assert stats.log_record_bytes == self.record_bytes_on_disk()
        assert stats.segments == len(self.segment_files())

    @initialize(durability=durabilities, compact_ratio=ratios)
    def open_store(self, durability: Durability, compact_ratio: float) -> None:
        self.open(durability, INLINE_LIMIT, compact_ratio)

    @property
    def c(self) -> BlobCache:
        assert self.cache is not None
        return self.cache

    def teardown(self) -> None:
        try:
            if self.cache is not None:
                self.cache.close()
        finally:
            _clock.now_ms = self._real_clock
            shutil.rmtree(self.directory, ignore_errors=True)

    def hold(self, view: memoryview) -> None:
        self.held.append((view, bytes(view)))
        del self.held[:-MAX_HELD_VIEWS]

    def record_put(
        self, key: Key, value: bytes, ttl: int | None = None, *, batch: bool = False
    ) -> None:
        self.model[key] = value
        self.arrays.pop(key, None)
        if batch:
            self.batched.add(key)
        else:
            self.batched.discard(key)
        if ttl is None:
            self.expires.pop(key, None)
        else:
            self.expires[key] = self.now + ttl * 1000
        if len(value) < self.limit:
            self.inline.add(key)
        else:
            self.inline.discard(key)

    def record_delete(self, key: Key) -> None:
        self.model.pop(key, None)
        self.arrays.pop(key, None)
        self.inline.discard(key)
        self.expires.pop(key, None)
        self.batched.discard(key)

    def segment_files(self) -> list[str]:
        logdir = os.path.join(self.store, F.LOG_DIR)
        return sorted(
            os.path.join(logdir, name)
            for name in os.listdir(logdir)
            if name.endswith(F.SEGMENT_SUFFIX)
        )

    def record_bytes_on_disk(self) -> int:
        """Bytes of the records in the segment files (FORMAT.md, "The log"): what
        follows each header up to the end of the file or a zero-filled tail."""
        total = 0
        for path in self.segment_files():
            with open(path, "rb") as f:
                data = f.read()
            start = end = F.SEGMENT_HEADER.size
            # Up to the first bytes that are no record: the writer's zeros ahead.
            for record in _log.iter_records(data, start, _log.header_size(data), path):
                end = record.end
            assert data.count(0, end) == len(data) - end, f"{path}: a bad record at {end}"
            total += end - start
        return total

    def temp_files(self) -> list[str]:
        return [
            os.path.join(root, name)
            for root, _dirs, names in os.walk(self.store)
            for name in names
            if name.startswith(F.TEMP_PREFIX)
        ]

    # --- rules -------------------------------------------------------------------

    @rule(key=keys, value=values)
    def put(self, key: Key, value: bytes) -> None:
        self.c.put(key, value)
        self.record_put(key, value)

    @rule(key=keys, n=st.sampled_from([0, 3, 40, 600]), fill=st.integers(0, 65535))
    def put_array(self, key: Key, n: int, fill: int) -> None:
        """A typed value (.npy, its codec in its record), on both sides of the limit."""
        array = np.full(n, fill, dtype=np.uint16)
        self.c.put_object(key, array)
        self.record_put(key, b"".join(_codecs.encode(array).parts))
        self.arrays[key] = array

    @rule(key=keys, value=values, ttl=ttls)
    def put_with_ttl(self, key: Key, value: bytes, ttl: int) -> None:
        self.c.put(key, value, ttl=ttl)
        self.record_put(key, value, ttl)

    @rule(seconds=st.sampled_from([1, 4, 10, 60]))
    def time_passes(self, seconds: int) -> None:
        self.now += seconds * 1000
        for key in [k for k, when in self.expires.items() if when <= self.now]:
            assert key not in self.c  # ``in`` looks at the clock at once
            self.record_delete(key)
        # A bare get trusts the background sweep, which sleeps by the real
        # clock: refresh() sweeps now, so the invariants may use get.
        self.c.refresh()

    @rule(ops=batch_ops, ttl=st.one_of(st.none(), ttls))
    def batch(self, ops: list[tuple[Key, bytes | None]], ttl: int | None) -> None:
        with self.c.batch() as b:
            for key, value in ops:
                if value is None:
                    b.delete(key)
                else:
                    b.put(key, value, ttl=ttl)
            for key, _value in ops:  # nothing shows before the block ends
                before = self.model.get(key)
                got = self.c.get(key)
                assert (None if got is None else bytes(got)) == before
        for key, value in ops:
            if value is None:
                self.record_delete(key)
            else:
                self.record_put(key, value, ttl, batch=True)

    @rule(ops=batch_ops)
    def batch_abandoned(self, ops: list[tuple[Key, bytes | None]]) -> None:
        with pytest.raises(_Abandon), self.c.batch() as b:
            for key, value in ops:
                if value is None:
                    b.delete(key)
                else:
                    b.put(key, value)
            raise _Abandon  # nothing of it is applied

    @rule(key=keys, value=values)
    def setitem(self, key: Key, value: bytes) -> None:
        buffer = bytearray(value)
        self.c[key] = buffer
        if buffer:
            buffer[0] ^= 0xFF  # the store copied the value: changing the buffer now changes nothing
        self.record_put(key, value)

    @rule(key=keys)
    def delete(self, key: Key) -> None:
        assert self.c.delete(key) is (key in self.model)
        self.record_delete(key)

    @rule(key=keys)
    def delitem(self, key: Key) -> None:
        if key in self.model:
            del self.c[key]
            self.record_delete(key)
        else:
            with pytest.raises(KeyError):
                del self.c[key]

    @rule(key=keys)
    def get(self, key: Key) -> None:
        got = self.c.get(key, _ABSENT)
        if key not in self.model:
            assert got is _ABSENT
            assert self.c.get(key) is None
            assert key not in self.c
            with pytest.raises(KeyError):
                self.c[key]
            with pytest.raises(KeyError):
                self.c.path(key)
            return
        assert key in self.c
        path = self.c.path(key)
        if key in self.inline:
            assert isinstance(got, bytes)  # (a typed value's: a subclass, its codec)
            assert got == self.model[key]
            assert path is None
        else:
            assert isinstance(got, memoryview)
            assert got.readonly
            assert bytes(got) == self.model[key]
            assert path is not None
            with open(path, "rb") as f:
                assert f.read() == self.model[key]  # the file is exactly the value

    @rule(key=keys, first=large_values, value=st.one_of(st.none(), values))
    def replace_while_viewed(self, key: Key, first: bytes, value: bytes | None) -> None:
        """A view of a file taken before an overwrite (or a delete: None) and gc
        still reads the old bytes, whichever layout the new value takes."""
        self.put(key, first)
        view = self.c.get(key)
        assert isinstance(view, memoryview)
        assert bytes(view) == first
        if value is None:
            assert self.c.delete(key)
            self.record_delete(key)
        else:
            self.put(key, value)
        result = self.c.gc()
        assert result.files_removed >= 1  # the version file under the view, at least
        assert bytes(view) == first
        self.hold(view)

    @rule(work=st.dictionaries(keys, thread_ops, min_size=2, max_size=4))
    def concurrent_writes(self, work: dict[Key, list[bytes | None]]) -> None:
        """Threads put and delete at the same moment, each on a key of its own:
        they share log writes and fsyncs (group commit) and race background
        compaction; each key ends with its thread's last operation."""
        start = threading.Barrier(len(work))
        errors: list[BaseException] = []

        def run(key: Key, ops: list[bytes | None]) -> None:
            try:
                start.wait()
                for value in ops:
                    if value is None:
                        self.c.delete(key)
                    else:
                        self.c.put(key, value)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run, args=item) for item in work.items()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        for key, ops in work.items():
            if ops[-1] is None:
                self.record_delete(key)
            else:
                self.record_put(key, ops[-1])

    @rule()
    def gc(self) -> None:
        result = self.c.gc()
        assert isinstance(result, GcResult)
        assert min(vars(result).values()) >= 0
        # Everything collectable went: a second pass right after finds nothing.
        assert self.c.gc() == GcResult()
        stats = self.c.stats()
        assert stats.dirs_awaiting_gc == 0
        assert stats.log_stale_bytes == 0  # deletes included: their directories are gone
        assert self.temp_files() == []
        # No puts since the gc, so no compaction runs: the files are quiet.
        assert stats.log_record_bytes == self.record_bytes_on_disk()
        assert stats.segments == len(self.segment_files())

    @rule(durability=durabilities, inline_limit=limits, compact_ratio=ratios)
    def close_and_reopen(
        self, durability: Durability, inline_limit: int, compact_ratio: float
    ) -> None:
        self.c.close()
        self.c.close()  # closing twice is harmless
        self.cache = None
        assert self.temp_files() == []  # close waited for background compaction
        self.open(durability, inline_limit, compact_ratio)

    # --- invariants ------------------------------------------------------------

    @rule(
        key=keys,
        value=st.one_of(st.none(), values),
        durability=durabilities,
        without=st.booleans(),
    )
    def reopen_then_write(
        self, key: Key, value: bytes | None, durability: Durability, without: bool
    ) -> None:
        """Reopen through the index snapshot (or, ``without``, around it: as after a
        crash before any close) and write a key before any lookup: the write
        must find the key's record in the snapshot (issue 18)."""
        self.c.close()
        self.cache = None
        if without:
            os.unlink(os.path.join(self.store, F.SNAPSHOT_NAME))
        self.open(durability, self.limit, 0.5)
        assert self.c.stats().snapshot_at_open == ("none" if without else "loaded")
        if value is None:
            self.c.delete(key)
            self.record_delete(key)
        else:
            self.c.put(key, value)
            self.record_put(key, value)

    @invariant()
    def matches_model(self) -> None:
        if self.cache is None:
            return
        assert len(self.c) == len(self.model)
        # Each key looked up before any whole-index call: after a reopen, each is
        # found in the snapshot by its own lookup.
        absent = "no such key" if "no such key" not in self.model else b"no such key"
        assert self.c.get(absent) is None
        self.check_values()
        listed = list(self.c)
        assert len(listed) == len(set(listed))
        assert set(listed) == set(self.model)

    def check_values(self) -> None:
        for key, value in self.model.items():
            got = self.c[key]
            if key in self.inline:  # (a typed value's bytes are a bytes subclass)
                assert isinstance(got, bytes), key
            else:
                # (problems: a fall-back from a version that failed its check says so)
                assert type(got) is memoryview, (key, self.c.problems)
            assert bytes(got) == value, key
            array = self.arrays.get(key)
            if array is None:
                assert self.c._typed_get(key) == (got, F.CODEC_RAW), key
            else:
                assert np.array_equal(self.c.get_array(key), array), key

    @invariant()
    def stats_match_model(self) -> None:
        if self.cache is None:
            return
        stats = self.c.stats()
        assert stats.keys == len(self.model)
        assert stats.live_bytes == sum(map(len, self.model.values()))
        assert stats.inline_keys == len(self.inline)
        # Each inline key has exactly one live record; everything else in the log
        # is stale, whether or not background compaction has run yet, but the
        # version records of files that count on theirs (an expiry, a batch's
        # b- file, a typed value's), which compaction copies forward as live.
        live = sum(log_record_size(k, self.model[k], k in self.expires) for k in self.inline)
        notes = sum(
            log_record_size(k, bytes(F.VERSION_BODY.size), k in self.expires)
            for k in self.model
            if k not in self.inline and (k in self.expires or k in self.batched or k in self.arrays)
        )
        assert live <= stats.log_record_bytes - stats.log_stale_bytes <= live + notes
        assert 0 <= stats.log_stale_bytes <= stats.log_record_bytes

    @invariant()
    def held_views_keep_their_bytes(self) -> None:
        for view, old in self.held:
            assert bytes(view) == old

    @invariant()
    def no_temp_files_left_by_puts(self) -> None:
        # Only under blobs/: background compaction may be writing its temp in log/.
        for _root, _dirs, names in os.walk(os.path.join(self.store, F.BLOBS_DIR)):
            assert not [n for n in names if n.startswith(F.TEMP_PREFIX)]


BlobCacheModel.TestCase.settings = settings(max_examples=120, stateful_step_count=50, deadline=None)
TestBlobCacheModel = BlobCacheModel.TestCase
