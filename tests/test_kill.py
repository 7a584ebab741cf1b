"""Kill tests: SIGKILL a multi-threaded writer process mid-run, reopen, and find every
acknowledged put and delete.

Crash model: process crash (SIGKILL). What the kernel holds survives, so both
``durability="fsync"`` and ``durability="os"`` owe every acknowledged operation
here. Power loss is a different model, tested by recording file-system calls
instead.

The writer child is this file run as a script (``python -m tests.test_kill``;
see ``writer_main``): it opens the store with a small ``inline_limit`` and
``segment_bytes`` and a low ``compact_ratio``, so values land on both sides of
the limit, segments roll over every few records and background compaction runs
while the kills land. Each of its threads owns a few keys and does a planned
sequence of puts and deletes on them (``blobcache._demo.plan`` with a size that
means "delete"), printing ``begin t i`` before and ``ack t i`` after operation
``i`` of thread ``t``. Lines are printed whole and flushed under one lock.

Each round starts the writer on the *same* store, so every round also recovers
from the kills of the rounds before it. The test reads a randomly chosen number
of lines, SIGKILLs the writer, reads what it printed before dying, and then
checks, key by key, what a reopened store serves:

* the result of the key's last acknowledged operation (or, if this round
  acknowledged none, what the previous round recovered, or nothing for a key
  never seen);
* or, only when the operation in flight at the kill (``begin`` without ``ack``)
  in the key's thread is on this key, its result: it may or may not have landed.

A kill damages nothing, so ``problems`` must be empty after every reopen; a torn
log tail (the kill landed mid-append) is expected and is cut off silently,
showing only in ``stats().torn_bytes_at_open``. The kill is timed only by the
writer's own lines: no sleeps. Everything a round does is drawn from its seed
(``Round.draw``) and printed before it runs, so a failure names the plan and the
kill point; the exact moment the signal lands is the one thing left to the
scheduler.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Final

import pytest

from blobcache import BlobCache, GcResult
from blobcache import _format as F
from blobcache._demo import PlannedPut, plan, value_for
from blobcache._options import Durability

ROOT: Final = Path(__file__).resolve().parents[1]

INLINE_LIMIT: Final = 512
SEGMENT_BYTES: Final = 4096  # the smallest allowed: a segment holds a few records
COMPACT_RATIO: Final = 0.25
DELETE: Final = -1  # a planned "size" that means: delete the key
# Values on both sides of the limit (the limit itself is not "shorter than" it:
# a file), so keys move between the log and files both ways; the most likely
# "size" is a small value, so the log fills and goes stale quickly.
SIZES: Final = [
    DELETE,
    0,
    100,
    100,
    300,
    INLINE_LIMIT - 1,
    INLINE_LIMIT,
    INLINE_LIMIT + 1,
    3000,
    64 << 10,
    1 << 20,
]
MAX_THREADS: Final = 4
# Each round draws how many threads and keys per thread its writer uses, up to
# these: rounds with more keys than any before create key directories (the first
# put of a key) in a store that earlier kills left behind.
MAX_KEYS: Final = 5
ALL_KEYS: Final = frozenset(
    f"w{t}-artifact-{k}" for t in range(MAX_THREADS) for k in range(MAX_KEYS)
)
OPS_PER_THREAD: Final = 12
# A writer that prints nothing for this long is stuck: kill it so the test fails
# instead of hanging. A safety net only; nothing waits for it to fire.
STUCK_SECONDS: Final = 120.0

_ABSENT: Final = object()


# --- The writer child ----------------------------------------------------------------


GC_EVERY: Final = 5  # thread 0 of each writer runs gc() after every 5th operation


@dataclass(frozen=True)
class Writer:
    """What one writer child does: ``threads`` threads, each doing ``ops`` planned
    operations on ``keys`` keys of its own, in a store opened with these options."""

    seed: int
    threads: int
    keys: int
    durability: Durability
    ops: int = OPS_PER_THREAD
    inline_limit: int = INLINE_LIMIT
    segment_bytes: int = SEGMENT_BYTES
    compact_ratio: float = COMPACT_RATIO

    def plan(self, thread: int) -> list[PlannedPut]:
        return list(plan(self.thread_seed(thread), self.ops, SIZES, self.keys))

    def thread_seed(self, thread: int) -> int:
        return self.seed * MAX_THREADS + thread

    def key(self, thread: int, op: PlannedPut) -> str:
        return f"w{thread}-{op.key}"

    def value(self, thread: int, op: PlannedPut) -> bytes | None:
        """What operation ``op`` of ``thread`` leaves under its key; None: deleted."""
        if op.size == DELETE:
            return None
        return value_for(self.thread_seed(thread), op.index, op.size)

    def open(self, store: str) -> BlobCache:
        return BlobCache(
            store,
            durability=self.durability,
            inline_limit=self.inline_limit,
            segment_bytes=self.segment_bytes,
            compact_ratio=self.compact_ratio,
        )

    def command(self, store: str) -> list[str]:
        return [sys.executable, "-m", "tests.test_kill", store, json.dumps(asdict(self))]


def writer_main(argv: list[str]) -> int:
    """Child entry: ``python -m tests.test_kill STORE WRITER_JSON``.

    Prints ``open``, then ``begin t i`` / ``ack t i`` around operation ``i`` of
    thread ``t``; exits 1 if any operation raised.
    """
    store, config = argv
    writer = Writer(**json.loads(config))
    printing = threading.Lock()
    failures: list[BaseException] = []

    def say(line: str) -> None:
        with printing:  # one whole line at a time, flushed before the lock goes
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def run(cache: BlobCache, thread: int, start: threading.Barrier) -> None:
        try:
            start.wait()
            for op in writer.plan(thread):
                key, value = writer.key(thread, op), writer.value(thread, op)
                say(f"begin {thread} {op.index}")
                if value is None:
                    cache.delete(key)
                else:
                    cache.put(key, value)
                say(f"ack {thread} {op.index}")
                if thread == 0 and op.index % GC_EVERY == GC_EVERY - 1:
                    # The janitor and a forced compaction run while the other
                    # threads put, so kills land in the middle of them too.
                    cache.gc()
        except BaseException as exc:
            failures.append(exc)
            raise

    with writer.open(store) as cache:
        say("open")
        start = threading.Barrier(writer.threads)
        threads = [
            threading.Thread(target=run, args=(cache, t, start)) for t in range(writer.threads)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return 1 if failures else 0


# --- The parent: rounds of kill, reopen, check ------------------------------------------


@dataclass(frozen=True)
class Round:
    """One round, all drawn from its seed: the writer and where to kill it."""

    writer: Writer
    kill_after: int  # SIGKILL right after reading this many lines past "open"
    collect: bool  # run gc on the reopened store, and check again

    @classmethod
    def draw(cls, seed: int, durability: Durability) -> Round:
        rng = random.Random(f"kill-round:{seed}")
        threads = rng.randint(1, MAX_THREADS)
        writer = Writer(seed, threads, keys=rng.randint(1, MAX_KEYS), durability=durability)
        # At least two lines remain after the chosen one, so the kill (almost
        # always) lands before the writer finishes; parse_transcript checks the
        # case it does not.
        return cls(writer, rng.randrange(2 * threads * writer.ops - 2), collect=rng.random() < 0.5)

    def __str__(self) -> str:
        w = self.writer
        return (
            f"seed {w.seed} ({w.durability}, {w.threads} threads x {w.keys} keys, kill after "
            f"{self.kill_after} lines{', then gc' if self.collect else ''})"
        )


@dataclass
class Transcript:
    """What the killed writer printed: per thread, the operations it acknowledged
    (in order) and the one in flight, if any."""

    acked: dict[int, list[int]]
    in_flight: dict[int, int]
    returncode: int


def run_writer(store: str, round_: Round) -> Transcript:
    """Start the writer, SIGKILL it after the chosen line, and read all it printed."""
    child = subprocess.Popen(
        round_.writer.command(store), stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    assert child.stdout is not None
    watchdog = threading.Timer(STUCK_SECONDS, child.kill)
    watchdog.start()
    try:
        lines: list[str] = []
        for line in child.stdout:
            lines.append(line.rstrip("\n"))
            if len(lines) == 1 + round_.kill_after:
                child.send_signal(signal.SIGKILL)
                break
        # Whatever the writer printed before the signal landed is true too: an
        # "ack" read now still means that operation returned.
        lines.extend(child.stdout.read().splitlines())
        returncode = child.wait()
    finally:
        watchdog.cancel()
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
    assert len(lines) > round_.kill_after, (
        f"the writer stopped after {len(lines)} lines (exit {returncode}): {lines[-3:]}"
    )
    return parse_transcript(lines, returncode, round_.writer)


def parse_transcript(lines: list[str], returncode: int, writer: Writer) -> Transcript:
    """Check the writer's protocol (open, then per thread begin i / ack i in order)
    and sum it up."""
    assert lines[0] == "open", lines[:3]
    acked: dict[int, list[int]] = {t: [] for t in range(writer.threads)}
    in_flight: dict[int, int] = {}
    for number, line in enumerate(lines[1:], start=2):
        parts = line.split()
        assert len(parts) == 3 and parts[0] in ("begin", "ack"), f"line {number}: {line!r}"
        word, t, i = parts[0], int(parts[1]), int(parts[2])
        assert t in acked, f"line {number}: {line!r} names a thread the writer does not have"
        done = len(acked[t])
        expected = f"ack {t} {done}" if t in in_flight else f"begin {t} {done}"
        assert line == expected, f"line {number} is {line!r}, expected {expected!r}"
        if word == "ack":
            acked[t].append(in_flight.pop(t))
        else:
            in_flight[t] = i
    if returncode == 0:  # the writer outran the signal: then it acknowledged everything
        assert not in_flight and all(len(a) == writer.ops for a in acked.values()), (
            f"the writer exited 0 with operations unacknowledged: {acked}, {in_flight}"
        )
    else:
        assert returncode == -signal.SIGKILL, f"the writer failed on its own: exit {returncode}"
    return Transcript(acked, in_flight, returncode)


def allowed_values(
    writer: Writer, transcript: Transcript, before: dict[str, bytes]
) -> dict[str, list[object]]:
    """For every key, what the reopened store may serve (``_ABSENT``: nothing)."""
    last: dict[str, bytes | None] = {}
    plans = {t: writer.plan(t) for t in range(writer.threads)}
    for thread, indices in transcript.acked.items():
        for index in indices:  # in order: the last one of a key wins
            op = plans[thread][index]
            last[writer.key(thread, op)] = writer.value(thread, op)
    allowed: dict[str, list[object]] = {}
    for key in ALL_KEYS:
        settled = last[key] if key in last else before.get(key)
        allowed[key] = [_ABSENT if settled is None else settled]
    for thread, index in transcript.in_flight.items():
        op = plans[thread][index]
        landed = writer.value(thread, op)
        allowed[writer.key(thread, op)].append(_ABSENT if landed is None else landed)
    return allowed


def temp_files(store: str) -> list[str]:
    return [
        os.path.join(root, name)
        for root, _dirs, names in os.walk(store)
        for name in names
        if name.startswith(F.TEMP_PREFIX)
    ]


def segments(store: str) -> dict[int, bool]:
    """Every log segment: its number, and whether its header says COMPACTED."""
    logdir = os.path.join(store, F.LOG_DIR)
    found: dict[int, bool] = {}
    if not os.path.isdir(logdir):
        return found
    for name in os.listdir(logdir):
        if name.endswith(F.SEGMENT_SUFFIX):
            with open(os.path.join(logdir, name), "rb") as f:
                head = f.read(F.SEGMENT_HEADER.size)
            flags = head[4] if len(head) > 4 else 0
            found[int(name[: F.FIELD_HEX_DIGITS], 16)] = bool(flags & F.SEGMENT_FLAG_COMPACTED)
    return found


def check_store(
    cache: BlobCache, writer: Writer, allowed: dict[str, list[object]], context: str
) -> None:
    """Every key serves one of its allowed values, in its layout; no other key exists."""
    assert set(cache) <= set(allowed), f"{context}: unknown keys {set(cache) - set(allowed)}"
    for key, options in sorted(allowed.items()):
        got = cache.get(key, _ABSENT)
        if got is _ABSENT:
            assert _ABSENT in options, f"{context}: acknowledged {key} is missing"
            continue
        assert isinstance(got, (bytes, memoryview))
        inline = len(got) < writer.inline_limit
        assert type(got) is (bytes if inline else memoryview), (
            f"{context}: {key} ({len(got)} bytes) came back as {type(got).__name__}"
        )
        assert (cache.path(key) is None) is inline, f"{context}: {key} is in the wrong layout"
        assert any(bytes(got) == option for option in options if option is not _ABSENT), (
            f"{context}: {key} holds {len(got)} bytes that no acknowledged or in-flight "
            f"operation wrote (allowed: {[len(o) if isinstance(o, bytes) else o for o in options]})"
        )


@dataclass
class Sweep:
    """What the rounds on one store saw, beyond pass or fail."""

    state: dict[str, bytes] = field(default_factory=dict)  # what the store holds
    last_segment: int = 0  # the highest segment number when the last round closed
    background_compactions: int = 0  # rounds whose writer compacted before the kill
    torn_bytes: int = 0  # torn log tails cut off at reopens


def run_round(store: str, round_: Round, sweep: Sweep) -> None:
    """One kill, reopen and check on ``store``; updates ``sweep``."""
    context = str(round_)
    print(context)  # shown by pytest when the test fails: replay with this seed
    transcript = run_writer(store, round_)
    allowed = allowed_values(round_.writer, transcript, sweep.state)
    # A COMPACTED segment above every number the previous round left was written
    # by the writer's background compaction (the parent's gc writes below).
    if any(c and n > sweep.last_segment for n, c in segments(store).items()):
        sweep.background_compactions += 1
    with round_.writer.open(store) as cache:
        # A process crash damages nothing: no file for a human to look at.
        assert cache.problems == (), f"{context}: {[str(p) for p in cache.problems]}"
        assert temp_files(store) == [], f"{context}: temp files survived the reopen"
        stats = cache.stats()
        assert stats.torn_bytes_at_open >= 0
        sweep.torn_bytes += stats.torn_bytes_at_open
        check_store(cache, round_.writer, allowed, context)
        if round_.collect:
            result = cache.gc()
            assert isinstance(result, GcResult)
            assert cache.stats().dirs_awaiting_gc == 0
            assert cache.gc() == GcResult(), f"{context}: a second gc found more garbage"
            assert temp_files(store) == [], f"{context}: gc left temp files"
            check_store(cache, round_.writer, allowed, f"{context}, after gc")
        sweep.state = {key: bytes(cache[key]) for key in allowed if key in cache}
    sweep.last_segment = max(segments(store), default=0)


def kill_rounds(
    store: str, first_seed: int, rounds: int, durabilities: list[Durability]
) -> Iterator[Sweep]:
    """Run ``rounds`` kill rounds on one store; yields the sweep after each."""
    sweep = Sweep()
    for number in range(rounds):
        durability = durabilities[number % len(durabilities)]
        run_round(store, Round.draw(first_seed + number, durability), sweep)
        yield sweep


def check_sweep(sweep: Sweep) -> None:
    # The harness itself: the rounds exercised what this file is about.
    assert sweep.state, "no round left a single key: the writer never acknowledged a put"
    assert sweep.background_compactions > 0, "no writer compacted the log before its kill"
    print(
        f"{sweep.background_compactions} rounds compacted in the background; "
        f"{sweep.torn_bytes} torn bytes cut off at reopens"
    )


# The default run keeps "alternating": both durability levels, each round's
# writer recovering from the kills of rounds at the other level. The runs of one
# level alone carry the slow marker, beside the longer sweeps below.
@pytest.mark.parametrize(
    ("first_seed", "rounds", "durabilities"),
    [
        pytest.param(1_000, 50, ["fsync"], id="fsync", marks=pytest.mark.slow),
        pytest.param(2_000, 50, ["os"], id="os", marks=pytest.mark.slow),
        pytest.param(3_000, 30, ["os", "fsync"], id="alternating"),
    ],
)
def test_every_acknowledged_put_survives_sigkill(
    tmp_path: Path, first_seed: int, rounds: int, durabilities: list[Durability]
) -> None:
    store = str(tmp_path / "store")
    sweeps = list(kill_rounds(store, first_seed, rounds, durabilities))
    assert len(sweeps) == rounds
    check_sweep(sweeps[-1])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("first_seed", "durabilities"),
    [
        pytest.param(10_000, ["fsync"], id="fsync"),
        pytest.param(20_000, ["os"], id="os"),
        pytest.param(30_000, ["os", "fsync"], id="alternating"),
    ],
)
def test_every_acknowledged_put_survives_many_sigkills(
    tmp_path: Path, first_seed: int, durabilities: list[Durability]
) -> None:
    store = str(tmp_path / "store")
    sweeps = list(kill_rounds(store, first_seed, 300, durabilities))
    check_sweep(sweeps[-1])


def test_transcript_check_catches_a_broken_writer() -> None:
    """The harness itself: a writer that exits 0 must have acknowledged every
    operation, threads keep their order, and one that dies of anything but our
    SIGKILL fails the round."""
    writer = Writer(seed=1, threads=2, keys=2, durability="fsync", ops=2)
    lines = ["open", "begin 0 0", "begin 1 0", "ack 1 0", "ack 0 0", "begin 0 1", "begin 1 1"]
    lines += ["ack 0 1", "ack 1 1"]
    done = parse_transcript(lines, 0, writer)
    assert done.acked == {0: [0, 1], 1: [0, 1]} and done.in_flight == {}
    with pytest.raises(AssertionError):
        parse_transcript(lines[:-1], 0, writer)  # exit 0 with an operation never acknowledged
    with pytest.raises(AssertionError):
        parse_transcript(lines[:5], 1, writer)  # the writer died of something else
    with pytest.raises(AssertionError):
        parse_transcript(["open", "begin 0 1"], -signal.SIGKILL, writer)  # skipped an operation
    with pytest.raises(AssertionError):
        parse_transcript(["open", "ack 0 0"], -signal.SIGKILL, writer)  # ack before begin
    killed = parse_transcript(lines[:6], -signal.SIGKILL, writer)
    assert killed.acked == {0: [0], 1: [0]} and killed.in_flight == {0: 1}


def test_allowed_values_follow_the_last_acknowledgement() -> None:
    """The harness itself: a key may hold its last acknowledged result, or its
    thread's in-flight one; an untouched key keeps what it held before."""
    writer = Writer(seed=5, threads=1, keys=1, durability="os", ops=3)
    ops = writer.plan(0)
    key = writer.key(0, ops[0])
    transcript = Transcript({0: [0, 1]}, {0: 2}, -signal.SIGKILL)
    allowed = allowed_values(writer, transcript, {"w3-artifact-0": b"kept"})
    as_result = [_ABSENT if (v := writer.value(0, op)) is None else v for op in ops]
    assert allowed[key] == [as_result[1], as_result[2]]
    assert allowed["w3-artifact-0"] == [b"kept"]
    assert allowed["w1-artifact-0"] == [_ABSENT]


if __name__ == "__main__":
    raise SystemExit(writer_main(sys.argv[1:]))
