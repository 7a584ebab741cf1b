"""Atomic batches (``cache.batch()``, ``put_many``): all of a batch lands, or none.

Crash models: process crash (SIGKILL of a child mid-batch, both durability
levels) here; power loss in tests/test_crash_states.py (the "batches" workloads,
and batches in the random ones), whose checker fails a state where a batch
landed in part. Plus the batch's semantics, its bad input, a torn batch on disk
(made by cutting a segment inside one), and what the log's readers make of it.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Final

import pytest

from blobcache import BatchError, BlobCache, ReadOnlyError, _log
from blobcache import _format as F

ROOT: Final = Path(__file__).resolve().parents[1]
LIMIT: Final = 64  # inline_limit: a value of 64 bytes or more gets a file


def _files(store: str, prefix: str) -> list[str]:
    return sorted(
        os.path.join(root, name)
        for root, _dirs, names in os.walk(os.path.join(store, F.BLOBS_DIR))
        for name in names
        if name.startswith(prefix)
    )


# --- semantics ---------------------------------------------------------------------


def test_a_batch_applies_in_order_at_its_end(tmp_path: Path) -> None:
    store = str(tmp_path)
    with BlobCache(store, inline_limit=LIMIT) as cache:
        cache.put("gone", b"old")
        cache.put("same", b"before")
        with cache.batch() as b:
            b.put("a", b"1")
            b.put("big", b"B" * 1000)
            b.delete("gone")
            b.put("same", b"first")
            b.put("same", b"second")  # the later one wins
            b.delete("never-there")  # nothing to delete: no error
            assert len(b) == 6
            # Nothing of it is visible before the block ends.
            assert cache.get("a") is None and cache.get("same") == b"before"
            assert cache.get("gone") == b"old"
        assert cache["a"] == b"1" and bytes(cache["big"]) == b"B" * 1000
        assert cache.get("gone") is None and cache["same"] == b"second"
        assert os.path.basename(cache.path("big") or "").startswith(F.BATCH_VERSION_PREFIX)
    with BlobCache(store, inline_limit=LIMIT) as cache:
        assert sorted(cache) == ["a", "big", "same"]
        assert cache["same"] == b"second" and bytes(cache["big"]) == b"B" * 1000


def test_an_exception_in_the_block_applies_nothing_and_leaves_no_file(tmp_path: Path) -> None:
    store = str(tmp_path)
    with BlobCache(store, inline_limit=LIMIT) as cache:
        cache.put("k", b"old")
        with pytest.raises(RuntimeError, match="stop"), cache.batch() as b:
            b.put("k", b"new")
            b.put("big", b"x" * 500)
            raise RuntimeError("stop")
        assert cache["k"] == b"old" and cache.get("big") is None
        assert _files(store, F.TEMP_PREFIX) == [] and _files(store, F.BATCH_VERSION_PREFIX) == []
        with cache.batch() as b:  # the thread may open another one now
            b.put("k", b"newer")
            b.discard()
        assert cache["k"] == b"old"
    with BlobCache(store, inline_limit=LIMIT) as cache:
        assert sorted(cache) == ["k"] and cache["k"] == b"old"


def test_put_many_is_one_batch(tmp_path: Path) -> None:
    store = str(tmp_path)
    with BlobCache(store, inline_limit=LIMIT) as cache:
        cache.put_many((f"k{i}", bytes([i]) * (i * 20)) for i in range(8))
        assert [len(cache[f"k{i}"]) for i in range(8)] == [i * 20 for i in range(8)]
        before = sorted(os.listdir(os.path.join(store, F.LOG_DIR)))
        with pytest.raises(TypeError, match="takes \\(key, value\\) pairs"):
            cache.put_many([("n1", b"1"), ("n2", b"x" * 100), "n3"])  # type: ignore[list-item]
        with pytest.raises(TypeError):
            cache.put_many([("n1", b"1"), ("n2", 42)])
        assert cache.get("n1") is None and cache.get("n2") is None
        assert _files(store, F.TEMP_PREFIX) == []
        assert sorted(os.listdir(os.path.join(store, F.LOG_DIR))) == before


def test_a_batch_costs_one_log_fdatasync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from blobcache import _fsio

    calls: list[int] = []
    real = _fsio.fdatasync
    monkeypatch.setattr(_fsio, "fdatasync", lambda fd: (calls.append(fd), real(fd))[1])
    with BlobCache(str(tmp_path)) as cache:
        cache.put("warm", b"up")  # the first put zero-fills room ahead (its own fdatasync)
        calls.clear()
        cache.put_many((f"k{i}", b"v" * 100) for i in range(1000))
        assert len(calls) == 1
        assert len(cache) == 1001


# --- bad input ------------------------------------------------------------------------


def test_a_batch_refuses_use_after_its_end(tmp_path: Path) -> None:
    with BlobCache(str(tmp_path)) as cache:
        with cache.batch() as b:
            b.put("a", b"1")
        with pytest.raises(BatchError, match="has ended"):
            b.put("b", b"2")
        with pytest.raises(BatchError, match="has ended"):
            b.delete("a")
        assert cache.get("b") is None and cache["a"] == b"1"


def test_batches_do_not_nest(tmp_path: Path) -> None:
    with BlobCache(str(tmp_path)) as cache, cache.batch() as outer:
        outer.put("a", b"1")
        with pytest.raises(BatchError, match="do not nest"):
            cache.batch()
        with pytest.raises(BatchError, match="do not nest"):
            cache.put_many([("b", b"2")])
        assert cache.get("b") is None


def test_a_batch_belongs_to_its_thread(tmp_path: Path) -> None:
    with BlobCache(str(tmp_path)) as cache:
        raised: list[BaseException] = []
        with cache.batch() as b:
            b.put("mine", b"1")

            def other() -> None:
                try:
                    b.put("theirs", b"2")
                except BaseException as exc:
                    raised.append(exc)
                with cache.batch() as own:  # another thread opens its own
                    own.put("own", b"3")

            thread = threading.Thread(target=other)
            thread.start()
            thread.join()
        assert len(raised) == 1 and isinstance(raised[0], BatchError)
        assert "belongs to the thread (and process) that opened it" in str(raised[0])
        assert cache.get("theirs") is None and cache["mine"] == b"1" and cache["own"] == b"3"


def test_bad_keys_and_values_in_a_batch_raise_at_once(tmp_path: Path) -> None:
    with BlobCache(str(tmp_path)) as cache:
        with pytest.raises(TypeError), cache.batch() as b:
            b.put(3, b"x")  # type: ignore[arg-type]
        with pytest.raises(TypeError), cache.batch() as b:
            b.put("k", "text")
        with pytest.raises(TypeError), cache.batch() as b:
            b.delete(None)  # type: ignore[arg-type]
        assert len(cache) == 0


def test_a_readonly_handle_has_no_batches(tmp_path: Path) -> None:
    with BlobCache(str(tmp_path)) as cache:
        cache.put("a", b"1")
    with BlobCache(str(tmp_path), readonly=True) as reader, pytest.raises(ReadOnlyError):
        reader.batch()


# --- on disk ---------------------------------------------------------------------------


def test_the_records_of_a_batch_are_framed_by_more(tmp_path: Path) -> None:
    store = str(tmp_path)
    with BlobCache(store, inline_limit=LIMIT) as cache:
        with cache.batch() as b:
            b.put("a", b"1")
            b.put("w", b"W" * 100)
            b.delete("x")
        cache.put("single", b"s")
    path = os.path.join(store, F.LOG_DIR, _log.segment_name(1))
    with open(path, "rb") as f:
        data = f.read()
    records = list(_log.iter_records(data, F.SEGMENT_HEADER.size, F.RECORD_HEADER.size, path))
    assert [(r.raw, r.kind, r.flags) for r in records] == [
        (b"a", F.RECORD_PUT, F.FLAG_MORE),
        (b"w", F.RECORD_VERSION, F.FLAG_MORE | F.FLAG_BOUND),
        (b"x", F.RECORD_DELETE, 0),
        (b"single", F.RECORD_PUT, 0),
    ]
    assert [r.seq for r in records] == [1, 2, 3, 4]
    (version,) = _files(store, F.BATCH_VERSION_PREFIX)
    assert os.path.basename(version).startswith("b-0000000000000002-")


@pytest.mark.parametrize("keep", [1, 2])
def test_a_batch_cut_short_on_disk_is_dropped_whole(tmp_path: Path, keep: int) -> None:
    """As a power cut inside the batch's write leaves it: its first ``keep``
    records whole, the rest gone. None of it counts, the older values stay, the
    tail is cut and the batch's b- file is garbage."""
    store = str(tmp_path)
    with BlobCache(store, inline_limit=LIMIT) as cache:
        cache.put("a", b"old a")
        cache.put("w", b"o" * 100)
        cache.put("x", b"old x")
        start = cache.stats().log_record_bytes
        with cache.batch() as b:
            b.put("a", b"new a")
            b.put("w", b"n" * 200)
            b.delete("x")
    path = os.path.join(store, F.LOG_DIR, _log.segment_name(1))
    with open(path, "rb") as f:
        data = f.read()
    head = F.SEGMENT_HEADER.size + start
    records = list(_log.iter_records(data, head, F.RECORD_HEADER.size, path))
    assert len(records) == 3
    with open(path, "r+b") as f:
        f.truncate(records[keep - 1].end)
    with BlobCache(store, inline_limit=LIMIT) as cache:
        assert cache["a"] == b"old a" and bytes(cache["w"]) == b"o" * 100
        assert cache["x"] == b"old x"
        assert cache.stats().torn_bytes_at_open == records[keep - 1].end - head
        cache.gc()
        assert _files(store, F.BATCH_VERSION_PREFIX) == []  # never committed: collected
        assert bytes(cache["w"]) == b"o" * 100
    with BlobCache(store, inline_limit=LIMIT) as cache:
        assert (cache["a"], cache["x"]) == (b"old a", b"old x")


def test_a_batch_cut_short_in_a_sealed_segment_is_corruption(tmp_path: Path) -> None:
    from blobcache import CorruptionError

    store = str(tmp_path)
    with BlobCache(store) as cache:
        cache.put_many([("a", b"1"), ("b", b"2")])
    path = os.path.join(store, F.LOG_DIR, _log.segment_name(1))
    with open(path, "rb") as f:
        data = f.read()
    first = next(_log.iter_records(data, 16, F.RECORD_HEADER.size, path))
    # The batch's second record zeroed, then a good single record after it, so
    # the segment is no torn tail: seal it by hand as a successor would.
    sealed = data[: first.end] + bytes(len(data[first.end : first.end + 26]))
    with open(path, "wb") as f:
        f.write(sealed)
    with open(os.path.join(store, F.LOG_DIR, _log.segment_name(2)), "wb") as f:
        f.write(_log.segment_header(0))
    with pytest.raises(CorruptionError, match="batch cut short"):
        BlobCache(store)
    with BlobCache(store, salvage=True) as cache:
        assert cache.get("a") is None and cache.get("b") is None
        assert any("batch cut short" in str(p) for p in cache.problems)


def test_a_batch_version_survives_compaction_and_reopen(tmp_path: Path) -> None:
    """Its version record is what commits it: compaction copies it forward while
    the file is live, and drops it once the key moved on."""
    store = str(tmp_path)
    with BlobCache(store, inline_limit=LIMIT) as cache:
        with cache.batch() as b:
            b.put("w", b"W" * 100)
            b.put("v", b"V" * 100)
        cache.put("v", b"single" * 20)  # v's b- file is superseded
        cache.gc()
        assert bytes(cache["w"]) == b"W" * 100
    with BlobCache(store, inline_limit=LIMIT) as cache:
        assert bytes(cache["w"]) == b"W" * 100 and bytes(cache["v"]) == b"single" * 20
        cache.gc()
        cache.gc()
    with BlobCache(store, inline_limit=LIMIT) as cache:
        assert bytes(cache["w"]) == b"W" * 100
    assert sorted(os.path.basename(p)[:2] for p in _files(store, "")) == ["b-", "ke", "ke", "v-"]


def test_another_handle_sees_all_of_a_batch(tmp_path: Path) -> None:
    store = str(tmp_path)
    with BlobCache(store, inline_limit=LIMIT) as writer, BlobCache(store) as other:
        other.put("x", b"old")
        writer.refresh()
        with writer.batch() as b:
            b.put("a", b"1")
            b.put("w", b"W" * 100)
            b.delete("x")
            b.put("a", b"2")
        other.refresh()
        assert other["a"] == b"2" and bytes(other["w"]) == b"W" * 100
        assert other.get("x") is None


# --- process crash -------------------------------------------------------------------------

KEYS: Final = 6
ROUNDS: Final = 4


def _value(batch: int, key: int) -> bytes:
    """Batch ``batch``'s value of key ``key``: in the log for even keys, in a
    file for odd ones (and for every key in one batch out of three)."""
    size = 100 if key % 2 or batch % 3 == 0 else 10
    return (b"%d:%d;" % (batch, key) * size)[:size]


def writer_main(argv: list[str]) -> int:
    """The child: batches of KEYS puts, numbered from argv[2], each acknowledged
    by a line once ``with`` returned, until killed."""
    store, first, durability = argv[0], int(argv[1]), argv[2]
    with BlobCache(store, inline_limit=LIMIT, durability=durability) as cache:  # type: ignore[arg-type]
        for batch in range(first, first + 100_000):
            with cache.batch() as b:
                for key in range(KEYS):
                    b.put(f"k{key}", _value(batch, key))
            sys.stdout.write(f"ack {batch}\n")
            sys.stdout.flush()
    return 0


def _batch_of(value: bytes | memoryview) -> int:
    return int(bytes(value[:12]).split(b":")[0])


@pytest.mark.parametrize("durability", ["fsync", "os"])
def test_a_batch_killed_midway_is_all_or_none(tmp_path: Path, durability: str) -> None:
    store = str(tmp_path / "store")
    rng = random.Random(f"batch-kill:{durability}")
    acked = -1
    first = 0
    for _ in range(ROUNDS):
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.test_batch", store, str(first), durability],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        for _ in range(rng.randrange(5, 60)):
            line = child.stdout.readline()
            assert line.startswith("ack "), line
            acked = int(line.split()[1])
        child.send_signal(signal.SIGKILL)
        rest, _ = child.communicate()
        for line in rest.splitlines():
            if line.startswith("ack "):
                acked = int(line.split()[1])
        assert child.returncode == -signal.SIGKILL
        with BlobCache(store, inline_limit=LIMIT) as cache:
            assert cache.problems == ()
            batches = {_batch_of(cache[f"k{key}"]) for key in range(KEYS)}
            assert len(batches) == 1, f"keys hold values of batches {sorted(batches)}"
            (found,) = batches
            # Every acknowledged batch is there; the one in flight may be.
            assert found in (acked, acked + 1), (found, acked)
            for key in range(KEYS):
                assert bytes(cache[f"k{key}"]) == _value(found, key)
        first = found + 1 + 1000  # the next round's numbers tell its batches apart
        acked = found


if __name__ == "__main__":
    sys.exit(writer_main(sys.argv[1:]))


# --- regressions found by review (each fails on the code before its fix) ------------


def test_a_batch_of_one_large_value_is_a_record_format_2_refuses(tmp_path: Path) -> None:
    """A b- file's record always carries BOUND, so a version of format 2 (which
    refuses every flag) never takes it for one naming a missing v- file."""
    store = str(tmp_path)
    with BlobCache(store, inline_limit=LIMIT) as cache:
        cache.put_many([("w", b"W" * 100)])
    path = os.path.join(store, F.LOG_DIR, _log.segment_name(1))
    with open(path, "rb") as f:
        data = f.read()
    (record,) = _log.iter_records(data, F.SEGMENT_HEADER.size, F.RECORD_HEADER.size, path)
    assert (record.kind, record.flags) == (F.RECORD_VERSION, F.FLAG_BOUND)


def test_the_janitor_keeps_the_b_file_of_a_batch_killed_in_its_fdatasync(
    tmp_path: Path,
) -> None:
    """The writer is SIGKILLed after writing its batch, during its fdatasync:
    its records are past ``acked`` and land later (the next fdatasync covers
    them). A gc meanwhile must not take the batch's file for uncommitted."""
    store = str(tmp_path)
    child = f"""
import time
from blobcache import BlobCache
from blobcache._logwriter import LogWriter
cache = BlobCache({store!r}, inline_limit={LIMIT})
def stuck(self):
    print("in fdatasync", flush=True)
    time.sleep(3600)
LogWriter._fdatasync_batch = stuck
with cache.batch() as b:
    b.put("small", b"new")
    b.put("big", b"N" * 200)
"""
    with BlobCache(store, inline_limit=LIMIT) as janitor:
        janitor.put("small", b"old")
        janitor.put("big", b"1" * 200)
        janitor.put("big", b"2" * 200)  # big's directory has garbage: gc visits it
        writer = subprocess.Popen(
            [sys.executable, "-c", child], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == "in fdatasync"
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        janitor.gc()
        janitor.put("later", b"x")  # its fdatasync covers the killed batch
        janitor.refresh()
        assert (janitor["small"], bytes(janitor["big"])) == (b"new", b"N" * 200)
    with BlobCache(store, inline_limit=LIMIT) as cache:
        assert (cache["small"], bytes(cache["big"])) == (b"new", b"N" * 200)


def test_a_failed_batch_whose_records_stay_keeps_its_files(tmp_path: Path) -> None:
    """Its fdatasync fails after another handle appended behind it: the records
    stay in the log (FORMAT.md, section 3), and so must the b- files they name."""
    import errno

    store = str(tmp_path)
    with BlobCache(store, inline_limit=LIMIT) as q, BlobCache(store, inline_limit=LIMIT) as p:
        q.put("a", b"old")
        q.put("big", b"O" * 200)
        writer = q._writes.log

        def failing() -> None:
            p.put("x", b"behind")  # another process appends after the batch meanwhile
            raise OSError(errno.EIO, "injected EIO")

        writer._fdatasync_batch = failing  # type: ignore[method-assign]
        with pytest.raises(OSError, match="injected"), q.batch() as b:
            b.put("a", b"new")
            b.put("big", b"N" * 200)
        del writer._fdatasync_batch
        p.refresh()
        seen = (p["a"], bytes(p["big"]))
        assert seen in ((b"old", b"O" * 200), (b"new", b"N" * 200))
    with BlobCache(store, inline_limit=LIMIT) as cache:
        assert (cache["a"], bytes(cache["big"])) == seen


def test_an_open_beside_a_batch_committed_while_it_reads_finds_it_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch commits, and its segment is sealed, while another handle's
    recovery runs: the log is read before the key directories, so every record
    read finds its file."""
    from blobcache import _keydir

    store = str(tmp_path)
    writer = BlobCache(store, inline_limit=LIMIT, compact_ratio=1.0)
    writer.put("a", b"old")
    writer.put("big", b"O" * 200)
    real = _keydir.scan_key_dir
    done: list[bool] = []

    def between(keydir: str, known: object = None) -> _keydir.KeyDirScan:
        scan = real(keydir, known)  # type: ignore[arg-type]
        if not done:  # right after the recovery under test listed big's directory
            done.append(True)
            with writer.batch() as b:
                b.put("a", b"new")
                b.put("big", b"N" * 200)
            writer._writes.log.roll()
        return scan

    monkeypatch.setattr(_keydir, "scan_key_dir", between)
    other = BlobCache(store, inline_limit=LIMIT)
    monkeypatch.setattr(_keydir, "scan_key_dir", real)
    other.refresh()
    assert (other["a"], bytes(other["big"])) == (b"new", b"N" * 200)
    other.gc()
    writer.close()
    other.close()
    with BlobCache(store, inline_limit=LIMIT) as cache:
        assert (cache["a"], bytes(cache["big"])) == (b"new", b"N" * 200)
