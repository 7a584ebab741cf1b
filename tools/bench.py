#!/usr/bin/env python3
"""Benchmark blobcache beside its peers and the raw floor, on the same workloads, in one run.

The peers are python-diskcache in its default settings and with
``sqlite_synchronous=2`` (SQLite FULL), and LMDB with ``sync=True``; the floor is
the least plain Python calls do for the same job and the same crash. Every
contender gets a line per workload saying which crash what it acknowledged
survives, and two ratios: its cost (time, or bytes) over the floor's for the same
crash, and over blobcache's for the same crash. The workloads:

* ``get`` of a 100 B value, 10,000 keys present;
* ``get`` of a 64 MiB value: the first after opening the store (time to a usable
  buffer), and with every byte of it read;
* put of 100 B, one thread and 8 threads, at both of blobcache's durability levels;
* put of 64 MiB and of 1 GiB, and ``put_file`` of a 1 GiB file;
* open of a store of 100,000 and of 1,000,000 keys of 100 B, and of 1,000 keys of
  1 MiB, until the first ``get`` is served, in a new process each time;
* disk space after 10 overwrites of every key, before and after each library's gc,
  and the time of that gc;
* fsync-family system calls per put, counted by ``strace`` in a child process,
  with the files they went to;
* the ``inline_limit`` crossover of ``tools/bench_floor.py`` (log against a file per
  key, by value size), for the design notes in the README.

The goals (issue 7) are checked in a table of their own. Every figure is a median
over repetitions with its [min..max]; the contenders of a workload run back to back
in every repetition, in an order shuffled at each (see ``benchkit.interleave``), and
a ratio is the median of the per-repetition ratios. After each large put, untimed,
what it left dirty is synced and the page cache of the files its store keeps is
dropped, so that no contender pays for the one before it. Nothing here asserts a
timing: ``tests/test_bench_peers.py`` runs ``--quick`` and checks that the tables
come out.

Usage: ``python tools/bench.py [--quick] [--dir DIR] [--json PATH] [--readme PATH]``.
The Markdown report goes to stdout (and, with ``--readme``, between the README's
bench markers), the figures to the JSON file, progress to stderr. Needs the
``[bench]`` extra (diskcache, lmdb).
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/, when imported by path
import bench_floor  # its inline_limit crossover runs here too, for the design figures
import diskcache  # type: ignore[import-untyped]
import lmdb
import xxhash
from benchkit import (
    KIB,
    MIB,
    DictWrapper,
    Sample,
    append_fd,
    cp_and_fsync,
    default_parent,
    disk_usage,
    floor_publish,
    interleave,
    key_names,
    load_average,
    machine_facts,
    mb_per_s,
    median_ratio,
    per_call_sampler,
    progress,
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

TOOLS = str(Path(__file__).resolve().parent)  # where child processes import bench from

SMALL = 100  # bytes of a small value
THREADS = 8
OVERWRITES = 10
LMDB_MAP = 1 << 36  # LMDB's address space; the file only grows as pages are written
BATCH = 10_000  # puts per transaction when the peers' stores are filled for a workload
POWER, PROCESS = "power loss", "process crash"
README_START, README_END = "<!-- bench:start -->", "<!-- bench:end -->"


@dataclass(frozen=True)
class Config:
    parent: str
    quick: bool
    reps: int  # repetitions of the cheap workloads
    big_reps: int  # of the 1 GiB puts
    get_keys: int
    get_sample_ns: int
    large_get_mib: int
    small_puts: int  # per sample (per thread in the threads workload)
    put_mib: tuple[int, ...]
    put_file_mib: int
    open_small: tuple[int, ...]
    open_large: int
    open_large_kib: int
    disk_keys: int
    sync_small_puts: int  # puts counted by strace
    sync_large_puts: int
    sync_large_mib: int


def config(parent: str, quick: bool) -> Config:
    full = Config(
        parent=parent,
        quick=False,
        reps=7,
        big_reps=5,
        get_keys=10_000,
        get_sample_ns=100_000_000,
        large_get_mib=64,
        small_puts=100,
        put_mib=(64, 1024),
        put_file_mib=1024,
        open_small=(100_000, 1_000_000),
        open_large=1_000,
        open_large_kib=1_024,
        disk_keys=10_000,
        sync_small_puts=50,
        sync_large_puts=3,
        sync_large_mib=4,
    )
    if not quick:
        return full
    # A smoke run: every workload at tiny sizes, figures that mean nothing.
    return replace(
        full,
        quick=True,
        reps=2,
        big_reps=2,
        get_keys=500,
        get_sample_ns=2_000_000,
        large_get_mib=4,
        small_puts=10,
        put_mib=(4,),
        put_file_mib=8,
        open_small=(2_000,),
        open_large=20,
        open_large_kib=512,
        disk_keys=500,
        sync_small_puts=5,
        sync_large_puts=2,
        sync_large_mib=1,
    )


# --- The contenders ----------------------------------------------------------------


@dataclass(frozen=True)
class Store:
    """One library's store, behind the calls the workloads make."""

    put: Callable[[str, bytes], object]
    get: Callable[[str], object]
    put_file: Callable[[str, str], object]
    delete: Callable[[str], object]
    fill: Callable[[Sequence[str], bytes], object]  # many puts, the library's fastest way
    gc: Callable[[], object]
    close: Callable[[], object]
    handle: object  # the library's own object
    path: str


@dataclass(frozen=True)
class Contender:
    name: str
    open: Callable[[str], Store]
    small: str  # the crash a small put survives once acknowledged: POWER or PROCESS
    large: str  # the same for a large value
    why: str  # how, in a few words

    @property
    def ours(self) -> bool:
        return self.name.startswith("blobcache")


def open_blobcache(path: str, **options: Any) -> Store:
    cache = blobcache.BlobCache(path, **options)

    def fill(keys: Sequence[str], value: bytes) -> None:
        for key in keys:
            cache.put(key, value)
        cache.sync()

    return Store(
        cache.put,
        cache.get,
        cache.put_file,
        cache.delete,
        fill,
        cache.gc,
        cache.close,
        cache,
        path,
    )


def open_diskcache(path: str, synchronous: int = 1) -> Store:
    # size_limit: the default (1 GiB) would evict values while a workload holds more.
    cache = diskcache.Cache(path, size_limit=1 << 40, sqlite_synchronous=synchronous)

    def put_file(key: str, source: str) -> None:
        with open(source, "rb") as f:
            cache.set(key, f, read=True)

    def fill(keys: Sequence[str], value: bytes) -> None:
        for start in range(0, len(keys), BATCH):
            with cache.transact():
                for key in keys[start : start + BATCH]:
                    cache.set(key, value)

    def gc() -> None:
        # diskcache's only call that gives space back: it VACUUMs SQLite (and
        # removes files no row names). Documented for testing and post-mortems.
        cache.check(fix=True)

    return Store(cache.set, cache.get, put_file, cache.delete, fill, gc, cache.close, cache, path)


def open_lmdb(path: str) -> Store:
    env = lmdb.open(path, map_size=LMDB_MAP, sync=True, metasync=True)

    def put(key: str, value: bytes) -> None:
        with env.begin(write=True) as txn:
            txn.put(key.encode(), value)

    def get(key: str) -> object:
        with env.begin() as txn:
            return txn.get(key.encode())

    def put_file(key: str, source: str) -> None:
        # LMDB takes no stream: the file is read whole, then put.
        with open(source, "rb") as f:
            put(key, f.read())

    def delete(key: str) -> None:
        with env.begin(write=True) as txn:
            txn.delete(key.encode())

    def fill(keys: Sequence[str], value: bytes) -> None:
        for start in range(0, len(keys), BATCH):
            with env.begin(write=True) as txn:
                txn.cursor().putmulti([(k.encode(), value) for k in keys[start : start + BATCH]])

    def gc() -> None:
        # LMDB's file never shrinks; its compaction is a compacted copy (mdb_copy -c).
        copy = path + ".compact"
        os.mkdir(copy)
        env.copy(copy, compact=True)

    return Store(put, get, put_file, delete, fill, gc, env.close, env, path)


BLOB_FSYNC = Contender(
    "blobcache 'fsync'", open_blobcache, POWER, POWER, "log + fdatasync; value files fsynced"
)
BLOB_OS = Contender(
    "blobcache 'os'",
    lambda path: open_blobcache(path, durability="os"),
    PROCESS,
    PROCESS,
    "synced in the background every second",
)
DISKCACHE = Contender(
    "diskcache",
    open_diskcache,
    PROCESS,
    PROCESS,
    "SQLite WAL, synchronous=NORMAL; value files (>= 32 KiB) never fsynced",
)
DISKCACHE_FULL = Contender(
    "diskcache sync=2",
    lambda path: open_diskcache(path, 2),
    POWER,
    PROCESS,
    "SQLite WAL, synchronous=FULL; value files (>= 32 KiB) never fsynced",
)
BLOB_SMALL_SEGMENTS = Contender(
    "blobcache 'os', segment_bytes=1 MiB",
    lambda path: open_blobcache(path, durability="os", segment_bytes=MIB),
    PROCESS,
    PROCESS,
    "a segment is sealed, and may be compacted, every MiB",
)
LMDB_SYNC = Contender(
    "LMDB sync=True", open_lmdb, POWER, POWER, "fdatasync + a write through O_DSYNC per commit"
)
PEERS = (DISKCACHE, DISKCACHE_FULL, LMDB_SYNC)


# --- Tables --------------------------------------------------------------------------


@dataclass
class Line:
    name: str
    survives: str  # POWER or PROCESS, or "" where no write is measured
    samples: list[float]
    floor: bool = False
    ours: bool = False  # a blobcache line: the others are set beside it
    note: str = ""


@dataclass
class Table:
    title: str
    unit: str
    rate: bool  # higher is better (the cost is the inverse)
    lines: list[Line] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def line(self, name: str) -> Line:
        return next(line for line in self.lines if line.name == name)

    def reference(self, line: Line, *, ours: bool) -> Line | None:
        """The floor (``ours=False``) or blobcache line to set ``line`` beside: the one
        for the same crash, else the first one."""
        pool = [x for x in self.lines if (x.ours if ours else x.floor) and x is not line]
        same = [x for x in pool if x.survives == line.survives]
        found = same or pool
        return found[0] if found else None

    def cost_ratio(self, line: Line, ref: Line) -> float:
        """Median over repetitions of line's cost / ref's cost (time or bytes)."""
        if self.rate:
            return median_ratio(ref.samples, line.samples)
        return median_ratio(line.samples, ref.samples)


def ratio_text(table: Table, line: Line, ref: Line | None) -> str:
    if ref is None or not line.samples or 0 in ref.samples or 0 in line.samples:
        return ""
    return f"{table.cost_ratio(line, ref):.2f}x"


def render_table(number: int, table: Table) -> list[str]:
    better = "higher" if table.rate else "lower"
    lines = [
        f"### {number}. {table.title} ({table.unit}, {better} is better)",
        "",
        f"| contender | survives | {table.unit} | ÷ floor | ÷ blobcache |",
        "|---|---|---:|---:|---:|",
    ]
    for line in table.lines:
        floor = "" if line.floor else ratio_text(table, line, table.reference(line, ours=False))
        ours = "" if line.ours else ratio_text(table, line, table.reference(line, ours=True))
        value = spread(line.samples) if line.samples else "not measured"
        name = f"{line.name} ({line.note})" if line.note else line.name
        lines.append(f"| {name} | {line.survives or '-'} | {value} | {floor} | {ours} |")
    lines += [""] + [f"{note}" for note in table.notes] + [""]
    return lines


# --- Goals ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Goal:
    text: str
    measured: str
    met: bool


def faster(table: Table, ours: str, peer: str, times: float) -> Goal:
    """blobcache line ``ours`` at least ``times`` as fast as line ``peer`` (a cost ratio)."""
    ratio = table.cost_ratio(table.line(peer), table.line(ours))
    wanted = "faster than" if times == 1 else f">= {times:g}x as fast as"
    return Goal(
        f"{table.title}: {ours} {wanted} {peer}",
        f"{ratio:.2f}x as fast",
        ratio >= times if times > 1 else ratio > 1,
    )


def goals_of(tables: dict[str, Table]) -> list[Goal]:
    goals: list[Goal] = []
    get = tables["get"]
    goals.append(faster(get, "blobcache", "diskcache", 50))
    for lmdb_line in (x.name for x in get.lines if x.name.startswith("LMDB")):
        goals.append(faster(get, "blobcache", lmdb_line, 1))
    for key in ("put1", "put8"):
        for peer in ("LMDB sync=True", "diskcache sync=2"):
            goals.append(faster(tables[key], "blobcache 'fsync'", peer, 1))
    for key in sorted(k for k in tables if k.startswith("large-put")):
        goals.append(faster(tables[key], "blobcache 'fsync'", "diskcache", 2))
    for key in (k for k in tables if k.startswith("open-small")):
        table = tables[key]
        keys = int(key.split("-")[-1])
        if keys == 100_000:
            ms = statistics.median(table.line("blobcache").samples)
            goals.append(Goal(f"{table.title}: blobcache within 150 ms", f"{ms:.0f} ms", ms <= 150))
    return goals


# --- get -----------------------------------------------------------------------------


def net_sampler(get: Callable[[Any], object], keys: Sequence[object], cfg: Config) -> Sample:
    """ns per ``get`` over ``keys``, net of the driving loop, per sample."""
    call = sweep_timer("for k in keys: get(k)", get, list(keys))  # type: ignore[arg-type]
    loop = sweep_timer("for k in keys: pass", get, list(keys))  # type: ignore[arg-type]
    sweeps = sweeps_for(call, cfg.get_sample_ns)
    calls = per_call_sampler(call, sweeps, len(keys))
    empty = per_call_sampler(loop, sweeps, len(keys))
    return lambda rep: calls(rep) - empty(rep)


def bench_small_get(cfg: Config, root: str) -> Table:
    keys = key_names(cfg.get_keys)
    value = os.urandom(SMALL)
    progress(f"small get: {len(keys):,} keys of {SMALL} B in each store")
    stores = {c.name: c.open(os.path.join(root, "get-" + c.name)) for c in (BLOB_OS, DISKCACHE)}
    stores["LMDB"] = open_lmdb(os.path.join(root, "get-lmdb"))
    try:
        for store in stores.values():
            store.fill(keys, value)
        lookups = key_names(len(keys))  # equal but distinct str objects, as a caller's are
        env = stores["LMDB"].handle
        assert isinstance(env, lmdb.Environment)
        with env.begin() as txn:  # LMDB's best case: one read transaction, bytes keys
            served = {k: stores[BLOB_OS.name].get(k) for k in keys}
            samplers = [
                net_sampler(DictWrapper(served).get, lookups, cfg),
                net_sampler(stores[BLOB_OS.name].get, lookups, cfg),
                net_sampler(stores[DISKCACHE.name].get, lookups, cfg),
                net_sampler(stores["LMDB"].get, lookups, cfg),
                net_sampler(txn.get, [k.encode() for k in lookups], cfg),
            ]
            progress(f"small get: {cfg.reps} repetitions")
            floor, ours, disk, lm, lm_txn = interleave(cfg.reps, samplers)
    finally:
        for store in stores.values():
            store.close()
    return Table(
        f"get, {SMALL} B value, {len(keys):,} keys present",
        "ns per get",
        rate=False,
        lines=[
            Line("floor: a method wrapping a dict lookup", "", floor, floor=True),
            Line("blobcache", "", ours, ours=True, note="bytes, from memory"),
            Line("diskcache", "", disk, note="a SELECT per get"),
            Line("LMDB", "", lm, note="a read transaction per get"),
            Line("LMDB, one read transaction", "", lm_txn, note="bytes keys ready: best case"),
        ],
        notes=[
            "Net of the loop that drives the gets (subtracted per repetition); keys looked "
            "up with equal but distinct str objects. The synchronous setting and "
            "blobcache's durability do not change a get, so each library has one store.",
        ],
    )


def xxh(buffer: object) -> int:
    return xxhash.xxh3_64_intdigest(buffer)  # type: ignore[arg-type]


def floor_first_get(path: str, read_all: bool) -> float:
    """ms to open + mmap ``path`` into a memoryview (and hash every byte of it)."""
    start = time.perf_counter_ns()
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    view = memoryview(mapped)
    if read_all:
        xxh(view)
    ns = time.perf_counter_ns() - start
    view.release()
    mapped.close()
    return ns / 1e6


def lmdb_first_get(path: str, read_all: bool) -> float:
    """ms to LMDB's zero-copy view of the value (valid inside its read transaction);
    the environment is opened before the clock starts."""
    env = lmdb.open(path, map_size=LMDB_MAP, readonly=True)
    start = time.perf_counter_ns()
    with env.begin(buffers=True) as txn:
        got = txn.get(LARGE_KEY.encode())
        if read_all:
            xxh(got)
        ns = time.perf_counter_ns() - start
    env.close()
    return ns / 1e6


def store_first_get(contender: Contender, path: str, read_all: bool) -> float:
    """ms to the first get of a store opened before the clock starts."""
    store = contender.open(path)
    start = time.perf_counter_ns()
    got = store.get(LARGE_KEY)
    if read_all:
        xxh(got)
    ns = time.perf_counter_ns() - start
    del got
    store.close()
    return ns / 1e6


LARGE_KEY = "big"


def bench_large_get(cfg: Config, root: str) -> list[Table]:
    size = cfg.large_get_mib * MIB
    value = os.urandom(MIB) * cfg.large_get_mib
    progress(f"large get: one value of {size_name(size)} per store")
    floor_file = os.path.join(root, "lget.floor")
    with open(floor_file, "wb") as f:
        f.write(value)
    contenders = (BLOB_FSYNC, DISKCACHE, LMDB_SYNC)
    paths = [os.path.join(root, "lget-" + c.name) for c in contenders]
    for contender, path in zip(contenders, paths, strict=True):
        store = contender.open(path)
        store.put(LARGE_KEY, value)
        store.close()
    tables = [large_get_table(cfg, size, floor_file, paths, read_all) for read_all in (False, True)]
    os.unlink(floor_file)
    for path in paths:
        shutil.rmtree(path)
    return tables


def large_get_table(
    cfg: Config, size: int, floor_file: str, paths: list[str], read_all: bool
) -> Table:
    ours, disk, lm = paths
    samplers: list[Sample] = [
        lambda _rep: floor_first_get(floor_file, read_all),
        lambda _rep: store_first_get(BLOB_FSYNC, ours, read_all),
        lambda _rep: store_first_get(DISKCACHE, disk, read_all),
        lambda _rep: lmdb_first_get(lm, read_all),
    ]
    later = blobcache.BlobCache(ours, readonly=True)
    if not read_all:
        later.get(LARGE_KEY)  # maps and checks it: what follows is every later get
        samplers.append(lambda _rep: time_ns(lambda: later.get(LARGE_KEY)) / 1e6)
    what = "every byte read" if read_all else "usable buffer"
    progress(f"large get ({what}): {cfg.reps} repetitions")
    warm_up(*samplers)
    samples = interleave(cfg.reps, samplers)
    later.close()
    floor = "floor: open + mmap + " + ("xxh3 of every byte" if read_all else "memoryview")
    lines = [
        Line(floor, "", samples[0], floor=True),
        Line("blobcache", "", samples[1], ours=True, note="maps and checks the checksum"),
        Line("diskcache", "", samples[2], note="reads the file into a new bytes"),
        Line("LMDB", "", samples[3], note="zero-copy buffer, valid inside its transaction"),
    ]
    if not read_all:
        lines.append(Line("blobcache, a later get", "", samples[4], note="already mapped"))
    then = ", then xxh3 of every byte" if read_all else ": time to a usable buffer"
    return Table(
        f"get, {size_name(size)} value, first get after opening the store{then}",
        "ms",
        rate=False,
        lines=lines,
        notes=[
            "The store is opened before the clock starts and closed after it stops; "
            "the file is in the page cache (it was just written)."
        ],
    )


# --- small puts ----------------------------------------------------------------------


def bench_small_put(cfg: Config, root: str, threads: int) -> Table:
    value = os.urandom(SMALL)
    n = cfg.small_puts
    contenders = (BLOB_FSYNC, BLOB_OS, *PEERS)
    stores = [c.open(os.path.join(root, f"put{threads}-{c.name}")) for c in contenders]
    # The floors write as many bytes per put as blobcache's log does for such a key.
    probe = stores[0].handle
    assert isinstance(probe, blobcache.BlobCache)
    before = probe.stats().log_record_bytes
    probe.put(key_names(1, "t0-0000-0")[0], value)  # as long as the keys timed below
    record = os.urandom(probe.stats().log_record_bytes - before)
    synced = append_fd(os.path.join(root, f"put{threads}.floor"))
    unsynced = append_fd(os.path.join(root, f"put{threads}-os.floor"))

    def floor(fd: int, sync: bool) -> Callable[[list[str]], None]:
        def work(mine: list[str]) -> None:
            for _ in mine:
                os.write(fd, record)
                if sync:
                    os.fdatasync(fd)

        return work

    def putting(store: Store) -> Callable[[list[str]], None]:
        def work(mine: list[str]) -> None:
            for key in mine:
                store.put(key, value)

        return work

    def sampler(work: Callable[[list[str]], None], tag: int) -> Sample:
        def sample(rep: int) -> float:
            keys = [key_names(n, f"t{tag}-{rep + 2:04d}-{t}") for t in range(threads)]
            return threaded_rate(work, keys)

        return sample

    works = [floor(synced, True), floor(unsynced, False), *map(putting, stores)]
    samplers = [sampler(work, tag) for tag, work in enumerate(works)]
    progress(f"put {SMALL} B, {threads} thread(s): {cfg.reps} repetitions of {threads} x {n}")
    try:
        warm_up(*samplers)
        samples = interleave(cfg.reps, samplers)
    finally:
        os.close(synced)
        os.close(unsynced)
        for store in stores:
            store.close()
    who = "one thread" if threads == 1 else f"{threads} threads"
    lines = [
        Line("floor: append + fdatasync", POWER, samples[0], floor=True),
        Line("floor: append, no sync", PROCESS, samples[1], floor=True),
    ]
    for contender, got in zip(contenders, samples[2:], strict=True):
        lines.append(
            Line(contender.name, contender.small, got, ours=contender.ours, note=contender.why)
        )
    return Table(
        f"put, {SMALL} B value, {who}",
        "puts/s",
        rate=True,
        lines=lines,
        notes=[
            f"{who.capitalize()}, {n} fresh keys each per sample, timed from a barrier "
            f"that releases them together; the floors write {len(record)} B per put "
            "(blobcache's log record for such a key) to one O_APPEND file. diskcache keeps "
            "values below 32 KiB in SQLite, so sync=2 makes these puts survive power loss."
        ],
    )


# --- large puts ----------------------------------------------------------------------


def floor_unsynced(directory: str, name: str, data: bytes) -> None:
    """Write a file whole and close it, no sync: what diskcache does for a value."""
    with open(os.path.join(directory, name), "wb") as f:
        f.write(data)


def settle(directory: str) -> None:
    """After a sample, untimed: flush what it left dirty, so that the next contender does
    not pay for it, and drop the page cache of the files it keeps. LMDB's file keeps a
    deleted value's pages cached (it never shrinks) where the others' deleted files free
    theirs; on this kind of VM, memory not used for a while costs a first touch again
    (about 8 us per 4 KiB page), so whoever ran after LMDB paid ~2 s per GiB for it."""
    os.sync()
    for parent, _, files in os.walk(directory):
        for name in files:
            fd = os.open(os.path.join(parent, name), os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def bench_large_put(cfg: Config, root: str, mib: int, *, from_file: bool) -> Table:
    size = mib * MIB
    reps = cfg.big_reps if size >= 256 * MIB else cfg.reps
    data = os.urandom(MIB) * mib
    source = os.path.join(root, "source.bin")
    if from_file:
        with open(source, "wb") as f:
            f.write(data)
        data = b""  # the puts read the file
    floor_dir = os.path.join(root, "floor")
    os.makedirs(floor_dir, exist_ok=True)
    contenders = (BLOB_FSYNC, *PEERS)
    stores = [c.open(os.path.join(root, f"lput-{c.name}")) for c in contenders]

    def ours(store: Store) -> Sample:
        def sample(rep: int) -> float:
            key = f"big-{rep + 1}"
            if from_file:
                ns = time_ns(lambda: store.put_file(key, source))
            else:
                ns = time_ns(lambda: store.put(key, data))
            store.delete(key)  # untimed: the disk holds one such value at a time
            if isinstance(store.handle, blobcache.BlobCache):
                store.gc()
            settle(store.path)
            return mb_per_s(size, ns)

        return sample

    def floor(publish: Callable[[str], object]) -> Sample:
        def sample(rep: int) -> float:
            name = f"big-{rep + 1}"
            ns = time_ns(lambda: publish(name))
            os.unlink(os.path.join(floor_dir, name))
            settle(floor_dir)
            return mb_per_s(size, ns)

        return sample

    def copy(name: str) -> None:
        subprocess.run(["cp", source, os.path.join(floor_dir, name)], check=True)

    if from_file:
        floors = [floor(lambda name: cp_and_fsync(source, floor_dir, name)), floor(copy)]
    else:
        floors = [
            floor(lambda name: floor_publish(floor_dir, name, data)),
            floor(lambda name: floor_unsynced(floor_dir, name, data)),
        ]
    samplers = [*floors, *map(ours, stores)]
    what = f"put_file of a {size_name(size)} file" if from_file else f"put, {size_name(size)}"
    progress(f"{what}: {reps} repetitions")
    try:
        # A first write of this many bytes pays the VM's first touches of page-cache memory.
        warm_up(*samplers)
        samples = interleave(reps, samplers)
    finally:
        for store in stores:
            store.close()
        if from_file:
            os.unlink(source)
    names = (
        ("floor: cp + fsync(file) + fsync(dir)", "floor: cp, no sync")
        if from_file
        else ("floor: temp + write + fsync + rename + fsync(dir)", "floor: write + close, no sync")
    )
    lines = [
        Line(names[0], POWER, samples.pop(0), floor=True),
        Line(names[1], PROCESS, samples.pop(0), floor=True),
    ]
    for contender, got in zip(contenders, samples, strict=True):
        note = contender.why
        if from_file and contender is LMDB_SYNC:
            note = "no stream API: the file is read whole, then put"
        lines.append(Line(contender.name, contender.large, got, ours=contender.ours, note=note))
    return Table(
        f"{what}, a fresh key",
        "MB/s",
        rate=True,
        lines=lines,
        notes=[
            "Each repetition puts a new key, then deletes it untimed (and blobcache's gc() "
            "removes its file), so a store holds one such value at a time; after every sample, "
            "untimed, a `sync` flushes what it left dirty and the page cache of the files its "
            "store keeps is dropped (LMDB's file keeps the deleted value's pages), so that the "
            "next one pays for neither. diskcache writes "
            "values of 32 KiB and more to files it never fsyncs, whatever `sqlite_synchronous` "
            "says: after a power loss its index may name a missing, short or zero-filled file."
            + " One untimed warm-up round."
        ],
    )


# --- open ----------------------------------------------------------------------------


def open_until_get(name: str, path: str, key: str) -> None:
    """Run in a fresh child process: print the ms from opening ``path`` with contender
    ``name`` until a present key's value is served (the close is untimed)."""
    contender = next(c for c in (BLOB_FSYNC, *PEERS) if c.name == name)
    start = time.perf_counter_ns()
    store = contender.open(path)
    got = store.get(key)
    ns = time.perf_counter_ns() - start
    if got is None:
        raise SystemExit(f"{name}: {key!r} is missing from {path}")
    print(ns / 1e6)
    del got
    store.close()


def child(call: str) -> list[str]:
    """The command that runs ``bench.<call>`` in a new Python process (cwd: TOOLS)."""
    return [sys.executable, "-c", f"import bench; bench.{call}"]


def bench_open(cfg: Config, root: str, keys: int, value_size: int) -> Table:
    names = key_names(keys, "o")
    value = os.urandom(value_size)
    contenders = (BLOB_FSYNC, DISKCACHE, LMDB_SYNC)
    paths = [os.path.join(root, f"open-{keys}-{c.name}") for c in contenders]
    progress(f"open: filling stores of {keys:,} keys of {size_name(value_size)}")
    for contender, path in zip(contenders, paths, strict=True):
        opener = BLOB_OS.open if contender is BLOB_FSYNC else contender.open
        store = opener(path)
        store.fill(names, value)
        store.close()
    small = value_size <= 256 * KIB
    ours = paths[0]
    logs = [d for d, _, files in os.walk(ours) if any(f.endswith(".log") for f in files)]

    def floor(_rep: int) -> float:
        if small:
            return time_ns(lambda: [read_files(d) for d in logs]) / 1e6
        return time_ns(lambda: scandir_and_stat(ours)) / 1e6

    def opening(contender: Contender, path: str) -> Sample:
        def sample(rep: int) -> float:
            call = f"open_until_get({contender.name!r}, {path!r}, {names[(rep * 7919) % keys]!r})"
            done = subprocess.run(child(call), cwd=TOOLS, capture_output=True, check=True)
            return float(done.stdout)

        return sample

    samplers = [floor, *(opening(c, p) for c, p in zip(contenders, paths, strict=True))]
    reps = 3 if keys >= 1_000_000 else cfg.reps  # 4 stores of a million keys: a few s each
    progress(f"open: {keys:,} keys, {reps} repetitions")
    warm_up(*samplers)
    samples = interleave(reps, samplers)
    for path in paths:
        shutil.rmtree(path)
    floor_name = (
        "floor: read blobcache's log files" if small else "floor: scandir + stat blobcache's tree"
    )
    return Table(
        f"open a store of {keys:,} keys of {size_name(value_size)}, until a get is served",
        "ms",
        rate=False,
        lines=[
            Line(floor_name, "", samples[0], floor=True),
            Line("blobcache", "", samples[1], ours=True, note="replays its index into memory"),
            Line("diskcache", "", samples[2], note="SQLite: reads pages on demand"),
            Line("LMDB", "", samples[3], note="maps the file: reads pages on demand"),
        ],
        notes=[
            "Stores filled in each library's fastest way (blobcache durability='os' then "
            f"closed; the peers in transactions of {BATCH:,} puts), then opened in a new "
            "Python process at each repetition (timed from the open call, imports done; a "
            "new process also pays the first touch of the memory it fills); warm page cache. "
            "blobcache pays at open what the others pay at each get: its index is in memory."
        ],
    )


# --- disk space ----------------------------------------------------------------------


def bench_disk(cfg: Config, root: str) -> list[Table]:
    names = key_names(cfg.disk_keys, "d")
    live = sum(len(k.encode()) + SMALL for k in names)
    progress(f"disk: {len(names):,} keys x {1 + OVERWRITES} puts of {SMALL} B per library")
    before: list[Line] = []
    after: list[Line] = []
    gc_ms: list[Line] = []
    gc_what = {DISKCACHE: "check(fix=True): VACUUM", LMDB_SYNC: "env.copy(compact=True)"}
    for contender in (BLOB_OS, BLOB_SMALL_SEGMENTS, DISKCACHE, LMDB_SYNC):
        path = os.path.join(root, "disk-" + contender.name)
        store = contender.open(path)
        for _ in range(1 + OVERWRITES):
            store.fill(names, os.urandom(SMALL))
        store.close()
        full = disk_usage(path).allocated
        store = contender.open(path)
        ns = time_ns(store.gc)
        store.close()
        compacted = path + ".compact" if os.path.isdir(path + ".compact") else path
        collected = disk_usage(compacted).allocated
        name = "blobcache" if contender is BLOB_OS else contender.name
        ours = contender.ours
        note = gc_what.get(contender, "gc(): compacts the log")
        before.append(Line(name, "", [full], ours=ours))
        after.append(Line(name, "", [collected], ours=ours, note=note))
        gc_ms.append(Line(name, "", [ns / 1e6], ours=ours, note=note))
        shutil.rmtree(path)
        if compacted != path:
            shutil.rmtree(compacted)
    floor = Line("floor: the live keys and values", "", [float(live)], floor=True)
    what = f"{OVERWRITES} overwrites of {len(names):,} keys of {SMALL} B"
    how = (
        f"{len(names):,} keys put, then overwritten {OVERWRITES} times with new {SMALL} B "
        "values (each round one transaction for the peers; blobcache durability='os'), the "
        "store closed; then opened, collected by the library's own means, closed. One run "
        "(n = 1). With 1 MiB segments, blobcache compacts sealed segments in the background "
        "while the puts go on; how far it got before close varies a little between runs."
    )
    return [
        Table(
            f"disk space after {what}",
            "bytes held (du)",
            rate=False,
            lines=[floor, *before],
            notes=[
                "Blocks held by every file and directory of the store (st_blocks x 512, as "
                f"`du` counts): {how}"
            ],
        ),
        Table(
            f"disk space after {what}, then each library's gc",
            "bytes held (du)",
            rate=False,
            lines=[floor, *after],
            notes=["As above; LMDB's file never shrinks: its figure is the compacted copy's."],
        ),
        Table("time of that gc", "ms", rate=False, lines=gc_ms),
    ]


# --- Flushes per put -----------------------------------------------------------------

SYNC_CALLS = ("fsync", "fdatasync", "msync", "sync_file_range", "syncfs", "sync")
WRITE_CALLS = ("write", "pwrite64", "writev", "pwritev", "pwritev2")
RENAME_CALLS = ("rename", "renameat", "renameat2")
TRACED = (
    *SYNC_CALLS,
    *WRITE_CALLS,
    *RENAME_CALLS,
    "open",
    "openat",
    "close",
    "access",
    "faccessat",
    "faccessat2",
)
PHASE = "/blobcache-bench-phase/"  # a path os.access is asked about, to mark phases
PHASES = ("small", "large, new key", "large, same keys again")


def sync_child(root: str, small: int, large: int, large_mib: int) -> None:
    """Run in a child under strace: each contender's puts, phases marked by os.access."""
    value, big = os.urandom(SMALL), os.urandom(MIB) * large_mib
    work = (
        (PHASES[0], small, value, "s"),
        (PHASES[1], large, big, "l"),
        (PHASES[2], large, big, "l"),
    )
    for contender in (BLOB_FSYNC, BLOB_OS, *PEERS):
        store = contender.open(os.path.join(root, contender.name))
        store.put("warm-up", value)
        for phase, count, data, prefix in work:
            os.access(f"{PHASE}{contender.name}/{phase}", os.F_OK)
            for i in range(count):
                store.put(f"{prefix}-{i}", data)
        os.access(f"{PHASE}{contender.name}/end", os.F_OK)
        store.close()


def classify(path: str, renamed: dict[str, str]) -> str:
    """What a traced call's file is, from its name (the one a temp file was renamed to)."""
    path = renamed.get(path, path)
    name = os.path.basename(path)
    if os.path.isdir(path):
        return "directory"
    if name.startswith("v-") or name.endswith(".val"):
        return "value file"  # blobcache's versions, diskcache's value files
    if name.endswith(".log"):
        return "log"
    if name.startswith("cache.db"):
        return "SQLite"
    return name  # data.mdb, key, ...


CALL = re.compile(r"^(?:\d+\s+)?(\w+)\((?:(\d+)<([^>]*)>)?")
OPENED = re.compile(r'"([^"]*)", ([A-Z_|]+).*= (\d+)<')
PATHS = re.compile(r'"([^"]*)"')


@dataclass
class Flushes:
    """What one contender did in one phase: flushes by file, and value files created."""

    by_file: dict[str, int] = field(default_factory=dict)
    created: int = 0

    def add(self, what: str) -> None:
        self.by_file[what] = self.by_file.get(what, 0) + 1


def count_flushes(trace: str) -> dict[str, dict[str, Flushes]]:
    """{contender: {phase: Flushes}} from strace's log: fsync-family calls, and writes
    through descriptors opened with O_DSYNC or O_SYNC (each is a flush of its own)."""
    lines = trace.splitlines()
    renamed: dict[str, str] = {}  # temp name -> the name it was published under
    for line in lines:
        match = CALL.match(line)
        if match is not None and match.group(1) in RENAME_CALLS:
            old, new = PATHS.findall(line)[:2]
            renamed[old] = new
    counts: dict[str, dict[str, Flushes]] = {}
    phase: Flushes | None = None
    dsync: set[str] = set()  # descriptors opened O_DSYNC / O_SYNC
    for line in lines:
        if PHASE in line:
            contender, _, which = line.split(PHASE, 1)[1].split('"', 1)[0].rpartition("/")
            phases = counts.setdefault(contender, {})
            phase = None if which == "end" else phases.setdefault(which, Flushes())
            continue
        match = CALL.match(line)
        if match is None:
            continue
        call, fd, path = match.groups()
        if call in ("open", "openat"):
            opened = OPENED.search(line)
            if opened is not None:
                target, flags, new_fd = opened.groups()
                if {"O_DSYNC", "O_SYNC"} & set(flags.split("|")):
                    dsync.add(new_fd)
                created = "O_CREAT" in flags and classify(target, renamed) == "value file"
                if phase is not None and created:
                    phase.created += 1
        elif call == "close":
            dsync.discard(fd)
        elif phase is None:
            continue
        elif call in SYNC_CALLS:
            phase.add(f"{call} {classify(path or '', renamed)}")
        elif call in WRITE_CALLS and fd in dsync:
            phase.add(f"O_DSYNC write {classify(path or '', renamed)}")
    return counts


def bench_flushes(cfg: Config, root: str) -> Table:
    small, large, mib = cfg.sync_small_puts, cfg.sync_large_puts, cfg.sync_large_mib
    what = f"{small} puts of {SMALL} B, {large} of {mib} MiB to new keys, then the same again"
    table = Table(
        "flushes per put: fsync-family calls and O_DSYNC writes",
        "flushes per put",
        rate=False,
        notes=[
            f"Counted by `strace -f -y` in a child process doing, per library, {what}, after "
            f"one untimed put; every thread's calls (background syncs too) of "
            f"{', '.join(SYNC_CALLS)}, and writes through descriptors opened with O_DSYNC or "
            "O_SYNC, by the file they went to (a temp file counted as what it was renamed to)."
        ],
    )
    strace = shutil.which("strace")
    if strace is None:
        table.notes.append("Not measured: strace is not installed.")
        return table
    work = os.path.join(root, "flushes")
    os.mkdir(work)
    log = os.path.join(root, "strace.log")
    call = f"sync_child({work!r}, {small}, {large}, {mib})"
    progress(f"flushes: {what}, under strace")
    command = [strace, "-f", "-y", "-qq", "-s", "0", "-o", log, "-e", "trace=" + ",".join(TRACED)]
    subprocess.run([*command, *child(call)], check=True, cwd=TOOLS)
    with open(log, encoding="utf-8", errors="replace") as f:
        counts = count_flushes(f.read())  # before the store is removed: it looks for directories
    shutil.rmtree(work)
    os.unlink(log)
    for contender in (BLOB_FSYNC, BLOB_OS, *PEERS):
        for phase, count in zip(PHASES, (small, large, large), strict=True):
            found = counts.get(contender.name, {}).get(phase, Flushes())
            where = [f"{n / count:g} {what}" for what, n in sorted(found.by_file.items())]
            if found.created:
                fsynced = sum(n for what, n in found.by_file.items() if what.endswith("value file"))
                where.append(f"value files created {found.created}, flushed {fsynced}")
            kind = f"{SMALL} B" if phase == PHASES[0] else f"{mib} MiB{phase.removeprefix('large')}"
            table.lines.append(
                Line(
                    f"{contender.name}, {kind}",
                    contender.small if phase == PHASES[0] else contender.large,
                    [sum(found.by_file.values()) / count],
                    ours=contender.ours,
                    note="; ".join(where) or "none",
                )
            )
    return table


# --- The inline_limit crossover ------------------------------------------------------


def crossover_puts(cfg: Config) -> int:
    return 2 if cfg.quick else 10


def bench_crossover(cfg: Config, root: str) -> list[bench_floor.Crossover]:
    """bench_floor's crossover (durable put and get, log vs a file per key, by size)."""
    sizes = "1,64" if cfg.quick else "1,4,16,64,256,1024"
    args = ["--crossover-kib", sizes, "--crossover-puts", str(crossover_puts(cfg))]
    floor_cfg = replace(bench_floor.parse_args(args), reps=cfg.reps)
    work = os.path.join(root, "crossover")
    os.mkdir(work)
    points = bench_floor.bench_crossover(floor_cfg, work)
    shutil.rmtree(work)
    return points


# --- Output --------------------------------------------------------------------------


@dataclass
class Report:
    facts: list[tuple[str, str]]
    tables: dict[str, Table]
    crossover: list[bench_floor.Crossover]
    crossover_puts: int
    reps: int
    seconds: float = 0.0


def render(report: Report) -> str:
    lines = ["## Machine", "", "| fact | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in report.facts]
    lines += ["", "## Goals", "", "| goal | measured | met |", "|---|---|---|"]
    for goal in goals_of(report.tables):
        lines.append(f"| {goal.text} | {goal.measured} | {'yes' if goal.met else '**NO**'} |")
    lines += [
        "",
        "## Results (median [min..max] of the repetitions)",
        "",
        "'survives': the crash an acknowledged write outlives. '÷ floor' and '÷ blobcache': "
        "this line's cost (time, or bytes) over the floor's and over blobcache's for the same "
        "crash (else the first such line), the median of per-repetition ratios: 3.00x means "
        "three times the time or bytes. In each repetition the contenders run back to back "
        "in a shuffled order.",
        "",
    ]
    for number, table in enumerate(report.tables.values(), 1):
        lines += render_table(number, table)
    if report.crossover:
        lines += bench_floor.render_crossover(report.crossover, report.reps, report.crossover_puts)
        lines.append("")
    lines.append(
        f"Whole run: {report.seconds:.0f} s; load average at the end (1/5/15 min): "
        f"{load_average()}."
    )
    return "\n".join(lines)


def as_json(report: Report) -> str:
    return json.dumps(
        {
            "machine": dict(report.facts),
            "seconds": report.seconds,
            "goals": [asdict(g) for g in goals_of(report.tables)],
            "tables": {key: asdict(table) for key, table in report.tables.items()},
            "crossover": [asdict(point) for point in report.crossover],
        },
        indent=1,
    )


def write_into_readme(readme: str, report: str) -> None:
    """Replace what lies between the README's bench markers with ``report``."""
    with open(readme, encoding="utf-8") as f:
        text = f.read()
    head, start, rest = text.partition(README_START)
    _, end, tail = rest.partition(README_END)
    if not start or not end:
        raise SystemExit(f"{readme} has no {README_START} ... {README_END} section")
    body = re.sub(r"^(#+) ", r"##\1 ", report, flags=re.MULTILINE)  # under the README's own
    with open(readme, "w", encoding="utf-8") as f:
        f.write(f"{head}{start}\n{body}\n{end}{tail}")


# --- Command line --------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--dir", default=None, help="where to make the run's temp directory")
    parser.add_argument("--json", default="bench.json", help="where to write the figures")
    parser.add_argument("--readme", default=None, help="a README to write the report into")
    args = parser.parse_args(argv)
    cfg = config(args.dir if args.dir is not None else default_parent(), args.quick)
    started = time.perf_counter_ns()
    root = tempfile.mkdtemp(prefix="blobcache-bench-", dir=cfg.parent)
    report = Report(machine_facts(root), {}, [], crossover_puts(cfg), cfg.reps)
    tables = report.tables
    try:
        report.facts.append(
            (
                "peers",
                f"diskcache {diskcache.__version__}, py-lmdb {lmdb.__version__} "
                f"(LMDB {'.'.join(map(str, lmdb.version()))})",
            )
        )
        tables["get"] = bench_small_get(cfg, root)
        for table in bench_large_get(cfg, root):
            tables[f"large-get-{len(tables)}"] = table
        tables["put1"] = bench_small_put(cfg, root, 1)
        tables["put8"] = bench_small_put(cfg, root, THREADS)
        for mib in cfg.put_mib:
            tables[f"large-put-{mib}"] = bench_large_put(cfg, root, mib, from_file=False)
        tables["put-file"] = bench_large_put(cfg, root, cfg.put_file_mib, from_file=True)
        for keys in cfg.open_small:
            tables[f"open-small-{keys}"] = bench_open(cfg, root, keys, SMALL)
        tables["open-large"] = bench_open(cfg, root, cfg.open_large, cfg.open_large_kib * KIB)
        tables["disk"], tables["disk-gc"], tables["gc-time"] = bench_disk(cfg, root)
        tables["flushes"] = bench_flushes(cfg, root)
        report.crossover = bench_crossover(cfg, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report.seconds = (time.perf_counter_ns() - started) / 1e9
    text = render(report)
    print(text)
    with open(args.json, "w", encoding="utf-8") as f:
        f.write(as_json(report))
    if args.readme:
        write_into_readme(args.readme, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
