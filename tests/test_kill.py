"""Kill tests: SIGKILL a writer process mid-run, reopen, and find every acknowledged put.

Crash model: process crash (SIGKILL). What the kernel holds survives, so both
``durability="fsync"`` and ``durability="os"`` owe every acknowledged put here.
Power loss is a different model, tested by recording file-system calls instead.

Each round starts ``python -m blobcache._demo`` on the *same* store, so every
round also recovers from the kills of the rounds before it. The writer prints
``begin i`` before and ``ack i`` after put ``i``; the test reads those lines up to
a randomly chosen one, SIGKILLs the writer, reads what it printed before dying,
and then checks, key by key, what a reopened store serves:

* the value of the key's last acknowledged put (or, if this round acknowledged
  none, what the previous round recovered, or nothing for a key never seen);
* or, only when the put in flight at the kill (``begin`` without ``ack``) is of
  this key, that put's value: it may or may not have been published.

The kill is timed only by the writer's own lines: no sleeps. Everything a round
does is drawn from its seed (``Round.draw``), printed before it runs, so a
failure names the plan and the kill point; the exact moment the signal lands is
the one thing left to the scheduler.
"""

from __future__ import annotations

import os
import random
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest

from blobcache import BlobCache, GcResult
from blobcache._demo import PlannedPut, plan, start_writer, value_for
from blobcache._format import TEMP_PREFIX
from blobcache._options import Durability

SIZES: Final = [0, 100, 64 << 10, 1 << 20, 3 << 20]
# Each round draws how many keys its writer uses, up to this: rounds with more keys
# than any before create key directories (the first put of a key) in a store
# that earlier kills left behind.
MAX_KEYS: Final = 10
ALL_KEYS: Final = frozenset(f"artifact-{k}" for k in range(MAX_KEYS))
PUTS_PER_ROUND: Final = 24
# A writer that prints nothing for this long is stuck: kill it so the test fails
# instead of hanging. A safety net only; nothing waits for it to fire.
STUCK_SECONDS: Final = 120.0

_ABSENT: Final = object()


@dataclass(frozen=True)
class Round:
    """One round, all drawn from its seed: the writer's plan and where to kill it."""

    seed: int
    durability: Durability
    keys: int  # the writer puts to artifact-0 .. artifact-{keys - 1}
    kill_event: str  # kill right after the line "begin <kill_index>" or "ack <kill_index>"
    kill_index: int
    collect: bool  # run gc on the reopened store, and check again

    @classmethod
    def draw(cls, seed: int, durability: Durability) -> Round:
        rng = random.Random(f"kill-round:{seed}")
        # At least two puts remain after the chosen line, so the kill (almost always)
        # lands before the writer finishes; parse_transcript checks the case it does not.
        return cls(
            seed,
            durability,
            keys=rng.randint(2, MAX_KEYS),
            kill_event=rng.choice(["begin", "ack"]),
            kill_index=rng.randrange(PUTS_PER_ROUND - 2),
            collect=rng.random() < 0.4,
        )

    def plan(self) -> list[PlannedPut]:
        return list(plan(self.seed, PUTS_PER_ROUND, SIZES, self.keys))

    def __str__(self) -> str:
        return (
            f"seed {self.seed} ({self.durability}, {self.keys} keys, kill after "
            f"{self.kill_event} {self.kill_index}{', then gc' if self.collect else ''})"
        )


@dataclass
class Transcript:
    """What the killed writer printed: which puts it acknowledged, which was in flight."""

    acked: list[int]
    in_flight: int | None
    returncode: int


def run_writer(store: str, round_: Round) -> Transcript:
    """Start the writer, SIGKILL it right after the chosen line, and read all it printed."""
    child = start_writer(store, round_.seed, PUTS_PER_ROUND, round_.keys, SIZES, round_.durability)
    assert child.stdout is not None
    watchdog = threading.Timer(STUCK_SECONDS, child.kill)
    watchdog.start()
    try:
        target = f"{round_.kill_event} {round_.kill_index}"
        lines: list[str] = []
        for line in child.stdout:
            lines.append(line.rstrip("\n"))
            if lines[-1] == target:
                child.send_signal(signal.SIGKILL)
                break
        # Whatever the writer printed before the signal landed is true too: an
        # "ack" read now still means that put returned.
        lines.extend(child.stdout.read().splitlines())
        returncode = child.wait()
    finally:
        watchdog.cancel()
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
    assert target in lines, f"the writer never printed {target!r} (exit {returncode}): {lines}"
    return parse_transcript(lines, returncode)


def parse_transcript(lines: list[str], returncode: int) -> Transcript:
    """Check the writer's protocol (open, then begin i / ack i in order) and sum it up."""
    assert lines[0] == "open", lines[:3]
    acked: list[int] = []
    in_flight: int | None = None
    for position, line in enumerate(lines[1:]):
        index = position // 2
        expected = f"begin {index}" if position % 2 == 0 else f"ack {index}"
        assert line == expected, f"line {position + 1} is {line!r}, expected {expected!r}"
        if line.startswith("ack"):
            acked.append(index)
            in_flight = None
        else:
            in_flight = index
    if returncode == 0:  # the writer outran the signal: then it acknowledged everything
        assert acked == list(range(PUTS_PER_ROUND)) and in_flight is None
    else:
        assert returncode == -signal.SIGKILL, f"the writer failed on its own: exit {returncode}"
    return Transcript(acked, in_flight, returncode)


def allowed_values(
    seed: int, puts: list[PlannedPut], transcript: Transcript, before: dict[str, bytes]
) -> dict[str, list[object]]:
    """For every key, what the reopened store may serve (``_ABSENT``: nothing)."""
    allowed: dict[str, list[object]] = {}
    last_ack: dict[str, int] = {}
    for index in transcript.acked:
        last_ack[puts[index].key] = index
    for key in ALL_KEYS:
        if key in last_ack:
            index = last_ack[key]
            allowed[key] = [value_for(seed, index, puts[index].size)]
        else:
            allowed[key] = [before.get(key, _ABSENT)]
    if transcript.in_flight is not None:
        put = puts[transcript.in_flight]
        allowed[put.key].append(value_for(seed, put.index, put.size))
    return allowed


def temp_files(store: str) -> list[str]:
    return [
        os.path.join(root, name)
        for root, _dirs, names in os.walk(store)
        for name in names
        if name.startswith(TEMP_PREFIX)
    ]


def check_store(cache: BlobCache, allowed: dict[str, list[object]], context: str) -> None:
    """Every key serves one of its allowed values; no other key exists."""
    assert set(cache) <= set(allowed), f"{context}: unknown keys {set(cache) - set(allowed)}"
    for key, options in sorted(allowed.items()):
        view = cache.get(key, _ABSENT)
        if view is _ABSENT:
            assert _ABSENT in options, f"{context}: acknowledged {key} is missing"
            continue
        assert isinstance(view, memoryview)
        assert any(view == option for option in options if option is not _ABSENT), (
            f"{context}: {key} holds {len(view)} bytes that no acknowledged or in-flight put "
            f"wrote (allowed lengths: {[len(o) for o in options if isinstance(o, bytes)]})"
        )


def run_round(store: str, round_: Round, before: dict[str, bytes]) -> dict[str, bytes]:
    """One kill, reopen and check on ``store``; returns what the store now holds.

    ``before`` is what the store held after the previous round.
    """
    context = str(round_)
    print(context)  # shown by pytest when the test fails: replay with this seed
    transcript = run_writer(store, round_)
    allowed = allowed_values(round_.seed, round_.plan(), transcript, before)
    with BlobCache(store, durability=round_.durability) as cache:
        # A process crash damages nothing: no file for a human to look at.
        assert cache.problems == (), f"{context}: {[str(p) for p in cache.problems]}"
        assert temp_files(store) == [], f"{context}: temp files survived the reopen"
        check_store(cache, allowed, context)
        if round_.collect:
            result = cache.gc()
            assert isinstance(result, GcResult)
            assert cache.stats().dirs_awaiting_gc == 0
            assert cache.gc() == GcResult(), f"{context}: a second gc found more garbage"
            check_store(cache, allowed, f"{context}, after gc")
        return {key: bytes(cache[key]) for key in allowed if key in cache}


def kill_rounds(
    store: str, first_seed: int, rounds: int, durabilities: list[Durability]
) -> Iterator[dict[str, bytes]]:
    """Run ``rounds`` kill rounds on one store; yields the recovered state after each."""
    state: dict[str, bytes] = {}
    for number in range(rounds):
        durability = durabilities[number % len(durabilities)]
        state = run_round(store, Round.draw(first_seed + number, durability), state)
        yield state


@pytest.mark.parametrize(
    ("first_seed", "rounds", "durabilities"),
    [
        pytest.param(1_000, 50, ["fsync"], id="fsync"),
        pytest.param(2_000, 30, ["os"], id="os"),
        pytest.param(3_000, 20, ["os", "fsync"], id="alternating"),
    ],
)
def test_every_acknowledged_put_survives_sigkill(
    tmp_path: Path, first_seed: int, rounds: int, durabilities: list[Durability]
) -> None:
    store = str(tmp_path / "store")
    states = list(kill_rounds(store, first_seed, rounds, durabilities))
    assert len(states) == rounds
    assert states[-1], "no round left a single key: the writer never acknowledged a put"


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
    states = list(kill_rounds(store, first_seed, 300, durabilities))
    assert states[-1], "no round left a single key: the writer never acknowledged a put"


def test_transcript_check_catches_a_broken_writer() -> None:
    """The harness itself: a writer that exits 0 must have acknowledged every put, and
    one that dies of anything but our SIGKILL fails the round."""
    lines = ["open"] + [f"{e} {i}" for i in range(PUTS_PER_ROUND) for e in ("begin", "ack")]
    assert parse_transcript(lines, 0).acked == list(range(PUTS_PER_ROUND))
    with pytest.raises(AssertionError):
        parse_transcript(lines[:-1], 0)  # exit 0 with a put never acknowledged
    with pytest.raises(AssertionError):
        parse_transcript(lines[:5], 1)  # the writer died of something else
    assert parse_transcript(lines[:4], -signal.SIGKILL).in_flight == 1
