"""Smoke test of ``tools/bench.py``: a tiny run completes and prints every row.

It never looks at a timing: figures from a run this small, on a shared CI
machine, mean nothing. It checks that the benchmark still runs against the
current API, prints its table, and removes what it wrote.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "tools" / "bench.py"


def test_quick_run_prints_the_machine_and_every_row(tmp_path: Path) -> None:
    small = ["--keys", "200", "--sizes-mib", "1,2", "--open-keys", "20", "--open-value-kib", "64"]
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--dir", str(tmp_path), *small],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for fact in ("| cpu |", "| cores |", "| python |", "| file system |", "| date (UTC) |"):
        assert fact in out, fact
    assert "| # | measurement | unit | blobcache | baseline | ratio | goal | met |" in out
    for row in (
        "| 1 | get, present key (200 keys of 100 B,",
        "| 2 | put 1 MiB, durability='fsync', fresh key | MB/s |",
        "| 3 | put 2 MiB, durability='fsync', fresh key | MB/s |",
        "| 4 | open, 20 keys of 64 KiB | ms |",
    ):
        assert row in out, row
    assert list(tmp_path.iterdir()) == [], "the benchmark left files behind"
