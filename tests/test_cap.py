"""``max_bytes``: a hard bound on the live bytes, SIEVE eviction, and pins.

Crash model: process crash (SIGKILL of capped writers, two at once, mid-eviction)
here: a put and the evict records it needs are one batch, so a store opened
after the kill -- without a cap -- is already under the cap. Power loss: the
"evictions" workload of tests/test_crash_states.py.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Final

import pytest

from blobcache import BlobCache, CacheFullError, _log
from blobcache import _format as F
from blobcache._index import Index, SegmentBook, Values, pack
from blobcache._writes import Writes

ROOT: Final = Path(__file__).resolve().parents[1]
LIMIT: Final = 64  # inline_limit: a value of 64 bytes or more gets a file


def _live(cache: BlobCache) -> int:
    """The live bytes, counted from the values themselves (not from stats)."""
    return sum(len(bytes(cache[key])) for key in list(cache))


def _tree(store: str) -> list[tuple[str, list[str]]]:
    """The files of the store (empty fan-out directories left out: gc may leave
    them, the next open removes them)."""
    return [(d, sorted(f)) for d, _, f in sorted(os.walk(store)) if f]


def _records(store: str) -> list[_log.Framed]:
    out = []
    logdir = os.path.join(store, F.LOG_DIR)
    for name in sorted(os.listdir(logdir)):
        if _log.parse_segment_name(name) is None:
            continue
        with open(os.path.join(logdir, name), "rb") as f:
            data = f.read()
        out += _log.iter_records(data, F.SEGMENT_HEADER.size, F.RECORD_HEADER.size, name)
    return out


# --- the bound -----------------------------------------------------------------------


def test_the_cap_holds_after_every_put_small_and_large(tmp_path: Path) -> None:
    store = str(tmp_path)
    cap = 5_000
    with BlobCache(store, inline_limit=LIMIT, max_bytes=cap) as cache:
        for i in range(200):
            size = (i * 37) % 900 + 1
            cache.put(f"k{i}", bytes([i % 256]) * size)
            assert cache.get(f"k{i}") == bytes([i % 256]) * size  # never evicts its own key
            assert cache.stats().live_bytes == _live(cache) <= cap
        evicted = cache.stats().evicted
        assert evicted > 100 and cache.stats().evicting_writes > 50
    # Evictions are records: a store reopened with no cap is still under it.
    with BlobCache(store, inline_limit=LIMIT) as cache:
        assert _live(cache) <= cap and cache.stats().evicted == 0
    kinds = [r.kind for r in _records(store)]
    assert kinds.count(F.RECORD_EVICT) == evicted


def test_a_put_and_its_evictions_are_one_batch(tmp_path: Path) -> None:
    store = str(tmp_path)
    with BlobCache(store, max_bytes=300) as cache:
        for key in "abc":
            cache.put(key, b"x" * 100)
        cache.put("d", b"y" * 150)  # needs two victims: a and b
        assert sorted(cache) == ["c", "d"]
    last = _records(store)[-3:]
    assert [(r.kind, r.flags) for r in last] == [
        (F.RECORD_EVICT, F.FLAG_MORE),
        (F.RECORD_EVICT, F.FLAG_MORE),
        (F.RECORD_PUT, 0),
    ]
    assert [r.raw for r in last] == [b"a", b"b", b"d"]


def test_sieve_keeps_a_visited_key_over_unvisited_ones(tmp_path: Path) -> None:
    with BlobCache(str(tmp_path), max_bytes=400) as cache:
        for key in "abcd":
            cache.put(key, b"v" * 100)
        assert cache.get("a") is not None  # a hit: its visited bit
        cache.put("e", b"v" * 100)  # the hand passes a (clearing it), evicts b
        assert sorted(cache) == ["a", "c", "d", "e"]
        cache.put("f", b"v" * 100)  # then c
        assert sorted(cache) == ["a", "d", "e", "f"]


def test_a_value_larger_than_the_cap_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    store = str(tmp_path)
    with BlobCache(store, inline_limit=LIMIT, max_bytes=1000) as cache:
        cache.put("a", b"1" * 500)
        before = _tree(store)
        records = len(_records(store))
        for value in (b"2" * 1001, b"3" * 5000):
            with pytest.raises(ValueError, match="larger than max_bytes"):
                cache.put("a", value)
            with pytest.raises(CacheFullError, match="larger than max_bytes"):
                cache.put("b", value)
        with pytest.raises(ValueError, match="larger than max_bytes"):
            cache.put_many([("d", b"5" * 1001)])
        assert cache["a"] == b"1" * 500 and "b" not in cache and "d" not in cache
        assert len(_records(store)) == records
        assert _tree(store) == before
        # A stream's length is known only once written: its key directory (its
        # key file alone) is left for gc, as by a stream that fails midway.
        with pytest.raises(ValueError, match="larger than max_bytes"):
            cache.put_stream("c", [b"4" * 600, b"4" * 600])
        assert "c" not in cache and len(_records(store)) == records
        cache.gc()  # (compacts the log too)
        blobs = os.path.join(store, F.BLOBS_DIR)
        assert _tree(blobs) == [(d, f) for d, f in before if d.startswith(blobs)]
        assert cache["a"] == b"1" * 500


@pytest.mark.parametrize("bad", [0, -1, -(2**70)])
def test_max_bytes_must_be_positive(tmp_path: Path, bad: int) -> None:
    with pytest.raises(ValueError, match="max_bytes must be between 1"):
        BlobCache(str(tmp_path), max_bytes=bad)
    assert os.listdir(tmp_path) == []  # nothing made


@pytest.mark.parametrize("bad", [1.5, "10", True])
def test_max_bytes_must_be_an_int(tmp_path: Path, bad: object) -> None:
    with pytest.raises(TypeError, match="max_bytes must be an int"):
        BlobCache(str(tmp_path), max_bytes=bad)  # type: ignore[arg-type]


def test_a_batch_never_evicts_its_own_keys(tmp_path: Path) -> None:
    with BlobCache(str(tmp_path), max_bytes=500) as cache:
        for key in "abcde":
            cache.put(key, b"o" * 100)
        with cache.batch() as b:
            b.put("x", b"n" * 100)
            b.put("a", b"n" * 100)  # an old key, rewritten by the batch: kept
            b.put("y", b"n" * 100)
        assert {"x", "a", "y"} <= set(cache) and cache.stats().live_bytes <= 500
        before = {key: bytes(cache[key]) for key in cache}
        with pytest.raises(CacheFullError, match="pinned or this operation's own"):
            cache.put_many([(k, b"z" * 100) for k in "pqrstu"])  # 600 bytes: cannot fit
        assert {key: bytes(cache[key]) for key in cache} == before


def test_a_delete_brings_an_over_cap_store_under(tmp_path: Path) -> None:
    """An uncapped writer beside a capped one can pass the cap; the capped one's
    next write of any kind, a delete too, brings the store under it."""
    store = str(tmp_path)
    with BlobCache(store) as free:
        for i in range(10):
            free.put(f"k{i}", b"f" * 100)
    with BlobCache(store, max_bytes=1000) as cache:
        free = BlobCache(store)
        try:
            free.put("extra", b"e" * 500)
        finally:
            free.close()
        cache.delete("k0")
        cache.refresh()
        assert cache.stats().live_bytes <= 1000 and _live(cache) <= 1000


def test_a_store_over_its_cap_at_open_is_brought_under(tmp_path: Path) -> None:
    store = str(tmp_path)
    with BlobCache(store, inline_limit=LIMIT) as cache:
        for i in range(50):
            cache.put(f"k{i}", b"v" * 100)
    with BlobCache(store, inline_limit=LIMIT, max_bytes=2000) as cache:
        assert _live(cache) <= 2000 and len(cache) == 20
        assert cache.stats().evicted == 30
        assert set(cache) == {f"k{i}" for i in range(30, 50)}  # the oldest went first
    with BlobCache(store, inline_limit=LIMIT) as cache:
        assert len(cache) == 20  # the evictions were written


def test_a_readonly_handle_with_a_cap_evicts_nothing(tmp_path: Path) -> None:
    store = str(tmp_path)
    with BlobCache(store) as cache:
        for i in range(5):
            cache.put(f"k{i}", b"v" * 100)
        with BlobCache(store, readonly=True, max_bytes=100) as reader:
            assert len(reader) == 5
        assert len(cache) == 5


# --- pins ----------------------------------------------------------------------------


def test_pinned_keys_are_never_evicted_and_pins_survive_reopen_and_compaction(
    tmp_path: Path,
) -> None:
    store = str(tmp_path)
    with BlobCache(store, inline_limit=LIMIT, max_bytes=1000, segment_bytes=4096) as cache:
        cache.put("small", b"s" * 50, pin=True)
        cache.put("large", b"L" * 300)
        cache.pin("large")
        assert cache.pinned("small") and cache.pinned("large") and not cache.pinned("nope")
        for i in range(100):
            cache.put(f"k{i}", b"v" * 100)
            assert "small" in cache and "large" in cache
        cache.put("small", b"S" * 60)  # a plain put keeps the key's pin
        assert cache.pinned("small")
        cache.gc()  # compaction copies the pins forward
    for _ in range(2):
        with BlobCache(store, inline_limit=LIMIT, max_bytes=1000) as cache:
            assert cache.pinned("small") and cache.pinned("large")
            for i in range(20):
                cache.put(f"again{i}", b"a" * 200)
            assert cache["small"] == b"S" * 60 and bytes(cache["large"]) == b"L" * 300
            cache.gc()
    with BlobCache(store, inline_limit=LIMIT, max_bytes=1000) as cache:
        cache.unpin("large")
        assert not cache.pinned("large")
        for i in range(20):
            cache.put(f"more{i}", b"m" * 200)
        assert "large" not in cache and "small" in cache


def test_a_delete_ends_a_pin(tmp_path: Path) -> None:
    store = str(tmp_path)
    with BlobCache(store, max_bytes=500) as cache:
        cache.put("p", b"1", pin=True)
        cache.delete("p")
        cache.put("p", b"2")
        assert not cache.pinned("p")
    with BlobCache(store, max_bytes=500) as cache:
        assert not cache.pinned("p") and cache["p"] == b"2"


def test_pinning_a_missing_key_raises_and_writes_nothing(tmp_path: Path) -> None:
    store = str(tmp_path)
    with BlobCache(store) as cache:
        cache.put("a", b"1")
        records = len(_records(store))
        with pytest.raises(KeyError):
            cache.pin("missing")
        with pytest.raises(KeyError):
            cache.unpin("missing")
        with pytest.raises(TypeError, match="pin must be True or False"):
            cache.put("a", b"2", pin=1)  # type: ignore[arg-type]
        cache.pin("a")
        cache.pin("a")  # a record each: another process may have unpinned it between
        assert len(_records(store)) == records + 2
        assert cache["a"] == b"1"


def test_pins_leave_no_room_raises_and_changes_nothing(tmp_path: Path) -> None:
    with BlobCache(str(tmp_path), max_bytes=300) as cache:
        cache.put("a", b"a" * 100, pin=True)
        cache.put("b", b"b" * 100, pin=True)
        cache.put("c", b"c" * 100)
        with pytest.raises(CacheFullError, match="pinned"):
            cache.put("d", b"d" * 150)
        assert sorted(cache) == ["a", "b", "c"] and "d" not in cache
        cache.put("d", b"d" * 100)  # c can go
        assert sorted(cache) == ["a", "b", "d"]


def test_a_pin_made_in_another_process_holds_here(tmp_path: Path) -> None:
    store = str(tmp_path)
    with BlobCache(store, max_bytes=300) as cache:
        for key in "abc":
            cache.put(key, b"v" * 100)
        code = (
            "import sys; from blobcache import BlobCache\n"
            "with BlobCache(sys.argv[1], max_bytes=300) as c: c.pin('a')\n"
        )
        subprocess.run([sys.executable, "-c", code, store], check=True, cwd=ROOT)
        cache.put("d", b"v" * 100)  # a is the oldest, but pinned: b goes
        assert sorted(cache) == ["a", "c", "d"] and cache.pinned("a")


# --- several processes, killed --------------------------------------------------------

WRITER: Final = """
import sys
from blobcache import BlobCache
store, name, cap, durability = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
with BlobCache(store, max_bytes=cap, inline_limit=64, durability=durability) as cache:
    i = 0
    while True:
        size = (i * 53) % 700 + 1
        cache.put(f"{name}{i % 400}", bytes([i % 251]) * size)
        cache.refresh()
        assert cache.stats().live_bytes <= cap, cache.stats()
        print(i, flush=True)
        i += 1
"""


@pytest.mark.parametrize("durability", ["fsync", "os"])
def test_two_capped_writers_killed_mid_eviction_leave_the_store_under_the_cap(
    tmp_path: Path, durability: str
) -> None:
    store = str(tmp_path / "store")
    cap = 20_000
    for round in range(3):
        writers = [
            subprocess.Popen(
                [sys.executable, "-c", WRITER, store, name, str(cap), durability],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                text=True,
            )
            for name in ("a", "b")
        ]
        for writer in writers:
            assert writer.stdout is not None
            for _ in range(150 + 50 * round):
                line = writer.stdout.readline()
                assert line.strip().isdigit(), line  # each checked the cap after refresh()
        for writer in writers:
            writer.send_signal(signal.SIGKILL)
        for writer in writers:
            writer.communicate()
            assert writer.returncode == -signal.SIGKILL
        # No cap here: the evictions the writers made are what keeps it under.
        with BlobCache(store, inline_limit=LIMIT) as cache:
            assert cache.problems == ()
            assert _live(cache) <= cap
            for key in cache:
                value = bytes(cache[key])
                assert value == value[:1] * len(value)  # each value whole


def test_a_pin_applied_ahead_outlives_an_older_put_read_later() -> None:
    """This process's pin record (21), applied before the follower read another
    process's put of the key (20, no PINNED bit): the put is older than the pin,
    so the key stays pinned, as a reopen would find it; a newer put decides."""
    index = Index(Values({}, {}), {}, {}, SegmentBook({}, {}), set(), threading.Event())
    index.publish("k", b"v", pack(5, 1, 16, 30))
    assert index.set_pin("k", 21, True)
    index.publish("k", b"w", pack(20, 1, 46, 30))  # the other's, read late
    assert "k" in index.pins
    index.publish("k", b"x", pack(22, 1, 76, 30))  # newer than the pin record, unpinned
    assert "k" not in index.pins and not index.pin_said
    assert not index.set_pin("k", 21, True)  # stale: older than the live record
    assert "k" not in index.pins


# --- regressions found by review (each fails on the code before its fix) ------------

_OTHER: Final = "import sys; from blobcache import BlobCache\nwith BlobCache(sys.argv[1]) as c:\n"


def _other(store: str, body: str) -> None:
    """Run ``body`` (using ``c``, an uncapped handle) in another process."""
    subprocess.run([sys.executable, "-c", _OTHER + f"    {body}\n", store], check=True, cwd=ROOT)


def test_pin_never_evicts_the_key_it_pins(tmp_path: Path) -> None:
    """pin() on a capped handle while the store is over the cap (an uncapped
    writer passed it, not yet applied here) evicts others, never its own key."""
    store = str(tmp_path)
    with BlobCache(store, max_bytes=300, refresh_interval=3600) as cache:
        cache.put("a", b"a" * 100)
        _other(store, "[c.put(k, b'x' * 100) for k in 'bcd']")
        cache.pin("a")
        assert "a" in cache and cache.pinned("a") and cache.stats().live_bytes <= 300


def test_unpin_undoes_a_pin_another_process_made(tmp_path: Path) -> None:
    store = str(tmp_path)
    with BlobCache(store, refresh_interval=3600) as cache:
        cache.put("a", b"a")
        _other(store, "c.pin('a')")
        cache.unpin("a")  # this index did not know of the pin yet
        assert not cache.pinned("a")
    with BlobCache(store) as cache:
        assert not cache.pinned("a")


def test_a_delete_in_another_process_ends_the_pin_a_capped_put_sees(tmp_path: Path) -> None:
    store = str(tmp_path)
    with BlobCache(store, max_bytes=10_000, refresh_interval=3600) as cache:
        cache.put("k", b"1", pin=True)
        _other(store, "c.delete('k')")
        cache.put("k", b"2")  # after the delete: a plain put, not pinned
    with BlobCache(store) as cache:
        assert cache["k"] == b"2" and not cache.pinned("k")


def test_a_record_passed_but_not_yet_applied_still_counts(tmp_path: Path) -> None:
    """A capped put planning between another thread's record passing the
    follower and its landing in the index counts that record."""
    cache = BlobCache(str(tmp_path), max_bytes=300, refresh_interval=3600)
    cache.put("a", b"a" * 100)
    cache.put("b", b"b" * 100)
    real = Index.publish
    fired: list[bool] = []

    def publish(self: Index, key: object, value: object, *args: object) -> object:
        if key == "x" and not fired:  # x's record is passed, not yet applied
            fired.append(True)
            other = threading.Thread(target=cache.put, args=("y", b"y" * 100))
            other.start()
            other.join()
        return real(self, key, value, *args)  # type: ignore[arg-type]

    Index.publish = publish  # type: ignore[assignment,method-assign]
    try:
        cache.put("x", b"x" * 100)
    finally:
        Index.publish = real  # type: ignore[method-assign]
    try:
        assert fired and _live(cache) <= 300 and {"x", "y"} <= set(cache)
    finally:
        cache.close()


def test_a_store_over_its_cap_by_pins_alone_opens_and_stays_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = str(tmp_path)
    with BlobCache(store) as cache:
        for key in "abc":
            cache.put(key, b"v" * 100, pin=True)
        cache.put("d", b"v" * 100)
    with BlobCache(store, max_bytes=200) as cache:  # evicts d; a, b, c are pinned
        assert sorted(cache) == ["a", "b", "c"]
        assert "pinned: unpin keys to bring it under" in caplog.text
        with pytest.raises(CacheFullError, match="pinned"):
            cache.put("e", b"e")
        cache.unpin("c")  # never refused for the cap, and never evicts its own key
        assert sorted(cache) == ["a", "b", "c"]
        cache.unpin("b")  # evicts what it can: c
        assert sorted(cache) == ["a", "b"] and cache.stats().live_bytes <= 200
        cache.put("e", b"e")  # b goes
        assert sorted(cache) == ["a", "e"]


def test_an_open_whose_eviction_others_made_needless_opens(tmp_path: Path) -> None:
    """Over the cap at the open's catch-up, under it once the eviction plans
    (another process deleted meanwhile): an eviction of nothing."""
    store = str(tmp_path)
    with BlobCache(store) as cache:
        for i in range(5):
            cache.put(f"k{i}", b"v" * 100)
    real = Writes.enforce_cap

    def enforce_cap(self: Writes) -> bool:
        _other(store, "[c.delete(f'k{i}') for i in range(4)]")
        return real(self)

    Writes.enforce_cap = enforce_cap  # type: ignore[method-assign]
    try:
        with BlobCache(store, max_bytes=300) as cache:
            cache.refresh()
            assert sorted(cache) == ["k4"] and cache.stats().evicted == 0
    finally:
        Writes.enforce_cap = real  # type: ignore[method-assign]


def test_a_forked_child_of_a_capped_handle_adopts_the_store(tmp_path: Path) -> None:
    """The capped get is bound at open over the parent's dict; a forked child
    drops it, so its gets adopt the store there and catch up."""
    cache = BlobCache(str(tmp_path), max_bytes=10_000, refresh_interval=0.05)
    try:
        cache.put("k", b"old")
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child
            os.read(ready_r, 1)
            code = 0 if cache.get("k") == b"new" else 1  # a get adopts, and reads anew
            os._exit(code)
        cache.put("k", b"new")
        os.write(ready_w, b"x")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        cache.close()


def test_evictions_are_logged_at_debug_level(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.DEBUG, logger="blobcache"),
        BlobCache(str(tmp_path), max_bytes=200) as cache,
    ):
        cache.put("a", b"a" * 100)
        cache.put("b", b"b" * 100)
        assert "evicted" not in caplog.text
        cache.put("c", b"c" * 100)
    assert "max_bytes evicted 1 keys: ['a']" in caplog.text
