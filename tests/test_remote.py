"""The remote tier against a real SeaweedFS on the loopback (tests/seaweed.py).

Crash model: machine loss (the local directory deleted, a new store on the same
remote), process crash (SIGKILL of a writer with the remote attached), and the
server itself killed mid-upload and restarted. Two stores in two processes race on
the same keys and must converge on one winner.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import obstore
import pytest
import xxhash

from blobcache import BlobCache, CorruptionError, RemoteError
from blobcache import _format as F
from blobcache import _names as N
from blobcache._remote import Remote, RemoteRecord, new_put_id, record_path
from blobcache._remotegc import collect
from tests.remote_child import plain_options, value_of
from tests.remote_fixtures import RemotePrefix, open_with

ROOT = Path(__file__).resolve().parent.parent
BIG = 6 << 20  # past obstore's multipart threshold and the local inline limit


def remote_objects(place: RemotePrefix) -> list[str]:
    store = place.store()
    return sorted(m["path"] for chunk in obstore.list(store) for m in chunk)


# --- machine loss -------------------------------------------------------------------


def test_machine_loss_write_through_keeps_every_acknowledged_put(
    place: RemotePrefix, tmp_path: Path
) -> None:
    big = os.urandom(BIG)
    src = tmp_path / "src.bin"
    src.write_bytes(big[::-1])
    with open_with(place, tmp_path / "a") as cache:
        cache.put("small", b"hello")
        cache.put("big", big)
        cache.put_object("array", np.arange(12, dtype=np.float32).reshape(3, 4))
        cache.put_object("config", {"lr": 0.001, "layers": [1, 2]})
        cache.put_file("file", str(src))
        cache.put_stream("stream", [b"ab", b"cd"])
        cache.put("deleted", b"x")
        assert cache.delete("deleted")
        cache.put("overwritten", b"1")
        cache.put("overwritten", b"2")
        with cache.batch() as b:
            b.put("batch-a", b"A")
            b.put("batch-b", big[:1000])
        assert cache.stats().remote_pending == 0
    shutil.rmtree(tmp_path / "a")  # the machine is gone
    with open_with(place, tmp_path / "b") as fresh:
        assert bytes(fresh["small"]) == b"hello"
        assert bytes(fresh["big"]) == big
        array = fresh.get_array("array")
        assert array.dtype == np.float32 and array.shape == (3, 4) and array[2, 3] == 11
        assert fresh.get_object("config") == {"lr": 0.001, "layers": [1, 2]}
        assert bytes(fresh["file"]) == big[::-1]
        assert bytes(fresh["stream"]) == b"abcd"
        assert fresh.get("deleted") is None
        assert bytes(fresh["overwritten"]) == b"2"
        assert bytes(fresh["batch-a"]) == b"A" and bytes(fresh["batch-b"]) == big[:1000]
        # read through once: now local, served without the remote
        assert "small" in fresh and len(fresh) >= 9


def test_machine_loss_write_back_keeps_every_put_before_the_last_flush(
    place: RemotePrefix, tmp_path: Path
) -> None:
    with open_with(place, tmp_path / "a", remote_mode="write-back") as cache:
        for i in range(30):
            cache.put(f"k{i}", b"v%d" % i)
        cache.put("big", b"B" * BIG)
        cache.delete("k3")
        cache.flush_remote()
        assert cache.stats().remote_pending == 0
    shutil.rmtree(tmp_path / "a")
    with open_with(place, tmp_path / "b") as fresh:
        for i in range(30):
            assert fresh.get(f"k{i}") == (None if i == 3 else b"v%d" % i)
        assert bytes(fresh["big"]) == b"B" * BIG


def test_write_back_delete_is_not_read_back_through_before_its_tombstone(
    place: RemotePrefix, tmp_path: Path
) -> None:
    with open_with(place, tmp_path / "w") as through:
        through.put("k", b"old")
    with open_with(place, tmp_path / "a", remote_mode="write-back") as cache:
        assert bytes(cache["k"]) == b"old"  # read through
        cache.flush_remote()
        cache.delete("k")
        assert cache.get("k") is None  # not brought back from the remote
        cache.flush_remote()
    with open_with(place, tmp_path / "b") as fresh:
        assert fresh.get("k") is None


# --- crashes with the remote attached ---------------------------------------------------


def _run_child(spec: dict[str, Any], kill_after: int | None, counting: str = "ack") -> list[str]:
    """Run tests/remote_child.py; SIGKILL it after ``kill_after`` lines starting with
    ``counting`` (None: let it finish). Returns the lines it printed."""
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.remote_child", json.dumps(spec)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert child.stdout is not None
    lines = []
    acks = 0
    for line in child.stdout:
        lines.append(line.strip())
        if line.startswith(counting):
            acks += 1
            if kill_after is not None and acks == kill_after:
                child.send_signal(signal.SIGKILL)
    code = child.wait()
    if kill_after is None:
        assert code == 0, lines
    else:
        assert code == -signal.SIGKILL, f"the child ended on its own: {code}, {lines[-3:]}"
    return lines


def _acked(lines: list[str]) -> dict[str, int]:
    last: dict[str, int] = {}
    for line in lines:
        if line.startswith("ack "):
            _, key, i = line.split()
            last[key] = int(i)
    return last


def _values_from(spec: dict[str, Any], first: int, key_index: int) -> list[bytes]:
    """The values the child put under key ``key_index`` from its ``first``-th put on."""
    sizes = spec["sizes"]
    return [
        value_of(spec["tag"], j, sizes[j % len(sizes)])
        for j in range(first, spec["count"])
        if j % len(spec["keys"]) == key_index
    ]


def _spec(place: RemotePrefix, path: Path, mode: str, **kw: Any) -> dict[str, Any]:
    return {
        "path": str(path),
        "url": place.url,
        "options": plain_options(place.options),
        "mode": mode,
        "tag": "w",
        "count": 200,
        "keys": [f"k{i}" for i in range(7)],
        "sizes": [100, 3000, 300 << 10],  # the last goes to a file locally and a blob remotely
        **kw,
    }


@pytest.mark.parametrize("kill_after", [5, 23])
def test_sigkilled_write_through_writer_lost_no_acknowledged_put(
    place: RemotePrefix, tmp_path: Path, kill_after: int
) -> None:
    spec = _spec(place, tmp_path / "child", "write-through")
    lines = _run_child(spec, kill_after)
    acked = _acked(lines)
    assert len(acked) == min(kill_after, 7)
    shutil.rmtree(tmp_path / "child")  # and the machine with it
    with open_with(place, tmp_path / "fresh") as fresh:
        for key, i in acked.items():
            got = bytes(fresh[key])
            # the acknowledged value, or one put after it (began, not acknowledged)
            assert got in _values_from(spec, i, i % 7), (key, i, got[:20])


def test_sigkilled_write_back_writer_resumes_its_uploads_at_the_next_open(
    place: RemotePrefix, tmp_path: Path
) -> None:
    spec = _spec(place, tmp_path / "child", "write-back", flush_every=10, count=400)
    lines = _run_child(spec, kill_after=37)
    acked = _acked(lines)
    flushed = max(int(line.split()[1]) for line in lines if line.startswith("flushed"))
    assert flushed == 30
    # Machine loss now would keep every put before the flush (or a later one):
    with open_with(place, tmp_path / "peek") as peek:
        for key_index, key in enumerate(spec["keys"]):
            last = max(i for i in range(flushed) if i % 7 == key_index)
            assert bytes(peek[key]) in _values_from(spec, last, key_index)
    # The machine survived: reopening the killed writer's store uploads the rest.
    with open_with(place, tmp_path / "child", remote_mode="write-back") as again:
        again.flush_remote()
        assert again.stats().remote_pending == 0
        local = {key: bytes(again[key]) for key in acked}
    shutil.rmtree(tmp_path / "child")
    with open_with(place, tmp_path / "fresh") as fresh:
        for key, i in acked.items():
            assert bytes(fresh.get(key, refresh=True)) == local[key]
            assert local[key] in _values_from(spec, i, i % 7)  # acked, or put after


# --- the server failing -------------------------------------------------------------


def test_server_killed_mid_upload_write_through_raises_and_keeps_the_old_value(
    place: RemotePrefix,
    tmp_path: Path,
) -> None:
    server = place.server
    big = os.urandom(64 << 20)
    cache = open_with(place, tmp_path / "a")
    try:
        cache.put("k", b"old")
        errors: list[BaseException] = []
        started = threading.Event()

        def put() -> None:
            started.set()
            try:
                cache.put("k", big)
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=put)
        thread.start()
        started.wait()
        # killed once a part upload is under way (the filer lists it)
        while not server.multipart_uploads():
            assert thread.is_alive(), f"the put ended before a part upload was seen: {errors}"
        server.kill()
        thread.join()
        assert len(errors) == 1 and isinstance(errors[0], RemoteError), errors
        assert bytes(cache["k"]) == b"old"  # nothing changed locally
        server.restart()
        with open_with(place, tmp_path / "b") as fresh:
            assert bytes(fresh["k"]) == b"old"  # and no record names a half-uploaded blob
        cache.put("k", big)  # the remote back: the same put now goes through
        assert bytes(cache["k"]) == big
    finally:
        if not server.running:
            server.restart()
        cache.close()


def test_write_back_queues_while_the_server_is_down_and_drains_after(
    place: RemotePrefix,
    tmp_path: Path,
) -> None:
    server = place.server
    cache = open_with(place, tmp_path / "a", remote_mode="write-back")
    try:
        server.kill()
        for i in range(5):
            cache.put(f"k{i}", b"v%d" % i)  # local: returns while the remote is down
        with pytest.raises(RemoteError):
            cache.flush_remote()
        assert cache.stats().remote_pending == 5
        server.restart()
        cache.flush_remote()
        assert cache.stats().remote_pending == 0
    finally:
        if not server.running:
            server.restart()
        cache.close()
    with open_with(place, tmp_path / "b") as fresh:
        assert [bytes(fresh[f"k{i}"]) for i in range(5)] == [b"v%d" % i for i in range(5)]


def test_write_through_put_with_the_server_down_raises_and_changes_nothing(
    place: RemotePrefix,
    tmp_path: Path,
) -> None:
    server = place.server
    cache = open_with(place, tmp_path / "a")
    try:
        cache.put("k", b"old")
        server.kill()
        for value in (b"new", b"N" * BIG):
            with pytest.raises(RemoteError, match="did not answer"):
                cache.put("k", value)
            assert bytes(cache["k"]) == b"old"
        with pytest.raises(RemoteError):
            cache.delete("k")
        assert bytes(cache["k"]) == b"old"
    finally:
        server.restart()
        cache.close()


# --- several machines ---------------------------------------------------------------


def test_two_stores_in_two_processes_racing_converge_on_one_winner(
    place: RemotePrefix, tmp_path: Path
) -> None:
    keys = [f"k{i}" for i in range(4)]
    specs = [
        _spec(place, tmp_path / name, "write-through", tag=name, count=60, keys=keys)
        for name in ("a", "b")
    ]
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.remote_child", json.dumps(spec)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        for spec in specs
    ]
    outputs = [child.communicate()[0] for child in children]
    assert [child.returncode for child in children] == [0, 0], outputs
    views = []
    for spec in specs:
        with open_with(place, spec["path"]) as cache:
            cache.refresh()
            views.append({key: bytes(cache[key]) for key in keys})
    with open_with(place, tmp_path / "third") as third:
        views.append({key: bytes(third[key]) for key in keys})
    assert views[0] == views[1] == views[2]
    remote = Remote(place.url, place.options)
    for key in keys:
        digest = N.key_hash(*N.encode_key(key))
        newest = remote.versions(digest)[-1]
        record = remote.record(digest, newest)
        assert record is not None
        assert record.digest == xxhash.xxh3_128_hexdigest(views[0][key])
        assert newest >= 60 // len(keys)  # every put took a version of its own


def test_a_retried_create_that_landed_is_its_own_not_a_conflict(place: RemotePrefix) -> None:
    remote = Remote(place.url, place.options)
    remote.check(create=True)
    mine = RemoteRecord(b"s", b"k", new_put_id(), length=1, digest="0" * 32, blob="b/x-1")
    assert remote.create("h" * 32, 1, mine)
    assert remote.create("h" * 32, 1, mine)  # the retry meets 412 and finds its put id
    theirs = RemoteRecord(b"s", b"k", new_put_id(), length=1, digest="0" * 32, blob="b/x-1")
    assert not remote.create("h" * 32, 1, theirs)


def test_staleness_is_bounded_by_refresh_and_a_miss_asks_the_remote(
    place: RemotePrefix, tmp_path: Path
) -> None:
    with (
        open_with(place, tmp_path / "a") as a,
        open_with(place, tmp_path / "b", remote_refresh=3600) as b,
    ):
        a.put("k", b"1")
        assert bytes(b["k"]) == b"1"  # a miss: read through
        a.put("k", b"2")
        assert bytes(b["k"]) == b"1"  # a hit: as old as remote_refresh allows
        assert bytes(b.get("k", refresh=True)) == b"2"
        a.put("k", b"3")
        a.put("other", b"o")
        b.refresh()
        assert bytes(b["k"]) == b"3"
        a.delete("k")
        b.refresh()
        assert b.get("k") is None  # the tombstone came through


def test_read_through_beside_concurrent_local_readers(place: RemotePrefix, tmp_path: Path) -> None:
    big = os.urandom(BIG)
    with open_with(place, tmp_path / "w") as writer:
        writer.put("remote-big", big)
        writer.put("remote-small", b"s" * 100)
    with open_with(place, tmp_path / "r") as cache:
        for i in range(20):
            cache.put(f"local{i}", b"%d" % i)
        wrong: list[str] = []
        barrier = threading.Barrier(6)

        def local_reader() -> None:
            barrier.wait()
            for _ in range(2000):
                for i in range(20):
                    if bytes(cache[f"local{i}"]) != b"%d" % i:
                        wrong.append(f"local{i}")

        def remote_reader() -> None:
            barrier.wait()
            if bytes(cache["remote-big"]) != big:
                wrong.append("remote-big")
            if bytes(cache["remote-small"]) != b"s" * 100:
                wrong.append("remote-small")

        threads = [threading.Thread(target=local_reader) for _ in range(2)]
        threads += [threading.Thread(target=remote_reader) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert wrong == []
        # brought in once, not once per reader
        ledger = (tmp_path / "r" / F.REMOTE_LEDGER_NAME).read_text().splitlines()
        digest = N.key_hash(*N.encode_key("remote-big"))
        assert len([line for line in ledger if line.startswith(f"V {digest}")]) == 1


def test_a_damaged_remote_blob_is_refused_and_nothing_is_stored(
    place: RemotePrefix, tmp_path: Path
) -> None:
    big = os.urandom(BIG)
    with open_with(place, tmp_path / "w") as writer:
        writer.put("k", big)
    store = place.store()
    (blob,) = [p for p in remote_objects(place) if p.startswith("b/")]
    obstore.put(store, blob, big[:-1] + bytes([big[-1] ^ 1]))  # same length, one bit off
    with open_with(place, tmp_path / "r") as reader:
        with pytest.raises(CorruptionError, match="nothing was stored"):
            reader.get("k")
        assert reader.stats().keys == 0
        assert not [p for p in (tmp_path / "r" / F.BLOBS_DIR).rglob("v-*")]


# --- bad options --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "error", "words"),
    [
        ({"secret_access_key": "wrong-secret-0123456789"}, RemoteError, "refused the credentials"),
        ({"access_key_id": "nobody"}, RemoteError, "refused the credentials"),
        ({"endpoint": "http://127.0.0.1:1"}, RemoteError, "did not answer"),
        ({"no_such_option": 1}, ValueError, "remote_options"),
    ],
)
def test_bad_remote_options_fail_at_open_in_one_sentence_and_leave_no_store(
    place: RemotePrefix, tmp_path: Path, change: dict[str, Any], error: type, words: str
) -> None:
    target = tmp_path / "new"
    with pytest.raises(error, match=words) as caught:
        BlobCache(target, remote=place.url, remote_options={**place.options, **change})
    assert "\n" not in str(caught.value)
    assert place.options["secret_access_key"] not in str(caught.value)
    assert not target.exists()


def test_a_missing_bucket_fails_at_open(place: RemotePrefix, tmp_path: Path) -> None:
    with pytest.raises(RemoteError, match="bucket 'no-such-bucket' does not exist"):
        BlobCache(tmp_path / "x", remote="s3://no-such-bucket/p", remote_options=place.options)


@pytest.mark.parametrize(
    ("kw", "error", "words"),
    [
        ({"remote": "http://bucket/p"}, ValueError, "s3://bucket/prefix"),
        ({"remote": 5}, TypeError, "s3:// URL"),
        ({"remote_options": ["endpoint"]}, TypeError, "must be a dict"),
        ({"remote_mode": "sometimes"}, ValueError, "remote_mode"),
        ({"remote_refresh": -1}, ValueError, "remote_refresh"),
        ({"remote_mode": "write-back", "max_bytes": 1000}, ValueError, "eviction"),
        ({"readonly": True}, ValueError, "readonly"),
        ({"remote": None}, ValueError, "need a remote"),
        (
            {"remote": None, "remote_options": None, "remote_mode": "write-back"},
            ValueError,
            "need a remote",
        ),
    ],
)
def test_bad_remote_arguments_are_refused_before_anything_is_touched(
    place: RemotePrefix, tmp_path: Path, kw: dict[str, Any], error: type, words: str
) -> None:
    args: dict[str, Any] = {"remote": place.url, "remote_options": place.options, **kw}
    with pytest.raises(error, match=words):
        BlobCache(tmp_path / "x", **args)
    assert not (tmp_path / "x").exists()
    assert remote_objects(place) == []


def test_a_prefix_of_another_format_is_refused(place: RemotePrefix, tmp_path: Path) -> None:
    obstore.put(place.store(), F.REMOTE_MARKER_NAME, b"something else\n")
    with pytest.raises(RemoteError, match="not a remote tier of this format"):
        open_with(place, tmp_path / "x")


def test_credentials_are_never_written_to_the_store_or_logged(
    place: RemotePrefix, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = place.options["secret_access_key"]
    with open_with(place, tmp_path / "a", remote_mode="write-back") as cache:
        cache.put("k", b"v" * 1000)
        cache.put("big", b"b" * BIG)
        cache.flush_remote()
        assert secret not in repr(cache) and secret not in str(cache.stats())
    for path in (tmp_path / "a").rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    assert secret not in caplog.text


# --- remote garbage -------------------------------------------------------------------


def test_remote_gc_removes_superseded_records_and_unnamed_blobs_never_the_newest(
    place: RemotePrefix, tmp_path: Path
) -> None:
    with open_with(place, tmp_path / "a") as cache:
        cache.put("k", b"1" * BIG)
        cache.put("k", b"2" * BIG)
        cache.put("k", b"3")
        cache.put("t", b"x")
        cache.delete("t")
    remote = Remote(place.url, place.options)
    before = remote_objects(place)
    assert len([p for p in before if p.startswith("b/")]) == 2
    young = collect(remote)  # nothing is older than the grace yet
    assert young.removed == [] and remote_objects(place) == before
    dry = collect(remote, now=time.time() + 7200, dry_run=True)
    assert dry.removed and remote_objects(place) == before
    done = collect(remote, now=time.time() + 7200)
    assert (done.records_deleted, done.records_stubbed, done.blobs_deleted) == (1, 2, 2)
    after = remote_objects(place)
    assert not [p for p in after if p.startswith("b/")]
    k = N.key_hash(*N.encode_key("k"))
    assert record_path(k, 3) in after and record_path(k, 1) in after  # newest, and the stub
    with open_with(place, tmp_path / "b") as fresh:
        assert bytes(fresh["k"]) == b"3" and fresh.get("t") is None
        fresh.put("k", b"4")  # version 1 still exists: the put lists and takes 4
    assert remote.versions(k)[-1] == 4
    with pytest.raises(ValueError, match="grace must be at least"):
        collect(remote, grace=60)


def test_blobcache_gc_remote_from_the_command_line(
    place: RemotePrefix, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from blobcache.cli import main

    with open_with(place, tmp_path / "a") as cache:
        cache.put("k", b"1")
        cache.put("k", b"2")
    env = {
        "AWS_ACCESS_KEY_ID": place.options["access_key_id"],
        "AWS_SECRET_ACCESS_KEY": place.options["secret_access_key"],
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        code = main(
            [
                "gc",
                "--remote",
                place.url,
                "--endpoint",
                place.options["endpoint"],
                "--allow-http",
                "--region",
                "us-east-1",
                "--json",
            ]
        )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["remote"] == place.url and report["records_deleted"] == 0  # all young


def test_async_twins_and_a_pickled_handle_keep_the_remote(
    place: RemotePrefix, tmp_path: Path
) -> None:
    import asyncio
    import pickle

    from blobcache import AsyncBlobCache

    async def run() -> bytes | None:
        async with AsyncBlobCache(
            tmp_path / "a", remote=place.url, remote_options=place.options, remote_mode="write-back"
        ) as cache:
            await cache.put("k", b"v")
            await cache.flush_remote()
            await cache.refresh()
            got = await cache.get("k", refresh=True)
            return None if got is None else bytes(got)

    assert asyncio.run(run()) == b"v"
    with open_with(place, tmp_path / "b") as cache:
        again = pickle.loads(pickle.dumps(cache))
        try:
            assert again.stats().remote == place.url
            assert bytes(again["k"]) == b"v"
        finally:
            again.close()


def test_values_put_before_the_remote_was_attached_go_up_unless_the_remote_has_newer(
    place: RemotePrefix, tmp_path: Path
) -> None:
    with BlobCache(tmp_path / "a") as plain:  # no remote yet
        plain.put("only-here", b"local")
        plain.put("both", b"local-old")
    with open_with(place, tmp_path / "b") as other:
        other.put("both", b"remote-new")
    with open_with(place, tmp_path / "a") as attached:
        attached.flush_remote()
        assert bytes(attached["both"]) == b"remote-new"  # not overwritten by the older local
        assert attached.stats().remote_pending == 0
    with open_with(place, tmp_path / "c") as fresh:
        assert bytes(fresh["only-here"]) == b"local"
        assert bytes(fresh["both"]) == b"remote-new"


def test_a_dropped_handle_with_a_remote_is_collected_and_its_threads_end(
    place: RemotePrefix, tmp_path: Path
) -> None:
    import gc
    import weakref

    before = set(threading.enumerate())
    cache = open_with(place, tmp_path / "a", remote_mode="write-back")
    cache.put("k", b"v")
    cache.flush_remote()
    mine = [t for t in threading.enumerate() if t not in before]
    assert {t.name for t in mine} >= {"blobcache-uploader", "blobcache-remote-refresh"}
    dropped = weakref.ref(cache)
    del cache
    gc.collect()
    assert dropped() is None  # the tier's threads do not hold the handle
    for thread in mine:
        thread.join(timeout=30)
        assert not thread.is_alive(), thread.name


def test_sigkilled_write_back_deletes_are_never_read_back_through(
    place: RemotePrefix, tmp_path: Path
) -> None:
    keys = [f"k{i}" for i in range(7)]
    spec = _spec(place, tmp_path / "child", "write-back", count=7, flush_every=7, deletes=keys)
    lines = _run_child(spec, kill_after=4, counting="deleted")
    deleted = [line.split()[1] for line in lines if line.startswith("deleted")]
    assert len(deleted) == 4
    # The machine survived: the killed writer's store, reopened, misses each deleted
    # key (no read-through brings it back) and uploads the tombstones.
    with open_with(place, tmp_path / "child", remote_mode="write-back") as again:
        assert [again.get(key) for key in deleted] == [None] * 4
        again.flush_remote()
    with open_with(place, tmp_path / "fresh") as fresh:
        assert [fresh.get(key) for key in deleted] == [None] * 4
        assert all(fresh.get(key) is not None for key in keys[5:])  # not yet deleted


def test_blobcache_gc_refuses_remote_flags_without_remote_and_a_bad_grace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from blobcache.cli import main

    with pytest.raises(SystemExit):
        main(["gc", str(tmp_path), "--endpoint", "http://127.0.0.1:1"])
    assert "--endpoint need --remote" in capsys.readouterr().err
    assert main(["gc", "--remote", "s3://b/p", "--grace", "nan"]) == 2
    assert "grace must be at least" in capsys.readouterr().err


def test_get_refresh_with_a_cap_and_the_hot_get_without_a_remote(
    place: RemotePrefix, tmp_path: Path
) -> None:
    with (
        open_with(place, tmp_path / "a") as a,
        open_with(place, tmp_path / "b", max_bytes=10_000, remote_refresh=3600) as b,
    ):
        a.put("k", b"1")
        assert bytes(b["k"]) == b"1"
        a.put("k", b"2")
        assert bytes(b.get("k", refresh=True)) == b"2"
        assert "k" in b._writes.cap.sieve.visited  # type: ignore[union-attr]
    with BlobCache(tmp_path / "plain") as plain:
        with pytest.raises(TypeError, match="refresh"):
            plain.get("k", refresh=True)  # type: ignore[call-arg]
        assert type(plain).get is BlobCache.get and "get" not in vars(plain)


def test_a_store_that_had_a_remote_opens_without_one_and_passes_verify(
    place: RemotePrefix, tmp_path: Path
) -> None:
    from blobcache.cli import main

    with open_with(place, tmp_path / "a") as cache:
        cache.put("k", b"v")
        cache.put("big", b"B" * BIG)
    assert (tmp_path / "a" / F.REMOTE_LEDGER_NAME).exists()
    with BlobCache(tmp_path / "a") as plain:  # the local format is unchanged
        assert bytes(plain["k"]) == b"v" and bytes(plain["big"]) == b"B" * BIG
        assert plain.problems == ()
    assert main(["verify", str(tmp_path / "a")]) == 0  # REMOTE is no stray
