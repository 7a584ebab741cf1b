"""What the remote tier relies on, pinned down against a real S3-compatible server
(SeaweedFS 4.48 via tests/seaweed.py) and obstore 0.12: the exception class of each
failure, conditional puts, listing, ranges, multipart uploads and their memory, and how
fast a dead or hung server fails. docs/remote-notes.md tells the same facts."""

from __future__ import annotations

import io
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import obstore
import pytest
from obstore.exceptions import (
    AlreadyExistsError,
    BaseError,
    GenericError,
    PermissionDeniedError,
    PreconditionError,
)
from obstore.store import S3Store

from tests.remote_fixtures import RemotePrefix
from tests.seaweed import Server

MiB = 1 << 20


def test_create_only_put(remote_prefix: RemotePrefix) -> None:
    store = remote_prefix.store()
    first = obstore.put(store, "k", b"first", mode="create")
    assert first["e_tag"] is not None and first["version"] is None  # no versioning
    with pytest.raises(AlreadyExistsError, match="412 Precondition Failed"):
        obstore.put(store, "k", b"second", mode="create")
    assert bytes(obstore.get(store, "k").bytes()) == b"first"


def test_etag_compare_and_swap(remote_prefix: RemotePrefix) -> None:
    store = remote_prefix.store()
    old = obstore.put(store, "k", b"v1")["e_tag"]
    assert old is not None
    new = obstore.put(store, "k", b"v2", mode={"e_tag": old})["e_tag"]
    assert new != old
    with pytest.raises(PreconditionError, match="412 Precondition Failed"):
        obstore.put(store, "k", b"v3", mode={"e_tag": old})  # stale
    assert bytes(obstore.get(store, "k").bytes()) == b"v2"
    with pytest.raises(PreconditionError):
        obstore.put(store, "absent", b"x", mode={"e_tag": old})  # nothing to match
    # The stub types "version" as str | None, but 0.12.1 refuses None: leave it out.
    with pytest.raises(TypeError, match="mode"):
        obstore.put(store, "k", b"v4", mode={"e_tag": new, "version": None})


def test_wrong_credentials(seaweed: Server, remote_prefix: RemotePrefix) -> None:
    obstore.put(remote_prefix.store(), "k", b"v")
    for wrong in ({"secret_access_key": "wrong"}, {"access_key_id": "nobody"}):
        store = remote_prefix.store(**wrong)
        with pytest.raises(PermissionDeniedError, match="403 Forbidden"):
            obstore.put(store, "k2", b"v")
        with pytest.raises(PermissionDeniedError):
            obstore.get(store, "k")
        with pytest.raises(PermissionDeniedError):
            obstore.head(store, "k")
        with pytest.raises(GenericError, match="403 Forbidden"):  # list: no finer class
            obstore.list(store).collect()
    with pytest.raises(PermissionDeniedError, match="SignatureDoesNotMatch"):
        obstore.put(remote_prefix.store(secret_access_key="wrong"), "k2", b"v")
    with pytest.raises(PermissionDeniedError, match="InvalidAccessKeyId"):
        obstore.put(remote_prefix.store(access_key_id="nobody"), "k2", b"v")


def test_missing_bucket(seaweed: Server) -> None:
    # -s3.autoCreateBucket=false: without it this put would create the bucket.
    store = S3Store("no-such-bucket", **seaweed.options)
    # The same class as a missing object: only the body's code tells NoSuchBucket...
    with pytest.raises(FileNotFoundError, match="NoSuchBucket"):
        obstore.put(store, "k", b"v")
    with pytest.raises(FileNotFoundError, match="NoSuchBucket"):
        obstore.get(store, "k")
    with pytest.raises(FileNotFoundError, match="404 Not Found") as raised:
        obstore.head(store, "k")
    assert "NoSuchBucket" not in str(raised.value)  # ...and a HEAD has no body
    with pytest.raises(GenericError, match="NoSuchBucket"):
        obstore.list(store).collect()


def test_missing_object(remote_prefix: RemotePrefix) -> None:
    store = remote_prefix.store()
    with pytest.raises(FileNotFoundError, match="404 Not Found"):
        obstore.get(store, "absent")
    with pytest.raises(FileNotFoundError):
        obstore.head(store, "absent")
    obstore.delete(store, "absent")  # deleting a missing object is no error
    # obstore's not-found is the builtin, outside its own hierarchy.
    assert not issubclass(FileNotFoundError, BaseError)


def test_head_and_delete(remote_prefix: RemotePrefix) -> None:
    store = remote_prefix.store()
    put = obstore.put(store, "k", b"0123456789")
    meta = obstore.head(store, "k")
    assert meta["size"] == 10
    assert meta["e_tag"] == put["e_tag"] == '"781e5e245d69b566979b86e28d23f2c7"'  # md5, quoted
    assert meta["path"] == "k"  # relative to the store's prefix
    obstore.delete(store, "k")
    with pytest.raises(FileNotFoundError):
        obstore.head(store, "k")
    obstore.put(store, "a", b"1")
    obstore.put(store, "b", b"2")
    obstore.delete(store, ["a", "b"])  # bulk delete (DeleteObjects)
    assert obstore.list(store).collect() == []


def test_list_with_prefix(remote_prefix: RemotePrefix) -> None:
    store = remote_prefix.store()
    for path in ("a/1", "a/2", "a/b/3", "ab/4", "z"):
        obstore.put(store, path, b"v")
    everything = sorted(m["path"] for m in obstore.list(store).collect())
    assert everything == ["a/1", "a/2", "a/b/3", "ab/4", "z"]  # the store's prefix is cut
    # A prefix is whole path segments: "a" is "a/", so "ab/4" is not under it.
    assert sorted(m["path"] for m in obstore.list(store, prefix="a").collect()) == [
        "a/1",
        "a/2",
        "a/b/3",
    ]
    one_level = obstore.list_with_delimiter(store, prefix="a")
    assert one_level["common_prefixes"] == ["a/b"]
    assert sorted(m["path"] for m in one_level["objects"]) == ["a/1", "a/2"]
    # Batches: list is an iterator of lists (chunk_size per batch).
    batches = list(obstore.list(store, chunk_size=2))
    assert [len(b) for b in batches] == [2, 2, 1]


def test_get_with_range(remote_prefix: RemotePrefix) -> None:
    store = remote_prefix.store()
    obstore.put(store, "k", bytes(range(100)))
    assert bytes(obstore.get_range(store, "k", start=10, end=15)) == bytes(range(10, 15))
    assert bytes(obstore.get_range(store, "k", start=95, length=50)) == bytes(range(95, 100))
    result = obstore.get(store, "k", options={"range": (20, 23)})
    assert result.range == (20, 23)
    assert bytes(result.bytes()) == bytes([20, 21, 22])
    assert bytes(obstore.get(store, "k", options={"range": {"suffix": 3}}).bytes()) == bytes(
        [97, 98, 99]
    )
    assert bytes(obstore.get(store, "k", options={"range": {"offset": 98}}).bytes()) == bytes(
        [98, 99]
    )
    ranges = obstore.get_ranges(store, "k", starts=[0, 50], ends=[2, 52])
    assert [bytes(r) for r in ranges] == [b"\x00\x01", b"23"]
    with pytest.raises(GenericError, match="416 Range Not Satisfiable"):
        obstore.get_range(store, "k", start=200, end=210)


def _peak_rss_growth_mib(work: Any) -> float:
    """How far this process's peak RSS rose above its RSS while ``work()`` ran."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    before = _status_kib("VmHWM")
    work()
    return (_status_kib("VmHWM") - before) / 1024


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


def _fresh_chunks(count: int, size: int = MiB) -> Iterator[bytes]:
    for i in range(count):
        yield bytes([i % 251]) * size  # a new buffer each time, as a reader would give


def test_multipart_upload_from_an_iterator_has_bounded_memory(
    remote_prefix: RemotePrefix,
) -> None:
    store = remote_prefix.store()
    total = 40  # MiB, in parts of obstore's default chunk_size, 5 MiB
    growth = _peak_rss_growth_mib(
        lambda: obstore.put(store, "big", _fresh_chunks(total), max_concurrency=2)
    )
    meta = obstore.head(store, "big")
    assert meta["size"] == total * MiB
    assert meta["e_tag"] is not None and meta["e_tag"].endswith('-8"')  # 8 parts of 5 MiB
    # About (max_concurrency + 1) parts are held, not the whole value (measured: ~11 MiB;
    # max_concurrency=12, the default, holds all 40 MiB here).
    assert growth < total / 2, f"peak RSS grew {growth:.0f} MiB for a {total} MiB upload"
    assert bytes(obstore.get_range(store, "big", start=39 * MiB, length=4)) == bytes([39]) * 4


def test_multipart_upload_from_a_file(remote_prefix: RemotePrefix, tmp_path: Path) -> None:
    store = remote_prefix.store()
    path = tmp_path / "value"
    path.write_bytes(os.urandom(20 * MiB))
    with open(path, "rb") as f:
        put = obstore.put(store, "from-file", f)
    assert put["e_tag"] is not None and put["e_tag"].endswith('-4"')  # > chunk_size: multipart
    obstore.put(store, "from-path", path, chunk_size=10 * MiB)
    assert obstore.head(store, "from-path")["e_tag"].endswith('-2"')  # type: ignore[union-attr]
    assert bytes(obstore.get(store, "from-file").bytes()) == path.read_bytes()


def test_create_mode_is_one_plain_put(remote_prefix: RemotePrefix) -> None:
    # A mode other than "overwrite" turns multipart off: the whole value is read into
    # memory and sent as one PUT (its ETag has no -N part count).
    store = remote_prefix.store()
    put = obstore.put(store, "k", io.BytesIO(bytes(12 * MiB)), mode="create")
    assert put["e_tag"] is not None and "-" not in put["e_tag"]
    assert obstore.head(store, "k")["size"] == 12 * MiB


def test_part_below_five_mib_fails_at_completion(
    seaweed: Server, remote_prefix: RemotePrefix
) -> None:
    store = remote_prefix.store()
    before = set(seaweed.multipart_uploads())
    with pytest.raises(GenericError, match="EntityTooSmall"):  # only once all parts are in
        obstore.put(store, "k", _fresh_chunks(3), chunk_size=MiB)
    with pytest.raises(FileNotFoundError):
        obstore.head(store, "k")
    assert set(seaweed.multipart_uploads()) == before


# An abort is best effort: with parts still in flight, the server may keep the upload
# (a part that lands after AbortMultipartUpload brings it back). Seen in a loop of 15:
# most aborted puts left one behind; none did when the parts had landed first, as here.
# obstore has no call to list or abort those uploads later.
LANDED = 0.5  # seconds for the parts in flight to land before the failure


def test_interrupted_put_aborts_its_multipart_upload(
    seaweed: Server, remote_prefix: RemotePrefix
) -> None:
    store = remote_prefix.store()
    before = set(seaweed.multipart_uploads())

    def failing() -> Iterator[bytes]:
        yield from _fresh_chunks(12)  # two parts sent
        time.sleep(LANDED)
        raise RuntimeError("the source failed")

    with pytest.raises(RuntimeError, match="the source failed"):  # the source's own error
        obstore.put(store, "k", failing())
    with pytest.raises(FileNotFoundError):
        obstore.head(store, "k")
    assert set(seaweed.multipart_uploads()) == before  # put called AbortMultipartUpload


def test_open_writer_aborts_on_an_exception(seaweed: Server, remote_prefix: RemotePrefix) -> None:
    store = remote_prefix.store()
    before = set(seaweed.multipart_uploads())
    with (
        pytest.raises(RuntimeError, match="stop"),
        obstore.open_writer(store, "k", buffer_size=5 * MiB) as writer,
    ):
        for chunk in _fresh_chunks(12):
            writer.write(chunk)
        writer.flush()
        time.sleep(LANDED)
        assert len(set(seaweed.multipart_uploads()) - before) == 1  # under way, visible
        raise RuntimeError("stop")
    assert set(seaweed.multipart_uploads()) == before  # __exit__ on an exception aborted it
    with pytest.raises(FileNotFoundError):
        obstore.head(store, "k")
    with obstore.open_writer(store, "k", buffer_size=5 * MiB) as writer:
        writer.write(b"complete")  # below buffer_size: one plain PUT at close
    assert bytes(obstore.get(store, "k").bytes()) == b"complete"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_server_down_fails_fast_with_the_test_options(seaweed: Server) -> None:
    options = {**seaweed.options, "endpoint": f"http://127.0.0.1:{_free_port()}"}
    options["aws_endpoint_url_s3"] = options["endpoint"]
    store = S3Store(seaweed.bucket, **options)  # nothing listens there: refused
    for call in (lambda: obstore.put(store, "k", b"v"), lambda: obstore.get(store, "k")):
        began = time.monotonic()
        with pytest.raises(GenericError, match="error sending request") as raised:
            call()
        assert time.monotonic() - began < 2
        assert "after 2 retries" in str(raised.value)


def _stopped(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"


def test_hung_server_times_out(seaweed: Server, remote_prefix: RemotePrefix) -> None:
    # A stopped server still accepts connections (the kernel does), but never answers:
    # only a timeout ends the request. obstore's defaults wait 30 s a try, 180 s in all.
    fast = remote_prefix.store(
        client_options={"allow_http": True, "timeout": "1s", "connect_timeout": "1s"},
        retry_config={"max_retries": 0},
    )
    obstore.put(fast, "k", b"v")
    pid = seaweed.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 5
        while not _stopped(pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        began = time.monotonic()
        with pytest.raises(GenericError, match="error sending request"):
            obstore.get(fast, "k")
        assert 0.9 < time.monotonic() - began < 3
    finally:
        os.kill(pid, signal.SIGCONT)
    assert bytes(obstore.get(fast, "k").bytes()) == b"v"
