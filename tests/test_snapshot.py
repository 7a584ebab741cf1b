"""The index snapshot (issue 18): open loads it, replays only the log after it,
loads keys as they are looked up, and falls back to the whole log, reporting
why, whenever the snapshot cannot stand for it.

Crash models: a process killed (SIGKILL) after the snapshot was written leaves
records after it, which the next open replays; a power cut while it is written
is the crash explorer's (tests/test_crash_states.py records its writes).
"""

from __future__ import annotations

import marshal
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

from blobcache import BlobCache
from blobcache import _format as F

KEYS = 300
LIMIT = 1024  # values above it go to files


def _fill(store: str) -> dict[str, bytes | None]:
    """Small and large values, overwrites and deletes; closed (so a snapshot is written)."""
    model: dict[str, bytes | None] = {}
    with BlobCache(store, inline_limit=LIMIT) as cache:
        for i in range(KEYS):
            value = (b"%d." % i) * (1 + i % 7)
            cache.put(f"k{i}", value)
            model[f"k{i}"] = value
        for i in range(0, KEYS, 10):
            cache.put(f"k{i}", b"x" * 3000)  # now in a file
            model[f"k{i}"] = b"x" * 3000
        for i in range(5, KEYS, 20):
            cache.delete(f"k{i}")
            model[f"k{i}"] = None
        cache.put(b"k1", b"a bytes key is another key")
        model_bytes = {b"k1": b"a bytes key is another key"}
    assert os.path.isfile(os.path.join(store, F.SNAPSHOT_NAME))
    return {**model, **model_bytes}  # type: ignore[dict-item]


def _check(cache: BlobCache, model: dict[str, bytes | None]) -> None:
    for key, value in model.items():
        got = cache.get(key)
        assert (None if got is None else bytes(got)) == value, key
    assert len(cache) == sum(v is not None for v in model.values())


def test_open_through_the_snapshot_loads_keys_as_they_are_looked_up(tmp_path: object) -> None:
    store = str(tmp_path)
    model = _fill(store)
    with BlobCache(store, inline_limit=LIMIT) as cache:
        assert cache.problems == ()
        cold = cache._index.cold
        assert cold is not None and cold.left > KEYS // 2  # nothing loaded yet
        left = cold.left
        assert cache.get("k1") == model["k1"]
        assert cold.left == left - 1  # that one, and only it
        assert cache.get("absent") is None and "absent" not in cache
        assert cold.left == left - 1
        _check(cache, model)


def test_whole_index_operations_load_the_rest(tmp_path: object) -> None:
    store = str(tmp_path)
    model = _fill(store)
    live = {k for k, v in model.items() if v is not None}
    with BlobCache(store, inline_limit=LIMIT) as cache:
        assert set(cache) == live
        assert cache._index.cold is None  # all loaded: nothing left to look up
        assert cache.stats().keys == len(live)
    with BlobCache(store, inline_limit=LIMIT) as cache:
        cache.gc()
        _check(cache, model)


def test_puts_and_deletes_after_the_snapshot_win_over_it(tmp_path: object) -> None:
    store = str(tmp_path)
    model = _fill(store)
    with BlobCache(store, inline_limit=LIMIT) as cache:
        # Neither looked up first: the write must find the key's record in the snapshot.
        cache.put("k1", b"new")
        cache.delete("k2")
        cache.put("k3", b"y" * 5000)  # from the log to a file
        cache.put("k10", b"small again")  # from a file to the log
        model.update(k1=b"new", k2=None, k3=b"y" * 5000, k10=b"small again")
        _check(cache, model)
    with BlobCache(store, inline_limit=LIMIT) as cache:
        _check(cache, model)


def _killed_after(store: str, script: str) -> None:
    child = textwrap.dedent(
        f"""
        import os, signal, sys
        from blobcache import BlobCache
        cache = BlobCache({store!r}, inline_limit={LIMIT})
        {script}
        sys.stdout.write("acked\\n"); sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL and done.stdout == "acked\n", done.stderr


@pytest.mark.parametrize("durability", ["fsync", "os"])
def test_a_writer_killed_after_the_snapshot_loses_nothing(
    tmp_path: object, durability: str
) -> None:
    """SIGKILL: the snapshot is older than the log; the records after it are replayed."""
    store = str(tmp_path)
    model = _fill(store)
    _killed_after(
        store,
        f"""cache.close()
        cache = BlobCache({store!r}, inline_limit={LIMIT}, durability={durability!r})
        cache.put("k1", b"after"); cache.delete("k4"); cache.put("k20", b"small")
        cache.put("new", b"z" * 4000); cache.delete(b"k1")""",
    )
    model.update(k1=b"after", k4=None, k20=b"small", new=b"z" * 4000)
    model[b"k1"] = None  # type: ignore[index]
    with BlobCache(store, inline_limit=LIMIT) as cache:
        assert cache.problems == ()
        assert cache._index.cold is not None  # through the snapshot
        _check(cache, model)


def _damage(path: str, how: str) -> None:
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        if how == "torn":
            f.truncate(len(data) - 7)
            return
        at = {
            "magic": 0,
            "version": 4,
            "header": 40,
            "segments": F.SNAPSHOT_HEADER.size + 9,
            "keys": F.SNAPSHOT_HEADER.size + F.SNAPSHOT_SEGMENT.size + 3,
            "extra": len(data) - 2,
        }[how]
        data[at] ^= 0x40
        f.seek(0)
        f.write(data)


@pytest.mark.parametrize("how", ["torn", "magic", "version", "header", "segments", "keys", "extra"])
def test_a_damaged_snapshot_is_reported_and_the_log_replayed(tmp_path: object, how: str) -> None:
    store = str(tmp_path)
    model = _fill(store)
    path = os.path.join(store, F.SNAPSHOT_NAME)
    _damage(path, how)
    with BlobCache(store, inline_limit=LIMIT) as cache:
        assert [p.path for p in cache.problems] == [path]
        assert "index snapshot not used" in cache.problems[0].message
        assert cache.stats().snapshot_at_open.startswith("damaged: ")
        assert cache._index.cold is None
        _check(cache, model)


def test_a_stale_snapshot_never_brings_a_value_back(tmp_path: object) -> None:
    """A snapshot older than a compaction (put back by hand, or left by a crash
    between the compaction and its new snapshot) names records the compaction
    dropped: it is refused, and a deleted key stays deleted."""
    store = str(tmp_path)
    model = _fill(store)
    saved = os.path.join(str(tmp_path), "..", os.path.basename(store) + "-INDEX")
    shutil.copy(os.path.join(store, F.SNAPSHOT_NAME), saved)
    with BlobCache(store, inline_limit=LIMIT) as cache:
        for i in range(1, 40, 3):
            cache.delete(f"k{i}")
            model[f"k{i}"] = None
        cache.gc()  # compacts: the deletes' keys' records are gone from the log
    shutil.copy(saved, os.path.join(store, F.SNAPSHOT_NAME))
    with BlobCache(store, inline_limit=LIMIT) as cache:
        # Stale, not damaged (a crash between a compaction and its snapshot leaves
        # it so): no problem, said in stats.
        assert cache.problems == ()
        assert cache.stats().snapshot_at_open.startswith("stale: its segment")
        _check(cache, model)


def test_a_copied_store_opens_through_its_snapshot(tmp_path: object) -> None:
    """New inodes, same bytes: the snapshot still stands (it checks the bytes)."""
    store = os.path.join(str(tmp_path), "a")
    model = _fill(store)
    copy = os.path.join(str(tmp_path), "b")
    shutil.copytree(store, copy)
    with BlobCache(copy, inline_limit=LIMIT) as cache:
        assert cache.problems == () and cache._index.cold is not None
        _check(cache, model)


def test_expiring_and_pinned_values_are_loaded_at_open(tmp_path: object) -> None:
    store = str(tmp_path)
    with BlobCache(store) as cache:
        cache.put("soon", b"s", ttl=3600)
        cache.put("pinned", b"p")
        cache.pin("pinned")
        cache.put("plain", b"q")
    with BlobCache(store) as cache:
        assert cache._index.cold is not None and cache._index.cold.left == 1  # "plain"
        assert "soon" in cache._index.expiry and cache.pinned("pinned")
        assert cache.get("plain") == b"q" and cache._index.cold is None


def test_a_bounded_cache_loads_every_key_at_open(tmp_path: object) -> None:
    store = str(tmp_path)
    model = _fill(store)
    with BlobCache(store, inline_limit=LIMIT, max_bytes=1 << 30) as cache:
        assert cache._index.cold is None
        _check(cache, model)


def test_salvage_and_a_missing_snapshot_replay_the_log_without_a_problem(tmp_path: object) -> None:
    store = str(tmp_path)
    model = _fill(store)
    with BlobCache(store, inline_limit=LIMIT, salvage=True) as cache:
        assert cache._index.cold is None and cache.problems == ()
        _check(cache, model)
    os.unlink(os.path.join(store, F.SNAPSHOT_NAME))
    with BlobCache(store, inline_limit=LIMIT) as cache:
        assert cache._index.cold is None and cache.problems == ()
        _check(cache, model)


def test_a_readonly_open_loads_it_too(tmp_path: object) -> None:
    store = str(tmp_path)
    model = _fill(store)
    with BlobCache(store, inline_limit=LIMIT) as writer:
        writer.put("k1", b"beside")
        model["k1"] = b"beside"
        with BlobCache(store, inline_limit=LIMIT, readonly=True) as reader:
            assert reader._index.cold is not None
            _check(reader, model)


def test_a_forked_child_reads_keys_not_loaded_before_the_fork(tmp_path: object) -> None:
    store = str(tmp_path)
    model = _fill(store)
    cache = BlobCache(store, inline_limit=LIMIT)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        ok = all(
            (None if cache.get(k) is None else bytes(cache.get(k))) == v  # type: ignore[arg-type]
            for k, v in model.items()
        )
        os.write(write, b"1" if ok else b"0")
        os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"1"
    os.waitpid(pid, 0)
    _check(cache, model)
    cache.close()


def test_the_snapshot_layout_matches_the_prose(tmp_path: object) -> None:
    """FORMAT.md, "The index snapshot": the header's fields at their offsets, one
    segment entry and one key entry per live key in the log, the checksums."""
    import xxhash

    store = str(tmp_path)
    with BlobCache(store) as cache:
        cache.put("a", b"one")
        cache.put("b", b"two")
        cache.put("c", b"three")
        cache.delete("c")
    with open(os.path.join(store, F.SNAPSHOT_NAME), "rb") as f:
        data = f.read()
    assert F.SNAPSHOT_HEADER.size == 96 and F.SNAPSHOT_SEGMENT.size == 48
    assert F.SNAPSHOT_ENTRY.size == 24
    assert data[:4] == b"BCX1" and int.from_bytes(data[4:8], "little") == 2
    u64 = [int.from_bytes(data[at : at + 8], "little") for at in range(8, 96, 8)]
    segment, offset, max_seq, _made, segments, entries, extra = u64[:7]
    assert (segment, segments, entries, max_seq) == (1, 1, 2, 4)  # a, b; c deleted
    with open(os.path.join(store, F.LOG_DIR, "0000000000000001.log"), "rb") as f:
        log = f.read()
    assert offset > F.SEGMENT_HEADER.size and not log[offset:].strip(b"\0")  # the records' end
    table = data[96 : 96 + 48]
    body = data[96 + 48 : 96 + 48 + entries * 32]
    assert u64[7:] == [
        xxhash.xxh3_64_intdigest(table),
        xxhash.xxh3_64_intdigest(body),
        xxhash.xxh3_64_intdigest(data[96 + 48 + entries * 32 :]),
        xxhash.xxh3_64_intdigest(data[:88]),
    ]
    assert len(data) == 96 + 48 + entries * 32 + extra
    hashes = [int.from_bytes(body[i * 8 : i * 8 + 8], "little") for i in range(entries)]
    assert hashes == sorted(xxhash.xxh3_64_intdigest(F.KEY_TAG_STR + k) for k in (b"a", b"b"))
    seqs = {F.SNAPSHOT_ENTRY.unpack_from(body, 16 + i * 24)[0] for i in range(entries)}
    assert seqs == {1, 2}
    number, _tail, end, _total, _live, head, flags = F.SNAPSHOT_SEGMENT.unpack(table)
    assert (number, end, head, flags) == (1, offset, F.RECORD_HEADER.size, 0)
    *first, fanouts, keydirs = marshal.loads(data[96 + 48 + entries * 32 :])
    assert len(first) == 5 and keydirs == {}  # no key directory: no value is a file
    assert set(fanouts) <= {""}  # blobs/ itself (if not stamped too late: _dirbook)


def test_a_handle_beside_another_ones_compaction_writes_no_snapshot_of_old_places(
    tmp_path: object,
) -> None:
    """Two handles (as two processes have): one compacts, which moves records the
    other's index does not know moved (its follower goes on in the active
    segment); the other's close must not write a snapshot naming the old places."""
    store = str(tmp_path)
    model = _fill(store)
    first = BlobCache(store, inline_limit=LIMIT)
    second = BlobCache(store, inline_limit=LIMIT)
    assert second._index.cold is not None  # the keys at their old places
    for i in range(1, KEYS, 4):
        first.put(f"k{i}", b"moved %d" % i)
        model[f"k{i}"] = b"moved %d" % i
    first.gc()  # compacts: every live record moves
    second.put("from the second", b"2")
    model["from the second"] = b"2"
    second.close()
    with BlobCache(store, inline_limit=LIMIT) as third:
        _check(third, model)
    first.close()
    with BlobCache(store, inline_limit=LIMIT) as fourth:
        assert fourth.stats().snapshot_at_open == "loaded"
        _check(fourth, model)
