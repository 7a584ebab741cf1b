"""``BlobCache(path, readonly=True)``: reading beside a live writer, changing nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from blobcache import BlobCache, BlobCacheError, ReadOnlyError
from blobcache import _format as F
from tests.conftest import files_named


def _tree(root: str) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` with its size and modification time (ns)."""
    out = {}
    for directory, _, names in os.walk(root):
        for name in names:
            st = os.stat(os.path.join(directory, name))
            out[os.path.join(directory, name)] = (st.st_size, st.st_mtime_ns)
    return out


def test_reader_beside_a_writer_in_the_same_process_sees_the_values_and_writes_nothing(
    store: str,
) -> None:
    with BlobCache(store, inline_limit=64) as writer:
        writer.put("small", b"in the log")
        writer.put("large", b"L" * 1000)
        writer.put("gone", b"x")
        writer.delete("gone")
        before = _tree(store)
        with BlobCache(store, readonly=True, refresh_interval=3600) as reader:
            assert dict(reader.items()) == {"small": b"in the log", "large": b"L" * 1000}
            for write in (
                lambda: reader.put("k", b"v"),
                lambda: reader.delete("small"),
                reader.gc,
                reader.sync,
            ):
                with pytest.raises(ReadOnlyError, match="readonly=True"):
                    write()
            assert _tree(store) == before
            # Following the writer (a miss catches up, as does refresh()) writes
            # nothing either.
            writer.put("later", b"after the reader opened")
            writer.put("large", b"M" * 1000)
            writer.delete("small")
            before = _tree(store)
            assert reader["later"] == b"after the reader opened"
            reader.refresh()
            assert dict(reader.items()) == {
                "later": b"after the reader opened",
                "large": b"M" * 1000,
            }
            assert _tree(store) == before
    assert isinstance(ReadOnlyError(store), PermissionError)


def test_reader_leaves_a_torn_tail_and_an_orphan_temp_file_alone(store: str) -> None:
    with BlobCache(store) as writer:
        writer.put("a", b"1" * 50)
    segment = files_named(store, "0")[-1]
    with open(segment, "r+b") as f:  # a record the writer is half-way through
        f.seek(F.SEGMENT_HEADER.size + F.RECORD_HEADER.size + len("a") + 50)  # after "a"'s
        f.write(b"\x07" * 10)
    orphan = os.path.join(store, F.LOG_DIR, F.TEMP_PREFIX + "0123456789abcdef")
    with open(orphan, "wb") as f:
        f.write(b"a compaction output never published")
    before = _tree(store)
    with BlobCache(store, readonly=True) as reader:
        assert reader["a"] == b"1" * 50
        assert reader.problems == ()  # a writer may be mid-append: not a problem
    assert _tree(store) == before


@pytest.mark.parametrize("kind", ["missing", "file", "foreign", "empty"])
def test_reader_refuses_what_is_not_a_store_and_creates_nothing(tmp_path: Path, kind: str) -> None:
    path = os.path.join(str(tmp_path), "x")
    if kind == "file":
        open(path, "wb").close()
    elif kind in ("foreign", "empty"):
        os.mkdir(path)
        if kind == "foreign":
            open(os.path.join(path, "notes.txt"), "wb").close()
    before = sorted(os.listdir(str(tmp_path))), _tree(str(tmp_path))
    with pytest.raises(BlobCacheError):
        BlobCache(path, readonly=True)
    assert (sorted(os.listdir(str(tmp_path))), _tree(str(tmp_path))) == before


_WRITER = textwrap.dedent(
    """
    import sys
    from blobcache import BlobCache
    with BlobCache(sys.argv[1], inline_limit=64, segment_bytes=4096, compact_ratio=0.3) as c:
        for i in range(int(sys.argv[2])):
            small = (b"s%d-" % i) * 4
            c.put("small-%d" % (i % 5), small)
            c.put("large-%d" % (i % 3), small * 40)
            if i % 7 == 0:
                c.delete("small-%d" % (i % 5))
            if i % 25 == 24:
                c.gc()
            if i == 20:
                print("ready", flush=True)
    """
)


def test_readers_beside_a_writer_in_another_process_that_compacts_and_collects(
    store: str,
) -> None:
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, store, "400"], stdout=subprocess.PIPE, text=True
    )
    assert writer.stdout is not None
    assert writer.stdout.readline() == "ready\n"
    opens = 0
    while writer.poll() is None or opens == 0:
        with BlobCache(store, readonly=True) as reader:
            opens += 1
            for key in reader:
                assert isinstance(key, str)
                try:
                    value = bytes(reader[key])
                except BlobCacheError as exc:  # superseded and collected since the open
                    assert "missing" in str(exc)
                    continue
                i = value.split(b"-")[0][1:]
                small = b"s" + i + b"-"
                assert value in (small * 4, small * 160), (key, value[:40])
    assert writer.wait() == 0
    with BlobCache(store, readonly=True) as reader:
        assert bytes(reader["large-0"]).startswith(b"s")
    assert opens >= 1


def test_a_readers_view_outlives_the_writers_gc_of_its_file(store: str) -> None:
    with BlobCache(store, inline_limit=0) as writer:
        writer.put("k", b"first" * 100)
        with BlobCache(store, readonly=True) as reader:
            view = reader["k"]
            path = reader.path("k")
            writer.put("k", b"second" * 100)
            writer.gc()
            assert path is not None and not os.path.exists(path)  # unlinked by the writer
            assert bytes(view) == b"first" * 100  # the mapping keeps the bytes
