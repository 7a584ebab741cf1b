"""One fdatasync for several processes (``SharedState.sync_shared``, FORMAT.md
"The order of an append"): who may trust whose fdatasync, and who waits.

Two ``SharedState`` of one store stand for two processes (each its own flocks
and mapping); the fdatasyncs are the tests' own callables, so each case says
exactly which process synced. The processes' own tests (a syncer SIGKILLed,
one fdatasync for two handles' batches) are at the end.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from blobcache import BlobCache, _futex, _log, _logwriter, _shared
from blobcache import _format as F

pytestmark = pytest.mark.skipif(
    not _futex.available, reason="fdatasyncs are shared only where there is a futex"
)


@pytest.fixture
def two(tmp_path: Path) -> Iterator[tuple[_shared.SharedState, _shared.SharedState]]:
    """Two processes' ``STATE`` of one store whose active segment 1 holds
    records up to 500, nothing of it known synced."""
    path = str(tmp_path / "store")
    BlobCache(path).close()
    first, second = _shared.SharedState(path), _shared.SharedState(path)
    with first.locked():
        first.segment, first.appended, first.synced, first.synced_in = 1, 500, 16, 1
    yield first, second
    first.close()
    second.close()


@contextlib.contextmanager
def _sync_lock_held(state: str) -> Iterator[None]:
    """The sync lock of the store whose ``STATE`` is ``state``, held here (a
    file opened anew: another open file description, as another process's)."""
    fd = os.open(state, os.O_RDWR)
    try:
        assert _shared._lock_sync(fd, fcntl.F_WRLCK)
        yield
    finally:
        os.close(fd)  # releases it


class _Sync:
    """An fdatasync that counts its calls and runs ``then`` inside the last."""

    def __init__(self, then: Any = None) -> None:
        self.calls = 0
        self.then = then

    def __call__(self) -> None:
        self.calls += 1
        if self.then is not None:
            self.then()


def test_a_syncer_covers_every_record_written_before_it_began(two: Any) -> None:
    first, second = two
    sync = _Sync()
    first.sync_shared(1, 300, first.troubles, sync)
    assert sync.calls == 1
    assert (first.synced, first.synced_in, first.acked) == (500, 1, 500)
    theirs = _Sync()
    second.sync_shared(1, 500, second.troubles, theirs)  # covered: returns at once
    assert theirs.calls == 0


def test_an_os_append_after_a_batch_does_not_count_as_its_fdatasync(two: Any) -> None:
    """An "os" handle acknowledges its records at once (``acked``), past an
    "fsync" batch written before it: ``synced`` alone says what is durable."""
    first, second = two
    with second.locked():
        second.set_appended(700, acked=True)  # an "os" process's append after ours
    ours = _Sync()
    first.sync_shared(1, 500, first.troubles, ours)
    assert ours.calls == 1
    assert (first.synced, first.acked) == (700, 700)


def test_after_a_trouble_nobody_trusts_another_process_s_fdatasync(two: Any) -> None:
    """A failed fdatasync elsewhere may have eaten the error of our pages: the
    batch written before it fdatasyncs through its own descriptor, even if
    ``synced`` or a seal says it is covered."""
    first, second = two
    troubles = second.troubles
    first.sync_shared(1, 500, first.troubles, _Sync())
    first.trouble()  # say, another batch's fdatasync failed
    ours = _Sync()
    second.sync_shared(1, 400, troubles, ours)  # `synced` (500) says covered
    assert ours.calls == 1
    with first.locked():
        first.segment = 2  # and a seal after it "covered" everything
    again = _Sync()
    second.sync_shared(1, 450, troubles, again)
    assert again.calls == 1


def test_a_cut_under_an_fdatasync_in_flight_voids_what_it_would_mark(two: Any) -> None:
    """The syncer read ``appended`` (500); before its fdatasync returns, a failed
    batch is cut off below that: ``synced`` must not pass the cut, or the next
    batch written at those offsets would count as synced without any fdatasync."""
    first, second = two

    def cut() -> None:
        with second.locked():
            second.appended = 300
            second.trouble()

    sync = _Sync(then=cut)
    first.sync_shared(1, 200, first.troubles, sync)  # its own batch: durable all the same
    assert sync.calls == 1
    assert first.synced == 16  # nothing marked
    later = _Sync()
    second.sync_shared(1, 450, second.troubles, later)  # written at the cut offsets
    assert later.calls == 1


def test_a_failed_fdatasync_is_a_trouble_and_raises(two: Any) -> None:
    first, _second = two
    troubles = first.troubles

    def failing() -> None:
        raise OSError(5, "Input/output error")

    with pytest.raises(OSError, match="Input/output"):
        first.sync_shared(1, 500, troubles, failing)
    assert first.troubles != troubles
    assert first.synced == 16


def test_a_batch_covered_only_by_a_seal_fdatasyncs_its_own_descriptor(two: Any) -> None:
    """The sealer's descriptor may have been opened after another process was
    told of a write-back error, before it noted the trouble: the seal vouches
    for nothing the waiter's own descriptor would not."""
    first, second = two
    with first.locked():
        first.segment = 2
    ours = _Sync()
    second.sync_shared(1, 400, second.troubles, ours)
    assert ours.calls == 1


def test_a_seal_is_no_cover_whenever_it_comes(two: Any) -> None:
    """``covers`` says no once the segment moved on, whatever ``synced`` still
    says: a seal between ``sync_shared``'s own look at the segment and its look
    at ``synced`` must not let the batch return without its own fdatasync."""
    first, _second = two
    first.sync_shared(1, 500, first.troubles, _Sync())
    assert first.covers(1, 400)
    with first.locked():
        first.segment = 2  # sealed, `synced` and `synced_in` not (yet) moved on
    assert not first.covers(1, 400)


def test_every_trouble_changes_the_value_noted(two: Any) -> None:
    first, second = two
    seen = {first.troubles}
    for _ in range(100):
        first.trouble()
        assert first.troubles not in seen
        seen.add(second.troubles)


def test_without_locks_of_open_files_every_process_fdatasyncs_for_itself(
    two: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, _second = two
    real = fcntl.fcntl

    def refusing(fd: int, command: int, *args: Any) -> Any:
        if command == fcntl.F_OFD_SETLK:
            raise OSError(22, "Invalid argument")
        return real(fd, command, *args)

    monkeypatch.setattr(fcntl, "fcntl", refusing)
    ours = _Sync()
    first.sync_shared(1, 300, first.troubles, ours)
    assert ours.calls == 1
    assert first.synced == 500


def test_synced_of_another_segment_covers_nothing(two: Any) -> None:
    """A ``STATE`` a writer that does not keep ``synced`` rolled: ``synced_in``
    still names the old segment, so its ``synced`` says nothing of the new."""
    first, second = two
    first.sync_shared(1, 500, first.troubles, _Sync())
    with first.locked():
        first.segment, first.appended = 2, 100  # ``synced`` still 500, of segment 1
    ours = _Sync()
    second.sync_shared(2, 90, second.troubles, ours)
    assert ours.calls == 1


def test_a_waiter_fdatasyncs_for_itself_when_the_syncer_never_finishes(
    two: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A holder of the sync lock stopped for good (SIGSTOP, a debugger): after its naps
    the waiter fdatasyncs for itself."""
    first, _second = two
    monkeypatch.setattr(_shared, "SYNC_WAIT_SECONDS", 0.001)
    ours = _Sync()
    with _sync_lock_held(first.path):
        waiter = threading.Thread(target=first.sync_shared, args=(1, 500, first.troubles, ours))
        waiter.start()
        waiter.join(30)  # a hang would fail here, not stall the run
        assert not waiter.is_alive()
    assert ours.calls == 1


def test_a_failed_batch_another_process_s_fdatasync_covered_is_not_cut(tmp_path: Path) -> None:
    """A put fails (interrupted while it waited) after another process's
    fdatasync covered its record and ``acked`` passed it: other processes may
    have read it, so the record stays; cutting it would let ``synced`` and
    ``acked`` pass ``appended``, and the next batch written there count as
    synced with no fdatasync."""
    path = str(tmp_path / "store")
    with BlobCache(path) as cache:
        cache.put("k", b"v")
        writer, state = cache._held.writer, cache._held.state  # type: ignore[attr-defined]
        end = state.appended
        start = end - len(_log.encode_record(1, F.RECORD_PUT, b"s", b"k", b"v"))
        writer._undo((state.segment, start, end, state.troubles))
        assert (state.appended, state.acked, state.synced) == (end, end, end)
        cache.put("after", b"w")
    with BlobCache(path) as reopened:
        assert reopened["k"] == b"v" and reopened["after"] == b"w"


_SYNCER = """
import sys
from blobcache import BlobCache, _fsio

real = _fsio.fdatasync


def held(fd):
    # Stop in the batch's fdatasync, holding the sync lock, until killed.
    print("syncing", flush=True)
    sys.stdin.readline()
    real(fd)


with BlobCache({path!r}) as cache:
    cache.put("warm", b"up")
    _fsio.fdatasync = held
    cache.put("victim", b"unacknowledged")
"""


def test_a_process_killed_while_it_fdatasyncs_for_all_blocks_no_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process holding the sync lock (fdatasyncing the log for every process) is
    SIGKILLed: a put waiting for it goes on, fdatasyncs for itself, is durable.
    (No nap limit here: the kill is what frees it.)"""
    monkeypatch.setattr(_shared, "SYNC_NAPS", 10**9)
    path = str(tmp_path / "store")
    BlobCache(path).close()
    child = subprocess.Popen(
        [sys.executable, "-c", _SYNCER.format(path=path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    try:
        assert child.stdout.readline() == "syncing\n"
        with BlobCache(path) as cache:
            done = threading.Event()
            worker = threading.Thread(target=lambda: (cache.put("mine", b"v"), done.set()))
            worker.start()
            # Not covered by the child's fdatasync (it read `appended` before our
            # record), and the sync lock is the child's: the put cannot have returned.
            assert not done.wait(0.05)
            child.kill()
            child.wait()
            worker.join(30)
            assert done.is_set()
        with BlobCache(path) as reopened:
            assert reopened["mine"] == b"v"
            assert reopened["warm"] == b"up"
    finally:
        child.kill()
        child.wait()


def test_one_fdatasync_serves_the_batches_of_two_handles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two handles (as two processes: their own flocks and mappings) put while a
    third party holds the sync lock; once it lets go, one fdatasync covers both batches.
    (No nap limit: however long the two wait, they wait for the lock's holder.)"""
    monkeypatch.setattr(_shared, "SYNC_NAPS", 10**9)
    path = str(tmp_path / "store")
    with BlobCache(path) as a, BlobCache(path) as b:
        a.put("warm-a", b"1")
        b.put("warm-b", b"1")  # past the first zero-fill ahead, for both
        waiting = [threading.Event(), threading.Event()]
        real_shared = _shared.SharedState.sync_shared
        handles = {id(a._held.state): 0, id(b._held.state): 1}  # type: ignore[attr-defined]

        def shared(state: _shared.SharedState, *args: Any) -> None:
            waiting[handles[id(state)]].set()  # its record is written
            real_shared(state, *args)

        syncs: list[int] = []
        real_sync = _logwriter.LogWriter._fdatasync_batch

        def counted(writer: _logwriter.LogWriter) -> None:
            syncs.append(1)
            real_sync(writer)

        monkeypatch.setattr(_shared.SharedState, "sync_shared", shared)
        monkeypatch.setattr(_logwriter.LogWriter, "_fdatasync_batch", counted)
        workers = [
            threading.Thread(target=a.put, args=("a", b"from a")),
            threading.Thread(target=b.put, args=("b", b"from b")),
        ]
        with _sync_lock_held(os.path.join(path, F.STATE_NAME)):
            for worker in workers:
                worker.start()
            for event in waiting:
                assert event.wait(30)
            assert syncs == []  # both wait for the sync lock's holder
        for worker in workers:
            worker.join(30)
        assert syncs == [1]
        assert b["a"] == b"from a" and a["b"] == b"from b"


def test_a_put_that_returned_is_seen_by_others_even_after_a_trouble_in_its_fdatasync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trouble elsewhere while a put's own fdatasync runs voids the mark for
    everyone's records, not the put: its own descriptor vouched for its records,
    it returns, and every process must then see it (``acked``)."""
    path = str(tmp_path / "store")
    with BlobCache(path) as a, BlobCache(path) as b:
        a.put("warm", b"1")
        real_sync = _logwriter.LogWriter._fdatasync_batch
        other = b._held.state  # type: ignore[attr-defined]

        def troubled(writer: _logwriter.LogWriter) -> None:
            real_sync(writer)
            other.trouble()  # say, b's fdatasync of another batch failed meanwhile

        monkeypatch.setattr(_logwriter.LogWriter, "_fdatasync_batch", troubled)
        a.put("k", b"mine")
        monkeypatch.undo()
        assert b.get("k") == b"mine"  # a miss catches up to `acked`
