#!/usr/bin/env python3
"""Benchmark blobcache against what plain Python does on the same machine, in one run.

Each figure is set beside the baseline it has to be judged against, measured in
the same run:

* ``get`` of a present key in steady state (after the key's first ``get`` has
  mapped and verified its file), in ns per call, against a plain class whose
  ``get`` wraps a dict lookup over the same keys and values. ``get`` is served
  from memory, so that method is its floor. Goal: at most 3x. Both figures are
  net of the loop that drives them (an empty sweep over the keys, timed in the
  same repetition and subtracted).
* a durable ``put`` (``durability="fsync"``: the value survives power loss) of a
  large value to a fresh key, in MB/s (10^6 bytes per second), against the same
  bytes published by plain Python in the least work that survives power loss:
  temp file in the target directory, write, fsync, rename, fsync(directory).
  Goal: at least 0.85x of that floor.
* opening a store of many large keys, in ms, against listing the same directory
  tree with ``os.scandir`` and stat-ing every file in it (the least a recovery
  that scans the tree can do). No goal is set yet.

Every figure is a median over repetitions, shown with its [min..max]. The two
sides of a ratio are run back to back in every repetition, alternating which
goes first, so drift and noise of the machine hit both; the ratio is the median
of the per-repetition ratios. This script never asserts a timing:
``tests/test_bench_smoke.py`` only checks that the table comes out.

Usage: ``python tools/bench.py [--dir DIR] [--quick]``; the Markdown report goes
to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import blobcache

PROJECT = Path(__file__).resolve().parent.parent
KIB = 1 << 10
MIB = 1 << 20
MB = 10**6
FULL_REPS = 15  # the put figures on a virtio disk vary by up to 2x between repetitions
QUICK_REPS = 3
GET_VALUE_BYTES = 100  # small values: the get path does not depend on the size
GET_SAMPLE_NS = 100_000_000  # each get sample sweeps the keys for at least 0.1 s

Sample = Callable[[int], float]  # repetition number -> one measurement


@dataclass(frozen=True)
class Config:
    """What one run measures; the defaults are the benchmark, smaller sizes a smoke run."""

    parent: str  # the run makes (and removes) its own temp directory in here
    reps: int
    get_keys: int
    put_sizes_mib: tuple[int, ...]
    open_keys: int
    open_value_kib: int


@dataclass(frozen=True)
class Goal:
    """A bound on the ratio blobcache / baseline."""

    op: Literal["<=", ">="]
    bound: float

    def met(self, ratio: float) -> bool:
        return ratio <= self.bound if self.op == "<=" else ratio >= self.bound

    def __str__(self) -> str:
        return f"{self.op} {self.bound:g}x"


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
        return statistics.median(o / b for o, b in zip(self.ours, self.base, strict=True))


# --- Timing ------------------------------------------------------------------------


def time_ns(action: Callable[[], object]) -> int:
    start = time.perf_counter_ns()
    action()
    return time.perf_counter_ns() - start


def interleave(reps: int, samplers: Sequence[Sample]) -> list[list[float]]:
    """Run every sampler once per repetition, rotating which goes first.

    Returns the samples of each sampler, in repetition order, so that sample
    ``i`` of one and sample ``i`` of another were taken moments apart.
    """
    samples: list[list[float]] = [[] for _ in samplers]
    for rep in range(reps):
        for offset in range(len(samplers)):
            which = (rep + offset) % len(samplers)
            samples[which].append(samplers[which](rep))
    return samples


def mb_per_s(nbytes: int, ns: int) -> float:
    return nbytes / MB / (ns / 1e9)


# --- get -----------------------------------------------------------------------------


class DictWrapper:
    """The floor for ``get``: the least a Python class can do to serve a key from memory."""

    def __init__(self, values: dict[str, object]) -> None:
        self._d = values

    def get(self, k: str) -> object | None:
        return self._d.get(k)


def sweep_timer(stmt: str, get: Callable[[str], object], keys: list[str]) -> timeit.Timer:
    # The setup binds ``get`` and ``keys`` to locals of timeit's inner function, so
    # the loop pays no global lookups, the same for every contender.
    return timeit.Timer(
        stmt,
        setup="get = _get; keys = _keys",
        timer=time.perf_counter_ns,
        globals={"_get": get, "_keys": keys},
    )


def sweeps_for(timer: timeit.Timer, target_ns: int) -> int:
    """How many sweeps over the keys one sample needs to last ``target_ns``."""
    sweeps = 1
    while timer.timeit(sweeps) < target_ns:
        sweeps *= 2
    return sweeps


def per_call_sampler(timer: timeit.Timer, sweeps: int, calls_per_sweep: int) -> Sample:
    def sample(_rep: int) -> float:
        # Timer.timeit turns the garbage collector off while it times.
        return timer.timeit(sweeps) / (sweeps * calls_per_sweep)

    return sample


def key_names(count: int) -> list[str]:
    """``count`` keys, as new str objects on every call."""
    return [f"key-{i:06d}" for i in range(count)]


def bench_get(cfg: Config, root: str) -> Row:
    keys = key_names(cfg.get_keys)
    value = os.urandom(GET_VALUE_BYTES)
    progress(f"get: {len(keys):,} puts (durability='os', then sync)")
    with blobcache.BlobCache(os.path.join(root, "get"), durability="os") as cache:
        for key in keys:
            cache.put(key, value)
        cache.sync()
        # The first get of a key maps its file and checks its checksum; what is
        # measured is every get after that, so this sweep is left out.
        served: dict[str, object] = {key: cache.get(key) for key in keys}
        kind = type(served[keys[0]]).__name__
        # Looked up by equal but distinct str objects, as a caller's keys are: a
        # lookup by the very object stored skips the string compare (~7 ns here),
        # and the cache holds its own copies of the keys while the dict holds ``keys``.
        lookups = key_names(cfg.get_keys)
        timers = [
            sweep_timer("for k in keys: get(k)", cache.get, lookups),
            sweep_timer("for k in keys: get(k)", DictWrapper(served).get, lookups),
            sweep_timer("for k in keys: pass", cache.get, lookups),  # same setup, no call
        ]
        sweeps = sweeps_for(timers[0], GET_SAMPLE_NS)
        progress(f"get: {cfg.reps} repetitions of {sweeps} sweeps each")
        samplers = [per_call_sampler(t, sweeps, len(keys)) for t in timers]
        ours, base, loop = interleave(cfg.reps, samplers)
    return Row(
        label=f"get, present key ({len(keys):,} keys of {GET_VALUE_BYTES} B, {kind})",
        unit="ns/call",
        ours=[o - e for o, e in zip(ours, loop, strict=True)],
        base=[b - e for b, e in zip(base, loop, strict=True)],
        goal=Goal("<=", 3),
        note=(
            "baseline: `def get(self, k): return self._d.get(k)` over a dict of the same "
            "keys and values; both looked up with equal but distinct str objects, and "
            "net of the driving loop "
            f"(`for k in keys`, median {statistics.median(loop):.1f} ns per key, subtracted "
            "per repetition). Store built with durability='os' then `sync()`; timed after "
            "every key's first get."
        ),
    )


# --- put -----------------------------------------------------------------------------


def floor_publish(directory: str, name: str, data: bytes) -> None:
    """Publish ``data`` as ``directory/name`` with the least work that survives power loss.

    temp file in the same directory, write, fsync, rename, fsync(directory). This
    is the raw floor, so it calls ``os`` directly; blobcache itself keeps every
    such call in ``blobcache/_fsio.py``.
    """
    tmp = os.path.join(directory, ".tmp-" + name)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, os.path.join(directory, name))
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


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
    ours(-1)
    floor(-1)
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


def scandir_and_stat(path: str) -> int:
    """List every directory under ``path`` and stat every file; return the file count."""
    files = 0
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                files += scandir_and_stat(entry.path)
            else:
                entry.stat(follow_symlinks=False)
                files += 1
    return files


def bench_open(cfg: Config, root: str) -> Row:
    store = os.path.join(root, "open")
    value = os.urandom(cfg.open_value_kib * KIB)
    progress(f"open: {cfg.open_keys:,} puts of {cfg.open_value_kib} KiB (durability='os')")
    with blobcache.BlobCache(store, durability="os") as cache:
        for i in range(cfg.open_keys):
            cache.put(f"open-{i:06d}", value)
    # close() synced it; what remains in the page cache is as warm for both sides.

    def ours(_rep: int) -> float:
        start = time.perf_counter_ns()
        cache = blobcache.BlobCache(store)
        ns = time.perf_counter_ns() - start
        cache.close()
        return ns / 1e6

    def floor(_rep: int) -> float:
        return time_ns(lambda: scandir_and_stat(store)) / 1e6

    progress(f"open: {cfg.reps} repetitions")
    ours(-1)
    floor(-1)
    opens, walks = interleave(cfg.reps, [ours, floor])
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


# --- The machine -------------------------------------------------------------------


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name.strip() == "model name":
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def mount_of(path: str) -> str:
    """File system type, device and options of the mount holding ``path``, from /proc/mounts."""
    real = os.path.realpath(path)
    found = "unknown (no /proc/mounts)"
    best = -1
    try:
        with open("/proc/mounts", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return found
    for line in lines:
        device, point, fstype, options, *_ = line.split()
        point = point.replace("\\040", " ")
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        # The longest mount point wins; among equals, the later line (mounted on top).
        if inside and len(point) >= best:
            best = len(point)
            found = f"{fstype} on {device} (mounted at {point}, {options})"
    return found


def git_describe() -> str:
    try:
        done = subprocess.run(
            ["git", "-C", str(PROJECT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        return "unknown"
    return done.stdout.strip() or "unknown"


def load_average() -> str:
    # Other processes on a 2-core machine show up directly in the spread of the
    # figures; the load at start and end says whether a run was alone.
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def machine_facts(bench_dir: str) -> list[tuple[str, str]]:
    same_fs = os.stat(bench_dir).st_dev == os.stat(PROJECT).st_dev
    return [
        ("date (UTC)", datetime.datetime.now(datetime.timezone.utc).isoformat("T", "seconds")),
        ("cpu", cpu_model()),
        ("cores", f"{os.cpu_count()} ({len(os.sched_getaffinity(0))} usable by this process)"),
        ("python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("kernel", platform.release()),
        ("load average at start (1/5/15 min)", load_average()),
        ("bench dir", bench_dir),
        ("file system", mount_of(bench_dir)),
        ("same file system as the project", "yes" if same_fs else "NO"),
        ("blobcache", f"{blobcache.__version__} at {PROJECT} (git {git_describe()})"),
    ]


# --- Output --------------------------------------------------------------------------


def fmt(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def spread(samples: list[float]) -> str:
    return f"{fmt(statistics.median(samples))} [{fmt(min(samples))}..{fmt(max(samples))}]"


def render(facts: list[tuple[str, str]], rows: list[Row], reps: int, seconds: float) -> str:
    lines = ["## Machine", "", "| fact | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in facts]
    lines += [
        "",
        f"## Results (median [min..max] of {reps} repetitions)",
        "",
        "| # | measurement | unit | blobcache | baseline | ratio | goal | met |",
        "|---|---|---|---:|---:|---:|---|---|",
    ]
    for number, row in enumerate(rows, 1):
        ratio = row.ratio()
        goal, met = ("none set", "n/a") if row.goal is None else (str(row.goal), "")
        if row.goal is not None:
            met = "yes" if row.goal.met(ratio) else "NO"
        lines.append(
            f"| {number} | {row.label} | {row.unit} | {spread(row.ours)} | "
            f"{spread(row.base)} | {ratio:.2f}x | {goal} | {met} |"
        )
    lines += ["", "Notes:", ""]
    first_with: dict[str, int] = {}
    for number, row in enumerate(rows, 1):
        first = first_with.setdefault(row.note, number)
        lines.append(f"{number}. {row.note}" if first == number else f"{number}. As {first}.")
    lines += [
        "",
        "Ratios are blobcache / baseline, the median of the per-repetition ratios "
        "(both sides run back to back in each repetition, alternating which goes first).",
        f"Whole run: {seconds:.0f} s; load average at the end (1/5/15 min): {load_average()}.",
    ]
    return "\n".join(lines)


def progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# --- Command line --------------------------------------------------------------------


def default_parent() -> str:
    """/var/tmp or /tmp, whichever is on the project's file system, so an fsync costs
    what it costs the project's users; /var/tmp first, since /tmp is often a tmpfs."""
    project_dev = os.stat(PROJECT).st_dev
    for candidate in ("/var/tmp", "/tmp"):
        if os.path.isdir(candidate) and os.stat(candidate).st_dev == project_dev:
            return candidate
    return tempfile.gettempdir()  # the facts then say "same file system: NO"


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def mib_list(text: str) -> tuple[int, ...]:
    return tuple(positive_int(part) for part in text.split(","))


def parse_args(argv: Sequence[str] | None) -> Config:
    parser = argparse.ArgumentParser(
        description="Benchmark blobcache get, put and open against plain-Python floors.",
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
        help=f"{QUICK_REPS} repetitions instead of {FULL_REPS}, for a smoke run",
    )
    sizes = parser.add_argument_group(
        "sizes", "smaller than the defaults only for smoke runs: such figures are not comparable"
    )
    sizes.add_argument("--keys", type=positive_int, default=10_000, help="keys for get")
    sizes.add_argument(
        "--sizes-mib", type=mib_list, default=(64, 256), help="put sizes, e.g. 64,256"
    )
    sizes.add_argument("--open-keys", type=positive_int, default=1_000, help="keys for open")
    sizes.add_argument(
        "--open-value-kib", type=positive_int, default=1_024, help="value size for open"
    )
    args = parser.parse_args(argv)
    return Config(
        parent=args.dir if args.dir is not None else default_parent(),
        reps=QUICK_REPS if args.quick else FULL_REPS,
        get_keys=args.keys,
        put_sizes_mib=args.sizes_mib,
        open_keys=args.open_keys,
        open_value_kib=args.open_value_kib,
    )


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    started = time.perf_counter_ns()
    root = tempfile.mkdtemp(prefix="blobcache-bench-", dir=cfg.parent)
    try:
        facts = machine_facts(root)
        rows = [bench_get(cfg, root), *bench_put(cfg, root), bench_open(cfg, root)]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(render(facts, rows, cfg.reps, (time.perf_counter_ns() - started) / 1e9))
    return 0


if __name__ == "__main__":
    sys.exit(main())
