"""Review of the remote tier (issue 17): races and leaks, against the real SeaweedFS."""

from __future__ import annotations

import gc
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import pytest

from blobcache import BlobCache, BlobCacheError
from blobcache import _names as N
from blobcache._remote import Remote
from tests.remote_fixtures import RemotePrefix, open_with


def _tier_threads() -> list[threading.Thread]:
    return [
        t
        for t in threading.enumerate()
        if t.name in ("blobcache-uploader", "blobcache-remote-refresh")
    ]


def test_a_dropped_handle_with_a_remote_stops_its_tier_threads(
    place: RemotePrefix, tmp_path: Path
) -> None:
    before = len(_tier_threads())
    cache = open_with(place, tmp_path / "a", remote_mode="write-back")
    cache.put("k", b"v")
    cache.flush_remote()
    ref = weakref.ref(cache)
    del cache
    gc.collect()
    assert ref() is None  # the handle is collected
    deadline = time.monotonic() + 5
    while len(_tier_threads()) > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(_tier_threads()) == before, "the dropped handle's tier threads still run"


def test_write_back_put_during_a_read_through_is_not_overwritten(
    place: RemotePrefix, tmp_path: Path
) -> None:
    with open_with(place, tmp_path / "w") as other:
        other.put("k", b"old")
    cache = open_with(place, tmp_path / "a", remote_mode="write-back")
    try:
        tier = cache._tier
        assert tier is not None
        got, go = threading.Event(), threading.Event()
        newest = tier.newest

        def slow_newest(digest: str) -> Any:
            found = newest(digest)
            got.set()
            go.wait(5)
            return found

        tier.newest = slow_newest  # type: ignore[method-assign]
        reader = threading.Thread(target=cache.get, args=("k",))
        reader.start()
        assert got.wait(5)
        done = threading.Event()

        def put() -> None:
            cache.put("k", b"new")
            done.set()

        threading.Thread(target=put).start()
        done.wait(1)  # (with the fix, the put waits for the read-through)
        go.set()
        reader.join()
        assert done.wait(5)
        tier.newest = newest  # type: ignore[method-assign]
        assert bytes(cache["k"]) == b"new"
        cache.flush_remote()
    finally:
        cache.close()
    with open_with(place, tmp_path / "b") as fresh:
        assert bytes(fresh["k"]) == b"new"


def test_refresh_does_not_bring_an_older_version_over_a_put_made_meanwhile(
    place: RemotePrefix, tmp_path: Path
) -> None:
    with open_with(place, tmp_path / "a", remote_refresh=3600) as cache:
        cache.put("k", b"v1")
        with open_with(place, tmp_path / "o", remote_refresh=3600) as other:
            other.put("k", b"v2")  # version 2, from another machine
        tier = cache._tier
        assert tier is not None
        created, go = threading.Event(), threading.Event()
        create = tier.remote.create

        def create_then_wait(digest: str, version: int, record: Any) -> bool:
            if version == 3:
                created.set()
                go.wait(5)
            return create(digest, version, record)

        tier.remote.create = create_then_wait  # type: ignore[method-assign]
        putter = threading.Thread(target=cache.put, args=("k", b"v3"))
        putter.start()  # about to create version 3, the key's lock held
        assert created.wait(5)
        refresher = threading.Thread(target=cache.refresh)
        refresher.start()  # lists (newest: 2), then waits for the key's lock
        time.sleep(1)
        go.set()
        putter.join()
        refresher.join()
        tier.remote.create = create  # type: ignore[method-assign]
        assert bytes(cache["k"]) == b"v3", "refresh brought version 2 over the put of version 3"


def test_two_handles_of_one_store_racing_one_key_agree_with_the_remote(
    place: RemotePrefix, tmp_path: Path
) -> None:
    """Two handles of one local store (as two processes of one machine would have)
    put one key at once. Forced order without the key's lock on LOCK: A creates
    version 2 and stalls; B creates 3, commits locally and stalls before its REMOTE
    line; A commits locally (the local value is A's), then B writes its line: the
    store says version 3 is here while it holds A's. With the lock, B waits for A
    (A's stall ends after 1 s), and the local value is the remote's newest."""
    import xxhash

    p1 = open_with(place, tmp_path / "a", remote_refresh=3600, refresh_interval=3600)
    p2 = open_with(place, tmp_path / "a", remote_refresh=3600, refresh_interval=3600)
    try:
        p1.put("k", b"v0")
        t1, t2 = p1._tier, p2._tier
        assert t1 is not None and t2 is not None
        b_landing, a_done = threading.Event(), threading.Event()
        create1 = t1.remote.create

        def create_then_stall(digest: str, version: int, record: Any) -> bool:
            made = create1(digest, version, record)
            b_landing.wait(1.0)  # the lock keeps B out: then this ends after 1 s
            return made

        t1.remote.create = create_then_stall  # type: ignore[method-assign]
        landed2 = t2.landed

        def landed_after_a(key: Any, digest: str, version: int) -> None:
            b_landing.set()
            a_done.wait(10)
            landed2(key, digest, version)

        t2.landed = landed_after_a  # type: ignore[method-assign]

        def put_a() -> None:
            p1.put("k", b"A")
            a_done.set()

        a = threading.Thread(target=put_a)
        b = threading.Thread(target=p2.put, args=("k", b"B"))
        a.start()
        b.start()
        a.join()
        b.join()
        remote = Remote(place.url, place.options)
        digest = N.key_hash(*N.encode_key("k"))
        newest = remote.record(digest, remote.versions(digest)[-1])
        assert newest is not None
        for cache in (p1, p2):
            cache._catch_up()  # the other handle's put, as another process's
            assert xxhash.xxh3_128_hexdigest(bytes(cache["k"])) == newest.digest
            cache.refresh()  # and no refresh changes it either
            assert xxhash.xxh3_128_hexdigest(bytes(cache["k"])) == newest.digest
    finally:
        p1.close()
        p2.close()


@pytest.mark.parametrize("mode", ["write-through", "write-back"])
def test_a_lost_remote_line_does_not_resurrect_a_superseded_value(
    place: RemotePrefix, tmp_path: Path, mode: str
) -> None:
    """Power loss takes REMOTE's V lines (never fsynced) but not a durable put."""
    with open_with(place, tmp_path / "a", durability="fsync", remote_mode=mode) as cache:
        cache.put("k", b"mine, superseded")
        cache.flush_remote()
    with open_with(place, tmp_path / "o") as other:
        other.put("k", b"newer, from another machine")
    ledger = tmp_path / "a" / "REMOTE"
    ledger.write_bytes(ledger.read_bytes().split(b"\n", 1)[0] + b"\n")  # the V line lost
    with open_with(place, tmp_path / "a", remote_mode=mode) as cache:
        cache.flush_remote()
        assert bytes(cache["k"]) == b"newer, from another machine"
    with open_with(place, tmp_path / "fresh") as fresh:
        assert bytes(fresh["k"]) == b"newer, from another machine"


def test_a_batch_in_write_back_is_not_overwritten_by_a_refresh(
    place: RemotePrefix, tmp_path: Path
) -> None:
    with open_with(place, tmp_path / "a", remote_mode="write-back", remote_refresh=3600) as cache:
        cache.put("k", b"v1")
        cache.flush_remote()
        with open_with(place, tmp_path / "o") as other:
            other.put("k", b"v2")
        tier = cache._tier
        assert tier is not None
        put_batch = cache._writes.put_batch
        committed, go = threading.Event(), threading.Event()

        def slow_commit(ops: Any) -> bool:
            stale = put_batch(ops)
            committed.set()
            go.wait(3)
            return stale

        cache._writes.put_batch = slow_commit  # type: ignore[method-assign]

        def batch() -> None:
            with cache.batch() as b:
                b.put("k", b"v3")

        t = threading.Thread(target=batch)
        t.start()
        assert committed.wait(5)
        refresher = threading.Thread(target=cache.refresh)
        refresher.start()
        time.sleep(0.5)
        go.set()
        t.join()
        refresher.join()
        cache._writes.put_batch = put_batch  # type: ignore[method-assign]
        assert bytes(cache["k"]) == b"v3"
        cache.flush_remote()
    with open_with(place, tmp_path / "fresh") as fresh:
        assert bytes(fresh["k"]) == b"v3"


def test_a_forked_child_using_a_handle_with_a_remote_fails_at_once(
    place: RemotePrefix, tmp_path: Path
) -> None:
    import os

    with open_with(place, tmp_path / "a") as cache:
        cache.put("p", b"parent")
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover (the child)
            code = 3
            try:
                import faulthandler

                faulthandler.dump_traceback_later(10, exit=True)  # a hang: exit 1
                cache.put("c", b"child")
                code = 0
            except BlobCacheError as exc:
                os.write(write, str(exc).encode())
                code = 2
            finally:
                os._exit(code)
        os.close(write)
        _, status = os.waitpid(pid, 0)
        message = os.read(read, 1000).decode()
        os.close(read)
        assert os.WEXITSTATUS(status) == 2, message
        assert "forked child" in message and "spawn" in message
        assert bytes(cache["p"]) == b"parent"
        cache.put("after", b"the parent's handle still works")


def test_an_endpoint_with_userinfo_is_not_named_whole_in_errors(tmp_path: Path) -> None:
    from blobcache import RemoteError

    options = {
        "access_key_id": "ak",
        "secret_access_key": "sk",
        "endpoint": "http://user:SECRETXYZ@127.0.0.1:1/x",
        "client_options": {"allow_http": True, "connect_timeout": "1s"},
        "retry_config": {"max_retries": 0},
    }
    with pytest.raises(RemoteError) as caught:
        BlobCache(tmp_path / "a", remote="s3://b/p", remote_options=options)
    assert "SECRETXYZ" not in str(caught.value)
    assert "http://127.0.0.1:1/x" in str(caught.value)
    assert not (tmp_path / "a").exists()


def test_a_write_back_delete_of_another_handle_is_not_read_back_through(
    place: RemotePrefix, tmp_path: Path
) -> None:
    kw: dict[str, Any] = {"remote_mode": "write-back", "remote_refresh": 3600}
    p1 = open_with(place, tmp_path / "a", **kw)
    p2 = open_with(place, tmp_path / "a", **kw)
    try:
        p1.put("k", b"v")
        p1.flush_remote()
        assert p2._tier is not None
        p2._tier.ledger.read()  # p2 has read REMOTE up to here
        p1._tier.stop.set()  # (p1's uploader would take the delete up at once)
        p1._tier.wake.set()
        p1._tier._threads[0].join()
        assert p1.delete("k")
        # p2 follows the delete (as its refresh thread would, a moment later: a
        # get of a key it holds does not wait for that), so the get misses here
        # and asks the remote, where the delete is not uploaded yet.
        p2._catch_up()
        assert p2.get("k") is None, "p2 read the value p1 deleted back through"
        p1._tier.stop.clear()
        p1.flush_remote()
    finally:
        p1.close()
        p2.close()
    with open_with(place, tmp_path / "fresh") as fresh:
        assert fresh.get("k") is None
