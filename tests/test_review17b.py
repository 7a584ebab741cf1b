"""Second review of the remote tier (issue 17): the lookback at open, the key lock
(thread stripe + OFD byte of LOCK), against the real SeaweedFS."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from blobcache import BlobCache, ClosedError, _tier
from blobcache import _names as N
from tests.remote_fixtures import RemotePrefix, open_with

ROOT = Path(__file__).resolve().parent.parent


def _digest(key: str) -> str:
    return N.key_hash(*N.encode_key(key))


def _stripe(key: str) -> int:
    return int(_digest(key)[:4], 16) % _tier._LOCKS


def _same_stripe_as(key: str) -> str:
    for i in range(10_000):
        other = f"other-{i}"
        if _stripe(other) == _stripe(key) and other != key:
            return other
    raise AssertionError("no key shares the stripe")


def _put_and_crash_before_upload(cache: BlobCache, key: str, value: bytes) -> None:
    """A write-back put, then the handle gone before its upload (as a SIGKILL
    would leave it: the local put durable, nothing on the remote, no V line)."""
    tier = cache._tier
    assert tier is not None
    tier._drain = lambda: None  # type: ignore[method-assign]
    cache.put(key, value)
    cache.close()


# --- the lookback at open ------------------------------------------------------------


def test_a_write_back_put_of_an_earlier_value_survives_a_crash_before_its_upload(
    place: RemotePrefix, tmp_path: Path
) -> None:
    """x (v1), y (v2), then x again, killed before its upload: at reopen the
    lookback found x at v1, took the put for uploaded, and brought y back in:
    the newest put of this machine, durable locally, lost everywhere."""
    a = tmp_path / "a"
    with open_with(place, a, remote_mode="write-back") as cache:
        cache.put("k", b"x")
        cache.flush_remote()
        cache.put("k", b"y")
        cache.flush_remote()
    _put_and_crash_before_upload(open_with(place, a, remote_mode="write-back"), "k", b"x")
    with open_with(place, a, remote_mode="write-back") as cache:
        cache.flush_remote()
        assert bytes(cache["k"]) == b"x"
    with open_with(place, tmp_path / "fresh") as fresh:
        assert bytes(fresh["k"]) == b"x"


def test_a_write_back_put_over_a_value_seen_from_another_machine_survives_a_crash(
    place: RemotePrefix, tmp_path: Path
) -> None:
    """A puts x; B puts y; A reads y (refresh), then overwrites it with x and is
    killed before the upload: y must not win (A's put came after it, causally)."""
    a = tmp_path / "a"
    with open_with(place, a, remote_mode="write-back", remote_refresh=3600) as cache:
        cache.put("k", b"x")
        cache.flush_remote()
    with open_with(place, tmp_path / "b") as other:
        other.put("k", b"y")
    cache = open_with(place, a, remote_mode="write-back", remote_refresh=3600)
    cache.refresh()
    assert bytes(cache["k"]) == b"y"
    _put_and_crash_before_upload(cache, "k", b"x")
    with open_with(place, a, remote_mode="write-back") as cache:
        cache.flush_remote()
        assert bytes(cache["k"]) == b"x"
    with open_with(place, tmp_path / "fresh") as fresh:
        assert bytes(fresh["k"]) == b"x"


def test_the_lookback_still_settles_an_upload_whose_line_was_lost(
    place: RemotePrefix, tmp_path: Path
) -> None:
    """The case the lookback is for (kept by the fix): x uploaded as v2 over w
    (v1), its V line lost; another machine then put y (v3): y wins, x is not
    uploaded again."""
    a = tmp_path / "a"
    with open_with(place, a, remote_mode="write-back") as cache:
        cache.put("k", b"w")
        cache.flush_remote()
    ledger = a / "REMOTE"
    kept = ledger.read_bytes()
    with open_with(place, a, remote_mode="write-back") as cache:
        cache.put("k", b"x")
        cache.flush_remote()
    ledger.write_bytes(kept)  # x's V line lost, w's kept
    with open_with(place, tmp_path / "b") as other:
        other.put("k", b"y")
    with open_with(place, a, remote_mode="write-back") as cache:
        cache.flush_remote()
        assert bytes(cache["k"]) == b"y"
        assert cache._tier is not None and cache._tier.remote.versions(_digest("k")) == [1, 2, 3]


# --- the key lock ----------------------------------------------------------------------


def _finishes(target: Any, seconds: float = 15.0) -> bool:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if errors:
        raise errors[0]
    return not thread.is_alive()


@pytest.mark.parametrize("mode", ["write-through", "write-back"])
def test_a_stream_whose_chunks_put_a_key_of_the_same_stripe_does_not_hang(
    place: RemotePrefix, tmp_path: Path, mode: str
) -> None:
    """put_stream promises no lock is held while its chunks are iterated (they
    may use the cache); its remote half held the key's stripe lock around them."""
    cache = open_with(place, tmp_path / "a", remote_mode=mode)
    other = _same_stripe_as("k")

    def chunks() -> Iterator[bytes]:
        yield b"first "
        cache.put(other, b"from inside the stream")
        yield b"second"

    if not _finishes(lambda: cache.put_stream("k", chunks())):
        pytest.fail("put_stream hung: its chunks' put waits for the stripe it holds")
    cache.flush_remote()
    assert bytes(cache["k"]) == b"first second"
    cache.close()
    with open_with(place, tmp_path / "fresh") as fresh:
        assert bytes(fresh["k"]) == b"first second"
        assert bytes(fresh[other]) == b"from inside the stream"


def test_a_large_stream_whose_chunks_read_through_a_key_of_the_same_stripe_does_not_hang(
    place: RemotePrefix, tmp_path: Path
) -> None:
    with open_with(place, tmp_path / "w") as writer:
        other = _same_stripe_as("k")
        writer.put(other, b"on the remote")
    cache = open_with(place, tmp_path / "a", inline_limit=1024)
    big = b"z" * 4096

    def chunks() -> Iterator[bytes]:
        yield big
        assert bytes(cache[other]) == b"on the remote"  # a miss: read through
        yield big

    if not _finishes(lambda: cache.put_stream("k", chunks())):
        pytest.fail("put_stream hung: its chunks' read-through waits for the stripe it holds")
    cache.close()
    with open_with(place, tmp_path / "fresh") as fresh:
        assert bytes(fresh["k"]) == big + big


def test_a_process_killed_holding_a_key_lock_blocks_no_put(
    place: RemotePrefix, tmp_path: Path
) -> None:
    """The OFD lock dies with its process: a put after a SIGKILL goes through."""
    path = tmp_path / "a"
    open_with(place, path).close()
    script = (
        "import sys, time, json\n"
        "from blobcache import BlobCache\n"
        "from blobcache import _names as N\n"
        "from tests.remote_child import remote_options\n"
        "a = json.loads(sys.argv[1])\n"
        "o = remote_options(a['options'])\n"
        "c = BlobCache(a['path'], remote=a['url'], remote_options=o)\n"
        "lock = c._tier.key_lock(N.key_hash(*N.encode_key('k')))\n"
        "lock.__enter__()\n"
        "print('held', flush=True)\n"
        "time.sleep(600)\n"
    )
    from tests.remote_child import plain_options

    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            script,
            json.dumps(
                {"path": str(path), "url": place.url, "options": plain_options(place.options)}
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "held"
        cache = open_with(place, path)
        blocked = threading.Event()

        def put() -> None:
            cache.put("k", b"v")
            blocked.set()

        thread = threading.Thread(target=put, daemon=True)
        thread.start()
        time.sleep(1.0)
        assert not blocked.is_set(), "the put did not wait for the other process's key lock"
        child.send_signal(signal.SIGKILL)
        child.wait()
        thread.join(15)
        assert blocked.is_set(), "the put still waits for a dead process's key lock"
        cache.close()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_close_during_a_put_raises_closed_not_a_bad_descriptor(
    place: RemotePrefix, tmp_path: Path
) -> None:
    """close() closed the range-lock descriptor under a put holding the key lock:
    the put's unlock then hit EBADF (or, its number reused, another file)."""
    cache = open_with(place, tmp_path / "a")
    tier = cache._tier
    assert tier is not None
    inside, go = threading.Event(), threading.Event()
    create = tier.remote.create

    def slow_create(*args: Any) -> bool:
        inside.set()
        go.wait(10)
        return create(*args)

    tier.remote.create = slow_create  # type: ignore[method-assign]
    errors: list[BaseException] = []

    def put() -> None:
        try:
            cache.put("k", b"v")
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=put)
    thread.start()
    assert inside.wait(10)
    cache.close()
    go.set()
    thread.join(15)
    assert not thread.is_alive()
    assert len(errors) == 1
    assert isinstance(errors[0], ClosedError), repr(errors[0])
