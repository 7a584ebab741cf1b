"""The model test of a capped store: ``max_bytes``, pins, TTL and batches, with reopen.

Which keys SIEVE evicts is the cache's choice; what the model checks is
everything else: the cache holds a subset of the model's keys, each with the
model's value; after every put, delete, batch or reopen the live bytes are
within the cap; a put never evicts its own key nor a batch its own; a pinned
key is never evicted, and its pin survives reopen and gc. The model then
forgets the keys the cache evicted. Time is the model's (``blobcache._clock``
stood in for). Crash model: none here (a clean close); see tests/test_cap.py.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from blobcache import BlobCache, CacheFullError, _clock
from tests.crashsim import scratch_dir

Key = str

KEYS: list[Key] = [f"k{i}" for i in range(12)]
CAPS = [400, 1000, 3000]
INLINE_LIMIT = 200
SIZES = [0, 1, 50, 199, 200, 350, 900]

keys = st.sampled_from(KEYS)
values = st.builds(lambda n, b: bytes([b]) * n, st.sampled_from(SIZES), st.integers(0, 255))
caps = st.sampled_from(CAPS)
ttls = st.sampled_from([1, 5, 30])
batch_ops = st.lists(st.tuples(keys, st.one_of(st.none(), values)), min_size=1, max_size=4)


class CappedModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.directory = tempfile.mkdtemp(prefix="blobcache-capmodel-", dir=scratch_dir())
        self.store = os.path.join(self.directory, "store")
        self.model: dict[Key, bytes] = {}
        self.pins: set[Key] = set()
        self.expires: dict[Key, int] = {}
        self.cache: BlobCache | None = None
        self.cap = CAPS[0]
        self.now = 1_796_148_000_000
        self._real_clock = _clock.now_ms
        _clock.now_ms = lambda: self.now

    def open(self, cap: int) -> None:
        self.cap = cap
        self.cache = BlobCache(
            self.store, max_bytes=cap, inline_limit=INLINE_LIMIT, segment_bytes=4096
        )
        assert self.cache.problems == ()
        self.forget_evicted(spared=set())

    @initialize(cap=caps)
    def open_store(self, cap: int) -> None:
        self.open(cap)

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

    def forget_evicted(self, spared: set[Key]) -> None:
        """The keys the cache no longer holds were evicted: never a spared one
        (the operation's own) nor a pinned one. The model forgets them."""
        held = set(self.c)
        gone = set(self.model) - held
        assert not gone & spared, f"evicted its own keys {gone & spared}"
        assert not gone & self.pins, f"evicted pinned keys {gone & self.pins}"
        for key in gone:
            self.drop(key)

    def drop(self, key: Key) -> None:
        self.model.pop(key, None)
        self.pins.discard(key)
        self.expires.pop(key, None)

    def fits(self, changes: dict[Key, bytes | None]) -> bool:
        """Whether the cap leaves room for ``changes`` with only the pinned keys
        and the changed ones kept."""
        kept = {k: v for k, v in self.model.items() if k in self.pins or k in changes}
        kept.update((k, v) for k, v in changes.items() if v is not None)
        for key, value in changes.items():
            if value is None:
                kept.pop(key, None)
        return sum(map(len, kept.values())) <= self.cap

    # --- rules -----------------------------------------------------------------------

    @rule(key=keys, value=values, pin=st.booleans(), ttl=st.one_of(st.none(), ttls))
    def put(self, key: Key, value: bytes, pin: bool, ttl: int | None) -> None:
        if not self.fits({key: value}):
            try:
                self.c.put(key, value, pin=pin, ttl=ttl)
            except CacheFullError:
                return  # nothing changed: the invariants check it
            raise AssertionError("a put the cap has no room for returned")
        self.c.put(key, value, pin=pin, ttl=ttl)
        self.model[key] = value
        if pin:
            self.pins.add(key)
        if ttl is None:
            self.expires.pop(key, None)
        else:
            self.expires[key] = self.now + ttl * 1000
        self.forget_evicted({key})

    @rule(key=keys)
    def get(self, key: Key) -> None:
        got = self.c.get(key)
        assert (None if got is None else bytes(got)) == self.model.get(key)

    @rule(key=keys)
    def delete(self, key: Key) -> None:
        assert self.c.delete(key) == (key in self.model)
        self.drop(key)
        self.forget_evicted(set())

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data(), pinned=st.booleans())
    def pin(self, data: st.DataObject, pinned: bool) -> None:
        key = data.draw(st.sampled_from(sorted(self.model)))
        if pinned:
            self.c.pin(key)
            self.pins.add(key)
        else:
            self.c.unpin(key)
            self.pins.discard(key)

    @rule(ops=batch_ops)
    def batch(self, ops: list[tuple[Key, bytes | None]]) -> None:
        changes: dict[Key, bytes | None] = {}
        for key, value in ops:
            changes[key] = value
        too_large = any(v is not None and len(v) > self.cap for _, v in ops)
        if too_large or not self.fits(changes):
            try:
                with self.c.batch() as b:
                    for key, value in ops:
                        b.put(key, value) if value is not None else b.delete(key)
            except CacheFullError:
                return
            raise AssertionError("a batch the cap has no room for returned")
        with self.c.batch() as b:
            for key, value in ops:
                b.put(key, value) if value is not None else b.delete(key)
        for key, value in changes.items():
            if value is None:
                self.drop(key)
            else:
                self.model[key] = value
                self.expires.pop(key, None)
        self.forget_evicted({k for k, v in changes.items() if v is not None})

    @rule(seconds=st.sampled_from([1, 4, 10, 60]))
    def time_passes(self, seconds: int) -> None:
        self.now += seconds * 1000
        for key in [k for k, when in self.expires.items() if when <= self.now]:
            assert key not in self.c
            self.drop(key)
        self.c.refresh()

    @rule()
    def gc(self) -> None:
        self.c.gc()

    @rule(cap=caps)
    def close_and_reopen(self, cap: int) -> None:
        self.c.close()
        self.cache = None
        # A lower cap at open evicts what it must, but never a pinned key: a
        # store whose pins alone pass the new cap keeps the old one here.
        pinned = sum(len(v) for k, v in self.model.items() if k in self.pins)
        self.open(cap if pinned <= cap else max(c for c in CAPS if c >= pinned))

    # --- invariants ------------------------------------------------------------------

    @invariant()
    def within_the_cap_and_like_the_model(self) -> None:
        if self.cache is None:
            return
        held = set(self.c)
        assert held == set(self.model)
        live = 0
        for key in held:
            value = bytes(self.c[key])
            assert value == self.model[key], key
            live += len(value)
        assert live == self.c.stats().live_bytes <= self.cap
        assert {k for k in held if self.c.pinned(k)} == self.pins


CappedModel.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
TestCappedModel = CappedModel.TestCase
