"""The kit ``tools/bench.py`` is built from: timing, floors done by plain Python,
the machine's facts and the table formatting (the workloads are in bench.py).

Importing this module puts the project first on ``sys.path``, so the benchmark
measures this tree.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import timeit
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parent.parent
# Measure this tree, not a copy installed earlier (an installed copy would come
# first on sys.path, since this script's own directory is tools/).
sys.path.insert(0, str(PROJECT))

import blobcache  # noqa: E402

KIB = 1 << 10
MIB = 1 << 20
MB = 10**6

Sample = Callable[[int], float]  # repetition number -> one measurement


def median_ratio(top: list[float], bottom: list[float]) -> float:
    return statistics.median(t / b for t, b in zip(top, bottom, strict=True))


# --- Timing ------------------------------------------------------------------------


def time_ns(action: Callable[[], object]) -> int:
    start = time.perf_counter_ns()
    action()
    return time.perf_counter_ns() - start


def interleave(reps: int, samplers: Sequence[Sample]) -> list[list[float]]:
    """Run every sampler once per repetition: two alternate which goes first; more
    run in an order shuffled at each repetition (seeded by it, so every run uses the
    same orders). A plain rotation would give each sampler the same predecessor in
    every repetition, and whatever one leaves behind (dirty pages, cold memory)
    would always be paid by the same next one.

    Returns the samples of each sampler, in repetition order, so that sample
    ``i`` of one and sample ``i`` of another were taken moments apart.
    """
    samples: list[list[float]] = [[] for _ in samplers]
    for rep in range(reps):
        order = [(rep + offset) % len(samplers) for offset in range(len(samplers))]
        if len(samplers) > 2:
            random.Random(rep).shuffle(order)
        for which in order:
            samples[which].append(samplers[which](rep))
    return samples


def mb_per_s(nbytes: int, ns: int) -> float:
    return nbytes / MB / (ns / 1e9)


def per_s(count: int, ns: int) -> float:
    return count / (ns / 1e9)


def warm_up(*samplers: Sample) -> None:
    """One untimed round: first touches of memory, files and code paths are not the steady state."""
    for sampler in samplers:
        sampler(-1)


# --- get -----------------------------------------------------------------------------


class DictWrapper:
    """The floor for ``get``: the least a Python class can do to serve a key from memory."""

    def __init__(self, values: dict[Any, object]) -> None:
        self._d = values

    def get(self, k: object) -> object | None:
        return self._d.get(k)


def sweep_timer(stmt: str, get: Callable[[Any], object], keys: Sequence[object]) -> timeit.Timer:
    # The setup binds ``get`` and ``keys`` to locals of timeit's inner function, so
    # the loop pays no global lookups, the same for every contender.
    return timeit.Timer(
        stmt,
        setup="get = _get; keys = _keys",
        timer=time.perf_counter_ns,
        globals={"_get": get, "_keys": list(keys)},
    )


def sweeps_for(timer: timeit.Timer, target_ns: int) -> int:
    """How many sweeps over the keys one sample needs to last ``target_ns``."""
    sweeps = 1
    while timer.timeit(sweeps) < target_ns:
        sweeps *= 2
    return sweeps


def net_sampler(get: Callable[[Any], object], keys: Sequence[object], target_ns: int) -> Sample:
    """ns per ``get`` over ``keys``, net of the driving loop: each sample sweeps the keys
    for about ``target_ns``, then sweeps them as often without a call, and subtracts."""
    call = sweep_timer("for k in keys: get(k)", get, keys)
    loop = sweep_timer("for k in keys: pass", get, keys)
    sweeps = sweeps_for(call, target_ns)

    def sample(_rep: int) -> float:
        # Timer.timeit turns the garbage collector off while it times.
        return (call.timeit(sweeps) - loop.timeit(sweeps)) / (sweeps * len(keys))

    return sample


def key_names(count: int, prefix: str = "key") -> list[str]:
    """``count`` keys of one length, as new str objects on every call."""
    return [f"{prefix}-{i:07d}" for i in range(count)]


def put_all(cache: blobcache.BlobCache, keys: Iterable[str | bytes], value: bytes) -> None:
    for key in keys:
        cache.put(key, value)


def append_fd(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)


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


def read_files(directory: str) -> int:
    """Open and read every file in ``directory`` whole; return the bytes read."""
    total = 0
    for name in os.listdir(directory):
        with open(os.path.join(directory, name), "rb") as f:
            total += len(f.read())
    return total


# --- disk usage ----------------------------------------------------------------------


@dataclass
class DiskUsage:
    """What a directory tree holds on disk, counted the two ways `du` can."""

    files: int = 0
    apparent: int = 0  # sum of the regular files' sizes
    allocated: int = 0  # st_blocks * 512 of every file and directory, as `du` counts

    def add(self, st: os.stat_result, *, is_file: bool) -> None:
        self.allocated += st.st_blocks * 512
        if is_file:
            self.files += 1
            self.apparent += st.st_size


def disk_usage(path: str, usage: DiskUsage | None = None) -> DiskUsage:
    usage = usage if usage is not None else DiskUsage()
    usage.add(os.stat(path), is_file=False)
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                disk_usage(entry.path, usage)
            else:
                usage.add(entry.stat(follow_symlinks=False), is_file=entry.is_file())
    return usage


def cp_and_fsync(src: str, directory: str, name: str) -> None:
    """The floor of put_file: `cp` (which lets the kernel copy), then fsync the copy
    and its directory: the least that makes a copy survive power loss."""
    dst = os.path.join(directory, name)
    subprocess.run(["cp", src, dst], check=True)
    for path, flags in ((dst, os.O_RDONLY), (directory, os.O_RDONLY | os.O_DIRECTORY)):
        fd = os.open(path, flags)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def size_name(nbytes: int) -> str:
    if nbytes >= MIB:
        return f"{nbytes // MIB} MiB"
    return f"{nbytes // KIB} KiB" if nbytes >= KIB else f"{nbytes} B"


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


def sources_digest() -> str:
    """A short digest of blobcache's sources as run: tells apart the uncommitted states
    behind a "-dirty" git description."""
    digest = hashlib.sha256()
    package = Path(blobcache.__file__).parent
    for source in sorted(package.glob("*.py")):
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()[:12]


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
        (
            "blobcache",
            f"{blobcache.__version__} imported from {Path(blobcache.__file__).parent} "
            f"(git {git_describe()}; sources sha256 {sources_digest()})",
        ),
    ]


# --- Output --------------------------------------------------------------------------


def fmt(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def spread(samples: list[float]) -> str:
    if len(samples) == 1:
        return fmt(samples[0])
    return f"{fmt(statistics.median(samples))} [{fmt(min(samples))}..{fmt(max(samples))}]"


_STARTED = time.monotonic()


def progress(message: str) -> None:
    print(f"bench: {time.monotonic() - _STARTED:5.1f} s: {message}", file=sys.stderr, flush=True)


def default_parent() -> str:
    """/var/tmp or /tmp, whichever is on the project's file system, so an fsync costs
    what it costs the project's users; /var/tmp first, since /tmp is often a tmpfs."""
    project_dev = os.stat(PROJECT).st_dev
    for candidate in ("/var/tmp", "/tmp"):
        if os.path.isdir(candidate) and os.stat(candidate).st_dev == project_dev:
            return candidate
    return tempfile.gettempdir()  # the facts then say "same file system: NO"


def threaded_rate(work: Callable[[list[str]], object], keys: list[list[str]]) -> float:
    """Keys per second of ``len(keys)`` threads, each calling ``work`` on its own list.

    The clock runs from the moment all threads are released together to the
    last one's end; making the threads is not timed.
    """
    start_line = threading.Barrier(len(keys) + 1)
    errors: list[BaseException] = []

    def run(mine: list[str]) -> None:
        start_line.wait()
        try:
            work(mine)
        except BaseException as exc:  # reraised in the calling thread below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(mine,)) for mine in keys]
    for thread in threads:
        thread.start()
    start_line.wait()
    start = time.perf_counter_ns()
    for thread in threads:
        thread.join()
    ns = time.perf_counter_ns() - start
    if errors:
        raise errors[0]
    return per_s(sum(map(len, keys)), ns)
