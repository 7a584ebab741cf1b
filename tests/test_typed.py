"""Typed values in the store (issue 16): put_object, get_object, get_array,
get_tensors, with the codec in the record through every path a record takes:
the log and version files, reopen, compaction, another process, a crash."""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from blobcache import BlobCache, BlobCacheError, _log
from blobcache import _format as F

safetensors = pytest.importorskip("safetensors")
from safetensors import safe_open  # noqa: E402

_SMALL = np.arange(12, dtype=np.float32).reshape(3, 4)
_LARGE = np.arange(200_000, dtype=np.float64).reshape(400, 500)  # 1.6 MB: a file


def _records(store: str) -> list[_log.Framed]:
    out: list[_log.Framed] = []
    logdir = os.path.join(store, F.LOG_DIR)
    for name in sorted(os.listdir(logdir)):
        with open(os.path.join(logdir, name), "rb") as f:
            data = f.read()
        out += _log.iter_records(data, F.SEGMENT_HEADER.size, F.RECORD_HEADER.size, name)
    return out


def _everything(cache: BlobCache) -> None:
    cache.put_object("small", _SMALL)
    cache.put_object("large", _LARGE)
    cache.put_object("tensors", {"w": _SMALL, "b": np.ones(3, dtype=np.int64)})
    cache.put_object("plain", {"lr": 3e-4, "layers": [64, 64], "name": "run", "ok": True})
    cache.put("raw", b"bytes")


def _check_everything(cache: BlobCache) -> None:
    small = cache.get_array("small")
    assert small.dtype == np.float32 and (small == _SMALL).all()
    large = cache.get_array("large")
    assert (large == _LARGE).all() and not large.flags.writeable
    tensors = cache.get_tensors("tensors")
    assert sorted(tensors) == ["b", "w"] and (tensors["w"] == _SMALL).all()
    assert cache.get_object("plain") == {
        "lr": 3e-4,
        "layers": [64, 64],
        "name": "run",
        "ok": True,
    }
    assert cache.get_object("raw") == b"bytes"
    assert cache.get_object("missing", "default") == "default"
    assert cache.get_array("missing") is None


def test_typed_values_come_back_by_their_codec_and_after_a_reopen(store: str) -> None:
    with BlobCache(store) as cache:
        _everything(cache)
        _check_everything(cache)
    with BlobCache(store) as cache:
        _check_everything(cache)


def test_the_codec_is_in_each_record(store: str) -> None:
    with BlobCache(store) as cache:
        _everything(cache)
    codecs = {r.raw: (r.kind, r.codec, r.flags) for r in _records(store)}
    assert codecs[b"small"][:2] == (F.RECORD_PUT, F.CODEC_NPY)
    assert codecs[b"tensors"][:2] == (F.RECORD_PUT, F.CODEC_SAFETENSORS)
    assert codecs[b"plain"][:2] == (F.RECORD_PUT, F.CODEC_JSON)
    assert codecs[b"raw"][:2] == (F.RECORD_PUT, F.CODEC_RAW)
    # A typed large value is a b- file: bound to the record that holds its codec.
    assert codecs[b"large"] == (F.RECORD_VERSION, F.CODEC_NPY, F.FLAG_BOUND)


def test_compaction_keeps_the_codecs(store: str) -> None:
    with BlobCache(store, segment_bytes=1 << 16) as cache:
        _everything(cache)
        for i in range(200):  # fill and seal segments so that compaction copies the records
            cache.put(f"filler{i % 5}", os.urandom(1000))
        cache.gc()
        _check_everything(cache)
    with BlobCache(store) as cache:
        _check_everything(cache)


def test_a_large_array_opens_with_numpys_own_mmap_and_safetensors(store: str) -> None:
    with BlobCache(store) as cache:
        cache.put_object("large", _LARGE)
        big = {"w": np.zeros((512, 512), dtype=np.float32)}  # 1 MiB: a file
        cache.put_object("weights", big)
        path = cache.path("large")
        assert path is not None
        mapped = np.load(path, mmap_mode="r")
        assert isinstance(mapped, np.memmap) and (mapped == _LARGE).all()
        tpath = cache.path("weights")
        assert tpath is not None
        with safe_open(tpath, framework="np") as f:
            assert (f.get_tensor("w") == big["w"]).all()


def test_get_array_shares_the_mapping_and_is_read_only(store: str) -> None:
    with BlobCache(store) as cache:
        cache.put_object("large", _LARGE)
        view = cache.get("large")
        array = cache.get_array("large")
        assert np.shares_memory(array, np.frombuffer(view, dtype=np.uint8))
        with pytest.raises(ValueError, match="read-only"):
            array[0, 0] = 1.0


def test_get_array_of_a_value_of_another_kind_raises_a_type_error(cache: BlobCache) -> None:
    cache.put("raw", b"x")
    cache.put_object("plain", [1, 2])
    with pytest.raises(TypeError, match="'raw' holds bytes put with put\\(\\), not an array"):
        cache.get_array("raw")
    with pytest.raises(TypeError, match="holds plain data \\(JSON\\), not a dict of arrays"):
        cache.get_tensors("plain")


def test_an_unencodable_value_is_refused_and_changes_nothing(store: str) -> None:
    with BlobCache(store) as cache:
        cache.put_object("k", [1])
        before = sorted(os.listdir(os.path.join(store, F.LOG_DIR)))
        size = os.path.getsize(os.path.join(store, F.LOG_DIR, before[-1]))
        with pytest.raises(TypeError, match='serializer="pickle"'):
            cache.put_object("k", object())
        with pytest.raises(TypeError):
            cache.put_object("k", (1, 2))  # a tuple would come back a list
        with pytest.raises(ValueError, match="serializer"):
            cache.put_object("k", [1], serializer="yaml")
        with pytest.raises(TypeError):
            cache.put_object("k", np.array([object()], dtype=object))
        assert cache.get_object("k") == [1]
        assert sorted(os.listdir(os.path.join(store, F.LOG_DIR))) == before
        assert os.path.getsize(os.path.join(store, F.LOG_DIR, before[-1])) == size


def test_a_put_over_a_typed_value_ends_its_codec(cache: BlobCache) -> None:
    cache.put_object("k", _SMALL)
    cache.put("k", b"plain now")
    assert cache.get_object("k") == b"plain now"
    cache.put_object("k", _LARGE)
    cache.put_object("k", [1])
    assert cache.get_object("k") == [1]
    cache.delete("k")
    assert cache.get_object("k") is None


class _Opaque:
    def __init__(self, n: int) -> None:
        self.n = n

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Opaque) and other.n == self.n

    __hash__ = None  # type: ignore[assignment]


def test_pickle_only_by_name_and_only_from_a_private_store(store: str) -> None:
    with BlobCache(store) as cache:
        cache.put_object("obj", _Opaque(3), serializer="pickle")
        assert cache.get_object("obj") == _Opaque(3)
        os.chmod(store, 0o777)
        try:
            with pytest.raises(BlobCacheError, match=f"{store}.*writable"):
                cache.get_object("obj")
            assert cache.get("obj") is not None  # the bytes are still served as bytes
        finally:
            os.chmod(store, 0o755)
        assert cache.get_object("obj") == _Opaque(3)


def test_no_pickle_is_ever_called_without_serializer_pickle(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("pickle was called")

    for name in ("dumps", "loads", "dump", "load", "Pickler", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    with BlobCache(store) as cache:
        _everything(cache)
        _check_everything(cache)

        @cache.memoize()
        def f(x: int, arr: Any) -> Any:
            return {"sum": float(arr.sum()) + x}

        assert f(1, _SMALL) == f(1, _SMALL) == {"sum": float(_SMALL.sum()) + 1}
        assert f.cache_info() == (1, 1)
        cache.gc()
    with BlobCache(store) as cache:
        _check_everything(cache)


def _put_typed_and_die(store: str, acked: Any) -> None:
    with BlobCache(store) as cache:
        for i in range(10_000):
            value = np.full(i % 50 + 1, i, dtype=np.int32)
            cache.put_object(f"a{i % 7}", value if i % 3 else {"i": i, "list": [i] * 3})
            if i % 97 == 0:
                cache.put_object(f"big{i % 2}", np.full(40_000, i, dtype=np.int64))
            acked.value = i
            if i == 300:
                os.kill(os.getpid(), signal.SIGKILL)


def test_typed_values_survive_a_sigkill_with_their_codecs(store: str) -> None:
    acked = mp.get_context("fork").Value("q", -1)
    child = mp.get_context("fork").Process(target=_put_typed_and_die, args=(store, acked))
    child.start()
    child.join()
    assert child.exitcode == -signal.SIGKILL and acked.value == 300
    with BlobCache(store) as cache:
        for k in range(7):
            last = max(i for i in range(301) if i % 7 == k)
            got = cache.get_object(f"a{k}")
            if last % 3:
                assert isinstance(got, np.ndarray) and (got == last).all()
            else:
                assert got == {"i": last, "list": [last] * 3}
        assert (cache.get_array("big1") == 291).all()
        assert (cache.get_array("big0") == 194).all()


def _put_in_other(store: str) -> None:
    with BlobCache(store) as cache:
        cache.put_object("from-child", _SMALL)
        cache.put_object("big-from-child", _LARGE)


def test_another_processs_typed_puts_are_followed(store: str) -> None:
    with BlobCache(store) as cache:
        cache.put("x", b"open first")
        child = mp.get_context("spawn").Process(target=_put_in_other, args=(store,))
        child.start()
        child.join()
        assert child.exitcode == 0
        assert (cache.get_array("from-child") == _SMALL).all()
        assert (cache.get_array("big-from-child") == _LARGE).all()


def test_a_format_3_store_opens_and_a_writer_upgrades_it(store: str) -> None:
    with BlobCache(store) as cache:
        cache.put("k", b"v")
    marker = os.path.join(store, F.MARKER_NAME)
    os.chmod(marker, 0o644)
    with open(marker, "wb") as f:
        f.write(F.MARKER_CONTENT_V3)
    with BlobCache(store, readonly=True) as cache:
        assert cache["k"] == b"v"
    with open(marker, "rb") as f:
        assert f.read() == F.MARKER_CONTENT_V3  # a reader changes nothing
    with BlobCache(store) as cache:
        cache.put_object("typed", [1])
    with open(marker, "rb") as f:
        assert f.read() == F.MARKER_CONTENT


_RSS_CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    from blobcache import BlobCache

    def rss_kib():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4

    with BlobCache(sys.argv[1], verify_on_get=False) as cache:
        before = rss_kib()
        array = cache.get_array("huge")
        after = rss_kib()
        assert array.shape == (1 << 28,) and array.dtype == np.float32
        print(after - before)
    """
)


def test_get_array_of_a_1_gib_value_reads_none_of_it(tmp_path: Path) -> None:
    """A 1 GiB array: get_array maps it and touches only the header's page."""
    store = str(tmp_path / "store")
    with BlobCache(store) as cache:
        cache.put_object("huge", np.zeros(1 << 28, dtype=np.float32))
    out = subprocess.run(
        [sys.executable, "-c", _RSS_CHILD, store], capture_output=True, text=True, check=True
    )
    grew_kib = int(out.stdout.strip())
    assert grew_kib < 16 * 1024, f"RSS grew {grew_kib} KiB for a 1 GiB get_array"


def test_a_batch_puts_typed_values_all_or_none(store: str) -> None:
    with BlobCache(store) as cache:
        with cache.batch() as b:
            b.put_object("small", _SMALL)
            b.put_object("large", _LARGE)
            b.put_object("plain", [1, "two"])
        assert (cache.get_array("large") == _LARGE).all()
        with pytest.raises(RuntimeError), cache.batch() as b:
            b.put_object("plain", [3])
            raise RuntimeError("applies nothing")
        with pytest.raises(TypeError), cache.batch() as b:
            b.put_object("plain", (3,))
    with BlobCache(store) as cache:
        assert (cache.get_array("small") == _SMALL).all()
        assert (cache.get_array("large") == _LARGE).all()
        assert cache.get_object("plain") == [1, "two"]
    codecs = {r.raw: (r.codec, r.flags) for r in _records(store)}
    assert codecs[b"large"] == (F.CODEC_NPY, F.FLAG_MORE | F.FLAG_BOUND)


def test_the_async_twins(store: str) -> None:
    import asyncio

    from blobcache import AsyncBlobCache

    async def main() -> None:
        async with AsyncBlobCache(store) as cache:
            await cache.put_object("a", _LARGE)
            await cache.put_object("t", {"w": _SMALL})
            await cache.put_object("p", {"x": 1})
            assert (await cache.get_array("a") == _LARGE).all()
            assert (await cache.get_tensors("t"))["w"].shape == (3, 4)
            assert await cache.get_object("p") == {"x": 1}

            @cache.memoize()
            async def twice(x: int) -> int:
                return 2 * x

            assert await twice(4) == await twice(4) == 8
            assert twice.cache_info() == (1, 1)

    asyncio.run(main())
