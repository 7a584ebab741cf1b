"""Compaction's memory: it streams its output and never holds a second copy of
the live small values, which the index already holds.

Regression: compaction encoded every live record into one list and joined them
into one bytes object before writing: with 273 MiB of small values, RSS went
from 316 MiB before ``gc()`` to a peak of 884 MiB during it (2.8x), and the
owning process starts compaction by itself.

Not a crash model: a resource bound. The measure is taken in a child process
that opens the store, then reads ``VmRSS`` from ``/proc/self/status``, resets
the peak (``clear_refs`` 5: ``VmHWM`` becomes the current RSS) and reads
``VmHWM`` after ``gc()``. The bound (the issue: about 1.2x) leaves a margin over what the
streaming compaction measures (1.02x to 1.10x, printed with ``pytest -s``) and
is far below what the old one took (2.2x to 2.8x).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from blobcache import BlobCache

PEAK_OVER_BEFORE = 1.25  # the issue asks "about 1.2x"; measured 1.02x-1.10x

_MEASURE = textwrap.dedent(
    """
    import gc, json, re, sys
    from blobcache import BlobCache

    def status(field):
        with open("/proc/self/status") as f:
            return int(re.search(field + r":\\s+(\\d+) kB", f.read()).group(1)) * 1024

    cache = BlobCache(sys.argv[1], compact_ratio=1.0)  # no compaction in the background
    sorted(cache)  # every value in memory (an open through the snapshot loads them as used)
    gc.collect()
    before = status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS, so VmHWM is the peak of what follows
    result = cache.gc()
    peak = status("VmHWM")
    keys = len(cache)
    cache.close()
    print(json.dumps({"before": before, "peak": peak, "keys": keys,
                      "compacted": result.segments_compacted}))
    """
)


def _build(store: str, keys: int, size: int) -> None:
    """``keys`` small values of ``size`` bytes, a tenth of them overwritten
    (stale records, so gc() compacts)."""
    with BlobCache(store, durability="os") as cache:
        for i in range(keys):
            cache.put(f"k{i}", i.to_bytes(8, "little") * (size // 8))
        for i in range(0, keys, 10):
            cache.put(f"k{i}", b"o" * size)


def _measure(store: str, keys: int, size: int) -> None:
    _build(store, keys, size)
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, store], capture_output=True, text=True, check=True
    )
    got = json.loads(done.stdout)
    mib = 1 << 20
    ratio = got["peak"] / got["before"]
    print(
        f"{keys:,} values of {size} B ({keys * size / mib:.0f} MiB): RSS {got['before'] / mib:.0f}"
        f" MiB before gc(), peak {got['peak'] / mib:.0f} MiB during it ({ratio:.2f}x),"
        f" {got['compacted']} segments compacted"
    )
    assert got["keys"] == keys and got["compacted"] >= 1
    assert got["peak"] <= PEAK_OVER_BEFORE * got["before"], got


def test_compaction_of_47_mib_of_small_values_streams(store: str) -> None:
    _measure(store, keys=12_000, size=4096)


@pytest.mark.slow
def test_compaction_of_273_mib_of_small_values_streams(store: str) -> None:
    """The review's size: five 64 MiB segments compacted at once."""
    _measure(store, keys=70_000, size=4096)


@pytest.mark.slow
def test_compaction_of_many_tiny_values_adds_little_per_key(store: str) -> None:
    """400,000 values of 100 B: the per-key cost of compaction (its list of the
    live keys and entries, the new entries) matters here, not the values."""
    _measure(store, keys=400_000, size=100)
