"""Streaming in (``put_file``, ``put_stream``) and out (``open``)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from blobcache import BlobCache
from blobcache import _format as F
from tests.conftest import files_named


def test_put_file_from_a_path_and_from_a_file_object(store: str, tmp_path: Path) -> None:
    big = os.urandom(3 * BlobCache.CHUNK_BYTES + 123)
    source = tmp_path / "weights.bin"
    source.write_bytes(big)
    with BlobCache(store, inline_limit=1024) as cache:
        cache.put_file("from-path", source)
        cache.put_file("from-str", str(source))
        with open(source, "rb") as f:
            f.seek(100)  # read from where the file object stands
            cache.put_file("from-object", f)
        cache.put_file("buffered-reader", io.BufferedReader(io.BytesIO(big)))
        cache.put_file("small", io.BytesIO(b"a small file"))
        assert bytes(cache["from-path"]) == big == bytes(cache["from-str"])
        assert bytes(cache["from-object"]) == big[100:]
        assert bytes(cache["buffered-reader"]) == big
        assert cache["small"] == b"a small file"  # below inline_limit: in the log
        assert cache.path("small") is None and cache.path("from-path") is not None
    with BlobCache(store) as cache:  # and it all recovers, checksums included
        assert bytes(cache["from-path"]) == big and cache["small"] == b"a small file"


def test_put_stream_of_chunks(store: str) -> None:
    chunks = [os.urandom(n) for n in (10, 70_000, 0, 1 << 20, 5)]
    with BlobCache(store, inline_limit=64 << 10) as cache:
        cache.put_stream("k", iter(chunks))
        cache.put_stream("tiny", [b"a", bytearray(b"b"), memoryview(b"c")])
        cache.put_stream("empty", [])
        assert bytes(cache["k"]) == b"".join(chunks)
        assert cache["tiny"] == b"abc" and cache["empty"] == b""
        with pytest.raises(TypeError, match="bytes-like"):
            cache.put_stream("bad", ["text is not bytes"])
        assert "bad" not in cache


@pytest.mark.parametrize("at", [0, 1, 3], ids=["before-any", "in-the-head", "mid-file"])
def test_a_stream_that_fails_midway_leaves_the_previous_value(store: str, at: int) -> None:
    def failing() -> Iterator[bytes]:
        for i in range(5):
            if i == at:
                raise OSError("the source went away")
            yield bytes([i]) * (40 << 10)

    with BlobCache(store, inline_limit=64 << 10) as cache:
        cache.put("k", b"previous")
        with pytest.raises(OSError, match="went away"):
            cache.put_stream("k", failing())
        assert cache["k"] == b"previous"
    assert files_named(store, F.TEMP_PREFIX) == []
    with BlobCache(store) as cache:
        assert cache["k"] == b"previous"


def test_put_file_refuses_what_is_not_a_file(store: str) -> None:
    with BlobCache(store) as cache:
        with pytest.raises(TypeError, match="path or a binary file object"):
            cache.put_file("k", 42)  # type: ignore[arg-type]
        with pytest.raises(FileNotFoundError):
            cache.put_file("k", os.path.join(store, "no such file"))
        assert "k" not in cache


def test_open_reads_a_value_and_outlives_its_collection(store: str) -> None:
    value = os.urandom(200_000)
    with BlobCache(store, inline_limit=1024) as cache:
        cache.put("large", value)
        cache.put("small", b"in the log")
        with cache.open("small") as f:
            assert f.read() == b"in the log"
        f = cache.open("large")
        try:
            f.seek(1000)
            assert f.read(10) == value[1000:1010]
            cache.put("large", b"x" * 5000)
            cache.gc()  # the file f reads is unlinked now
            f.seek(0)
            assert f.read() == value
        finally:
            f.close()
        with pytest.raises(KeyError):
            cache.open("missing")


def test_put_file_of_512_mib_holds_one_chunk_not_the_value(store: str, tmp_path: Path) -> None:
    source = tmp_path / "big.bin"
    with open(source, "wb") as f:  # sparse: the source costs no disk
        f.truncate(512 << 20)
    script = textwrap.dedent(
        """
        import resource, sys
        from blobcache import BlobCache
        with BlobCache(sys.argv[1]) as cache:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            cache.put_file("big", sys.argv[2])
            after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            assert len(cache["big"]) == 512 << 20
        print((after - before) // 1024)  # MiB (ru_maxrss is in KiB on Linux)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, store, str(source)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    grew_mib = int(done.stdout.split()[-1])
    assert grew_mib < 64, f"peak RSS grew by {grew_mib} MiB"
