"""Several processes, one store (issue 14): writers side by side, one order,
visibility, SIGKILL of any of them, fork and spawn.

Children are real processes (``multiprocessing`` with "spawn", and "fork" where
it says so). Every claim about a crash is checked after a SIGKILL.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import random
import signal
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest

from blobcache import BlobCache

SPAWN = mp.get_context("spawn")
FORK = mp.get_context("fork")
LARGE = 300 << 10  # above the default inline_limit: a version file


def _value(key: str, n: int) -> bytes:
    body = f"{key}:{n}".encode()
    return body * (LARGE // len(body) + 1) if n % 7 == 3 else body


def _writer(path: str, name: str, ops: int, acks: Connection, seed: int) -> None:
    """Put and delete this writer's own keys (and a shared one), reporting each
    acknowledged operation as "key n" once it returned."""
    with BlobCache(path) as cache:
        for n, key in enumerate(_plan(name, seed, ops), 1):
            if n % 5 == 0:
                cache.delete(key)
            else:
                cache.put(key, _value(key, n))
            cache.put("shared", f"{name}:{n}".encode())
            acks.send((key, n))
    acks.send(None)


def _plan(name: str, seed: int, ops: int) -> list[str]:
    """The key of each operation of a writer, in order (so the parent knows which
    key the operation in flight at a kill was on)."""
    rng = random.Random(seed)
    return [f"{name}-{rng.randrange(8)}" for _ in range(ops)]


def _state_after(key: str, n: int) -> bytes | None:
    return None if n % 5 == 0 else _value(key, n)


def _allowed(key: str, last: dict[str, int], plan: list[str]) -> set[bytes | None]:
    """What ``key`` may hold once its writer stopped: the state after its last
    acknowledged operation, or after the operation in flight, if on this key."""
    name = key.split("-")[0]
    mine = [n for k, n in last.items() if k.split("-")[0] == name]
    allowed = {_state_after(key, last[key]) if key in last else None}
    in_flight = max(mine, default=0) + 1
    if in_flight <= len(plan) and plan[in_flight - 1] == key:
        allowed.add(_state_after(key, in_flight))
    return allowed


def _drain(reader: Connection, acked: dict[str, int]) -> None:
    """Take into ``acked`` the acknowledgements a writer sent before it was
    killed and that were not read yet."""
    while reader.poll(0):
        try:
            message = reader.recv()
        except EOFError:
            return
        if message is not None:
            acked[message[0]] = message[1]


def _get(cache: BlobCache, key: str) -> bytes | None:
    value = cache.get(key)
    return None if value is None else bytes(value)


def test_writers_in_several_processes_lose_nothing_acknowledged_when_some_are_killed(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "store")
    BlobCache(path).close()
    writers = 4
    pipes = [SPAWN.Pipe(duplex=False) for _ in range(writers)]
    doomed = {0, 2}  # killed midway, at a moment set by their acknowledgements
    kill_at = {0: 60, 2: 150}
    # The doomed have ten times the work, so they are still putting when the
    # kill comes (this process reads their acknowledgements in turn with the
    # others'; a writer that finished first would exit 0, never killed).
    ops = [4000 if i in doomed else 400 for i in range(writers)]
    plans = {f"w{i}": _plan(f"w{i}", i, ops[i]) for i in range(writers)}
    procs = [
        SPAWN.Process(target=_writer, args=(path, f"w{i}", ops[i], pipes[i][1], i))
        for i in range(writers)
    ]
    for proc in procs:
        proc.start()
    last: dict[str, int] = {}  # key -> the last acknowledged operation on it
    seen = [0] * writers
    done = [False] * writers
    with BlobCache(path) as watcher:  # a process beside them, following the log
        while not all(done):
            for i, (reader, _) in enumerate(pipes):
                if done[i] or not reader.poll(0.05):
                    continue
                try:
                    message = reader.recv()
                except EOFError:
                    done[i] = True
                    continue
                if message is None:
                    done[i] = True
                    continue
                key, n = message
                last[key] = n
                seen[i] += 1
                if i in doomed and seen[i] == kill_at[i]:
                    os.kill(procs[i].pid, signal.SIGKILL)  # type: ignore[arg-type]
                    procs[i].join()
                    done[i] = True
                    _drain(reader, last)  # acknowledged before the kill, unread yet
                    # What it acknowledged is there for a survivor beside it.
                    watcher.refresh()
                    for k in set(plans[f"w{i}"]):
                        assert _get(watcher, k) in _allowed(k, last, plans[f"w{i}"]), k
        for proc in procs:
            proc.join()
        assert [p.exitcode for i, p in enumerate(procs) if i not in doomed] == [0, 0]
        assert [procs[i].exitcode for i in sorted(doomed)] == [-signal.SIGKILL] * 2
        watcher.refresh()
        keys = {k for plan in plans.values() for k in plan}
        for key in keys:
            assert _get(watcher, key) in _allowed(key, last, plans[key.split("-")[0]]), key
    with BlobCache(path) as reopened:
        for key in keys:
            assert _get(reopened, key) in _allowed(key, last, plans[key.split("-")[0]]), key
        assert reopened.problems == () or all("torn" in p.message for p in reopened.problems)


def _put_after(path: str, key: str, value: bytes, start: Any, done: Any) -> None:
    with BlobCache(path) as cache:
        start.wait()
        cache.put(key, value)
        done.set()


def test_a_put_that_returned_is_older_than_one_begun_after_it_everywhere(tmp_path: Path) -> None:
    path = str(tmp_path / "store")
    with BlobCache(path) as cache:
        cache.put("k", b"first")
        start, done = SPAWN.Event(), SPAWN.Event()
        child = SPAWN.Process(target=_put_after, args=(path, "k", b"second", start, done))
        child.start()
        start.set()
        assert done.wait(60)
        child.join()
        assert child.exitcode == 0
        cache.refresh()
        assert cache.get("k") == b"second"
        cache.put("k", b"third")  # begun after the child's put returned: newer
    with BlobCache(path) as reopened:
        assert reopened.get("k") == b"third"
        assert reopened.stats().next_seq > 3


def _put_and_report(path: str, pairs: list[tuple[str, bytes]], conn: Connection) -> None:
    with BlobCache(path) as cache:
        for key, value in pairs:
            cache.put(key, value)
            conn.send(key)
            assert conn.recv() == "seen"
    conn.close()


def test_a_put_returned_in_one_process_never_misses_in_another(tmp_path: Path) -> None:
    path = str(tmp_path / "store")
    with BlobCache(path, refresh_interval=3600) as cache:  # no background catching up
        ours, theirs = SPAWN.Pipe()
        pairs = [(f"k{i}", _value(f"k{i}", i)) for i in range(20)]
        child = SPAWN.Process(target=_put_and_report, args=(path, pairs, theirs))
        child.start()
        for key, value in pairs:
            assert ours.poll(60)
            assert ours.recv() == key
            assert key in cache  # a miss catches up before it answers
            assert _get(cache, key) == value
            ours.send("seen")
        child.join()
        assert child.exitcode == 0


def _overwrite(path: str, conn: Connection) -> None:
    with BlobCache(path) as cache:
        conn.recv()
        cache.put("hot", b"new")
        conn.send(time.monotonic())
        conn.recv()


def test_a_hit_catches_up_within_the_refresh_interval_or_at_refresh(tmp_path: Path) -> None:
    path = str(tmp_path / "store")
    for interval in (0.05, 3600.0):
        with BlobCache(path, refresh_interval=interval) as cache:
            cache.put("hot", b"old")
            ours, theirs = SPAWN.Pipe()
            child = SPAWN.Process(target=_overwrite, args=(path, theirs))
            child.start()
            ours.send("go")
            assert ours.poll(60)
            returned = ours.recv()
            if interval == 3600.0:
                assert cache.get("hot") == b"old"  # a hit, not caught up yet
                cache.refresh()
                assert cache.get("hot") == b"new"
            else:
                # The background follower brings it; polled with a deadline only
                # so a failure ends the test (the staleness itself is measured
                # by tools/bench.py).
                deadline = time.monotonic() + 30
                while cache.get("hot") != b"new":
                    assert time.monotonic() < deadline, "a hit stayed stale"
                    time.sleep(0.001)
                assert time.monotonic() - returned >= 0
            ours.send("bye")
            child.join()
            assert child.exitcode == 0


def test_a_reader_follows_the_writers_instead_of_freezing_at_open(tmp_path: Path) -> None:
    path = str(tmp_path / "store")
    with BlobCache(path) as writer, BlobCache(path, readonly=True) as reader:
        assert reader.get("late") is None
        writer.put("late", b"value")
        writer.put("big", b"b" * LARGE)
        assert reader.get("late") == b"value"
        assert bytes(reader["big"]) == b"b" * LARGE
        writer.delete("late")
        reader.refresh()
        assert "late" not in reader


def test_two_handles_in_one_process_write_side_by_side(tmp_path: Path) -> None:
    path = str(tmp_path / "store")
    with BlobCache(path) as a, BlobCache(path) as b:
        for i in range(50):
            (a if i % 2 else b).put(f"k{i}", str(i).encode())
        a.refresh()
        b.refresh()
        assert sorted(a) == sorted(b) == sorted(f"k{i}" for i in range(50))
        a.gc()  # compaction in one handle while the other goes on
        b.put("after", b"gc")
        assert a.get("after") == b"gc"
    with BlobCache(path) as c:
        assert len(c) == 51


_INHERITED: BlobCache | None = None


def _memoize(x: int) -> bytes:
    cache = _INHERITED
    assert cache is not None
    return _compute_into(cache, x)


def _memoize_with(cache: BlobCache, x: int) -> bytes:
    return _compute_into(cache, x)


def _compute_into(cache: BlobCache, x: int) -> bytes:
    key = f"square-{x}"
    found = cache.get(key)
    if found is not None:
        return bytes(found)
    value = str(x * x).encode() * (1 + (x % 3) * (LARGE // 4))
    cache.put(key, value)
    return value


def test_a_pool_forked_from_an_opened_handle_and_a_spawned_pool_write_one_store(
    tmp_path: Path,
) -> None:
    global _INHERITED
    path = str(tmp_path / "store")
    with BlobCache(path) as cache:
        cache.put("from-parent", b"1")
        _INHERITED = cache
        try:
            with FORK.Pool(3) as pool:  # DataLoader's default: the handle is inherited
                forked = pool.map(_memoize, range(30))
        finally:
            _INHERITED = None
        with SPAWN.Pool(2) as pool:  # the handle crosses by pickle: path and options
            spawned = pool.starmap(_memoize_with, [(cache, x) for x in range(20, 40)])
        assert forked[5] == _compute_value(5) and spawned[0] == _compute_value(20)
        cache.refresh()
        for x in range(40):
            assert bytes(cache[f"square-{x}"]) == _compute_value(x)
        assert cache.get("from-parent") == b"1"
    with BlobCache(path) as reopened:
        assert len(reopened) == 41


def _compute_value(x: int) -> bytes:
    return str(x * x).encode() * (1 + (x % 3) * (LARGE // 4))


def test_a_handle_pickles_by_path_and_options(tmp_path: Path) -> None:
    path = str(tmp_path / "store")
    with BlobCache(path, durability="os", inline_limit=1000) as cache:
        cache.put("k", b"v")
        copy = pickle.loads(pickle.dumps(cache))
        try:
            assert copy is not cache and copy.directory == cache.directory
            assert copy.options == cache.options
            assert copy.get("k") == b"v"
            copy.put("k2", b"v2")
            assert cache.get("k2") == b"v2"
        finally:
            copy.close()


def _child_uses_inherited(cache: BlobCache, conn: Connection) -> None:
    cache.put("child", b"wrote")  # re-established its own state on first use
    conn.send((cache.get("parent"), cache.get("child"), len(cache)))


def test_a_forked_child_reads_and_writes_through_the_inherited_handle(tmp_path: Path) -> None:
    path = str(tmp_path / "store")
    with BlobCache(path) as cache:
        cache.put("parent", b"p")
        ours, theirs = FORK.Pipe()
        child = FORK.Process(target=_child_uses_inherited, args=(cache, theirs))
        child.start()
        assert ours.poll(60)
        assert ours.recv() == (b"p", b"wrote", 2)
        child.join()
        assert child.exitcode == 0
        assert cache.get("child") == b"wrote"  # a miss: caught up with the child
        cache.put("parent", b"p2")  # the parent's own state is untouched
    with BlobCache(path) as reopened:
        assert dict(reopened.items()) == {"parent": b"p2", "child": b"wrote"}


@pytest.mark.parametrize("durability", ["fsync", "os"])
def test_a_writer_killed_mid_put_blocks_no_one(tmp_path: Path, durability: str) -> None:
    """SIGKILL a process while it puts in a loop (it may hold the append flock):
    the others go on at once and lose nothing acknowledged."""
    path = str(tmp_path / "store")
    BlobCache(path).close()
    reader, writer = SPAWN.Pipe(duplex=False)
    child = SPAWN.Process(target=_writer, args=(path, "victim", 2000, writer, 1))
    child.start()
    acked: dict[str, int] = {}
    plan = _plan("victim", 1, 2000)
    for _ in range(40):
        assert reader.poll(60)
        key, n = reader.recv()
        acked[key] = n
    os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
    child.join()
    _drain(reader, acked)
    with BlobCache(path, durability=durability) as cache:  # type: ignore[arg-type]
        cache.put("after", b"kill")
        for key in set(plan):
            assert _get(cache, key) in _allowed(key, acked, plan), key


_ROLL_KILLER = """
import os, signal, sys
from blobcache import BlobCache, _shared

field = _shared.SharedState.__dict__[{field!r}]
real = _shared._Field.__set__


def set_or_die(self, state, value):
    # SIGKILL this process as the roll writes `field` (the roll writes 16, a
    # new segment's header end, to all of them but `segment`, which grows).
    rolling = os.path.exists(os.path.join({path!r}, "log", "0000000000000002.log"))
    if self is field and rolling and (value > 1 if {field!r} == "segment" else value == 16):
        os.kill(os.getpid(), signal.SIGKILL)
    real(self, state, value)


_shared._Field.__set__ = set_or_die
with BlobCache({path!r}, segment_bytes=4096, refresh_interval=3600) as cache:
    for i in range(1000):
        cache.put(f"c{{i}}", bytes(100))
        print("ack", i, flush=True)
"""


@pytest.mark.parametrize("field", ["appended", "acked", "allocated", "segment", "pending"])
def test_a_writer_killed_in_the_middle_of_a_roll_loses_nothing_and_blocks_no_one(
    tmp_path: Path, field: str
) -> None:
    """SIGKILL a process between the roll's writes of STATE (after its successor
    segment exists): another process with the store open finishes the roll on
    its next put, and every put the killed one acknowledged is there, for it and
    after a reopen."""
    import subprocess
    import sys

    path = str(tmp_path / "store")
    with BlobCache(path, segment_bytes=4096, refresh_interval=3600) as beside:
        beside.put("p0", b"before")
        code = _ROLL_KILLER.format(field=field, path=path)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        child = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
        )
        assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
        acked = [int(line.split()[1]) for line in child.stdout.splitlines()]
        assert len(acked) > 10  # it died in a roll, after some puts
        beside.put("p1", b"after")  # blocks no one; finishes the dead process's roll
        beside.refresh()
        assert [i for i in acked if beside.get(f"c{i}") != bytes(100)] == []
    with BlobCache(path, segment_bytes=4096) as reopened:
        assert [i for i in acked if reopened.get(f"c{i}") != bytes(100)] == []
        assert reopened.get("p0") == b"before" and reopened.get("p1") == b"after"
        assert reopened.problems == ()


def test_handles_opened_beside_a_busy_writer_cut_none_of_its_records(tmp_path: Path) -> None:
    """The append lock is an flock, which all threads of a handle share: its
    threads must take turns on it too, or one thread's unlock (a compaction
    counting itself, say) frees it in the middle of another's append, and a
    handle opening then cuts the live records as a torn tail."""
    import threading

    path = str(tmp_path / "store")
    busy = BlobCache(path, durability="os", segment_bytes=1 << 16, compact_ratio=0.01)
    stop = threading.Event()
    puts = [0]

    def put_in_a_loop() -> None:
        while not stop.is_set():
            busy.put(f"k{puts[0] % 50}", str(puts[0]).encode() * 20)
            puts[0] += 1

    writer = threading.Thread(target=put_in_a_loop)
    writer.start()
    try:
        for _ in range(150):
            with BlobCache(path, durability="os") as beside:
                assert beside.problems == (), beside.problems
    finally:
        stop.set()
        writer.join()
    busy.close()
    with BlobCache(path) as reopened:
        assert reopened.problems == ()
        assert len(reopened) == min(puts[0], 50)


def test_a_recovery_bound_read_before_a_roll_or_a_compaction_cuts_nothing(tmp_path: Path) -> None:
    """Beside live handles, an open reads the active segment only up to what
    STATE said was appended, read just before: if the log rolled or was
    compacted since, that segment is sealed (or another file), read whole."""
    from blobcache import _recovery
    from blobcache._shared import SharedState

    path = str(tmp_path / "store")
    with BlobCache(path, inline_limit=64, segment_bytes=4096) as writer:
        writer.put("k0", b"v")
        state = SharedState.peek(path)
        assert state is not None
        bound = state.bound()
        state.close()
        for i in range(1, 101):
            writer.put(f"k{i}", b"v" * 40)  # rolls several times
        found = _recovery.recover(path, readonly=True, bound=bound)
        assert len(found.values) == 101
        writer._compact(force=True)
        found = _recovery.recover(path, readonly=True, bound=bound)
        assert len(found.values) == 101


class _PopThenFollow(dict):  # type: ignore[type-arg]
    """A writer's ``own``: its next ``pop`` by the writer's ``claim`` lets the
    follower run a catch-up right after it (a thread switch at that point)."""

    follower: Any = None

    def pop(self, *args: Any) -> Any:
        found = super().pop(*args)
        follower, self.follower = self.follower, None
        if follower is not None:
            follower.catch_up()
        return found


def test_a_record_claimed_by_its_writer_is_applied_once_whenever_the_follower_runs(
    tmp_path: Path,
) -> None:
    """A put applies its own record itself (``claim``) when other processes'
    records come first in the log; a catch-up at any moment of that claim
    takes the record for this process's, never for another's (it applied it
    twice, booking its bytes stale, and left it in ``ahead`` for ever)."""
    path = str(tmp_path / "store")
    options: dict[str, Any] = {"refresh_interval": 3600}
    with BlobCache(path, **options) as a, BlobCache(path, **options) as b:
        a.put("a", b"first")
        b.put("b", b"other's")  # before a's next record: a's follower stands behind it
        writer = a._held.writer  # type: ignore[attr-defined]
        own = _PopThenFollow(writer.own)
        own.follower = a._follower  # type: ignore[attr-defined]
        writer.own = own
        a.put("k", b"mine")
        assert own.follower is None  # the claim ran, and the catch-up inside it
        a.refresh()
        assert writer.own == {} and writer.ahead == {}
        assert a["k"] == b"mine" and a["b"] == b"other's"
        followed = a.stats()
    with BlobCache(path, readonly=True) as fresh:
        reopened = fresh.stats()
    assert followed.live_bytes == reopened.live_bytes
    assert followed.log_record_bytes == reopened.log_record_bytes
    assert followed.log_stale_bytes == reopened.log_stale_bytes
