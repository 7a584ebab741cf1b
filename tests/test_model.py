"""The model test: random puts, deletes, gets, gc and reopens against a dict.

A Hypothesis state machine drives one store and a ``dict`` holding what the
store must return. "Close and reopen" is a rule, so every step's state must
also come back from the files alone. Crash model: none here (a clean close);
the crash models are exercised by ``test_kill.py``.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from blobcache import BlobCache, GcResult
from blobcache._format import TEMP_PREFIX
from blobcache._options import DURABILITY_LEVELS, Durability

Key = str | bytes

# The same text as str and as bytes: "a" and b"a" must be two different keys.
TEXTS = ["", "a", "k1", "é"]
KEYS: list[Key] = [t for text in TEXTS for t in (text, text.encode("utf-8"))]

# Values of several sizes, the empty value included; the big ones are one
# repeated byte so examples stay cheap to generate and to shrink.
SIZES = [0, 1, 100, 4096, 70_000]
values = st.one_of(
    st.binary(max_size=32),
    st.builds(lambda size, fill: bytes([fill]) * size, st.sampled_from(SIZES), st.integers(0, 255)),
)
keys = st.sampled_from(KEYS)
durabilities = st.sampled_from(DURABILITY_LEVELS)

# How many views of overwritten or deleted values the machine keeps checking.
MAX_HELD_VIEWS = 8
_ABSENT = object()


class BlobCacheModel(RuleBasedStateMachine):
    """A ``BlobCache`` must behave like ``dict[Key, bytes]``, across reopens and gc."""

    def __init__(self) -> None:
        super().__init__()
        self.directory = tempfile.mkdtemp(prefix="blobcache-model-")
        self.store = os.path.join(self.directory, "store")
        self.model: dict[Key, bytes] = {}
        # Views returned by get before their key was overwritten or deleted, with
        # the bytes they showed then: an mmap outlives the unlink of its file.
        self.held: list[tuple[memoryview, bytes]] = []
        self.cache: BlobCache | None = None

    @initialize(durability=durabilities)
    def open_store(self, durability: Durability) -> None:
        self.cache = BlobCache(self.store, durability=durability)
        assert self.cache.problems == ()

    @property
    def c(self) -> BlobCache:
        assert self.cache is not None
        return self.cache

    def teardown(self) -> None:
        try:
            if self.cache is not None:
                self.cache.close()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def hold(self, view: memoryview) -> None:
        self.held.append((view, bytes(view)))
        del self.held[:-MAX_HELD_VIEWS]

    # --- rules -------------------------------------------------------------------

    @rule(key=keys, value=values)
    def put(self, key: Key, value: bytes) -> None:
        self.c.put(key, value)
        self.model[key] = value

    @rule(key=keys, value=values)
    def setitem(self, key: Key, value: bytes) -> None:
        buffer = bytearray(value)
        self.c[key] = buffer
        if buffer:
            buffer[0] ^= 0xFF  # the store copied the value: changing the buffer now changes nothing
        self.model[key] = value

    @rule(key=keys)
    def delete(self, key: Key) -> None:
        assert self.c.delete(key) is (key in self.model)
        self.model.pop(key, None)

    @rule(key=keys)
    def delitem(self, key: Key) -> None:
        if key in self.model:
            del self.c[key]
            del self.model[key]
        else:
            with pytest.raises(KeyError):
                del self.c[key]

    @rule(key=keys)
    def get(self, key: Key) -> None:
        got = self.c.get(key, _ABSENT)
        if key in self.model:
            assert isinstance(got, memoryview)
            assert got.readonly
            assert bytes(got) == self.model[key]
            assert key in self.c
        else:
            assert got is _ABSENT
            assert self.c.get(key) is None
            assert key not in self.c
            with pytest.raises(KeyError):
                self.c[key]

    @rule(key=keys, first=values, value=values, delete=st.booleans())
    def replace_while_viewed(self, key: Key, first: bytes, value: bytes, delete: bool) -> None:
        """A view taken before an overwrite (or delete) and gc still reads the old bytes."""
        if key not in self.model:
            self.put(key, first)
        view = self.c.get(key)
        assert isinstance(view, memoryview)
        old = self.model[key]
        assert bytes(view) == old
        if delete:
            assert self.c.delete(key)
            del self.model[key]
        else:
            self.c.put(key, value)
            self.model[key] = value
        self.c.gc()
        assert bytes(view) == old
        self.hold(view)

    @rule()
    def gc(self) -> None:
        result = self.c.gc()
        assert isinstance(result, GcResult)
        assert min(vars(result).values()) >= 0
        # Everything collectable went: a second pass right after finds nothing.
        assert self.c.gc() == GcResult()
        assert self.c.stats().dirs_awaiting_gc == 0

    @rule(durability=durabilities)
    def close_and_reopen(self, durability: Durability) -> None:
        self.c.close()
        self.c.close()  # closing twice is harmless
        self.cache = None
        self.cache = BlobCache(self.store, durability=durability)
        assert self.cache.problems == ()
        assert self.cache.stats().temps_removed_at_open == 0

    # --- invariants ------------------------------------------------------------

    @invariant()
    def matches_model(self) -> None:
        if self.cache is None:
            return
        assert len(self.c) == len(self.model)
        listed = list(self.c)
        assert len(listed) == len(set(listed))
        assert set(listed) == set(self.model)
        for key, value in self.model.items():
            view = self.c[key]
            assert bytes(view) == value, key
        stats = self.c.stats()
        assert stats.keys == len(self.model)
        assert stats.live_bytes == sum(map(len, self.model.values()))

    @invariant()
    def held_views_keep_their_bytes(self) -> None:
        for view, old in self.held:
            assert bytes(view) == old

    @invariant()
    def no_temp_files_left(self) -> None:
        for _root, _dirs, names in os.walk(self.store):
            assert not [n for n in names if n.startswith(TEMP_PREFIX)]


BlobCacheModel.TestCase.settings = settings(max_examples=150, stateful_step_count=50, deadline=None)
TestBlobCacheModel = BlobCacheModel.TestCase
