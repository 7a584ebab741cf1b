#!/usr/bin/env python3
"""Benchmark blobcache against what plain Python does on the same machine, in one run.

(Its peers, diskcache and LMDB, are in ``tools/bench.py``.)

Each figure is set beside the baseline it has to be judged against, measured in
the same run (the goals are issue #3's):

* ``get`` of a present key in steady state, in ns per call, against a plain
  class whose ``get`` wraps a dict lookup over the same keys and values: ``get``
  is served from memory, so that method is its floor. Twice: values in files of
  their own (``inline_limit=0``; ``get`` returns a ``memoryview``, timed after the
  key's first ``get`` has mapped and verified its file), goal at most 3x; and
  small values in the log (``get`` returns ``bytes``), goal at most 2.5x. Both
  sides are net of the loop that drives them (an empty sweep over the keys,
  timed in the same repetition and subtracted).
* a durable put (``durability="fsync"``: it survives power loss) of 100 B from
  one thread, in us per put, against plain Python appending the same number of
  bytes to a file (``O_APPEND`` write + fdatasync). Goal: at most 1.2x. Beside
  it, for information, the floor of a pwrite into an already-written region +
  fdatasync: what preallocating the log could bring.
* 8 threads putting 100 B durably to distinct keys, in puts/s, against one
  thread doing the same in the same run (group commit shares one write and one
  fdatasync among concurrent puts). Goal: at least 8x.
* puts of 100 B with ``durability="os"`` (survives a process crash), in puts/s,
  against an ``O_APPEND`` write of the same number of bytes. Goal: at least
  100,000 puts/s, an absolute figure.
* a durable put of a large value to a fresh key, in MB/s (10^6 bytes per
  second), against the same bytes published by plain Python in the least work
  that survives power loss: temp file in the target directory, write, fsync,
  rename, fsync(directory). Goal: at least 0.85x of that floor.
* opening a store of many large keys, in ms, against listing the same directory
  tree with ``os.scandir`` and stat-ing every file in it (the least a recovery
  that scans the tree can do). No goal is set yet.
* opening a store of 100,000 and 1,000,000 keys of 100 B, in ms, against reading
  the bytes of its log files (open + read), the least a replay does. Goal: at
  most 1.5 us per key (150 ms and 1.5 s), absolute; ``--quick`` skips the 1M store.
* disk usage after writing N keys of 100 B, overwriting every key 10 times and
  calling ``gc()``: bytes of the store's files (their sizes, and the blocks they
  hold) against the live bytes (keys + values). Goal: at most 1.2x. Beside it
  the same against ``stats().log_record_bytes``, which splits framing from garbage.
* ``put_file`` of a 1 GiB file against ``cp`` of it followed by an fsync of the
  copy and its directory, goal at least 0.85x; and ``AsyncBlobCache.put`` of
  256 MiB against ``BlobCache.put``, goal at least 0.9x (issue #6).
* the maintenance command (issue #5) on a store of 10,000 keys (a tenth of them
  64 KiB in files) that saw overwrites and deletes: ``blobcache stats`` and
  ``blobcache verify`` wall time as subprocesses, goals at most 5 s and 10 s
  (absolute; beside them, starting Python and importing blobcache), and the
  file bytes left by ``blobcache gc`` against the live bytes plus a 64 KiB fixed
  overhead, goal at most 1.1x.
* the ``inline_limit`` crossover: durable put and get latency, one thread, of
  values from 1 KiB to 1 MiB in the log against in a file of their own (a fresh
  key, and an existing one), as a table of its own, with the size from which the
  file's put is within 1.25x of the log's: the figure the default is chosen by.

Every figure is a median over repetitions, shown with its [min..max]. The sides
of a ratio are run back to back in every repetition, in an order that changes at
each (see ``benchkit.interleave``), so drift and noise of the machine hit both;
the ratio is the median of the per-repetition ratios. This script never asserts a timing:
``tests/test_bench_smoke.py`` only checks that the tables come out.

Usage: ``python tools/bench_floor.py [--dir DIR] [--quick] [sizes...]``; the Markdown
report goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/, when imported by path
from benchkit import (
    KIB,
    MB,
    MIB,
    DictWrapper,
    Sample,
    append_fd,
    cp_and_fsync,
    default_parent,
    disk_usage,
    floor_publish,
    fmt,
    int_list,
    interleave,
    key_names,
    load_average,
    machine_facts,
    mb_per_s,
    median_ratio,
    net_get_ns,
    per_call_sampler,
    per_s,
    positive_int,
    progress,
    put_all,
    read_files,
    scandir_and_stat,
    size_name,
    spread,
    sweep_timer,
    sweeps_for,
    threaded_rate,
    time_ns,
    warm_up,
)

import blobcache  # after benchkit, which puts this tree first on sys.path

FULL_REPS = 15  # the put figures on a virtio disk vary by up to 2x between repetitions
QUICK_REPS = 3
SMALL = 100  # bytes of a small value: every small-value row uses this size
GET_SAMPLE_NS = 100_000_000  # each get sample sweeps the keys for at least 0.1 s
THREADS = 8  # issue #3: 8 threads should get 8x one thread's durable puts
OVERWRITES = 10  # disk row: each key is overwritten this many times after its first put
OPEN_NS_PER_KEY = 1_500  # issue #3: open 100k small keys in 150 ms, 1M in 1.5 s
QUICK_MAX_OPEN_KEYS = 100_000  # --quick leaves out the bigger small-key stores
# --quick's store for the get row in files: making 10,000 files and their
# directories takes 5-25 s here (ext4 creates slow down as unsynced ones pile up).
QUICK_FILE_KEYS = 1_000
CROSSOVER_RATIO = 1.25  # the file layout's put "within 1.25x of the log's"


@dataclass(frozen=True)
class Config:
    """What one run measures; the defaults are the benchmark, smaller sizes a smoke run."""

    parent: str  # the run makes (and removes) its own temp directory in here
    reps: int
    get_keys: int  # keys of the get row in the log
    file_keys: int  # keys of the get row in files (each put makes a file and directories)
    small_puts: int  # durable small puts per sample (and per thread in the threads row)
    os_puts: int  # durability="os" puts per sample
    put_sizes_mib: tuple[int, ...]
    open_keys: int
    open_value_kib: int
    small_open_keys: tuple[int, ...]
    disk_keys: int
    maint_keys: int
    put_file_mib: int
    crossover_kib: tuple[int, ...]
    crossover_puts: int  # puts per layout, size and repetition


@dataclass(frozen=True)
class Goal:
    """A bound on the ratio blobcache / baseline (``unit`` "x"), or on blobcache's
    own median in ``unit`` (an absolute goal)."""

    op: Literal["<=", ">="]
    bound: float
    unit: str = "x"

    def met(self, row: Row) -> bool:
        value = row.ratio() if self.unit == "x" else statistics.median(row.ours)
        return value <= self.bound if self.op == "<=" else value >= self.bound

    def __str__(self) -> str:
        if self.unit == "x":
            return f"{self.op} {self.bound:g}x"
        return f"{self.op} {fmt(self.bound)} {self.unit} (absolute)"


@dataclass(frozen=True)
class Row:
    """One line of the table: both sides' samples, paired by repetition."""

    label: str
    unit: str
    ours: list[float]
    base: list[float]
    goal: Goal | None
    note: str  # what the baseline is, and anything a reader needs to weigh the figure

    def ratio(self) -> float:
        return median_ratio(self.ours, self.base)


def bench_get(cfg: Config, root: str, *, in_files: bool) -> Row:
    """``get`` against a dict wrapper; ``in_files``: every value in a file of its own."""
    count = cfg.file_keys if in_files else cfg.get_keys
    keys = key_names(count)
    value = os.urandom(SMALL)
    layout = "files" if in_files else "the log"
    progress(f"get ({layout}): {len(keys):,} puts (durability='os', then sync)")
    store = os.path.join(root, "get-files" if in_files else "get-log")
    cache = (
        blobcache.BlobCache(store, durability="os", inline_limit=0)
        if in_files
        else blobcache.BlobCache(store, durability="os")  # the default inline_limit
    )
    with cache:
        for key in keys:
            cache.put(key, value)
        cache.sync()
        # The first get of a file's key maps it and checks its checksum; what is
        # measured is every get after that, so this sweep is left out.
        served: dict[str, object] = {key: cache.get(key) for key in keys}
        kind = type(served[keys[0]]).__name__
        # Looked up by equal but distinct str objects, as a caller's keys are: a
        # lookup by the very object stored skips the string compare (~7 ns here),
        # and the cache holds its own copies of the keys while the dict holds ``keys``.
        lookups = key_names(count)
        timers = [
            sweep_timer("for k in keys: get(k)", cache.get, lookups),
            sweep_timer("for k in keys: get(k)", DictWrapper(served).get, lookups),
            sweep_timer("for k in keys: pass", cache.get, lookups),  # same setup, no call
        ]
        sweeps = sweeps_for(timers[0], GET_SAMPLE_NS)
        progress(f"get ({layout}): {cfg.reps} repetitions of {sweeps} sweeps each")
        samplers = [per_call_sampler(t, sweeps, len(keys)) for t in timers]
        ours, base, loop = interleave(cfg.reps, samplers)
    where = "in files (inline_limit=0)" if in_files else "in the log"
    return Row(
        label=f"get, present key ({len(keys):,} keys of {SMALL} B {where}, {kind})",
        unit="ns/call",
        ours=[o - e for o, e in zip(ours, loop, strict=True)],
        base=[b - e for b, e in zip(base, loop, strict=True)],
        goal=Goal("<=", 3 if in_files else 2.5),
        note=(
            "baseline: `def get(self, k): return self._d.get(k)` over a dict of the same "
            "keys and values; both looked up with equal but distinct str objects, and "
            "net of the driving loop "
            f"(`for k in keys`, median {statistics.median(loop):.1f} ns per key, subtracted "
            "per repetition). Store built with durability='os' then `sync()`; "
            + (
                "timed after every key's first get (which maps and verifies its file)."
                if in_files
                else "values below inline_limit live in the log and in memory as bytes."
            )
        ),
    )


# --- small puts ----------------------------------------------------------------------


def record_bytes(cache: blobcache.BlobCache, key: str, value: bytes) -> int:
    """Bytes the log takes for one put of ``value`` under ``key`` (a key of that length),
    from ``stats()``: the baselines write as many bytes as blobcache does."""
    before = cache.stats().log_record_bytes
    cache.put(key, value)
    return cache.stats().log_record_bytes - before


def bench_small_put(cfg: Config, root: str) -> list[Row]:
    """Durable 100 B puts, one thread, against appending and overwriting + fdatasync."""
    value = os.urandom(SMALL)
    n = cfg.small_puts
    with blobcache.BlobCache(os.path.join(root, "small-put"), durability="fsync") as cache:
        probe = key_names(1, "p0000")[0]  # as long as the keys timed below
        size = record_bytes(cache, probe, value)
        record = os.urandom(size)
        # The baseline files are the raw floor, so this calls os directly;
        # blobcache keeps every such call in blobcache/_fsio.py.
        append = append_fd(os.path.join(root, "append.floor"))
        written = os.open(os.path.join(root, "pwrite.floor"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            # The region the pwrite floor overwrites: written and synced once, so its
            # blocks are allocated and its size is durable before any sample.
            os.pwrite(written, record * n, 0)
            os.fsync(written)

            def ours(rep: int) -> float:
                keys = key_names(n, f"p{rep + 1:04d}")
                return time_ns(lambda: put_all(cache, keys, value)) / n / 1e3

            def appending() -> None:
                for _ in range(n):
                    os.write(append, record)
                    os.fdatasync(append)

            def overwriting() -> None:
                for i in range(n):
                    os.pwrite(written, record, i * size)
                    os.fdatasync(written)

            samplers: list[Sample] = [
                ours,
                lambda _rep: time_ns(appending) / n / 1e3,
                lambda _rep: time_ns(overwriting) / n / 1e3,
            ]
            progress(f"small put: {cfg.reps} repetitions of {n} puts, durability='fsync'")
            warm_up(*samplers)
            puts, appends, pwrites = interleave(cfg.reps, samplers)
        finally:
            os.close(append)
            os.close(written)
    common = (
        f"one thread, fresh keys of {len(probe)} chars; the baseline writes {size} B per "
        "record, what blobcache's log takes for one such put (`stats().log_record_bytes`), "
    )
    return [
        Row(
            label=f"put {SMALL} B, durability='fsync', one thread",
            unit="us/put",
            ours=puts,
            base=appends,
            goal=Goal("<=", 1.2),
            note=(
                "baseline: plain Python `os.write` to an O_APPEND file + `os.fdatasync`, per "
                f"record; {common}so the file grows with each, as the log does. Mean of "
                f"{n} puts per sample; one untimed warm-up round."
            ),
        ),
        Row(
            label=f"put {SMALL} B, durability='fsync', vs a write into allocated blocks",
            unit="us/put",
            ours=puts,
            base=pwrites,
            goal=None,
            note=(
                "informational floor: `os.pwrite` into a region of a file already written "
                f"and fsynced + `os.fdatasync`, per record; {common}and the file neither grows "
                "nor allocates blocks: the least a log that writes into room made ahead of "
                "time (preallocated) can cost. Same puts as the row above."
            ),
        ),
    ]


def bench_threads(cfg: Config, root: str) -> Row:
    value = os.urandom(SMALL)
    n = cfg.small_puts

    def sampler(threads: int) -> Sample:
        def sample(rep: int) -> float:
            keys = [key_names(n, f"t{threads}-{rep + 1:04d}-{t}") for t in range(threads)]
            return threaded_rate(lambda mine: put_all(cache, mine, value), keys)

        return sample

    with blobcache.BlobCache(os.path.join(root, "threads"), durability="fsync") as cache:
        samplers = [sampler(THREADS), sampler(1)]
        progress(f"threads: {cfg.reps} repetitions of {THREADS} x {n} and 1 x {n} puts")
        warm_up(*samplers)
        many, one = interleave(cfg.reps, samplers)
    return Row(
        label=f"put {SMALL} B, durability='fsync', {THREADS} threads",
        unit="puts/s",
        ours=many,
        base=one,
        goal=Goal(">=", THREADS),
        note=(
            f"baseline: blobcache itself, one thread, in the same run. {THREADS} threads "
            f"(vs 1) each put {n} fresh keys of their own; the clock runs from a barrier "
            "that releases them together to the last join. The goal asks group commit to "
            "turn concurrency into throughput one for one."
        ),
    )


def bench_os_put(cfg: Config, root: str) -> Row:
    value = os.urandom(SMALL)
    n = cfg.os_puts
    with blobcache.BlobCache(os.path.join(root, "os-put"), durability="os") as cache:
        size = record_bytes(cache, key_names(1, "o0000")[0], value)
        record = os.urandom(size)
        append = append_fd(os.path.join(root, "append-os.floor"))
        try:

            def ours(rep: int) -> float:
                keys = key_names(n, f"o{rep + 1:04d}")  # made before the clock starts
                return per_s(n, time_ns(lambda: put_all(cache, keys, value)))

            def appending() -> None:
                for _ in range(n):
                    os.write(append, record)

            samplers: list[Sample] = [ours, lambda _rep: per_s(n, time_ns(appending))]
            progress(f"os put: {cfg.reps} repetitions of {n:,} puts")
            warm_up(*samplers)
            puts, appends = interleave(cfg.reps, samplers)
        finally:
            os.close(append)
    return Row(
        label=f"put {SMALL} B, durability='os', one thread",
        unit="puts/s",
        ours=puts,
        base=appends,
        goal=Goal(">=", 100_000, "puts/s"),
        note=(
            "the goal is absolute: blobcache's median in puts/s, whatever the baseline. "
            f"baseline: `os.write` of {size} B (blobcache's record for such a put) to an "
            "O_APPEND file, no sync: what survives a process crash, as these puts do. "
            f"{n:,} fresh keys per sample; the background sync thread (every second) runs "
            "meanwhile, as it would for a user."
        ),
    )


# --- large puts ----------------------------------------------------------------------


def put_row(cache: blobcache.BlobCache, floor_dir: str, mib: int, reps: int) -> Row:
    # Random bytes, so the buffer is really in memory (a bytes(n) of zeros may
    # be untouched pages); a repeated 1 MiB block keeps building it fast.
    data = os.urandom(MIB) * mib

    def ours(rep: int) -> float:
        key = f"put-{mib}-{rep}"
        ns = time_ns(lambda: cache.put(key, data))
        cache.delete(key)
        cache.gc()  # removes the version, tombstone and directories: the disk stays empty
        return mb_per_s(len(data), ns)

    def floor(rep: int) -> float:
        name = f"put-{mib}-{rep}"
        ns = time_ns(lambda: floor_publish(floor_dir, name, data))
        os.unlink(os.path.join(floor_dir, name))
        return mb_per_s(len(data), ns)

    # Warm-up, not timed: the first write of this many bytes into the page cache
    # pays the VM's first touch of fresh memory (about 8 us per 4 KiB page on the
    # reference machine), which here made a first put read ~400 MB/s instead of ~1.8 GB/s.
    warm_up(ours, floor)
    puts, floors = interleave(reps, [ours, floor])
    return Row(
        label=f"put {mib} MiB, durability='fsync', fresh key",
        unit="MB/s",
        ours=puts,
        base=floors,
        goal=Goal(">=", 0.85),
        note=(
            "floor: the same bytes via temp file + write + fsync + rename + fsync(dir) into "
            "an existing directory (survives power loss, like the put). A fresh key also "
            "makes blobcache create the key's directories and key file durably, and "
            "hash the value; one untimed warm-up of each side first."
        ),
    )


def bench_put(cfg: Config, root: str) -> list[Row]:
    floor_dir = os.path.join(root, "floor")
    os.mkdir(floor_dir)
    with blobcache.BlobCache(os.path.join(root, "put"), durability="fsync") as cache:
        rows = []
        for mib in cfg.put_sizes_mib:
            progress(f"put: {mib} MiB, {cfg.reps} repetitions")
            rows.append(put_row(cache, floor_dir, mib, cfg.reps))
    return rows


# --- open ----------------------------------------------------------------------------


def open_ms(store: str) -> float:
    """ms to open ``store`` (default options); the close after it is not timed."""
    start = time.perf_counter_ns()
    cache = blobcache.BlobCache(store)
    ns = time.perf_counter_ns() - start
    cache.close()
    return ns / 1e6


def bench_open(cfg: Config, root: str) -> Row:
    store = os.path.join(root, "open")
    value = os.urandom(cfg.open_value_kib * KIB)
    progress(f"open: {cfg.open_keys:,} puts of {cfg.open_value_kib} KiB (durability='os')")
    with blobcache.BlobCache(store, durability="os") as cache:
        for i in range(cfg.open_keys):
            cache.put(f"open-{i:06d}", value)
    # close() synced it; what remains in the page cache is as warm for both sides.

    def floor(_rep: int) -> float:
        return time_ns(lambda: scandir_and_stat(store)) / 1e6

    progress(f"open: {cfg.reps} repetitions")
    warm_up(lambda _rep: open_ms(store), floor)
    opens, walks = interleave(cfg.reps, [lambda _rep: open_ms(store), floor])
    return Row(
        label=f"open, {cfg.open_keys:,} keys of {cfg.open_value_kib:,} KiB",
        unit="ms",
        ours=opens,
        base=walks,
        goal=None,
        note=(
            "floor: `os.scandir` of every directory of the same store and a stat of every "
            "file, the least a recovery that scans the tree does. Warm page and dentry "
            "caches (the store was just written); the handle is closed between opens, "
            "untimed."
        ),
    )


def bench_open_small(cfg: Config, root: str, keys: int) -> Row:
    store = os.path.join(root, f"open-small-{keys}")
    value = os.urandom(SMALL)
    progress(f"open small: {keys:,} puts of {SMALL} B (durability='os', then close)")
    with blobcache.BlobCache(store, durability="os") as cache:
        put_all(cache, key_names(keys, "s"), value)
    # The log's directory is the store's layout, not a public name: found by looking.
    logs = [d for d, _, names in os.walk(store) if any(n.endswith(".log") for n in names)]
    log_bytes = sum(read_files(d) for d in logs)
    log_files = sum(len(os.listdir(d)) for d in logs)

    def floor(_rep: int) -> float:
        return time_ns(lambda: [read_files(d) for d in logs]) / 1e6

    progress(f"open small: {keys:,} keys, {cfg.reps} repetitions")
    warm_up(lambda _rep: open_ms(store), floor)
    opens, reads = interleave(cfg.reps, [lambda _rep: open_ms(store), floor])
    shutil.rmtree(store)  # a 1M-key store takes ~135 MB: not kept for the rest of the run
    goal_ms = keys * OPEN_NS_PER_KEY / 1e6
    return Row(
        label=f"open, {keys:,} keys of {SMALL} B (in the log)",
        unit="ms",
        ours=opens,
        base=reads,
        goal=Goal("<=", goal_ms, "ms"),
        note=(
            f"the goal is absolute, {OPEN_NS_PER_KEY / 1e3:g} us per key (150 ms for 100,000 "
            "keys, 1.5 s for 1,000,000). floor: open + read of every log segment file "
            f"({log_bytes / MB:.1f} MB in {log_files} files at the first open; the floor "
            "reads what is there at each repetition). "
            "Store built with durability='os' then closed (which syncs); warm page cache; "
            "the handle is closed between opens, untimed."
            if logs
            else "(the store has no log files: the floor read nothing)"
        ),
    )


def bench_disk(cfg: Config, root: str) -> list[Row]:
    store = os.path.join(root, "disk")
    keys = key_names(cfg.disk_keys, "d")
    progress(f"disk: {len(keys):,} keys x {1 + OVERWRITES} puts of {SMALL} B, then gc()")
    with blobcache.BlobCache(store, durability="os") as cache:
        for _ in range(1 + OVERWRITES):
            put_all(cache, keys, os.urandom(SMALL))
        cache.gc()
        stats = cache.stats()
        usage = disk_usage(store)
    live = sum(len(k.encode()) + SMALL for k in keys)
    records = stats.log_record_bytes
    what = (
        f"after {len(keys):,} keys of {len(keys[0])} chars were put with {SMALL} B values "
        f"and each overwritten {OVERWRITES} times (durability='os'), then `gc()`; measured "
        f"with the store open: {usage.files} files, {stats.segments} log segments. One run "
        "(the figures do not vary between runs), so n = 1."
    )
    return [
        Row(
            label="disk after overwrites + gc(): sum of file sizes vs live bytes",
            unit="bytes",
            ours=[usage.apparent],
            base=[live],
            goal=Goal("<=", 1.2),
            note=(
                f"live bytes: the sum of the live keys' and values' lengths ({live:,}); "
                f"{what} Of the ratio, {records / live:.2f}x is the log's own framing "
                f"(`stats().log_record_bytes` = {records:,} over the live bytes)."
            ),
        ),
        Row(
            label="disk after overwrites + gc(): blocks held (st_blocks x 512) vs live bytes",
            unit="bytes",
            ours=[usage.allocated],
            base=[live],
            goal=Goal("<=", 1.2),
            note=(
                "as the row above, counting the blocks every file and directory of the store "
                "holds, as `du` does (partly filled blocks, directories, empty files' inodes "
                "excepted)."
            ),
        ),
        Row(
            label="disk after overwrites + gc(): sum of file sizes vs stats().log_record_bytes",
            unit="bytes",
            ours=[usage.apparent],
            base=[records],
            goal=None,
            note=(
                "informational: what the files hold beyond the log's record bytes (segment "
                "headers, marker and lock files, and any garbage gc() left)."
            ),
        ),
    ]


# --- Streaming and the async API ------------------------------------------------------

STREAM_REPS = 5  # each sample writes 1 GiB (or 256 MiB) twice: fewer repetitions


def bench_stream(cfg: Config, root: str) -> list[Row]:
    import asyncio  # only here: the rest of the benchmark is synchronous

    store = os.path.join(root, "stream")
    floor_dir = os.path.join(root, "stream-floor")
    os.mkdir(floor_dir)
    src = os.path.join(root, "stream-source.bin")
    block = os.urandom(MIB)
    with open(src, "wb") as f:
        for _ in range(cfg.put_file_mib):
            f.write(block)
    reps = min(cfg.reps, STREAM_REPS)
    progress(f"stream: put_file of {cfg.put_file_mib} MiB against cp + fsync, {reps} repetitions")
    with blobcache.BlobCache(store) as cache:

        def ours(rep: int) -> float:
            ns = time_ns(lambda: cache.put_file(f"file-{rep}", src))
            cache.delete(f"file-{rep}")
            cache.gc()
            return mb_per_s(cfg.put_file_mib * MIB, ns)

        def floor(rep: int) -> float:
            ns = time_ns(lambda: cp_and_fsync(src, floor_dir, f"copy-{rep}"))
            os.unlink(os.path.join(floor_dir, f"copy-{rep}"))
            return mb_per_s(cfg.put_file_mib * MIB, ns)

        warm_up(ours, floor)
        files, copies = interleave(reps, [ours, floor])
    os.unlink(src)
    value = os.urandom(MIB) * ASYNC_MIB
    progress(f"stream: async put of {ASYNC_MIB} MiB against the sync put, {reps} repetitions")

    async def async_put(key: str) -> None:
        async with blobcache.AsyncBlobCache(store) as acache:
            await acache.put(key, value)
            await acache.delete(key)
            await acache.gc()

    def async_side(rep: int) -> float:
        start = time.perf_counter_ns()
        asyncio.run(async_put(f"async-{rep}"))
        return mb_per_s(len(value), time.perf_counter_ns() - start)

    def sync_side(rep: int) -> float:
        def run() -> None:
            with blobcache.BlobCache(store) as cache:
                cache.put(f"sync-{rep}", value)
                cache.delete(f"sync-{rep}")
                cache.gc()

        return mb_per_s(len(value), time_ns(run))

    warm_up(async_side, sync_side)
    asyncs, syncs = interleave(reps, [async_side, sync_side])
    shutil.rmtree(store)
    return [
        Row(
            label=f"put_file, {cfg.put_file_mib} MiB from a path, durability='fsync'",
            unit="MB/s",
            ours=files,
            base=copies,
            goal=Goal(">=", 0.85),
            note="floor: `cp` of the same file (a subprocess; it lets the kernel copy) + "
            "fsync of the copy and of its directory. blobcache copies with "
            "copy_file_range and hashes the copy while its fsync runs.",
        ),
        Row(
            label=f"AsyncBlobCache.put of {ASYNC_MIB} MiB vs BlobCache.put",
            unit="MB/s",
            ours=asyncs,
            base=syncs,
            goal=Goal(">=", 0.9),
            note="each sample opens the store, puts, deletes, gc()s and closes, on both "
            "sides (the async side in asyncio.run, its disk work in a worker thread).",
        ),
    ]


ASYNC_MIB = 256


# --- The maintenance command -------------------------------------------------------

MAINT_LARGE_SHARE = 10  # one key in this many holds a large value
MAINT_LARGE = 64 * KIB
MAINT_STATS_S = 5.0  # "finish in seconds": the goals of the stats and verify rows
MAINT_VERIFY_S = 10.0
GC_FIXED_OVERHEAD = 64 * KIB  # marker, an empty active segment, directory blocks


def run_command(*args: str) -> float:
    """Run ``blobcache ARGS`` as a user would; return its wall time in seconds."""
    start = time.perf_counter_ns()
    subprocess.run(
        [sys.executable, "-m", "blobcache", *args], check=True, stdout=subprocess.DEVNULL
    )
    return (time.perf_counter_ns() - start) / 1e9


def bench_maintenance(cfg: Config, root: str) -> list[Row]:
    store = os.path.join(root, "maintenance")
    keys = key_names(cfg.maint_keys, "m")
    progress(f"maintenance: {len(keys):,} keys, 3 puts each, a tenth deleted (durability='os')")
    live = 0
    # inline_limit below MAINT_LARGE, so the large values are files (the commands
    # then open the store with the defaults: routing only matters to new puts).
    with blobcache.BlobCache(store, durability="os", inline_limit=MAINT_LARGE // 2) as cache:
        for round_ in range(3):
            for i, key in enumerate(keys):
                size = MAINT_LARGE if i % MAINT_LARGE_SHARE == 0 else SMALL
                cache.put(key, os.urandom(size) if round_ == 2 else bytes(size))
        for key in keys[1::10]:
            cache.delete(key)
        live = cache.stats().live_bytes

    def python_start(_rep: int) -> float:
        start = time.perf_counter_ns()
        subprocess.run([sys.executable, "-c", "import blobcache"], check=True)
        return (time.perf_counter_ns() - start) / 1e9

    progress("maintenance: blobcache stats and verify, before gc")
    stats = [run_command("stats", "--json", store) for _ in range(cfg.reps)]
    verify = [run_command("verify", "--json", store) for _ in range(cfg.reps)]
    starts = [python_start(rep) for rep in range(cfg.reps)]
    before = disk_usage(store)
    gc_s = run_command("gc", "--json", store)
    after = disk_usage(store)
    own = {os.path.join(store, name) for name in ("blobs", "log")}  # the store's own
    empty_dirs = sum(
        1 for d, sub, files in os.walk(store) if not sub and not files and d not in own
    )
    shutil.rmtree(store)
    what = (
        f"{len(keys):,} keys (one in {MAINT_LARGE_SHARE} of {MAINT_LARGE // KIB} KiB, the "
        f"rest {SMALL} B), each put 3 times, a tenth deleted, closed; wall time of the "
        "command as a subprocess"
    )
    return [
        Row(
            label=f"`blobcache stats` on {len(keys):,} keys",
            unit="s",
            ours=stats,
            base=starts,
            goal=Goal("<=", MAINT_STATS_S, "s"),
            note=f"{what}; baseline: starting Python and importing blobcache.",
        ),
        Row(
            label=f"`blobcache verify` on {len(keys):,} keys",
            unit="s",
            ours=verify,
            base=starts,
            goal=Goal("<=", MAINT_VERIFY_S, "s"),
            note=f"{what}; reads every byte ({before.apparent / MIB:.1f} MB before gc). "
            "Baseline as above.",
        ),
        Row(
            label="after `blobcache gc`: file sizes vs live bytes + fixed overhead",
            unit="bytes",
            ours=[after.apparent],
            base=[live + GC_FIXED_OVERHEAD],
            goal=Goal("<=", 1.1),
            note=f"{what}; gc took {gc_s:.2f} s and took the store from "
            f"{before.apparent:,} to {after.apparent:,} bytes; live bytes {live:,}, fixed "
            f"overhead allowed {GC_FIXED_OVERHEAD // KIB} KiB; empty directories left: "
            f"{empty_dirs}. One run, n = 1.",
        ),
    ]


# --- The inline_limit crossover -------------------------------------------------------


@dataclass
class Crossover:
    """Per-repetition samples of one value size, in both layouts."""

    size: int
    put_log: list[float] = field(default_factory=list)  # us per put
    put_file_new: list[float] = field(default_factory=list)  # us per put, fresh key
    put_file_old: list[float] = field(default_factory=list)  # us per put, existing key
    get_log: list[float] = field(default_factory=list)  # ns per get, steady state
    first_get_file: list[float] = field(default_factory=list)  # us: map + verify
    get_file: list[float] = field(default_factory=list)  # ns per get, steady state


CROSSOVER_GET_NS = 5_000_000  # each steady-state get sample lasts at least 5 ms


def crossover_point(
    in_log: blobcache.BlobCache, in_file: blobcache.BlobCache, size: int, cfg: Config
) -> Crossover:
    """Durable put and get latency of ``size`` bytes in the log and as a file, one thread."""
    point = Crossover(size)
    value = os.urandom(size)
    n = cfg.crossover_puts

    def sampler(cache: blobcache.BlobCache, fresh: bool) -> Sample:
        def sample(rep: int) -> float:
            keys = key_names(n, f"x{size}-{rep + 1}-{fresh:d}")
            if not fresh:
                put_all(cache, keys, value[::-1])  # untimed: the keys exist
            ns = time_ns(lambda: put_all(cache, keys, value))
            if cache is in_log:
                point.get_log.append(net_get_ns(cache.get, keys, CROSSOVER_GET_NS))
            elif fresh:
                first = time_ns(lambda: [cache.get(k) for k in keys]) / n / 1e3
                point.first_get_file.append(first)
                point.get_file.append(net_get_ns(cache.get, keys, CROSSOVER_GET_NS))
            for key in keys:  # untimed: memory stays small
                cache.delete(key)
            if cache is in_file:
                # Untimed. The janitor removes the keys' directories, so every fresh
                # key makes its fan-out directories anew: the same work at every size.
                # Not on the log's store: gc() would compact, and start a new segment
                # under each sample's first puts.
                cache.gc()
            return ns / n / 1e3

        return sample

    samplers = [sampler(in_log, True), sampler(in_file, True), sampler(in_file, False)]
    progress(f"crossover: {size_name(size)}, {cfg.reps} repetitions of {n} puts per layout")
    warm_up(*samplers)
    for extra in (point.get_log, point.first_get_file, point.get_file):
        extra.clear()  # the warm-up's gets
    point.put_log, point.put_file_new, point.put_file_old = interleave(cfg.reps, samplers)
    return point


def bench_crossover(cfg: Config, root: str) -> list[Crossover]:
    limit = max(cfg.crossover_kib) * KIB + 1  # every size measured goes to the log
    with (
        blobcache.BlobCache(os.path.join(root, "x-log"), inline_limit=limit) as in_log,
        blobcache.BlobCache(os.path.join(root, "x-file"), inline_limit=0) as in_file,
    ):
        return [crossover_point(in_log, in_file, kib * KIB, cfg) for kib in cfg.crossover_kib]


def crossover_from(points: list[Crossover], file_side: Callable[[Crossover], list[float]]) -> str:
    """The smallest size from which the file's put stays within CROSSOVER_RATIO of the log's."""
    within = [median_ratio(file_side(p), p.put_log) <= CROSSOVER_RATIO for p in points]
    if not within[-1]:
        return f"at none of the sizes measured (up to {size_name(points[-1].size)})"
    first = len(within)
    while first > 0 and within[first - 1]:
        first -= 1
    return f"from {size_name(points[first].size)} on"


def render_crossover(points: list[Crossover], reps: int, puts: int) -> list[str]:
    lines = [
        "",
        f"## inline_limit crossover (median [min..max] of {reps} repetitions)",
        "",
        "| value | put, log (us) | put, file, fresh key (us) | ratio | "
        "put, file, existing key (us) | ratio | get, log (ns) | "
        "first get, file (us) | get, file (ns) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        lines.append(
            f"| {size_name(p.size)} | {spread(p.put_log)} | {spread(p.put_file_new)} | "
            f"{median_ratio(p.put_file_new, p.put_log):.2f}x | {spread(p.put_file_old)} | "
            f"{median_ratio(p.put_file_old, p.put_log):.2f}x | {spread(p.get_log)} | "
            f"{spread(p.first_get_file)} | {spread(p.get_file)} |"
        )
    lines += [
        "",
        f"The file layout's put is within {CROSSOVER_RATIO:g}x of the log's "
        f"{crossover_from(points, lambda p: p.put_file_new)} for a fresh key, and "
        f"{crossover_from(points, lambda p: p.put_file_old)} for an existing key.",
        "",
        f"durability='fsync', one thread; each sample is the mean of {puts} puts to new keys "
        "in one store per layout (log: inline_limit above every size; file: inline_limit=0); "
        "'existing key': the keys were put once just before, untimed, so the file's put "
        "skips making the key's directories and key file. Ratios are file / log. "
        "'first get, file' maps the file and checks its checksum; the other gets are later "
        "ones, net of the driving loop. After each sample, untimed: deletes of its keys, and "
        "for the file layout `gc()`, so that a fresh key always makes its two fan-out "
        "directories as well (the costliest case, as in an empty store); one untimed "
        "warm-up round per size.",
    ]
    return lines


def render(
    facts: list[tuple[str, str]],
    rows: list[Row],
    crossover: list[Crossover],
    cfg: Config,
    seconds: float,
) -> str:
    lines = ["## Machine", "", "| fact | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in facts]
    lines += [
        "",
        "## Results (median [min..max] of n repetitions)",
        "",
        "| # | measurement | unit | n | blobcache | baseline | ratio | goal | met |",
        "|---|---|---|---:|---:|---:|---:|---|---|",
    ]
    for number, row in enumerate(rows, 1):
        goal, met = ("none set", "n/a") if row.goal is None else (str(row.goal), "")
        if row.goal is not None:
            met = "yes" if row.goal.met(row) else "NO"
        lines.append(
            f"| {number} | {row.label} | {row.unit} | {len(row.ours)} | {spread(row.ours)} | "
            f"{spread(row.base)} | {row.ratio():.2f}x | {goal} | {met} |"
        )
    lines += ["", "Notes:", ""]
    first_with: dict[str, int] = {}
    for number, row in enumerate(rows, 1):
        first = first_with.setdefault(row.note, number)
        lines.append(f"{number}. {row.note}" if first == number else f"{number}. As {first}.")
    lines += [
        "",
        "Ratios are blobcache / baseline, the median of the per-repetition ratios "
        "(the sides run back to back in each repetition, in an order that changes at each). "
        "A goal marked absolute bounds blobcache's median itself.",
    ]
    if crossover:
        lines += render_crossover(crossover, cfg.reps, cfg.crossover_puts)
    lines += [
        "",
        f"Whole run: {seconds:.0f} s; load average at the end (1/5/15 min): {load_average()}.",
    ]
    return "\n".join(lines)


# --- Command line --------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> Config:
    parser = argparse.ArgumentParser(
        description="Benchmark blobcache get, put, open and disk use against plain-Python floors.",
    )
    parser.add_argument(
        "--dir",
        default=None,
        help="where to make the run's temp directory (default: /var/tmp or /tmp, "
        "whichever is on the project's file system); it is removed at the end",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_REPS} repetitions instead of {FULL_REPS}, {QUICK_FILE_KEYS:,} keys "
        f"for get in files and no small-key store above {QUICK_MAX_OPEN_KEYS:,} keys, "
        "unless named by the options below: a smoke run",
    )
    sizes = parser.add_argument_group(
        "sizes", "smaller than the defaults only for smoke runs: such figures are not comparable"
    )
    sizes.add_argument("--keys", type=positive_int, default=10_000, help="keys for get in the log")
    sizes.add_argument(
        "--file-keys",
        type=positive_int,
        default=None,
        help=f"keys for get in files (default 10000; {QUICK_FILE_KEYS} with --quick)",
    )
    sizes.add_argument(
        "--small-puts",
        type=positive_int,
        default=200,
        help="durable small puts per sample, and per thread in the threads row",
    )
    sizes.add_argument(
        "--os-puts", type=positive_int, default=20_000, help="durability='os' puts per sample"
    )
    sizes.add_argument(
        "--sizes-mib", type=int_list, default=(64, 256), help="large put sizes, e.g. 64,256"
    )
    sizes.add_argument("--open-keys", type=positive_int, default=1_000, help="keys for open")
    sizes.add_argument(
        "--open-value-kib", type=positive_int, default=1_024, help="value size for open"
    )
    sizes.add_argument(
        "--small-open-keys",
        type=int_list,
        default=None,
        help="small-key stores to open (default 100000,1000000; 100000 with --quick)",
    )
    sizes.add_argument(
        "--disk-keys", type=positive_int, default=10_000, help="keys for the disk-usage rows"
    )
    sizes.add_argument(
        "--put-file-mib", type=positive_int, default=1024, help="size of the put_file row's file"
    )
    sizes.add_argument(
        "--maint-keys",
        type=positive_int,
        default=10_000,
        help="keys of the store that blobcache stats, verify and gc run on",
    )
    sizes.add_argument(
        "--crossover-kib",
        type=int_list,
        default=(1, 4, 16, 64, 256, 1024),
        help="value sizes of the inline_limit crossover, ascending",
    )
    sizes.add_argument(
        "--crossover-puts",
        type=positive_int,
        default=10,
        help="puts per layout, size and repetition in the crossover",
    )
    args = parser.parse_args(argv)
    small_open: tuple[int, ...] = args.small_open_keys or tuple(
        n for n in (100_000, 1_000_000) if not args.quick or n <= QUICK_MAX_OPEN_KEYS
    )
    return Config(
        parent=args.dir if args.dir is not None else default_parent(),
        reps=QUICK_REPS if args.quick else FULL_REPS,
        get_keys=args.keys,
        file_keys=args.file_keys or (QUICK_FILE_KEYS if args.quick else 10_000),
        small_puts=args.small_puts,
        os_puts=args.os_puts,
        put_sizes_mib=args.sizes_mib,
        open_keys=args.open_keys,
        open_value_kib=args.open_value_kib,
        small_open_keys=small_open,
        disk_keys=args.disk_keys,
        maint_keys=args.maint_keys,
        put_file_mib=args.put_file_mib,
        crossover_kib=tuple(sorted(args.crossover_kib)),
        crossover_puts=args.crossover_puts,
    )


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    started = time.perf_counter_ns()
    root = tempfile.mkdtemp(prefix="blobcache-bench-", dir=cfg.parent)
    try:
        facts = machine_facts(root)
        rows = [
            bench_get(cfg, root, in_files=True),
            bench_get(cfg, root, in_files=False),
            *bench_small_put(cfg, root),
            bench_threads(cfg, root),
            bench_os_put(cfg, root),
            *bench_put(cfg, root),
            bench_open(cfg, root),
            *(bench_open_small(cfg, root, keys) for keys in cfg.small_open_keys),
            *bench_disk(cfg, root),
            *bench_maintenance(cfg, root),
            *bench_stream(cfg, root),
        ]
        crossover = bench_crossover(cfg, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    seconds = (time.perf_counter_ns() - started) / 1e9
    print(render(facts, rows, crossover, cfg, seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
