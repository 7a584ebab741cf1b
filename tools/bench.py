#!/usr/bin/env python3
"""Benchmark blobcache beside the raw floor and its peers, on the same workloads, in one run.

The floor is the least plain Python calls do for the same job and the same crash
(a method wrapping ``dict.get``; an ``O_APPEND`` write + fdatasync; a temp file,
fsync, rename and fsync of the directory; ...). The peers are python-diskcache in
its default settings and with ``sqlite_synchronous=2`` (SQLite FULL), and LMDB
with ``sync=True``. Every contender gets a line per workload saying which crash
what it acknowledged survives, and two ratios: its cost (time, or bytes) over the
floor's for the same crash, and over blobcache's for the same crash. The
sections, chosen with ``--only`` (default: all, in this order):

* ``get``: ``get`` of a 100 B value, 10,000 keys looked up at random, str keys
  (values in the log, and in files of their own) and bytes keys; ``get`` of a
  64 MiB value, the first after opening the store (time to a usable buffer), and
  with every byte of it read;
* ``put``: put of 100 B, one thread and 8 threads, at both of blobcache's
  durability levels; 20,000 puts of 100 B in a row with ``durability="os"``;
  put of 64 MiB and of 1 GiB; ``put_file`` of a 1 GiB file; ``AsyncBlobCache.put``
  of 256 MiB beside ``BlobCache.put``;
* ``open``: open of a store of 100,000 and of 1,000,000 keys of 100 B, and of
  1,000 keys of 1 MiB, until the first ``get`` is served, in a new process each time;
* ``disk``: disk space after 10 overwrites of every key, before and after each
  library's gc, and the time of that gc;
* ``maintenance``: ``blobcache stats``, ``verify`` and ``gc`` as a user runs them,
  on a store of 10,000 keys that saw overwrites and deletes;
* ``flushes``: fsync-family system calls per put, counted by ``strace`` in a child
  process, with the files they went to;
* ``processes``: put of 100 B from 4 processes on one store beside one process
  alone, at both durability levels (the peers too, each process with a handle of
  its own); get of a missing key while another process holds the store open;
  how stale a hit may be while another process overwrites the key;
* ``crossover``: durable put and get latency, one thread, of values from 1 KiB to
  1 MiB in the log against in a file of their own: the figure the default
  ``inline_limit`` is chosen by;
* ``sieve``: miss ratios of SIEVE (``blobcache._sieve``), LRU and FIFO, simulated
  on Zipf traces (alpha 0.8, 1.0, 1.2) and on a Zipf trace with a scan spliced in
  (``tools/sieve_sim.py``, which also runs alone); nothing is stored.
* ``bounded``: issue 15's batches and expiry: 1,000 durable small puts as one
  batch against one by one (and a floor of one write and one fdatasync); get of
  keys put with and without a ttl beside the dict floor; how long a plain get
  still serves a value past its ttl (the sweep thread's wake-up).
* ``typed``: issue 16's memoize and typed values: a memoize hit beside diskcache's
  ``memoize``, joblib's ``Memory.cache`` and ``functools.lru_cache``; the memoize key
  of a call with a 512 MiB array beside xxh3-128 of its bytes and ``joblib.hash``;
  ``get_array`` of a 1 GiB array beside ``numpy.load(mmap_mode="r")``.
* ``remote``: issue 17's remote tier, against a SeaweedFS it starts on the loopback
  (``tests/seaweed.py``; needs the ``[test]`` extra): a write-through put of 64 MiB
  beside obstore's multipart upload of the same bytes; the first get of a 64 MiB value
  only the remote holds beside obstore's get streamed into a file and fsynced; puts of
  1 KiB, write-back beside no remote and write-through beside one create-only PUT.

The goals (of issues 3, 5, 6, 7, 13, 14, 15, 16 and 17) are set beside the measurement
they are about and gathered in a table of their own, met or not. Every figure is a median
over repetitions with its [min..max]; the contenders of a workload run back to back
in every repetition, in an order shuffled at each (see ``benchkit.interleave``: the
disk of a virtual machine drifts by several times within minutes, and so hits
every contender alike), and a ratio is the median of the per-repetition ratios.
After each large put, untimed, what it left dirty is synced and the page cache of
the files its store keeps is dropped, so that no contender pays for the one before
it. Nothing here asserts a timing: ``tests/test_bench_smoke.py`` runs ``--quick``
and checks that every table and goal comes out.

Usage: ``python tools/bench.py [--quick] [--only SECTION,...] [--dir DIR] [--json PATH]
[--report PATH]``. The Markdown report goes to stdout (and, with ``--report``,
between the bench markers of that file, e.g. docs/performance.md), the figures to
the JSON file, progress to stderr. Needs the ``[bench]`` extra (diskcache, lmdb).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import mmap
import multiprocessing
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/, when imported by path
import diskcache  # type: ignore[import-untyped]
import lmdb
import sieve_sim
import xxhash
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
    interleave,
    key_names,
    load_average,
    machine_facts,
    mb_per_s,
    median_ratio,
    net_sampler,
    per_s,
    progress,
    put_all,
    read_files,
    scandir_and_stat,
    size_name,
    spread,
    threaded_rate,
    time_ns,
    warm_up,
)

import blobcache  # after benchkit, which puts this tree first on sys.path
from blobcache import _fsio

TOOLS = str(Path(__file__).resolve().parent)  # where child processes import bench from

SMALL = 100  # bytes of a small value
THREADS = 8
OVERWRITES = 10
LMDB_MAP = 1 << 36  # LMDB's address space; the file only grows as pages are written
BATCH = 10_000  # puts per transaction when the peers' stores are filled for a workload
GET_SEED = 13  # seeds the one shuffle of the order the get workload looks its keys up in
OPEN_NS_PER_KEY = 1_500  # issue 3: open 100k small keys in 150 ms, 1M in 1.5 s
POWER, PROCESS = "power loss", "process crash"
REPORT_START, REPORT_END = "<!-- bench:start -->", "<!-- bench:end -->"
SECTIONS = (
    "get",
    "put",
    "open",
    "disk",
    "maintenance",
    "flushes",
    "processes",
    "crossover",
    "sieve",
    "bounded",
    "typed",
    "remote",
)


@dataclass(frozen=True)
class Config:
    parent: str
    quick: bool
    sections: tuple[str, ...]
    reps: int  # repetitions of most workloads
    big_reps: int  # of those writing 256 MiB or more per contender and repetition
    get_keys: int
    get_sample_ns: int
    large_get_mib: int
    small_puts: int  # per sample (per thread in the threads workload)
    os_puts: int  # per sample of the sustained durability="os" workload
    put_mib: tuple[int, ...]
    put_file_mib: int
    async_mib: int
    open_small: tuple[int, ...]
    open_large: int
    open_large_kib: int
    disk_keys: int
    maint_keys: int
    sync_small_puts: int  # puts counted by strace
    sync_large_puts: int
    sync_large_mib: int
    crossover_kib: tuple[int, ...]  # ascending
    crossover_puts: int  # per layout, size and repetition
    proc_puts: int  # per process and sample, of the puts that survive power loss
    proc_os_puts: int  # the same, of the others (they take a tenth of the time)
    stale_samples: int  # about how many changes the staleness workload sees, both ways
    sieve: sieve_sim.Sizes  # of the eviction simulation's traces
    batch_puts: int  # puts per batch, and per sample of the one-by-one puts beside it
    expiry_keys: int  # keys whose expiry lateness is measured, per repetition
    memo_keys: int  # stored calls the memoize hit workload cycles through
    array_key_mib: int  # the array whose memoize key is derived
    array_get_mib: int  # the array get_array returns
    remote_reps: int  # of the remote section (it shares 2 cores and a disk with its server)
    remote_mib: int  # the large value put to and read through from the remote
    remote_puts: int  # small puts per sample, with a remote


def config(parent: str, quick: bool, sections: tuple[str, ...] = SECTIONS) -> Config:
    full = Config(
        parent=parent,
        quick=False,
        sections=sections,
        reps=7,
        big_reps=5,
        get_keys=10_000,
        get_sample_ns=100_000_000,
        large_get_mib=64,
        small_puts=100,
        os_puts=20_000,
        put_mib=(64, 1024),
        put_file_mib=1024,
        async_mib=256,
        open_small=(100_000, 1_000_000),
        open_large=1_000,
        open_large_kib=1_024,
        disk_keys=10_000,
        maint_keys=10_000,
        sync_small_puts=50,
        sync_large_puts=3,
        sync_large_mib=4,
        crossover_kib=(1, 4, 16, 64, 256, 1024),
        crossover_puts=10,
        proc_puts=300,
        proc_os_puts=3_000,
        stale_samples=400,
        sieve=sieve_sim.FULL,
        batch_puts=1_000,
        expiry_keys=50,
        memo_keys=1_000,
        array_key_mib=512,
        array_get_mib=1024,
        remote_reps=11,
        remote_mib=64,
        remote_puts=100,
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
        os_puts=200,
        put_mib=(4,),
        put_file_mib=8,
        async_mib=4,
        open_small=(2_000,),
        open_large=20,
        open_large_kib=512,
        disk_keys=500,
        maint_keys=200,
        sync_small_puts=5,
        sync_large_puts=2,
        sync_large_mib=1,
        crossover_kib=(1, 64),
        crossover_puts=2,
        proc_puts=10,
        proc_os_puts=100,
        stale_samples=10,
        sieve=sieve_sim.QUICK,
        batch_puts=50,
        expiry_keys=3,
        memo_keys=50,
        array_key_mib=4,
        array_get_mib=4,
        remote_reps=2,
        remote_mib=4,
        remote_puts=5,
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


def contender_named(name: str) -> Contender:
    """The contender of that name, for a child process told it by name."""
    return next(c for c in (BLOB_FSYNC, BLOB_OS, *PEERS) if c.name == name)


# --- Tables and goals ----------------------------------------------------------------


@dataclass(frozen=True)
class Goal:
    issue: str  # the issue that set it
    text: str
    measured: str
    met: bool


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
    goals: list[Goal] = field(default_factory=list)  # about this table's lines

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

    def faster(self, issue: str, ours: str, other: str, times: float) -> None:
        """Goal: line ``ours`` at least ``times`` as fast as line ``other`` (faster, for 1)."""
        ratio = self.cost_ratio(self.line(other), self.line(ours))
        wanted = "faster than" if times == 1 else f">= {times:g}x as fast as"
        met = ratio > 1 if times == 1 else ratio >= times
        self.goals.append(
            Goal(issue, f"{self.title}: {ours} {wanted} {other}", f"{ratio:.2f}x as fast", met)
        )

    def costs_at_most(self, issue: str, ours: str, other: str, times: float) -> None:
        """Goal: line ``ours`` costs (time, or bytes) at most ``times`` what ``other`` does."""
        ratio = self.cost_ratio(self.line(ours), self.line(other))
        self.goals.append(
            Goal(
                issue,
                f"{self.title}: {ours} <= {times:g}x {other}",
                f"{ratio:.2f}x",
                ratio <= times,
            )
        )

    def scales(self, issue: str, one: Table, name: str, times: float, alone: str) -> None:
        """Goal: line ``name`` at least ``times`` its figure in table ``one``, measured in
        the same repetitions (``alone`` says what ``one`` measures: "one thread")."""
        ratio = median_ratio(self.line(name).samples, one.line(name).samples)
        text = f"{self.title}: {name} >= {times:g}x its puts/s from {alone}"
        self.goals.append(Goal(issue, text, f"{ratio:.2f}x", ratio >= times))

    def absolute(self, issue: str, ours: str, op: str, bound: float) -> None:
        """Goal: the median of line ``ours`` itself ``op`` ("<=" or ">=") ``bound``, in the unit."""
        median = statistics.median(self.line(ours).samples)
        met = median <= bound if op == "<=" else median >= bound
        text = f"{self.title}: {ours} {op} {fmt(bound)} {self.unit} (absolute)"
        self.goals.append(Goal(issue, text, f"{fmt(median)} {self.unit}", met))


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


# --- get -----------------------------------------------------------------------------


def bench_get(cfg: Config, root: str) -> list[Table]:
    return [*bench_small_get(cfg, root), *bench_large_get(cfg, root)]


def bench_small_get(cfg: Config, root: str) -> list[Table]:
    keys = key_names(cfg.get_keys)
    bytes_keys = [k.encode() for k in keys]
    value = os.urandom(SMALL)
    # Looked up in an order shuffled once (the same in every run), by equal but
    # distinct key objects, as a caller's keys are: a lookup by the very object
    # stored skips the compare, and an in-order sweep visits the keys in the order
    # they were allocated, which the CPU's caches favour. Both flatter a get.
    order = list(range(len(keys)))
    random.Random(GET_SEED).shuffle(order)
    fresh = key_names(len(keys))
    lookups = [fresh[i] for i in order]
    bytes_lookups = [k.encode() for k in lookups]
    progress(f"small get: {len(keys):,} keys of {SMALL} B in each store")
    log = blobcache.BlobCache(os.path.join(root, "get-log"), durability="os")
    files = blobcache.BlobCache(os.path.join(root, "get-files"), durability="os", inline_limit=0)
    by_bytes = blobcache.BlobCache(os.path.join(root, "get-bytes"), durability="os")
    peers = [c.open(os.path.join(root, "get-" + c.name)) for c in (DISKCACHE, LMDB_SYNC)]
    try:
        for cache, names in ((log, keys), (files, keys), (by_bytes, bytes_keys)):
            put_all(cache, names, value)
        for store in peers:
            store.fill(keys, value)
        for key in keys:
            files.get(key)  # maps and checks its file: what is timed is every later get
        disk, lm = peers
        env = lm.handle
        assert isinstance(env, lmdb.Environment)
        with env.begin() as txn:  # LMDB's best case: one read transaction, bytes keys
            floor = DictWrapper({k: log.get(k) for k in keys}).get
            bytes_floor = DictWrapper({k: by_bytes.get(k) for k in bytes_keys}).get
            timed: list[tuple[Callable[[Any], object], Sequence[object]]] = [
                (floor, lookups),
                (log.get, lookups),
                (files.get, lookups),
                (disk.get, lookups),
                (lm.get, lookups),
                (txn.get, bytes_lookups),
                (bytes_floor, bytes_lookups),
                (by_bytes.get, bytes_lookups),
            ]
            samplers = [net_sampler(get, names, cfg.get_sample_ns) for get, names in timed]
            progress(f"small get: {cfg.reps} repetitions")
            samples = interleave(cfg.reps, samplers)
    finally:
        for cache in (log, files, by_bytes):
            cache.close()
        for store in peers:
            store.close()
    floor_name = "floor: a method wrapping dict.get"
    str_keys = Table(
        f"get, {SMALL} B value, {len(keys):,} str keys present, looked up at random",
        "ns per get",
        rate=False,
        lines=[
            Line(floor_name, "", samples[0], floor=True),
            Line("blobcache", "", samples[1], ours=True, note="bytes, from memory"),
            Line(
                "blobcache, values in files",
                "",
                samples[2],
                ours=True,
                note="inline_limit=0: a memoryview of the mapped file, after its first get",
            ),
            Line("diskcache", "", samples[3], note="a SELECT per get"),
            Line("LMDB", "", samples[4], note="a read transaction per get"),
            Line("LMDB, one read transaction", "", samples[5], note="bytes keys ready: best case"),
        ],
        notes=[
            f"Net of the loop that drives the gets (subtracted per repetition); the {len(keys):,} "
            f"keys are looked up in an order shuffled once per run (seed {GET_SEED}), with "
            "equal but distinct key objects. The floor looks them up in a dict of the same "
            "keys and of the values blobcache's log serves. Stores filled with blobcache "
            "durability='os' (the peers in transactions); the synchronous setting and "
            "blobcache's durability do not change a get, so each library has one store.",
        ],
    )
    str_keys.costs_at_most("13", "blobcache", floor_name, 1.2)
    str_keys.costs_at_most("3", "blobcache", floor_name, 2.5)
    str_keys.costs_at_most("3", "blobcache, values in files", floor_name, 3)
    str_keys.faster("7", "blobcache", "diskcache", 50)
    str_keys.faster("7", "blobcache", "LMDB", 1)
    str_keys.faster("7", "blobcache", "LMDB, one read transaction", 1)
    bytes_keys_table = Table(
        f"get, {SMALL} B value, {len(keys):,} bytes keys present, looked up at random",
        "ns per get",
        rate=False,
        lines=[
            Line(floor_name, "", samples[6], floor=True),
            Line("blobcache", "", samples[7], ours=True, note="bytes, from memory"),
        ],
        notes=["As above, in the same repetitions, with keys of bytes (the same names, encoded)."],
    )
    bytes_keys_table.costs_at_most("13", "blobcache", floor_name, 1.2)
    return [str_keys, bytes_keys_table]


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

Work = Callable[[list[str]], object]  # what one thread does with its keys


def bench_put(cfg: Config, root: str) -> list[Table]:
    return [
        *bench_small_puts(cfg, root),
        bench_os_puts(cfg, root),
        *(bench_large_put(cfg, root, mib, from_file=False) for mib in cfg.put_mib),
        bench_large_put(cfg, root, cfg.put_file_mib, from_file=True),
        bench_async_put(cfg, root),
    ]


def record_bytes(store: Store, key: str) -> int:
    """Bytes blobcache's log takes for one put of a small value under ``key`` (and any
    key of that length), from ``stats()``: the floors write as many per put."""
    cache = store.handle
    assert isinstance(cache, blobcache.BlobCache)
    before = cache.stats().log_record_bytes
    cache.put(key, os.urandom(SMALL))
    return cache.stats().log_record_bytes - before


FLOOR_SYNCED = "floor: append + fdatasync"
FLOOR_UNSYNCED = "floor: append, no sync"
FLOOR_PWRITE = "floor: pwrite into written blocks + fdatasync"


def appending(fd: int, record: bytes, *, sync: bool) -> Work:
    def work(mine: list[str]) -> None:
        for _ in mine:
            os.write(fd, record)
            if sync:
                os.fdatasync(fd)

    return work


def written_region(path: str, size: int) -> int:
    """A new file of ``size`` bytes, written and fsynced, open for writing: writing over
    it allocates nothing and changes no size, so an fdatasync then flushes data alone
    (the least a log writing into room made ahead of time can cost)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    os.pwrite(fd, bytes(size), 0)
    os.fsync(fd)
    return fd


def overwriting(fd: int, record: bytes, first: int) -> Work:
    """Write ``record`` over the file from offset ``first`` on, one per key, each
    fdatasynced."""

    def work(mine: list[str]) -> None:
        for i in range(len(mine)):
            os.pwrite(fd, record, first + i * len(record))
            os.fdatasync(fd)

    return work


def putting(store: Store, value: bytes) -> Work:
    def work(mine: list[str]) -> None:
        for key in mine:
            store.put(key, value)

    return work


def put_rate(work: Work, tag: str, threads: int, puts: int) -> Sample:
    """puts/s of ``threads`` threads doing ``work`` on ``puts`` fresh keys each."""

    def sample(rep: int) -> float:
        keys = [key_names(puts, f"{tag}-{rep + 2:04d}-{t}") for t in range(threads)]
        return threaded_rate(work, keys)

    return sample


def bench_small_puts(cfg: Config, root: str) -> list[Table]:
    """Puts of 100 B from one thread and from 8, all in one interleaving: the 8-thread
    goal sets blobcache beside its own one-thread samples, taken moments apart."""
    value = os.urandom(SMALL)
    n = cfg.small_puts
    contenders = (BLOB_FSYNC, BLOB_OS, *PEERS)
    stores = [c.open(os.path.join(root, f"put-{c.name}")) for c in contenders]
    # The floors write as many bytes per put as blobcache's log does for such a key.
    record = os.urandom(record_bytes(stores[0], key_names(1, "t00-0000-0")[0]))
    synced = append_fd(os.path.join(root, "put-synced.floor"))
    unsynced = append_fd(os.path.join(root, "put-unsynced.floor"))
    # The pwrite floor overwrites one region, written and synced before any sample.
    written = written_region(os.path.join(root, "put-pwrite.floor"), len(record) * n)
    floors: list[tuple[str, str, Work]] = [
        (FLOOR_SYNCED, POWER, appending(synced, record, sync=True)),
        (FLOOR_UNSYNCED, PROCESS, appending(unsynced, record, sync=False)),
        (FLOOR_PWRITE, POWER, overwriting(written, record, 0)),
    ]
    works = [putting(store, value) for store in stores]
    plan = [(1, floors), (THREADS, floors[:2])]  # 8 threads pwriting one region: no floor
    samplers: list[Sample] = []
    for threads, its_floors in plan:
        for work in [*(w for _, _, w in its_floors), *works]:
            samplers.append(put_rate(work, f"t{len(samplers):02d}", threads, n))
    progress(f"put {SMALL} B, 1 and {THREADS} threads: {cfg.reps} repetitions of {n} per thread")
    try:
        warm_up(*samplers)
        samples = interleave(cfg.reps, samplers)
    finally:
        for fd in (synced, unsynced, written):
            os.close(fd)
        for store in stores:
            store.close()
    tables = []
    for threads, its_floors in plan:
        who = "one thread" if threads == 1 else f"{threads} threads"
        lines = [
            Line(name, survives, samples.pop(0), floor=True) for name, survives, _ in its_floors
        ]
        for contender in contenders:
            lines.append(
                Line(
                    contender.name,
                    contender.small,
                    samples.pop(0),
                    ours=contender.ours,
                    note=contender.why,
                )
            )
        tables.append(
            Table(
                f"put, {SMALL} B value, {who}",
                "puts/s",
                rate=True,
                lines=lines,
                notes=[
                    f"{who.capitalize()}, {n} fresh keys each per sample, timed from a barrier "
                    f"that releases them together; the floors write {len(record)} B per put "
                    "(blobcache's log record for such a key) to one O_APPEND file, or over a "
                    "region written and synced before the run (the least a log writing into "
                    "room made ahead of time can cost). The one-thread and "
                    f"{THREADS}-thread samples of every contender run in one shuffled order per "
                    "repetition. diskcache keeps values below 32 KiB in SQLite, so sync=2 makes "
                    "these puts survive power loss; one untimed warm-up round."
                ],
            )
        )
    one, many = tables
    one.costs_at_most("3", BLOB_FSYNC.name, FLOOR_SYNCED, 1.2)
    for table in tables:
        table.faster("7", BLOB_FSYNC.name, LMDB_SYNC.name, 1)
        table.faster("7", BLOB_FSYNC.name, DISKCACHE_FULL.name, 1)
    # Group commit should turn concurrency into throughput one for one (issue 3);
    # issue 14, which took the per-put CPU it could out of the GIL, asks for 4x.
    many.scales("3", one, BLOB_FSYNC.name, THREADS, "one thread")
    many.scales("14", one, BLOB_FSYNC.name, 4, "one thread")
    return tables


def bench_os_puts(cfg: Config, root: str) -> Table:
    """Many durability="os" puts in a row: what the background sync lets one thread reach."""
    n = cfg.os_puts
    store = BLOB_OS.open(os.path.join(root, "os-put"))
    record = os.urandom(record_bytes(store, key_names(1, "o0-0000-0")[0]))
    fd = append_fd(os.path.join(root, "os-put.floor"))
    samplers = [
        put_rate(appending(fd, record, sync=False), "o0", 1, n),
        put_rate(putting(store, os.urandom(SMALL)), "o1", 1, n),
    ]
    progress(f"put {SMALL} B, durability='os': {cfg.reps} repetitions of {n:,} puts")
    try:
        warm_up(*samplers)
        floor, ours = interleave(cfg.reps, samplers)
    finally:
        os.close(fd)
        store.close()
    table = Table(
        f"put, {SMALL} B value, {BLOB_OS.name}, one thread, {n:,} puts in a row",
        "puts/s",
        rate=True,
        lines=[
            Line(FLOOR_UNSYNCED, PROCESS, floor, floor=True),
            Line(BLOB_OS.name, PROCESS, ours, ours=True, note=BLOB_OS.why),
        ],
        notes=[
            f"{n:,} fresh keys per sample; the floor writes {len(record)} B per put (blobcache's "
            "record for such a put) to an O_APPEND file, no sync: what survives a process "
            "crash, as these puts do. The background sync thread (every second) runs "
            "meanwhile, as it would for a user; one untimed warm-up round."
        ],
    )
    table.absolute("3", BLOB_OS.name, ">=", 100_000)
    return table


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
    table = Table(
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
    table.faster("6" if from_file else "3", BLOB_FSYNC.name, names[0], 0.85)
    if not from_file:
        table.faster("7", BLOB_FSYNC.name, DISKCACHE.name, 2)
    return table


def bench_async_put(cfg: Config, root: str) -> Table:
    import asyncio  # only here: the rest of the benchmark is synchronous

    store = os.path.join(root, "async")
    value = os.urandom(MIB) * cfg.async_mib

    async def async_put(key: str) -> None:
        async with blobcache.AsyncBlobCache(store) as acache:
            await acache.put(key, value)
            await acache.delete(key)
            await acache.gc()

    def sync_put(key: str) -> None:
        with blobcache.BlobCache(store) as cache:
            cache.put(key, value)
            cache.delete(key)
            cache.gc()

    samplers: list[Sample] = [
        lambda rep: mb_per_s(len(value), time_ns(lambda: sync_put(f"sync-{rep}"))),
        lambda rep: mb_per_s(len(value), time_ns(lambda: asyncio.run(async_put(f"a-{rep}")))),
    ]
    reps = cfg.big_reps
    progress(f"async put of {size_name(len(value))} beside the sync put: {reps} repetitions")
    warm_up(*samplers)
    syncs, asyncs = interleave(reps, samplers)
    shutil.rmtree(store)
    table = Table(
        f"AsyncBlobCache.put of {size_name(len(value))}, beside BlobCache.put",
        "MB/s",
        rate=True,
        lines=[
            Line("baseline: BlobCache.put", POWER, syncs, floor=True),
            Line("AsyncBlobCache.put", POWER, asyncs, ours=True, note="disk work in a thread"),
        ],
        notes=[
            "Each sample opens the store, puts a fresh key, deletes it, gc()s and closes, on "
            "both sides (the async side in asyncio.run); one untimed warm-up round."
        ],
    )
    table.faster("6", "AsyncBlobCache.put", "baseline: BlobCache.put", 0.9)
    return table


# --- open ----------------------------------------------------------------------------


def open_until_get(name: str, path: str, key: str) -> None:
    """Run in a fresh child process: print the ms from opening ``path`` with contender
    ``name`` until a present key's value is served (the close is untimed)."""
    contender = contender_named(name)
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
    # The same store as a crash before its first close leaves it: no index snapshot
    # (issue 18), so open replays the whole log. (A crash after one leaves a
    # snapshot and the records after it: between the two.)
    unsnapped = ours + "-no-snapshot"
    shutil.copytree(ours, unsnapped)
    os.unlink(os.path.join(unsnapped, blobcache._format.SNAPSHOT_NAME))

    def floor(_rep: int) -> float:
        if small:
            return time_ns(lambda: [read_files(d) for d in logs]) / 1e6
        return time_ns(lambda: scandir_and_stat(ours)) / 1e6

    def opening(contender: Contender, path: str) -> Sample:
        def sample(rep: int) -> float:
            if path == unsnapped:  # (each open's close writes one: gone again, untimed)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(path, blobcache._format.SNAPSHOT_NAME))
            call = f"open_until_get({contender.name!r}, {path!r}, {names[(rep * 7919) % keys]!r})"
            done = subprocess.run(child(call), cwd=TOOLS, capture_output=True, check=True)
            return float(done.stdout)

        return sample

    samplers = [
        floor,
        *(opening(c, p) for c, p in zip(contenders, paths, strict=True)),
        opening(BLOB_FSYNC, unsnapped),
    ]
    reps = 3 if keys >= 1_000_000 else cfg.reps  # 5 stores of a million keys: a few s each
    progress(f"open: {keys:,} keys, {reps} repetitions")
    warm_up(*samplers)
    samples = interleave(reps, samplers)
    for path in [*paths, unsnapped]:
        shutil.rmtree(path)
    floor_name = (
        "floor: read blobcache's log files" if small else "floor: scandir + stat blobcache's tree"
    )
    table = Table(
        f"open a store of {keys:,} keys of {size_name(value_size)}, until a get is served",
        "ms",
        rate=False,
        lines=[
            Line(floor_name, "", samples[0], floor=True),
            Line(
                "blobcache",
                "",
                samples[1],
                ours=True,
                note="maps its index snapshot: keys loaded on first use",
            ),
            Line(
                "blobcache, no snapshot",
                "",
                samples[4],
                ours=True,
                note="as after a crash before any close: replays the whole log",
            ),
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
    if small:
        table.absolute("3, 7", "blobcache, no snapshot", "<=", keys * OPEN_NS_PER_KEY / 1e6)
        table.costs_at_most("18", "blobcache", floor_name, 4.0 if keys < 1_000_000 else 6.0)
        table.costs_at_most("18 (3)", "blobcache", floor_name, 1.0)
    else:
        table.costs_at_most("18", "blobcache", floor_name, 1.2)
    return table


def bench_opens(cfg: Config, root: str) -> list[Table]:
    small = [bench_open(cfg, root, keys, SMALL) for keys in cfg.open_small]
    memory = bench_open_memory(cfg, root, cfg.open_small[0], SMALL)
    return [*small, memory, bench_open(cfg, root, cfg.open_large, cfg.open_large_kib * KIB)]


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_per_key(path: str, keys: int) -> None:
    """Run in a fresh child process: print the bytes of resident memory per key
    after opening the store at ``path``, then after a get of every key (the
    values held; each a bytes object of its own)."""
    import gc

    names = key_names(keys, "m")
    gc.collect()
    before = _rss()
    cache = blobcache.BlobCache(path)
    opened = _rss()
    held = [cache.get(name) for name in names]
    assert all(v is not None for v in held)
    del held
    gc.collect()
    got = _rss()
    print(json.dumps({"open": (opened - before) / keys, "all": (got - before) / keys}))
    cache.close()


def bench_open_memory(cfg: Config, root: str, keys: int, value_size: int) -> Table:
    """Issue 18's goal: resident memory per small key <= key + value + 100 B."""
    names = key_names(keys, "m")
    path = os.path.join(root, f"memory-{keys}")
    store = BLOB_OS.open(path)
    store.fill(names, os.urandom(value_size))
    store.close()
    goal = float(len(names[0]) + value_size + 100)
    opened: list[float] = []
    everything: list[float] = []
    for _ in range(3 if keys >= 1_000_000 else cfg.reps):
        call = f"memory_per_key({path!r}, {keys})"
        done = subprocess.run(child(call), cwd=TOOLS, capture_output=True, check=True)
        got = json.loads(done.stdout)
        opened.append(got["open"])
        everything.append(got["all"])
    shutil.rmtree(path)
    table = Table(
        f"resident memory per key, a store of {keys:,} keys of {size_name(value_size)}",
        "bytes",
        rate=False,
        lines=[
            Line(
                "floor: key + value + 100 B (issue 18's bound)",
                "",
                [goal] * len(everything),
                floor=True,
            ),
            Line("blobcache, opened", "", opened, ours=True, note="keys loaded on first use"),
            Line("blobcache, every key got", "", everything, ours=True, note="all in memory"),
        ],
        notes=[
            "RSS (/proc/self/statm) of a fresh process before the open, after it, and after "
            "a get of every key (the values dropped, the index holding them), over the keys; "
            "the snapshot's mapped pages touched count too. Keys of "
            f"{len(names[0])} characters."
        ],
    )
    table.costs_at_most("18", "blobcache, every key got", table.lines[0].name, 1.0)
    return table


# --- disk space ----------------------------------------------------------------------


def bench_disk(cfg: Config, root: str) -> list[Table]:
    names = key_names(cfg.disk_keys, "d")
    live = sum(len(k.encode()) + SMALL for k in names)
    progress(f"disk: {len(names):,} keys x {1 + OVERWRITES} puts of {SMALL} B per library")
    before: list[Line] = []
    after: list[Line] = []
    gc_ms: list[Line] = []
    records = 0  # the log's record bytes in blobcache's store after its gc
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
        if contender is BLOB_OS:
            assert isinstance(store.handle, blobcache.BlobCache)
            records = store.handle.stats().log_record_bytes
        store.close()
        compacted = path + ".compact" if os.path.isdir(path + ".compact") else path
        collected = disk_usage(compacted)
        name = "blobcache" if contender is BLOB_OS else contender.name
        ours = contender.ours
        note = gc_what.get(contender, "gc(): compacts the log")
        before.append(Line(name, "", [full], ours=ours))
        after.append(Line(name, "", [collected.allocated], ours=ours, note=note))
        if contender is BLOB_OS:
            sizes = [float(collected.apparent)]
            after.append(
                Line("blobcache, sum of file sizes", "", sizes, ours=True, note="not blocks")
            )
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
    collected_table = Table(
        f"disk space after {what}, then each library's gc",
        "bytes held (du)",
        rate=False,
        lines=[floor, *after],
        notes=[
            "As above; LMDB's file never shrinks: its figure is the compacted copy's. "
            f"blobcache's log records take {records:,} B after its gc "
            f"(`stats().log_record_bytes`, {records / live:.2f}x the live bytes: each record's "
            "framing); the rest of its file sizes are segment headers, the marker and lock files."
        ],
    )
    collected_table.costs_at_most("3", "blobcache", floor.name, 1.2)
    collected_table.costs_at_most("3", "blobcache, sum of file sizes", floor.name, 1.2)
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
        collected_table,
        Table("time of that gc", "ms", rate=False, lines=gc_ms),
    ]


# --- The maintenance command -------------------------------------------------------

MAINT_LARGE_SHARE = 10  # one key in this many holds a large value
MAINT_LARGE = 64 * KIB
GC_FIXED_OVERHEAD = 64 * KIB  # marker, an empty active segment, directory blocks


def run_command(*args: str) -> float:
    """Run ``python -m blobcache ARGS`` as a user would; return its wall time in seconds."""
    start = time.perf_counter_ns()
    subprocess.run(
        [sys.executable, "-m", "blobcache", *args], check=True, stdout=subprocess.DEVNULL
    )
    return (time.perf_counter_ns() - start) / 1e9


def bench_maintenance(cfg: Config, root: str) -> list[Table]:
    store = os.path.join(root, "maintenance")
    keys = key_names(cfg.maint_keys, "m")
    progress(f"maintenance: {len(keys):,} keys, 3 puts each, a tenth deleted (durability='os')")
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
    progress(f"maintenance: blobcache stats and verify, {cfg.reps} repetitions, then gc")
    starts, stats, verify = interleave(
        cfg.reps,
        [
            lambda _rep: python_start(),
            lambda _rep: run_command("stats", "--json", store),
            lambda _rep: run_command("verify", "--json", store),
        ],
    )
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
    floor = "floor: starting Python and importing blobcache"
    times = Table(
        f"the maintenance command on a store of {len(keys):,} keys",
        "s",
        rate=False,
        lines=[
            Line(floor, "", starts, floor=True),
            Line("blobcache stats", "", stats, ours=True),
            Line(
                "blobcache verify",
                "",
                verify,
                ours=True,
                note=f"reads every byte, {before.apparent / MB:.1f} MB",
            ),
        ],
        notes=[f"{what}, the three run back to back in a shuffled order per repetition."],
    )
    times.absolute("5", "blobcache stats", "<=", 5)
    times.absolute("5", "blobcache verify", "<=", 10)
    fixed = f"floor: the live bytes + {GC_FIXED_OVERHEAD // KIB} KiB of fixed overhead"
    collected = Table(
        "after `blobcache gc` on that store",
        "bytes (file sizes)",
        rate=False,
        lines=[
            Line(fixed, "", [float(live + GC_FIXED_OVERHEAD)], floor=True),
            Line("blobcache", "", [float(after.apparent)], ours=True, note="sum of file sizes"),
        ],
        notes=[
            f"gc took {gc_s:.2f} s and took the store from {before.apparent:,} to "
            f"{after.apparent:,} bytes; live bytes {live:,}; empty directories left: "
            f"{empty_dirs}. One run, n = 1."
        ],
    )
    collected.costs_at_most("5", "blobcache", fixed, 1.1)
    return [times, collected]


def python_start() -> float:
    """Seconds to start Python and import blobcache: what every command pays first."""
    start = time.perf_counter_ns()
    subprocess.run([sys.executable, "-c", "import blobcache"], check=True)
    return (time.perf_counter_ns() - start) / 1e9


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


# --- Several processes on one store --------------------------------------------------

PROCESSES = 4
SPAWN = multiprocessing.get_context("spawn")  # a new interpreter: nothing inherited by fork
# Each floor of the processes' puts: the crash its puts survive, and its file's name.
PROCESS_FLOORS = {
    FLOOR_SYNCED: (POWER, "synced"),
    FLOOR_UNSYNCED: (PROCESS, "unsynced"),
    FLOOR_PWRITE: (POWER, "pwrite"),
}
START_LINE_S = 120.0  # a worker waiting longer than this for the others fails the run
OVERWRITE_NS = 1_000_000  # the visibility writer overwrites its key every 1 ms
STALE_SLACK_MS = 5.0  # issue 14: p99 staleness of a hit <= refresh_interval + 5 ms
POLL_PAUSE_S = 0.0001  # the pause between a polling reader's gets, when it pauses


@dataclass(frozen=True)
class PutJob:
    """A worker's job: put ``count`` fresh keys (named from ``prefix``) with contender
    ``name``'s store at ``path``, or, for a floor, write as many records of ``record``
    bytes to the file ``path`` (the pwrite floor over region ``slot`` of it, a region
    per worker); with ``together``, wait at the start line for every worker first.
    The store or file stays open until the worker ends, so a count of 0 opens it and
    holds it open."""

    name: str
    path: str
    prefix: str
    count: int
    record: int
    together: bool = False
    slot: int = 0


@dataclass(frozen=True)
class Done:
    """A PutJob's answer: the monotonic clock (system-wide on Linux) when the puts
    began and ended, and what the worker spent meanwhile, in all its threads: the
    fdatasyncs blobcache made, and CPU time (ns)."""

    start: int
    end: int
    fdatasyncs: int
    cpu: int


@dataclass(frozen=True)
class OverwriteJob:
    """A worker's job: overwrite ``key`` of the store at ``path`` (default options)
    with ``stamp(1)`` .. ``stamp(count)``, one every ``interval_ns``; answer with the
    monotonic clock just after each put returned."""

    path: str
    key: str
    count: int
    interval_ns: int


class FdatasyncCount:
    """The fdatasyncs blobcache makes in this process, in any thread. Each goes through
    ``blobcache._fsio.fdatasync`` (STYLE.md, convention 3), so wrapping that one
    helper counts them all; strace would too, at the cost of slowing every call."""

    def __init__(self) -> None:
        self.calls = 0
        self._lock = threading.Lock()
        real = _fsio.fdatasync

        def counted(fd: int) -> None:
            real(fd)
            with self._lock:
                self.calls += 1

        _fsio.fdatasync = counted


def open_work(job: PutJob, closing: list[Callable[[], object]]) -> Work:
    record = os.urandom(job.record)
    if job.name == FLOOR_PWRITE:
        fd = os.open(job.path, os.O_RDWR | os.O_CLOEXEC)
        closing.append(lambda: os.close(fd))
        return overwriting(fd, record, job.slot * job.count * job.record)
    if job.name in PROCESS_FLOORS:
        # O_APPEND: each process's write lands whole after the others', no lock needed.
        fd = append_fd(job.path)
        closing.append(lambda: os.close(fd))
        return appending(fd, record, sync=job.name == FLOOR_SYNCED)
    store = contender_named(job.name).open(job.path)
    closing.append(store.close)
    return putting(store, os.urandom(SMALL))


def stamp(n: int) -> bytes:
    """A value of SMALL bytes that says which overwrite wrote it."""
    return n.to_bytes(8, "little") * (SMALL // 8) + bytes(SMALL % 8)


def overwrite(job: OverwriteJob) -> list[int]:
    returned: list[int] = []
    with blobcache.BlobCache(job.path) as cache:
        due = time.monotonic_ns()
        for n in range(1, job.count + 1):
            due += job.interval_ns
            ahead = due - time.monotonic_ns()
            if ahead > 0:
                time.sleep(ahead / 1e9)
            cache.put(job.key, stamp(n))
            returned.append(time.monotonic_ns())
    return returned


def process_worker(jobs: Connection, start_line: Barrier) -> None:
    """Run in a spawned process: do the jobs the parent sends, until it sends None."""
    fdatasyncs = FdatasyncCount()
    works: dict[str, Work] = {}
    closing: list[Callable[[], object]] = []
    try:
        while (job := jobs.recv()) is not None:
            if isinstance(job, OverwriteJob):
                jobs.send(overwrite(job))
                continue
            work = works.get(job.path)
            if work is None:  # untimed: opening comes before the start line
                work = works[job.path] = open_work(job, closing)
            keys = key_names(job.count, job.prefix)
            before = fdatasyncs.calls
            if job.together:
                start_line.wait(START_LINE_S)
            cpu = time.process_time_ns()
            start = time.monotonic_ns()
            work(keys)
            end = time.monotonic_ns()
            cpu = time.process_time_ns() - cpu
            jobs.send(Done(start, end, fdatasyncs.calls - before, cpu))
    finally:
        for close in closing:
            close()


class Workers:
    """``count`` worker processes (``process_worker``), spawned anew for each
    repetition by ``at``: a repetition inherits no process, handle or memory of
    the one before. Stopped (or, after an error, terminated) on leaving ``with``."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._rep: int | None = None
        # Kept: a spawned child opens the barrier's semaphore by name when it starts,
        # and it is gone once the parent's last reference is.
        self._start_line: Barrier | None = None
        self._procs: list[multiprocessing.process.BaseProcess] = []
        self._pipes: list[Connection] = []

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is None:
            self.stop()
            return
        for proc in self._procs:  # a worker may be stuck at the start line
            proc.terminate()
            proc.join()

    def at(self, rep: int) -> Workers:
        """The workers of repetition ``rep``: the same as for the last call, or new ones."""
        if rep != self._rep:
            self.stop()
            self._start_line = SPAWN.Barrier(self.count)
            for _ in range(self.count):
                mine, theirs = SPAWN.Pipe()
                proc = SPAWN.Process(target=process_worker, args=(theirs, self._start_line))
                proc.start()
                theirs.close()
                self._procs.append(proc)
                self._pipes.append(mine)
            self._rep = rep
        return self

    def send(self, jobs: Sequence[PutJob | OverwriteJob]) -> None:
        """Give job i to worker i."""
        assert len(jobs) <= self.count
        for pipe, job in zip(self._pipes, jobs, strict=False):  # fewer jobs: the first workers
            pipe.send(job)

    def answers(self, count: int) -> list[Any]:
        """The answers of the first ``count`` workers to the jobs last sent."""
        return [pipe.recv() for pipe in self._pipes[:count]]

    def run(self, jobs: Sequence[PutJob | OverwriteJob]) -> list[Any]:
        """Give job i to worker i, all before waiting for any; return their answers."""
        self.send(jobs)
        return self.answers(len(jobs))

    def stop(self) -> None:
        for pipe in self._pipes:
            pipe.send(None)
        for proc in self._procs:
            proc.join()
            if proc.exitcode != 0:
                raise SystemExit(f"a benchmark worker process exited with {proc.exitcode}")
        self._procs.clear()
        self._pipes.clear()
        self._rep = None


@dataclass
class PerPut:
    """What the processes spent per put, over a workload's samples (one figure each)."""

    fdatasyncs: list[float] = field(default_factory=list)  # blobcache's
    cpu_us: list[float] = field(default_factory=list)  # every thread of every process

    def clear(self) -> None:
        self.fdatasyncs.clear()
        self.cpu_us.clear()

    def note(self, ours: bool) -> str:
        cpu = f"{statistics.median(self.cpu_us):.1f} us CPU per put"
        return f"{statistics.median(self.fdatasyncs):.2f} fdatasyncs, {cpu}" if ours else cpu


def processes_rate(workers: Workers, job: PutJob, processes: int, per_put: PerPut) -> Sample:
    """puts/s of ``processes`` workers each doing ``job`` on fresh keys of its own, from
    the first one's start to the last one's end; what each sample spent per put goes
    to ``per_put``."""
    # The start line waits for every worker: one alone does not wait at all.
    assert processes in (1, workers.count)

    def sample(rep: int) -> float:
        jobs = [
            replace(job, prefix=f"{job.prefix}-{rep + 2:04d}-{i}", together=processes > 1, slot=i)
            for i in range(processes)
        ]
        done: list[Done] = workers.at(rep).run(jobs)
        puts = job.count * processes
        per_put.fdatasyncs.append(sum(d.fdatasyncs for d in done) / puts)
        per_put.cpu_us.append(sum(d.cpu for d in done) / puts / 1e3)
        return per_s(puts, max(d.end for d in done) - min(d.start for d in done))

    return sample


def bench_processes(cfg: Config, root: str) -> list[Table]:
    return [*bench_process_puts(cfg, root), bench_miss(cfg, root), bench_staleness(cfg, root)]


def bench_process_puts(cfg: Config, root: str) -> list[Table]:
    """Puts of 100 B from one process and from 4 on one store, all in one interleaving."""
    contenders = (BLOB_FSYNC, BLOB_OS, *PEERS)
    # The one-process samples have stores of their own, which no other worker opens:
    # that process is alone on its store, as the goal says.
    paths = {
        (c.name, n): os.path.join(root, f"proc{n}-{c.name}")
        for c in contenders
        for n in (1, PROCESSES)
    }
    for (name, _), path in paths.items():  # made here, one at a time: the workers open them
        contender_named(name).open(path).close()
    store = BLOB_FSYNC.open(paths[BLOB_FSYNC.name, 1])
    record = record_bytes(store, key_names(1, "p00-0001-0")[0])  # the keys' length
    store.close()
    for name, (_, kind) in PROCESS_FLOORS.items():
        for n in (1, PROCESSES):
            paths[name, n] = os.path.join(root, f"proc{n}-{kind}.floor")
    counts = {POWER: cfg.proc_puts, PROCESS: cfg.proc_os_puts}
    # Room for every process's records: each sample writes over the same regions.
    for n in (1, PROCESSES):
        os.close(written_region(paths[FLOOR_PWRITE, n], n * cfg.proc_puts * record))
    survives = {name: crash for name, (crash, _) in PROCESS_FLOORS.items()}
    survives |= {c.name: c.small for c in contenders}
    plan = [(n, name) for n in (1, PROCESSES) for name in survives]
    spent = [PerPut() for _ in plan]
    with Workers(PROCESSES) as workers:
        samplers = [
            processes_rate(
                workers,
                PutJob(name, paths[name, n], f"p{i:02d}", counts[survives[name]], record),
                n,
                spent[i],
            )
            for i, (n, name) in enumerate(plan)
        ]
        progress(
            f"processes: put {SMALL} B from 1 and {PROCESSES} processes, {cfg.reps} repetitions "
            f"of {cfg.proc_puts} durable and {cfg.proc_os_puts:,} other puts per process"
        )
        warm_up(*samplers)
        for found in spent:
            found.clear()  # the warm-up's
        samples = interleave(cfg.reps, samplers)
    tables = []
    for n in (1, PROCESSES):
        lines = []
        for (m, name), got, per_put in zip(plan, samples, spent, strict=True):
            if m != n:
                continue
            if name in PROCESS_FLOORS:
                note = per_put.note(ours=False)
                lines.append(Line(name, survives[name], got, floor=True, note=note))
                continue
            contender = contender_named(name)
            note = f"{contender.why}; {per_put.note(contender.ours)}"
            lines.append(Line(name, contender.small, got, ours=contender.ours, note=note))
        who = "one process alone" if n == 1 else f"{n} processes on one store, one thread each"
        tables.append(Table(f"put, {SMALL} B value, {who}", "puts/s", rate=True, lines=lines))
    one, many = tables
    scaling = ", ".join(
        f"{line.name} {median_ratio(line.samples, one.line(line.name).samples):.2f}x"
        for line in many.lines
    )
    one.notes.append(
        f"One spawned process putting {cfg.proc_puts} fresh keys per sample for the lines that "
        f"survive power loss, {cfg.proc_os_puts:,} for the others, into a store (or floor file) "
        "no other process has open; timed in the process, from its first put to its last "
        f"return. Its samples run in the same shuffled order per repetition as the {PROCESSES} "
        "processes' of the next table, whose notes say the rest."
    )
    many.notes += [
        f"{PROCESSES} processes, spawned anew at each repetition, each opening its own handle "
        "(diskcache.Cache, lmdb.open, BlobCache) on one store per contender, every one "
        "putting as many fresh keys of its own as the process alone does; opening is untimed. "
        "They are released together from a barrier, and timed from the first one's start to "
        "the last one's end by the monotonic clock, which is system-wide on Linux; puts/s "
        f"counts every process's puts. The floors write {record} B per put (blobcache's log "
        "record for such a key) to one file: appended through O_APPEND, each process "
        "fdatasyncing its own appends or not syncing at all, or written by each process over "
        "a region of its own of a file written and synced before the run (no size change, as "
        "in blobcache's zero-filled log), fdatasyncing each. blobcache's fdatasyncs per put: "
        "counted in each process, every thread, by wrapping blobcache._fsio.fdatasync (the "
        "one helper that makes them), over every process's puts; CPU per put: the processes' "
        "CPU time (every thread: blobcache's background ones too) over their puts, the "
        "median of the samples. One untimed warm-up round.",
        f"{PROCESSES} processes over one process, median of per-repetition ratios: {scaling}.",
    ]
    many.scales("14", one, BLOB_FSYNC.name, 2.5, "one process")
    many.scales("14", one, BLOB_OS.name, 1, "one process")
    return tables


def bench_miss(cfg: Config, root: str) -> Table:
    """get of absent keys while another process holds the store open: every miss
    looks whether other processes appended (STATE) before it says "missing"."""
    keys = key_names(cfg.get_keys)
    absent = key_names(cfg.get_keys, "absent")
    value = os.urandom(SMALL)
    path = os.path.join(root, "miss")
    progress(f"processes: a miss, {len(keys):,} keys present, another process holding the store")
    cache = blobcache.BlobCache(path, durability="os")  # a miss is the same at either level
    put_all(cache, keys, value)
    peers = [c.open(os.path.join(root, "miss-" + c.name)) for c in (DISKCACHE, LMDB_SYNC)]
    try:
        for store in peers:
            store.fill(keys, value)
        with Workers(1) as holder:
            holder.at(0).run([PutJob(BLOB_FSYNC.name, path, "held", 0, 0)])
            floor = DictWrapper(dict.fromkeys(keys, value)).get
            gets: list[Callable[[Any], object]] = [floor, cache.get, *(s.get for s in peers)]
            samplers = [net_sampler(get, absent, cfg.get_sample_ns) for get in gets]
            warm_up(*samplers)
            samples = interleave(cfg.reps, samplers)
    finally:
        cache.close()
        for store in peers:
            store.close()
    table = Table(
        f"get of a missing key, {len(keys):,} keys present, another process holding the store",
        "ns per get",
        rate=False,
        lines=[
            Line("floor: a method wrapping dict.get, a miss", "", samples[0], floor=True),
            Line(
                "blobcache, a miss",
                "",
                samples[1],
                ours=True,
                note="looks at STATE for others' records, then misses",
            ),
            Line("diskcache, a miss", "", samples[2], note="a SELECT per get"),
            Line("LMDB, a miss", "", samples[3], note="a read transaction per get"),
        ],
        notes=[
            f"{len(absent):,} absent keys looked up in turn, net of the driving loop, while a "
            "spawned process holds the blobcache store open (idle): each miss checks the "
            "store's shared STATE for records other processes appended (none here) before "
            "answering; the cost of reading records that are there is not in this figure. "
            "Stores filled with blobcache durability='os' (the peers in transactions); one "
            "untimed warm-up round."
        ],
    )
    table.absolute("14", "blobcache, a miss", "<=", 20_000)
    return table


def bench_staleness(cfg: Config, root: str) -> Table:
    """How long after another process's put returned a hit still served the value it replaced."""
    interval = blobcache.Options().refresh_interval
    overwrites = cfg.stale_samples * round(interval * 1e9) // OVERWRITE_NS
    path = os.path.join(root, "stale")
    key = "stamped"
    every = f"{OVERWRITE_NS / 1e6:g} ms"
    progress(f"processes: staleness, {overwrites:,} overwrites {every} apart by another process")
    # (monotonic ns, a value a get served first then, whether the polls paused meanwhile)
    seen: list[tuple[int, bytes, bool]] = []
    with blobcache.BlobCache(path) as cache, Workers(1) as writer:
        last = stamp(0)
        cache.put(key, last)
        final = stamp(overwrites)
        deadline = time.monotonic_ns() + 10 * overwrites * OVERWRITE_NS + 60 * 10**9
        writer.at(0).send([OverwriteJob(path, key, overwrites, OVERWRITE_NS)])
        get = cache.get
        pause = False
        while last != final:
            got = get(key)
            if got != last:
                assert got is not None  # the key is never deleted
                seen.append((time.monotonic_ns(), bytes(got), pause))
                last = seen[-1][1]
                pause = not pause  # the next change is waited for the other way
            elif time.monotonic_ns() > deadline:
                raise SystemExit(f"staleness: {final!r} was never served; last {last!r}")
            elif pause:
                time.sleep(POLL_PAUSE_S)
        returned: list[int] = writer.answers(1)[0]
    shutil.rmtree(path)
    stale: dict[bool, list[float]] = {False: [], True: []}
    served = 0  # the overwrite the gets served until the change
    for now, value, paused in seen:
        stale[paused].append((now - returned[served]) / 1e6)  # returned[i]: overwrite i + 1's
        served = int.from_bytes(value[:8], "little")
    lines = []
    for paused, name in ((False, "blobcache"), (True, "blobcache, polls 0.1 ms apart")):
        ms = stale[paused]
        percentiles = statistics.quantiles(ms, n=100, method="inclusive")
        for what, figure in (("p50", percentiles[49]), ("p99", percentiles[98]), ("max", max(ms))):
            lines.append(Line(f"{name}, {what}", "", [figure], ours=True))
    table = Table(
        f"staleness of a hit while another process overwrites the key every {every}",
        "ms",
        rate=False,
        lines=lines,
        notes=[
            f"Of {len(stale[False])} and {len(stale[True])} changes seen, one run. This "
            "process polls get(key) on a handle with the default refresh_interval "
            f"({interval * 1e3:g} ms): in a tight loop ('blobcache') or sleeping "
            f"{POLL_PAUSE_S * 1e3:g} ms between gets, which lets the handle's background "
            "refresh thread have the GIL at once; the two alternate at each change seen. A "
            f"spawned process overwrites the key {overwrites:,} times, {every} apart "
            "(durability='fsync'), with values that carry the overwrite's number, and reads "
            "the monotonic clock (system-wide on Linux) just after each put returns. Each "
            "time a get serves a new value, the sample is the time from the return of the "
            "first put it had not served yet (the one after the value served until then) to "
            "that get: how long hits kept serving a value after a put replacing it was "
            "acknowledged. It includes the poll (a get and a clock read, well under a "
            "microsecond, or the sleep) and, for the tight loop, the hand-overs of the GIL "
            "from the polling thread to the refresh thread (each up to "
            f"sys.getswitchinterval(), {sys.getswitchinterval() * 1e3:g} ms)."
        ],
    )
    table.absolute("14", "blobcache, p99", "<=", interval * 1e3 + STALE_SLACK_MS)
    return table


# --- Eviction: SIEVE's miss ratio ---------------------------------------------------


def bench_sieve(cfg: Config, _root: str) -> list[Table]:
    """One table per trace of ``tools/sieve_sim.py``; on each Zipf trace, the goal
    that SIEVE misses no more than LRU (issue 15's choice of SIEVE rests on it)."""
    sizes = cfg.sieve
    progress(f"sieve: SIEVE, LRU and FIFO simulated on traces of {sizes.requests:,} requests")
    outcomes, sampler = sieve_sim.simulate(sizes)
    how = {
        "SIEVE": "blobcache._sieve.Sieve",
        "LRU": "OrderedDict, moved to the end on a hit",
        "FIFO": "a deque",
    }
    tables = []
    for outcome in outcomes:
        table = Table(
            f"miss ratio, {outcome.requests:,} requests of {outcome.trace}, a cache of "
            f"{outcome.cache:,}",
            "% of requests missed",
            rate=False,
            lines=[
                Line(p, "", [100 * outcome.ratio(p)], ours=p == "SIEVE", note=how[p])
                for p in sieve_sim.POLICIES
            ],
            notes=[
                f"Simulated, unit-size objects, every miss counted (the cold start's too); "
                f"{outcome.distinct:,} distinct keys requested; seed {sieve_sim.SEED}, Zipf "
                f"sampled by {sampler} (n = 1: the figures depend on the trace, not the machine)."
            ],
        )
        if outcome.zipf:
            table.costs_at_most("15", "SIEVE", "LRU", 1)
        else:
            table.notes.append(
                "No goal: the scan's keys are each requested once, so they miss under every "
                "policy and flush the cache; the figure shows how each recovers."
            )
        tables.append(table)
    return tables


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
CROSSOVER_RATIO = 1.25  # the file layout's put "within 1.25x of the log's"


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
                point.get_log.append(net_sampler(cache.get, keys, CROSSOVER_GET_NS)(rep))
            elif fresh:
                first = time_ns(lambda: [cache.get(k) for k in keys]) / n / 1e3
                point.first_get_file.append(first)
                point.get_file.append(net_sampler(cache.get, keys, CROSSOVER_GET_NS)(rep))
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


# --- Output --------------------------------------------------------------------------


@dataclass
class Report:
    facts: list[tuple[str, str]]
    tables: list[Table] = field(default_factory=list)
    crossover: list[Crossover] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def goals(self) -> list[Goal]:
        return [goal for table in self.tables for goal in table.goals]


def render(report: Report, cfg: Config) -> str:
    lines = ["## Machine", "", "| fact | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in report.facts]
    lines += ["", "## Goals", "", "| goal | issue | measured | met |", "|---|---|---|---|"]
    for goal in report.goals:
        met = "yes" if goal.met else "**NO**"
        lines.append(f"| {goal.text} | {goal.issue} | {goal.measured} | {met} |")
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
    for number, table in enumerate(report.tables, 1):
        lines += render_table(number, table)
    if report.crossover:
        lines += render_crossover(report.crossover, cfg.reps, cfg.crossover_puts)
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
            "goals": [asdict(g) for g in report.goals],
            "tables": [asdict(table) for table in report.tables],
            "crossover": [asdict(point) for point in report.crossover],
        },
        indent=1,
    )


def report_halves(path: str) -> tuple[str, str]:
    """What of the Markdown file ``path`` comes before the report (up to and with the
    start marker) and after it (from the end marker on)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    head, start, rest = text.partition(REPORT_START)
    _, end, tail = rest.partition(REPORT_END)
    if not start or not end:
        raise SystemExit(
            f"{path} has no {REPORT_START} ... {REPORT_END} section to write the report into: "
            "add the two markers where it belongs (docs/performance.md has them)"
        )
    return head + start, end + tail


def write_report(path: str, report: str) -> None:
    """Replace what lies between the bench markers of ``path`` with ``report``, its
    headings two levels down (under the file's own)."""
    before, after = report_halves(path)
    body = re.sub(r"^(#+) ", r"##\1 ", report, flags=re.MULTILINE)
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"{before}\n{body}\n{after}")


# --- Issue 15: batches and expiry ----------------------------------------------------


def bench_bounded(cfg: Config, root: str) -> list[Table]:
    return [
        bench_batch(cfg, root),
        bench_ttl_get(cfg, root),
        bench_capped_put(cfg, root),
        bench_expiry_lateness(cfg, root),
    ]


def bench_capped_put(cfg: Config, root: str) -> Table:
    """Small puts of fresh keys into a store at its cap (each evicts one key),
    against the same puts into a store with no cap, at both durability levels."""
    n = cfg.batch_puts
    value = os.urandom(SMALL)
    cap = SMALL * n  # full after the first n puts
    stores = {
        (durability, capped): blobcache.BlobCache(
            os.path.join(root, f"cap-{durability}-{capped}"),
            durability=durability,
            max_bytes=cap if capped else None,
        )
        for durability in ("fsync", "os")
        for capped in (False, True)
    }
    for store in stores.values():
        put_all(store, key_names(n, "fill"), value)

    def putting(store: blobcache.BlobCache, tag: str) -> Callable[[int], float]:
        def sample(rep: int) -> float:
            keys = key_names(n, f"{tag}-{rep:04d}")
            return n / (time_ns(lambda: put_all(store, keys, value)) / 1e9)

        return sample

    samplers = [putting(store, f"{d}-{c}") for (d, c), store in stores.items()]
    progress(f"capped put: {cfg.reps} repetitions of {n:,} puts, capped and not")
    try:
        warm_up(*samplers)
        samples = interleave(cfg.reps, samplers)
        evicted = [store.stats().evicted for store in stores.values()]
    finally:
        for store in stores.values():
            store.close()
    assert evicted[1] >= n * cfg.reps and evicted[3] >= n * cfg.reps, evicted
    names = [
        "blobcache, fsync, no cap",
        "blobcache, fsync, at its cap",
        "blobcache, os, no cap",
        "blobcache, os, at its cap",
    ]
    table = Table(
        f"put, {SMALL} B value, fresh keys, into a store at max_bytes (each put evicts one key)",
        "puts/s",
        rate=True,
        lines=[
            Line(names[0], POWER, samples[0], floor=True),
            Line(names[1], POWER, samples[1], ours=True, note="one evict record each"),
            Line(names[2], PROCESS, samples[2], floor=True),
            Line(names[3], PROCESS, samples[3], ours=True, note="one evict record each"),
        ],
        notes=[
            f"One thread; the capped stores hold max_bytes = {cap:,} bytes ({n:,} values) "
            "before the first sample, so every put evicts the key SIEVE picks, in the "
            "same write as the put (its evict record first). The eviction costs a record's "
            "framing and its application to the index: about as much CPU again as the put, "
            'which the fdatasync of a durable put hides and a put with "os" shows.'
        ],
    )
    table.costs_at_most("15", names[1], names[0], 1.5)
    return table


def bench_batch(cfg: Config, root: str) -> Table:
    """Durable small puts, one batch of ``batch_puts`` against as many single puts."""
    n = cfg.batch_puts
    store = blobcache.BlobCache(os.path.join(root, "batch"))
    value = os.urandom(SMALL)
    # As many bytes as blobcache's record of such a put (FORMAT.md, "The log").
    record = os.urandom(blobcache._format.RECORD_HEADER.size + len("b-0000-0000000") + SMALL)
    fd = append_fd(os.path.join(root, "batch.floor"))

    def one_by_one(rep: int) -> float:
        keys = key_names(n, f"s-{rep:04d}")
        return n / (time_ns(lambda: put_all(store, keys, value)) / 1e9)

    def batched(rep: int) -> float:
        keys = key_names(n, f"b-{rep:04d}")
        return n / (time_ns(lambda: store.put_many((k, value) for k in keys)) / 1e9)

    def floor(_rep: int) -> float:
        data = record * n

        def write() -> None:
            os.write(fd, data)
            os.fdatasync(fd)

        return n / (time_ns(write) / 1e9)

    progress(f"batch: {cfg.reps} repetitions of {n:,} durable puts, batched and one by one")
    try:
        warm_up(floor, batched, one_by_one)
        samples = interleave(cfg.reps, [floor, batched, one_by_one])
    finally:
        os.close(fd)
        store.close()
    table = Table(
        f"put, {SMALL} B value, {BLOB_FSYNC.name}, {n:,} puts: one batch or one by one",
        "puts/s",
        rate=True,
        lines=[
            Line("floor: one write of the records + fdatasync", POWER, samples[0], floor=True),
            Line("blobcache, put_many", POWER, samples[1], ours=True, note="one batch"),
            Line("blobcache, put", POWER, samples[2], ours=True, note="one fdatasync each"),
        ],
        notes=[
            f"{n:,} fresh keys per sample, one thread; the floor writes blobcache's record "
            f"({len(record)} B) {n:,} times in one write and fdatasyncs once."
        ],
    )
    table.faster("15", "blobcache, put_many", "blobcache, put", 20)
    return table


def bench_ttl_get(cfg: Config, root: str) -> Table:
    """get of small values put with and without a ttl, beside the dict floor."""
    keys = key_names(cfg.get_keys)
    order = list(range(len(keys)))
    random.Random(GET_SEED).shuffle(order)
    fresh = key_names(len(keys))
    lookups = [fresh[i] for i in order]
    value = os.urandom(SMALL)
    plain = blobcache.BlobCache(os.path.join(root, "ttl-off"), durability="os")
    timed = blobcache.BlobCache(os.path.join(root, "ttl-on"), durability="os")
    capped = blobcache.BlobCache(
        os.path.join(root, "cap-on"), durability="os", max_bytes=2 * SMALL * len(keys)
    )
    try:
        put_all(plain, keys, value)
        put_all(capped, keys, value)
        for key in keys:
            timed.put(key, value, ttl=10**7)
        floor = DictWrapper({k: plain.get(k) for k in keys}).get
        samplers = [
            net_sampler(get, lookups, cfg.get_sample_ns)
            for get in (floor, plain.get, timed.get, capped.get)
        ]
        progress(f"ttl get: {cfg.reps} repetitions")
        samples = interleave(cfg.reps, samplers)
    finally:
        plain.close()
        timed.close()
        capped.close()
    floor_name = "floor: a method wrapping dict.get"
    table = Table(
        f"get, {SMALL} B value, {len(keys):,} str keys: with a ttl, with a cap, with neither",
        "ns per get",
        rate=False,
        lines=[
            Line(floor_name, "", samples[0], floor=True),
            Line("blobcache, no ttl", "", samples[1], ours=True),
            Line("blobcache, every key with a ttl", "", samples[2], ours=True, note="not expired"),
            Line("blobcache, max_bytes set", "", samples[3], ours=True, note="a hit sets a bit"),
        ],
        notes=[
            "As the get table: random order, equal but distinct key objects, net of the "
            "loop. A get never reads the clock (expired values are taken out of memory by "
            "the sweep thread), so a ttl costs it nothing. With max_bytes a hit also adds "
            "its key to SIEVE's visited set (no lock, no write): the cap holds every key here."
        ],
    )
    table.costs_at_most("15", "blobcache, no ttl", floor_name, 1.2)
    table.costs_at_most("15", "blobcache, every key with a ttl", floor_name, 1.4)
    table.costs_at_most("15", "blobcache, max_bytes set", floor_name, 1.4)
    return table


def bench_expiry_lateness(cfg: Config, root: str) -> Table:
    """How long after its deadline a plain get still returns a value: the sweep
    thread's wake-up (every other call checks the clock)."""
    store = blobcache.BlobCache(os.path.join(root, "ttl-late"), durability="os")
    ttl = 0.02

    def lateness(rep: int) -> float:
        worst = []
        for i in range(cfg.expiry_keys):
            key = f"late-{rep}-{i}"
            store.put(key, b"v", ttl=ttl)
            deadline = time.time() + ttl  # a little after the one the put wrote
            while store.get(key) is not None:
                pass
            worst.append(max(0.0, time.time() - deadline) * 1000)
        worst.sort()
        return worst[min(len(worst) - 1, int(len(worst) * 0.99))]

    progress(f"expiry lateness: {cfg.reps} repetitions of {cfg.expiry_keys} keys")
    try:
        samples = interleave(cfg.reps, [lateness])
    finally:
        store.close()
    table = Table(
        "expiry: how long a get still serves a value past its ttl, one thread polling",
        "ms (p99)",
        rate=False,
        lines=[Line("blobcache, ttl 20 ms", "", samples[0], ours=True)],
        notes=[
            f"Per repetition, the 99th percentile over {cfg.expiry_keys} keys put with a ttl "
            "of 20 ms and read by a tight loop of get until it misses: how late the sweep "
            "thread (woken at each deadline) takes the value out of memory, with the GIL "
            "held by the polling thread, the worst case for it. `in`, `path`, `open`, "
            "`len`, iteration and `stats` check the clock themselves."
        ],
    )
    return table


# --- typed values and memoize (issue 16) ---------------------------------------------


def bench_typed(cfg: Config, root: str) -> list[Table]:
    return [bench_memo_hit(cfg, root), bench_array_key(cfg), bench_get_array(cfg, root)]


def memo_square(x: int) -> int:
    """The function every memoizer wraps: a hit never runs it."""
    return x * x


def bench_memo_hit(cfg: Config, root: str) -> Table:
    """A memoized call whose result is stored, small int argument, beside
    diskcache's ``memoize`` and joblib's ``Memory.cache`` on the same function,
    and functools.lru_cache (in memory only: the floor)."""
    import functools

    import joblib  # type: ignore[import-untyped]

    ours_cache = blobcache.BlobCache(os.path.join(root, "memo-blobcache"))
    peer = diskcache.Cache(os.path.join(root, "memo-diskcache"))
    memory = joblib.Memory(os.path.join(root, "memo-joblib"), verbose=0)
    wrapped = {
        "floor: functools.lru_cache (memory only)": functools.lru_cache(maxsize=None)(memo_square),
        "blobcache memoize": ours_cache.memoize()(memo_square),
        "diskcache memoize": peer.memoize()(memo_square),
        "joblib Memory.cache": memory.cache(memo_square),
    }
    args = list(range(cfg.memo_keys))
    for fn in wrapped.values():
        for x in args:
            fn(x)  # every key stored: what follows are hits
    random.Random(GET_SEED).shuffle(args)
    samplers = [net_sampler(fn, args, cfg.get_sample_ns) for fn in wrapped.values()]
    progress(f"memoize hit: {cfg.reps} repetitions over {len(args):,} stored calls")
    try:
        warm_up(*samplers)
        samples = interleave(cfg.reps, samplers)
    finally:
        ours_cache.close()
        peer.close()
    names = list(wrapped)
    us = [[ns / 1000 for ns in line] for line in samples]
    table = Table(
        "memoize hit: a call whose result is stored, one small int argument",
        "µs/call",
        rate=False,
        lines=[
            Line(names[0], "", us[0], floor=True),
            Line(names[1], POWER, us[1], ours=True, note="key from code + bound arguments"),
            Line(names[2], PROCESS, us[2]),
            Line(names[3], PROCESS, us[3]),
        ],
        notes=[
            f"{len(args):,} calls f(x) stored first, then called in a random order; each "
            "wrapper's own key derivation, lookup and decoding of the int result. "
            "blobcache's key hashes the function's code and its bound arguments (xxh3-128); "
            "diskcache pickles the arguments into its key and reads SQLite; joblib hashes "
            "the arguments with md5 through a pickler and reads a file per call."
        ],
    )
    table.absolute("16", names[1], "<=", 3.0)
    table.faster("16", names[1], names[2], 1)
    table.faster("16", names[1], names[3], 1)
    return table


def bench_array_key(cfg: Config) -> Table:
    """Deriving the key of a call with one large float32 array, beside xxh3-128 of
    its bytes (the floor) and joblib.hash of the same array."""
    import joblib
    import numpy as np

    mib = cfg.array_key_mib
    array = np.random.default_rng(0).random(mib << 18, dtype=np.float32)  # mib MiB
    probe = blobcache.BlobCache(tempfile.mkdtemp(dir=cfg.parent, prefix="memo-key-"))
    key_of = probe.memoize()(memo_square).cache_key
    raw = memoryview(array).cast("B")

    def rate(action: Callable[[], object]) -> Callable[[int], float]:
        return lambda _rep: mb_per_s(array.nbytes, time_ns(action))

    samplers = [
        rate(lambda: xxhash.xxh3_128(raw).digest()),
        rate(lambda: key_of(array)),
        rate(lambda: joblib.hash(array)),
    ]
    progress(f"array key: {cfg.reps} repetitions over a {mib} MiB array")
    try:
        warm_up(*samplers)
        samples = interleave(cfg.reps, samplers)
    finally:
        probe.close()
        shutil.rmtree(probe.directory, ignore_errors=True)
    names = ["floor: xxh3-128 of the array's bytes", "blobcache memoize key", "joblib.hash"]
    table = Table(
        f"memoize key of a call with a {mib} MiB float32 array (C order)",
        "MB/s",
        rate=True,
        lines=[
            Line(names[0], "", samples[0], floor=True),
            Line(names[1], "", samples[1], ours=True, note="dtype, shape, values"),
            Line(names[2], "", samples[2], note="md5 through a pickler"),
        ],
        notes=["In memory: nothing is stored. The key hashes the array's buffer in place."],
    )
    table.faster("16", names[1], names[0], 0.8)
    return table


def bench_get_array(cfg: Config, root: str) -> Table:
    """``get_array`` of a large array already read once (its checksum verified at
    the first get), beside ``numpy.load(path, mmap_mode="r")`` of its file."""
    import numpy as np

    mib = cfg.array_get_mib
    cache = blobcache.BlobCache(os.path.join(root, "typed-get"))
    cache.put_object("array", np.zeros(mib << 18, dtype=np.float32))
    cache.get_array("array")  # the first get maps and verifies; what follows is timed
    path = cache.path("array")
    assert path is not None

    def timing(action: Callable[[], object]) -> Callable[[int], float]:
        return lambda _rep: time_ns(action) / 1000

    samplers = [
        timing(lambda: np.load(path, mmap_mode="r")),
        timing(lambda: cache.get_array("array")),
    ]
    progress(f"get_array: {cfg.reps} repetitions of a {mib} MiB array")
    try:
        warm_up(*samplers)
        samples = interleave(cfg.reps, samplers)
    finally:
        cache.close()
    names = ['numpy.load(path, mmap_mode="r")', "blobcache get_array"]
    table = Table(
        f"get_array of a {size_name(mib << 20)} array, after its first (verified) get",
        "µs",
        rate=False,
        lines=[
            Line(names[0], "", samples[0], floor=True, note="maps the file anew"),
            Line(names[1], "", samples[1], ours=True, note="a view of the mapping it holds"),
        ],
        notes=["Neither reads the array's bytes: both return an array over a mapping."],
    )
    table.absolute("16", names[1], "<=", 1000.0)
    return table


# --- The remote tier (issue 17) ------------------------------------------------------

MACHINE = "machine loss"
REMOTE_BUCKET = "blobcache-bench"
REMOTE_SMALL = KIB  # bytes of a small value put through or back
READ_CHUNK = 4 * MIB  # what the read-through asks obstore's stream for (_tier.Tier._bring)
# A refresh lists every record of the remote; every 60 s by default, it would land in
# some samples and not others. Moved out of the run: the puts and gets are measured.
NO_REFRESH = 3600.0


@dataclass(frozen=True)
class Seaweed:
    """The section's S3 server and the client options every contender uses."""

    bucket: str
    options: dict[str, Any]
    root: str  # the local directory the section's stores are made in

    def store(self, prefix: str) -> Any:
        """A raw obstore client under ``prefix``: the floors' and the clean-ups'."""
        from obstore.store import S3Store

        return S3Store(self.bucket, prefix=prefix, **self.options)

    def cache(self, name: str, prefix: str, **options: Any) -> blobcache.BlobCache:
        return blobcache.BlobCache(
            os.path.join(self.root, name),
            remote=f"s3://{self.bucket}/{prefix}",
            remote_options=self.options,
            remote_refresh=NO_REFRESH,
            **options,
        )


def remove_all(store: Any, prefix: str) -> None:
    """Delete every object under ``prefix`` of ``store`` (untimed, between samples)."""
    import obstore

    paths = [meta["path"] for chunk in obstore.list(store, prefix) for meta in chunk]
    if paths:
        obstore.delete(store, paths)


def bench_remote(cfg: Config, root: str) -> list[Table]:
    """Start a SeaweedFS on the loopback (tests/seaweed.py), measure, stop it."""
    from tests.seaweed import CLIENT_ENV_HAZARDS, Server

    # Variables that would send obstore's requests elsewhere (tests/seaweed.py says why).
    hidden = {name: os.environ.pop(name) for name in CLIENT_ENV_HAZARDS if name in os.environ}
    progress("remote: starting SeaweedFS")
    server = Server.start(
        os.path.join(root, "seaweed"),
        bucket=REMOTE_BUCKET,
        access_key=REMOTE_BUCKET,
        secret_key=os.urandom(16).hex(),
    )
    try:
        options = server.options
        # The test options' 5 s per request would fail a slow 64 MiB get: blobcache's own
        # default, for every contender alike.
        options["client_options"] = {**options["client_options"], "timeout": "60s"}
        seaweed = Seaweed(server.bucket, options, root)
        return [
            bench_remote_put(cfg, seaweed),
            bench_remote_get(cfg, seaweed),
            bench_remote_small(cfg, seaweed),
        ]
    finally:
        server.stop()
        os.environ.update(hidden)


def stamp_value(data: bytearray, tag: str, rep: int) -> None:
    """Make ``data`` a value never put before: its content address is new, so no
    upload is skipped as already there."""
    data[:32] = f"{tag}-{rep:+08d}".encode().ljust(32, b".")


def bench_remote_put(cfg: Config, seaweed: Seaweed) -> Table:
    """A write-through put of a large value beside a raw multipart upload of its bytes."""
    import obstore

    from blobcache import _remote

    size = cfg.remote_mib * MIB
    data = bytearray(os.urandom(MIB) * cfg.remote_mib)
    view = memoryview(data)
    raw = seaweed.store("floor")
    through = seaweed.cache("rput-through", "put")
    local = blobcache.BlobCache(os.path.join(seaweed.root, "rput-local"))
    remote_side = seaweed.store("put")

    def upload(name: str) -> None:
        obstore.put(
            raw,
            name,
            view,
            chunk_size=_remote.PART_BYTES,
            max_concurrency=_remote.PART_CONCURRENCY,
        )

    def upload_beside_local(name: str) -> None:
        writer = threading.Thread(target=local.put, args=(name, view))
        writer.start()
        try:
            upload(name)
        finally:
            writer.join()

    def unput(cache: blobcache.BlobCache, name: str) -> None:
        cache.delete(name)
        cache.gc()  # its file removed

    def unput_local(name: str) -> None:
        unput(local, name)

    def unput_through(name: str) -> None:
        unput(through, name)  # a tombstone on the remote; the blob stays, so:
        remove_all(remote_side, "b")

    def unupload(name: str) -> None:
        obstore.delete(raw, name)

    def timing(put: Callable[[str], object], tag: str, *undo: Callable[[str], object]) -> Sample:
        def sample(rep: int) -> float:
            stamp_value(data, tag, rep)  # a new value, so no upload is skipped as there
            name = f"{tag}-{rep + 1}"
            ns = time_ns(lambda: put(name))
            for step in undo:  # untimed: the disks hold one such value at a time
                step(name)
            settle(local.directory)  # (and `sync`: nothing left dirty for the next one)
            settle(through.directory)
            return ns / 1e6

        return sample

    samplers = [
        timing(upload, "floor", unupload),
        timing(upload_beside_local, "both", unupload, unput_local),
        timing(lambda name: through.put(name, view), "through", unput_through),
        timing(lambda name: local.put(name, view), "local", unput_local),
    ]
    progress(f"remote put, {size_name(size)}: {cfg.remote_reps} repetitions")
    try:
        warm_up(*samplers)
        samples = interleave(cfg.remote_reps, samplers)
    finally:
        through.close()
        local.close()
    names = [
        "floor: obstore.put, multipart",
        "the floor's upload beside the put with no remote",
        "blobcache, write-through",
        "blobcache, no remote",
    ]
    table = Table(
        f"put of {size_name(size)}, a fresh key, to a remote on the loopback (SeaweedFS)",
        "ms",
        rate=False,
        lines=[
            Line(
                names[0],
                MACHINE,
                samples[0],
                floor=True,
                note=f"parts of {size_name(_remote.PART_BYTES)}, "
                f"{_remote.PART_CONCURRENCY} at a time, from the buffer",
            ),
            Line(names[1], MACHINE, samples[1], note="two threads"),
            Line(
                names[2],
                MACHINE,
                samples[2],
                ours=True,
                note="xxh3, then the same upload, beside the local write; a record",
            ),
            Line(names[3], POWER, samples[3], floor=True, note="the local write alone, fsynced"),
        ],
        notes=[
            "A new value (its first bytes stamped) under a new key each repetition. The "
            "write-through put uploads in a thread of its own while it writes and fsyncs the "
            "local file, then creates the key's version record (If-None-Match) and publishes "
            "locally; the second line is that overlap done by hand. Untimed after each "
            "sample: the value deleted (and gc), its objects removed from the remote, `sync`. "
            "The server shares this machine's 2 cores and disk. One untimed warm-up round."
        ],
    )
    table.costs_at_most("17", names[2], names[0], 1.2)
    return table


def bench_remote_get(cfg: Config, seaweed: Seaweed) -> Table:
    """The first get of a large value held by the remote only (read-through), beside a
    raw streamed get of its blob into a local file, fsynced."""
    import obstore

    size = cfg.remote_mib * MIB
    data = os.urandom(MIB) * cfg.remote_mib
    with seaweed.cache("rget-writer", "get") as writer:
        writer.put("big", data)
    raw = seaweed.store("get")
    (blob,) = [meta["path"] for chunk in obstore.list(raw, "b") for meta in chunk]
    local_file = os.path.join(seaweed.root, "rget-floor.bin")

    def floor(_rep: int) -> float:
        def fetch() -> None:
            fd = os.open(local_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                for chunk in obstore.get(raw, blob).stream(min_chunk_size=READ_CHUNK):
                    piece = memoryview(chunk)
                    while piece:
                        piece = piece[os.write(fd, piece) :]
                os.fsync(fd)
            finally:
                os.close(fd)

        ns = time_ns(fetch)
        assert os.path.getsize(local_file) == size
        os.unlink(local_file)
        os.sync()
        return mb_per_s(size, ns)

    def ours(rep: int) -> float:
        name = f"rget-{rep + 1}"
        cache = seaweed.cache(name, "get")  # a fresh local store: the value is remote only
        try:
            got: list[Any] = []
            ns = time_ns(lambda: got.append(cache.get("big")))
            assert memoryview(got.pop()).nbytes == size
        finally:
            cache.close()
        shutil.rmtree(os.path.join(seaweed.root, name))
        os.sync()
        return mb_per_s(size, ns)

    samplers = [floor, ours]
    progress(f"remote read-through, {size_name(size)}: {cfg.remote_reps} repetitions")
    warm_up(*samplers)
    samples = interleave(cfg.remote_reps, samplers)
    floor_name = "floor: obstore.get streamed to a file + fsync"
    ours_name = "blobcache, read-through"
    times = [
        f"{name}: {fmt(statistics.median(size / MB / s * 1000 for s in got))} ms"
        for name, got in ((floor_name, samples[0]), (ours_name, samples[1]))
    ]
    table = Table(
        f"first get of a {size_name(size)} value held by the remote only, into a fresh store",
        "MB/s",
        rate=True,
        lines=[
            Line(floor_name, "", samples[0], floor=True, note="the blob's one GET"),
            Line(
                ours_name,
                "",
                samples[1],
                ours=True,
                note="list, record, the blob streamed into a version file, xxh3 checked",
            ),
        ],
        notes=[
            "Each repetition opens a new local store (untimed) and times its first get of "
            "the key, until the buffer is returned (its bytes not read again); the floor "
            f"streams the same blob in chunks of {size_name(READ_CHUNK)} into a file and "
            "fsyncs it. The server's copy stays in its page cache: the remote's disk is not "
            "measured. Median times: " + "; ".join(times) + ". One untimed warm-up round."
        ],
    )
    table.faster("17", ours_name, floor_name, 0.8)
    return table


def bench_remote_small(cfg: Config, seaweed: Seaweed) -> Table:
    """Small puts, fresh keys: write-back beside no remote at all, write-through beside
    a raw create-only put of as many bytes."""
    import obstore

    n = cfg.remote_puts
    value = os.urandom(REMOTE_SMALL)
    raw = seaweed.store("floor-small")
    local = blobcache.BlobCache(os.path.join(seaweed.root, "rsmall-local"))
    back = seaweed.cache("rsmall-back", "back", remote_mode="write-back")
    through = seaweed.cache("rsmall-through", "through")

    def create(keys: list[str]) -> None:
        for key in keys:
            obstore.put(raw, key, value, mode="create")

    def create_then_put(keys: list[str]) -> None:
        for key in keys:
            obstore.put(raw, key, value, mode="create")
            local.put(key, value)

    def timing(put: Callable[[list[str]], object], tag: str, after: Callable[[], object]) -> Sample:
        def sample(rep: int) -> float:
            keys = key_names(n, f"{tag}-{rep:+05d}")
            ms = time_ns(lambda: put(keys)) / 1e6 / n
            after()  # untimed: a write-back's uploads are not the next sample's load
            return ms

        return sample

    samplers = [
        timing(create, "create", lambda: None),
        timing(lambda keys: put_all(local, keys, value), "local", lambda: None),
        timing(create_then_put, "both", lambda: None),
        timing(lambda keys: put_all(back, keys, value), "back", back.flush_remote),
        timing(lambda keys: put_all(through, keys, value), "through", lambda: None),
    ]
    progress(f"remote small puts: {cfg.remote_reps} repetitions of {n} puts")
    try:
        warm_up(*samplers)
        samples = interleave(cfg.remote_reps, samplers)
    finally:
        for cache in (local, back, through):
            cache.close()
    names = [
        "floor: obstore.put, mode='create'",
        "blobcache, no remote",
        "the floor's create, then the put with no remote",
        "blobcache, write-back",
        "blobcache, write-through",
    ]
    table = Table(
        f"put of {size_name(REMOTE_SMALL)}, fresh keys, one thread, with a remote on the loopback",
        "ms per put",
        rate=False,
        lines=[
            Line(names[0], MACHINE, samples[0], floor=True, note="one conditional PUT"),
            Line(names[1], POWER, samples[1], floor=True, note="log + fdatasync"),
            Line(names[2], MACHINE, samples[2], note="one after the other"),
            Line(names[3], POWER, samples[3], ours=True, note="local; a thread uploads"),
            Line(
                names[4],
                MACHINE,
                samples[4],
                ours=True,
                note="a create-only record, then the local put",
            ),
        ],
        notes=[
            f"{n} puts of new keys per sample, durability 'fsync'. The write-back put returns "
            "once local; its uploader thread (a create per key) runs beside the "
            "puts that follow, on the same 2 cores as the server, and what it has not "
            "uploaded when the sample ends is flushed untimed. A write-through put creates "
            "its record first, then commits locally: the third line is that sum done by "
            "hand. 'machine loss': an acknowledged put is on the remote."
        ],
    )
    table.costs_at_most("17", names[3], names[1], 1.2)
    table.costs_at_most("17", names[4], names[0], 1.5)
    return table


# --- Command line --------------------------------------------------------------------

# The sections in the order they run, each returning its tables (the crossover,
# whose table has a shape of its own, is run apart).
RUNS: dict[str, Callable[[Config, str], list[Table]]] = {
    "get": bench_get,
    "put": bench_put,
    "open": bench_opens,
    "disk": bench_disk,
    "maintenance": bench_maintenance,
    "flushes": lambda cfg, root: [bench_flushes(cfg, root)],
    "processes": bench_processes,
    "sieve": bench_sieve,
    "bounded": bench_bounded,
    "typed": bench_typed,
    "remote": bench_remote,
}


def section_list(text: str) -> tuple[str, ...]:
    """The sections ``--only`` names, in the order they run."""
    named = {part.strip() for part in text.split(",")}
    unknown = sorted(named - set(SECTIONS))
    if unknown:
        raise argparse.ArgumentTypeError(
            f"no section named {', '.join(map(repr, unknown))}: choose among {', '.join(SECTIONS)}"
        )
    return tuple(name for name in SECTIONS if name in named)


def parse_args(argv: Sequence[str] | None) -> tuple[Config, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument(
        "--only",
        type=section_list,
        default=SECTIONS,
        help=f"comma-separated sections to run (default all: {','.join(SECTIONS)})",
    )
    parser.add_argument(
        "--dir",
        default=None,
        help="where to make the run's temp directory (default: /var/tmp or /tmp, "
        "whichever is on the project's file system); it is removed at the end",
    )
    parser.add_argument("--json", default="bench.json", help="where to write the figures")
    parser.add_argument(
        "--report", default=None, help="a Markdown file to write the report into, between markers"
    )
    args = parser.parse_args(argv)
    parent = args.dir if args.dir is not None else default_parent()
    return config(parent, args.quick, args.only), args


def main(argv: Sequence[str] | None = None) -> int:
    cfg, args = parse_args(argv)
    if args.report:
        report_halves(args.report)  # a file without the markers fails now, not after the run
    started = time.perf_counter_ns()
    root = tempfile.mkdtemp(prefix="blobcache-bench-", dir=cfg.parent)
    report = Report(machine_facts(root))
    run = "--quick, a smoke run: its figures mean nothing" if cfg.quick else "full"
    report.facts += [
        (
            "peers",
            f"diskcache {diskcache.__version__}, py-lmdb {lmdb.__version__} "
            f"(LMDB {'.'.join(map(str, lmdb.version()))})",
        ),
        ("run", f"{run}; sections {', '.join(cfg.sections)}"),
    ]
    try:
        for name in cfg.sections:
            if name == "crossover":
                report.crossover = bench_crossover(cfg, root)
            else:
                report.tables += RUNS[name](cfg, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report.seconds = (time.perf_counter_ns() - started) / 1e9
    text = render(report, cfg)
    print(text)
    with open(args.json, "w", encoding="utf-8") as f:
        f.write(as_json(report))
    if args.report:
        write_report(args.report, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
