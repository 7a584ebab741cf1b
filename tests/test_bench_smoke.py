"""Smoke test of ``tools/bench_floor.py``: a tiny run completes and prints every row.

It never looks at a timing: figures from a run this small, on a shared CI
machine, mean nothing. It checks that the benchmark still runs against the
current API, prints its tables, and removes what it wrote.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TOOLS, load_tool

BENCH = TOOLS / "bench_floor.py"

TINY = {
    "--keys": "200",
    "--file-keys": "100",
    "--small-puts": "5",
    "--os-puts": "200",
    "--sizes-mib": "1,2",
    "--open-keys": "20",
    "--open-value-kib": "64",
    "--small-open-keys": "300,600",
    "--disk-keys": "50",
    "--maint-keys": "40",
    "--put-file-mib": "2",
    "--crossover-kib": "1,64",
    "--crossover-puts": "2",
}


def test_quick_run_prints_the_machine_and_every_row(tmp_path: Path) -> None:
    sizes = [part for option in TINY.items() for part in option]
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--dir", str(tmp_path), *sizes],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    # It measures this tree, not a copy of blobcache installed earlier.
    assert f"imported from {BENCH.parent.parent / 'blobcache'} " in out
    for fact in ("| cpu |", "| cores |", "| python |", "| file system |", "| date (UTC) |"):
        assert fact in out, fact
    assert "| # | measurement | unit | n | blobcache | baseline | ratio | goal | met |" in out
    for row in (
        "| 1 | get, present key (100 keys of 100 B in files (inline_limit=0), memoryview) |",
        "| 2 | get, present key (200 keys of 100 B in the log, bytes) | ns/call | 3 |",
        "| 3 | put 100 B, durability='fsync', one thread | us/put | 3 |",
        "| 4 | put 100 B, durability='fsync', vs a write into allocated blocks | us/put | 3 |",
        "| 5 | put 100 B, durability='fsync', 8 threads | puts/s | 3 |",
        "| 6 | put 100 B, durability='os', one thread | puts/s | 3 |",
        "| 7 | put 1 MiB, durability='fsync', fresh key | MB/s | 3 |",
        "| 8 | put 2 MiB, durability='fsync', fresh key | MB/s | 3 |",
        "| 9 | open, 20 keys of 64 KiB | ms | 3 |",
        "| 10 | open, 300 keys of 100 B (in the log) | ms | 3 |",
        "| 11 | open, 600 keys of 100 B (in the log) | ms | 3 |",
        "| 12 | disk after overwrites + gc(): sum of file sizes vs live bytes | bytes | 1 |",
        "| 13 | disk after overwrites + gc(): blocks held (st_blocks x 512) vs live bytes |",
        "| 14 | disk after overwrites + gc(): sum of file sizes vs stats().log_record_bytes |",
        "| 15 | `blobcache stats` on 40 keys | s | 3 |",
        "| 16 | `blobcache verify` on 40 keys | s | 3 |",
        "| 17 | after `blobcache gc`: file sizes vs live bytes + fixed overhead | bytes | 1 |",
        "| 18 | put_file, 2 MiB from a path, durability='fsync' | MB/s | 3 |",
        "| 19 | AsyncBlobCache.put of 256 MiB vs BlobCache.put | MB/s | 3 |",
    ):
        assert row in out, row
    for goal in ("| >= 100,000 puts/s (absolute) |", "| <= 0.45 ms (absolute) |", "| >= 8x |"):
        assert goal in out, goal
    assert "## inline_limit crossover (median [min..max] of 3 repetitions)" in out
    assert "| 1 KiB |" in out and "| 64 KiB |" in out
    assert "The file layout's put is within 1.25x of the log's" in out
    assert list(tmp_path.iterdir()) == [], "the benchmark left files behind"


def test_quick_leaves_out_the_biggest_stores(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = load_tool(monkeypatch, "bench_floor")
    full, quick = bench.parse_args([]), bench.parse_args(["--quick"])
    assert (full.small_open_keys, full.file_keys) == ((100_000, 1_000_000), 10_000)
    assert (quick.small_open_keys, quick.file_keys) == ((100_000,), 1_000)
    named = bench.parse_args(["--quick", "--small-open-keys", "7", "--file-keys", "9"])
    assert (named.small_open_keys, named.file_keys) == ((7,), 9)
