"""``blobcache gc`` and temp sweeps in other processes, interleaved with a live writer.

Every test here runs the writer in a child process of its own, as a user does:
flocks on one file conflict between processes exactly as the store relies on,
and a failure in the writer shows as its traceback and exit status.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from blobcache import BlobCache
from blobcache import _format as F


def _python(code: str, *args: str, out: Any = subprocess.PIPE) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdin=subprocess.PIPE,
        stdout=out,
        stderr=subprocess.PIPE,
        text=True,
    )


def _gc(store: str) -> dict[str, Any]:
    """Run ``blobcache gc --json``; assert it ran cleanly (status 0, no traceback)."""
    done = subprocess.run(
        [sys.executable, "-m", "blobcache", "gc", "--json", store],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def _value(key: str, i: int) -> bytes:
    """What the racing writer puts as operation ``i`` on ``key``: large or small."""
    return (b"%s=%d;" % (key.encode(), i)) * (600 if i % 3 else 3)


# Puts, put_files, overwrites, deletes and its own gc() (janitor and compaction)
# in a loop until its stdin closes; prints each acknowledged operation (and
# "ready" to stderr once it holds the store).
_RACING_WRITER = """
    import os, select, sys
    from blobcache import BlobCache
    store, source = sys.argv[1], sys.argv[2]
    def value(key, i):
        return (b"%s=%d;" % (key.encode(), i)) * (600 if i % 3 else 3)
    with BlobCache(store, inline_limit=64, segment_bytes=4096, durability=sys.argv[3]) as c:
        print("ready", file=sys.stderr, flush=True)
        i = 0
        while not select.select([sys.stdin], [], [], 0)[0]:
            key = "k%d" % (i % 5)
            if i % 7 == 6:
                c.delete(key)
                print("d", key, i, flush=True)
            elif i % 4 == 1:
                with open(source, "wb") as f:
                    f.write(value(key, i))
                c.put_file(key, source)
                print("p", key, i, flush=True)
            else:
                c.put(key, value(key, i))
                print("p", key, i, flush=True)
            if i % 5 == 4:
                c.gc()
            i += 1
"""

# Removes every temp file of the store no writer holds, pass after pass.
_SWEEPER = """
    import os, sys
    from blobcache import _storedir
    from blobcache import _format as F
    removed = 0
    for _ in range(int(sys.argv[2])):
        for directory, _, names in os.walk(sys.argv[1]):
            for name in names:
                if name.startswith(F.TEMP_PREFIX):
                    if _storedir.remove_orphan_temp(os.path.join(directory, name)) is not None:
                        removed += 1
    print(removed)
"""


def _race(store: str, tmp: str, durability: str, collections: int) -> None:
    """The writer acknowledges into a file (a pipe nobody reads while the
    collections run would fill and stall it) and stops when its stdin closes."""
    acks_path = os.path.join(tmp, "acks")
    with open(acks_path, "w") as acks:
        writer = _python(_RACING_WRITER, store, os.path.join(tmp, "source"), durability, out=acks)
    assert writer.stdin is not None and writer.stderr is not None
    assert writer.stderr.readline() == "ready\n"
    sweeper = _python(_SWEEPER, store, "3000")
    collected = 0
    try:
        # At least ``collections``; more (up to 5 times as many) until one removed
        # something: under load the writer's own gc() may get to every bit of
        # garbage first, and then no race was run.
        for done in range(5 * collections):
            if done >= collections and collected:
                break
            report = _gc(store)
            assert report["beside_writer"] is True
            assert report["problems"] == []
            collected += report["result"]["files_removed"] + report["result"]["dirs_removed"]
    finally:
        _, sweeper_err = sweeper.communicate(timeout=120)
        writer.stdin.close()
        err = writer.stderr.read()
        writer.wait(timeout=120)
    assert sweeper.returncode == 0, sweeper_err
    assert "Traceback" not in err and writer.returncode == 0, err
    assert err == "", err  # nothing logged either: no background compaction failed
    with open(acks_path) as f:
        out = f.read()
    expected: dict[str, bytes | None] = {}
    for line in out.splitlines():
        op, key, i = line.split()
        expected[key] = _value(key, int(i)) if op == "p" else None
    assert len(out.splitlines()) > collections, "the writer barely ran beside the collections"
    assert collected > 0, "no collection beside the writer removed anything: no race was run"
    with BlobCache(store, inline_limit=64) as cache:
        assert cache.problems == ()
        got = {k: (bytes(v) if (v := cache.get(k)) is not None else None) for k in expected}
    assert got == expected


def test_gc_and_a_temp_sweeper_beside_a_writer_running_its_own_gc_lose_nothing(
    store: str, tmp_path: Any
) -> None:
    """`blobcache gc` exits 0 with no traceback every time, the writer never
    sees a FileNotFoundError, and every acknowledged value is there at the end."""
    _race(store, str(tmp_path), "fsync", collections=12)


def test_gc_beside_an_os_durability_writer_running_its_own_gc_loses_nothing(
    store: str, tmp_path: Any
) -> None:
    _race(store, str(tmp_path), "os", collections=12)


# Makes the step between a temp file's create and its flock as wide as the test
# likes: the first temp file created after ``pause()`` waits for a line on stdin.
_PAUSED_WRITER = """
    import os, sys
    from blobcache import BlobCache, _fsio
    from blobcache import _format as F
    store, what = sys.argv[1], sys.argv[2]
    real = _fsio.create_exclusive
    def paused(path, **options):
        fd = real(path, **options)
        if os.path.basename(path).startswith(F.TEMP_PREFIX):
            _fsio.create_exclusive = real
            print(path, flush=True)
            sys.stdin.readline()  # the test sweeps now
        return fd
    def pause():
        _fsio.create_exclusive = paused
    if what == "FORMAT":
        pause()
    with BlobCache(store, inline_limit=64, segment_bytes=4096) as c:
        c.put("k", b"1" * 100)
        if what == "version":
            pause()
            c.put("k", b"2" * 100)
        elif what == "key file":
            pause()
            c.put("new", b"N" * 100)
        elif what == "compacted segment":
            for i in range(20):
                c.put("small", b"%d" % i)
            pause()
            c.gc()
    print("done", flush=True)
"""


@pytest.mark.parametrize("what", ["version", "key file", "compacted segment", "FORMAT"])
def test_a_temp_file_between_its_create_and_its_flock_is_not_swept(store: str, what: str) -> None:
    """Every temp file creator against every sweeper: however long the step
    between create and flock lasts, the temp file is not taken from its writer."""
    from blobcache import _storedir

    writer = _python(_PAUSED_WRITER, store, what)
    assert writer.stdout is not None and writer.stdin is not None
    try:
        temp = writer.stdout.readline().strip()
        assert temp, writer.stderr.read() if writer.stderr else ""
        assert _storedir.remove_orphan_temp(temp) is None  # recovery's and the janitor's sweep
        if what != "FORMAT":  # a store from then on: the command's sweep too
            report = _gc(store)
            assert temp not in report["removed"] and report["result"]["temps_removed"] == 0
        assert os.path.exists(temp)
    finally:
        writer.stdin.write("\n")
        writer.stdin.flush()
        out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0 and err == "", err
    assert out.splitlines()[-1] == "done"
    with BlobCache(store, inline_limit=64) as cache:
        assert cache.problems == ()
        assert bytes(cache["k"]) == (b"2" if what == "version" else b"1") * 100
        if what == "key file":
            assert bytes(cache["new"]) == b"N" * 100
        assert cache.stats().temps_removed_at_open == 0  # the temp file was published


def test_the_writers_own_gc_still_sweeps_an_orphaned_temp_file(store: str) -> None:
    """The janitor holds the key directory's flock itself while it sweeps (a
    second flock from its own process would conflict with it)."""
    with BlobCache(store, inline_limit=0) as cache:
        cache.put("k", b"one")
        cache.put("k", b"two")
        keydir = os.path.dirname(str(cache.path("k")))
        orphan = os.path.join(keydir, F.TEMP_PREFIX + "0" * F.TEMP_RANDOM_HEX_DIGITS)
        with open(orphan, "wb") as f:
            f.write(b"left by a writer that died")
        assert cache.gc().temps_removed == 1
        assert not os.path.exists(orphan)


# Holds the store, then reads "k" when told to and prints what it got.
_HOLDING_WRITER = """
    import sys
    from blobcache import BlobCache, CorruptionError
    with BlobCache(sys.argv[1], inline_limit=0) as c:
        print("ready", file=sys.stderr, flush=True)
        sys.stdin.readline()
        try:
            print(bytes(c["k"]).decode())
        except CorruptionError as exc:
            print("CorruptionError", exc)
"""


def test_gc_beside_a_writer_keeps_the_older_version_when_the_newest_lost_its_bytes(
    store: str,
) -> None:
    """The power-cut case the older version is kept for: the newest version has
    its name and size but other bytes. Beside a writer as without one, gc reads
    the newest whole before it removes what it supersedes; here it must not."""
    with BlobCache(store, inline_limit=0) as cache:
        cache.put("k", b"A" * 4096)
        older = str(cache.path("k"))
        cache.put("k", b"B" * 4096)
        newest = str(cache.path("k"))
    with open(newest, "r+b") as f:
        f.write(b"\0" * 4096)  # same name, same size: the bytes never reached the disk
    writer = _python(_HOLDING_WRITER, store)
    assert writer.stdin is not None and writer.stderr is not None
    try:
        assert writer.stderr.readline() == "ready\n"
        report = _gc(store)
        assert report["beside_writer"] is True
        assert older not in report["removed"] and os.path.exists(older)
        assert len(report["problems"]) == 1 and newest in report["problems"][0]
        text = subprocess.run(
            [sys.executable, "-m", "blobcache", "gc", store], capture_output=True, text=True
        )
        assert text.returncode == 0 and f"problem {newest}" in text.stdout  # said, not failed
        assert os.path.exists(older)
    finally:
        writer.stdin.write("\n")
        writer.stdin.flush()
        out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err
    assert out == "A" * 4096 + "\n"  # the writer fell back to the older version


def _vanish_segment(path: str) -> None:
    if path.endswith(F.SEGMENT_SUFFIX):
        raise FileNotFoundError(2, "replaced by the writer's compaction", path)


def _vanish_version(path: str) -> None:
    if os.path.basename(path).startswith(F.VERSION_PREFIX):
        os.unlink(path)  # superseded since the snapshot and collected by the writer


def _vanish_fanout(path: str) -> None:
    _, inside, below = path.partition(os.sep + F.BLOBS_DIR + os.sep)
    levels = below.split(os.sep) if inside else []
    if len(levels) > 2:
        return  # a key directory, not a fan-out one
    while levels and not os.listdir(path):  # the other gc prunes what is left empty
        os.rmdir(path)
        path = os.path.dirname(path)
        levels.pop()


@pytest.mark.parametrize(
    ("call", "vanish"),
    [
        ("fsync_path", _vanish_segment),
        ("fsync_path", _vanish_version),
        ("fsync_dir", _vanish_fanout),
    ],
    ids=["segment", "superseding version", "fan-out directory"],
)
def test_gc_beside_a_writer_takes_what_vanishes_under_it_as_collected(
    store: str, monkeypatch: pytest.MonkeyPatch, call: str, vanish: Any
) -> None:
    """The writer's own gc() and compaction remove files and directories while
    `blobcache gc` works: at the moment it touches one, the next call finds it
    gone. That is "already collected", never an error, and never a reason to
    remove what could not be checked."""
    from blobcache import _collect, _fsio

    with BlobCache(store, inline_limit=0) as cache:
        cache.put("kept", b"A" * 100)
        older = str(cache.path("kept"))
        cache.put("kept", b"B" * 100)
        cache.put("gone", b"G" * 100)
        cache.delete("gone")  # its directory is garbage once the log's delete is durable
    real = getattr(_fsio, call)

    def vanishing(path: str) -> None:
        vanish(path)
        real(path)

    lock = os.open(os.path.join(store, F.LOCK_NAME), os.O_RDWR)
    try:
        assert _fsio.try_lock(lock)  # as a writer does: `blobcache gc` works beside it
        monkeypatch.setattr(_fsio, call, vanishing)
        report = _collect.collect(store)
    finally:
        os.close(lock)
    assert report.beside_writer and report.problems == []
    # The older version goes only once its superseder was checked and synced.
    assert os.path.exists(older) == (vanish is _vanish_version)


def test_the_writers_gc_takes_fan_out_directories_another_gc_removed_as_collected(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other way round: `blobcache gc` prunes a fan-out directory the
    writer's gc() has just emptied, before the writer fsyncs it."""
    from blobcache import _fsio

    with BlobCache(store, inline_limit=0) as cache:
        cache.put("gone", b"G" * 100)
        keydir = os.path.dirname(str(cache.path("gone")))
        cache.delete("gone")
        real = _fsio.fsync_dir

        def vanishing(path: str) -> None:
            _vanish_fanout(path)
            real(path)

        monkeypatch.setattr(_fsio, "fsync_dir", vanishing)
        result = cache.gc()
        assert result.files_removed == 2 and result.dirs_removed == 1  # the key's own
        assert not os.path.exists(os.path.dirname(os.path.dirname(keydir)))
        assert os.listdir(os.path.join(store, F.BLOBS_DIR)) == []
