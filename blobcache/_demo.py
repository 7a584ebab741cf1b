"""``blobcache demo``, and the writer child it (and the kill tests) SIGKILL mid-put.

The writer puts a planned sequence of values and prints one line before and one
after each put (``begin``/``ack``), flushing each: a parent that reads ``ack i``
knows put ``i`` returned, so it is owed after any crash. Values are derived
from (seed, i), so the parent can recompute what each acknowledged put wrote.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

from . import _storedir
from ._format import TEMP_PREFIX
from .cache import BlobCache
from .errors import BlobCacheError

_BLOCK = 1 << 20


@dataclass(frozen=True)
class PlannedPut:
    index: int
    key: str
    size: int


def value_for(seed: int, index: int, size: int) -> bytes:
    """The deterministic value of put ``index``: random bytes, repeated past 1 MiB."""
    block = random.Random(f"{seed}:{index}").randbytes(min(size, _BLOCK))
    reps, rest = divmod(size, _BLOCK) if size > _BLOCK else (1, 0)
    return block * reps + block[:rest]


def plan(seed: int, count: int, sizes: list[int], keys: int) -> Iterator[PlannedPut]:
    """``count`` puts over ``keys`` keys, sizes drawn from ``sizes``: same seed, same plan."""
    rng = random.Random(seed)
    for index in range(count):
        yield PlannedPut(index, f"artifact-{rng.randrange(keys)}", rng.choice(sizes))


def writer_main(argv: list[str]) -> int:
    """Child entry: ``python -m blobcache._demo DIR SEED COUNT KEYS DURABILITY SIZE...``."""
    directory, seed, count, keys, durability, *sizes = argv
    with BlobCache(directory, durability="os" if durability == "os" else "fsync") as cache:
        print("open", flush=True)
        for put in plan(int(seed), int(count), [int(s) for s in sizes], int(keys)):
            value = value_for(int(seed), put.index, put.size)
            print(f"begin {put.index}", flush=True)
            cache.put(put.key, value)
            print(f"ack {put.index}", flush=True)
    return 0


def start_writer(
    directory: str, seed: int, count: int, keys: int, sizes: list[int], durability: str = "fsync"
) -> subprocess.Popen[str]:
    """Start the writer child; read its stdout lines to follow its puts."""
    args = [directory, str(seed), str(count), str(keys), durability, *map(str, sizes)]
    return subprocess.Popen(
        [sys.executable, "-m", "blobcache._demo", *args], stdout=subprocess.PIPE, text=True
    )


def _mib(n: int) -> str:
    if n >= 1 << 20:
        return f"{n / (1 << 20):.1f} MiB"
    return f"{n / 1024:.0f} KiB" if n >= 1024 else f"{n} B"


def _wait_for_temp_bytes(directory: str, limit: float = 30.0) -> bool:
    """Poll until a temp file in the store holds bytes: the put is mid-write.

    A demo may poll; the tests synchronise on the writer's own lines instead.
    """
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        for root, _dirs, files in os.walk(directory):
            for name in files:
                if name.startswith(TEMP_PREFIX):
                    with contextlib.suppress(OSError):
                        if os.stat(os.path.join(root, name)).st_size > 0:
                            return True
        time.sleep(0.001)
    return False


def _is_empty_dir(path: str) -> bool:
    return os.path.isdir(path) and not os.listdir(path)


def run_demo(directory: str | None = None) -> int:
    """Write artifacts, SIGKILL the writer mid-put, reopen, check, gc, print stats.

    :raises BlobCacheError: ``directory`` exists and is not an empty directory
        (the demo makes a store of its own), or the writer failed by itself.
    """
    if directory is not None and os.path.lexists(directory) and not _is_empty_dir(directory):
        raise BlobCacheError(
            f"{directory} is not an empty directory: the demo makes a new store and "
            "kills a writer in it; give a new or empty directory, or none for a temp one"
        )
    # The writer is a child: refused there, it would die with a traceback.
    _storedir.refuse_untrusted(directory or tempfile.gettempdir())
    directory = directory or tempfile.mkdtemp(prefix="blobcache-demo-")
    seed, sizes = 7, [300, 64 << 10, 4 << 20, 64 << 20]
    puts = list(plan(seed, 40, sizes, keys=6))
    big = next(p.index for p in puts if p.size == sizes[-1] and p.index >= 8)
    print(f"store: {directory}")
    print(f"a writer process puts {len(puts)} artifacts of {', '.join(map(_mib, sizes))}")
    child = start_writer(directory, seed, len(puts), 6, sizes)
    assert child.stdout is not None
    acked: list[int] = []
    for line in child.stdout:
        word, _, number = line.partition(" ")
        if word == "ack":
            acked.append(int(number))
        if word == "begin" and int(number) == big:
            _wait_for_temp_bytes(directory)
            child.send_signal(signal.SIGKILL)  # in the middle of a 64 MiB put
            break
    if child.wait() != -signal.SIGKILL:
        raise BlobCacheError(
            f"the demo's writer exited by itself (status {child.returncode}) before put "
            f"#{big}: its error is above"
        )
    print(
        f"killed it (SIGKILL) during put #{big} ({_mib(puts[big].size)}), "
        f"after {len(acked)} acknowledged puts"
    )
    owed = {puts[i].key: i for i in acked}  # the last acknowledged put of each key
    started = time.perf_counter()
    with BlobCache(directory) as cache:
        took = time.perf_counter() - started
        print(
            f"reopened in {took * 1000:.1f} ms: {len(cache)} keys; removed the killed "
            f"put's half-written temp file ({cache.stats().temps_removed_at_open} found)"
        )
        lost = 0
        for key, index in sorted(owed.items()):
            got = cache.get(key)
            want = value_for(seed, index, puts[index].size)
            ok = got is not None and got == want
            lost += not ok
            print(f"  {key}: put #{index}, {_mib(len(want))}: {'intact' if ok else 'LOST'}")
        result = cache.gc()
        print(
            f"gc: removed {result.files_removed} superseded files and "
            f"{result.temps_removed} temp files, compacted {result.segments_compacted} "
            f"log segments, reclaimed {_mib(result.bytes_reclaimed)}"
        )
        stats = cache.stats()
        print(
            f"stats: {stats.keys} keys ({stats.inline_keys} in the log, the rest in files), "
            f"{_mib(stats.live_bytes)} live"
        )
    if lost:
        print(f"{lost} acknowledged puts were LOST")
        return 1
    print("every acknowledged put came back")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(writer_main(sys.argv[1:]))
