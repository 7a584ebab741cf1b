"""Smoke test of ``tools/bench.py`` (blobcache beside diskcache and LMDB).

A ``--quick`` run completes, prints every table, writes its JSON and its report
into a README between the markers, and removes its stores. No timing is looked
at; the counts of flushes are, since they do not depend on the machine: they
are what the README says each library does to survive a crash.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TOOLS, load_tool

BENCH = TOOLS / "bench.py"


def test_quick_run_prints_every_table_and_writes_json_and_readme(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(
        "# Title\n\nbefore\n<!-- bench:start -->\nold figures\n<!-- bench:end -->\nafter\n"
    )
    out_json = tmp_path / "out.json"
    options = ["--quick", "--dir", str(tmp_path), "--json", str(out_json), "--readme", str(readme)]
    done = subprocess.run(
        [sys.executable, str(BENCH), *options],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"imported from {BENCH.parent.parent / 'blobcache'} " in out
    assert "| peers | diskcache " in out
    for goal in (
        "blobcache >= 50x as fast as diskcache |",
        "blobcache faster than LMDB |",
        "blobcache faster than LMDB, one read transaction |",
        "put, 100 B value, one thread: blobcache 'fsync' faster than LMDB sync=True |",
        "put, 100 B value, 8 threads: blobcache 'fsync' faster than diskcache sync=2 |",
        "put, 4 MiB, a fresh key: blobcache 'fsync' >= 2x as fast as diskcache |",
    ):
        assert goal in out, goal
    titles = [
        "### 1. get, 100 B value, 500 keys present (ns per get, lower is better)",
        "### 2. get, 4 MiB value, first get after opening the store: time to a usable buffer",
        "### 3. get, 4 MiB value, first get after opening the store, then xxh3 of every byte",
        "### 4. put, 100 B value, one thread (puts/s, higher is better)",
        "### 5. put, 100 B value, 8 threads (puts/s, higher is better)",
        "### 6. put, 4 MiB, a fresh key (MB/s, higher is better)",
        "### 7. put_file of a 8 MiB file, a fresh key (MB/s, higher is better)",
        "### 8. open a store of 2,000 keys of 100 B, until a get is served (ms,",
        "### 9. open a store of 20 keys of 512 KiB, until a get is served (ms,",
        "### 10. disk space after 10 overwrites of 500 keys of 100 B (bytes held (du),",
        "### 11. disk space after 10 overwrites of 500 keys of 100 B, then each library's gc",
        "### 12. time of that gc (ms, lower is better)",
        "### 13. flushes per put: fsync-family calls and O_DSYNC writes",
    ]
    for title in titles:
        assert title in out, title
    assert "## inline_limit crossover (median [min..max] of 2 repetitions)" in out
    assert "| 64 KiB |" in out and "put is within 1.25x of the log's" in out
    # Each row names the crash it survives.
    assert "| LMDB sync=True (fdatasync + a write through O_DSYNC per commit) | power loss |" in out
    assert "| diskcache (SQLite WAL, synchronous=NORMAL; value files" in out
    # What each library flushes, counted under strace (the README quotes these). A
    # machine without strace gets a table that says so, never invented counts.
    flushes = [
        "| blobcache 'fsync', 100 B (1 fdatasync log) | power loss | 1.00 |",
        "| blobcache 'os', 100 B (none) | process crash | 0.00 |",
        "| diskcache sync=2, 1 MiB, new key (1 fdatasync SQLite; value files created 2, "
        "flushed 0) | process crash | 1.00 |",
        "| diskcache, 1 MiB, new key (value files created 2, flushed 0) | process crash |",
        "| blobcache 'fsync', 1 MiB, same keys again (1 fsync directory; 1 fsync value ",
    ]
    if shutil.which("strace") is None:
        assert "Not measured: strace is not installed." in out
        assert not any(row in out for row in flushes)
    else:
        for row in flushes:
            assert row in out, row

    figures = json.loads(out_json.read_text())
    assert len(figures["tables"]) == len(titles)
    assert [point["size"] for point in figures["crossover"]] == [1024, 65536]
    assert all(line["samples"] for t in figures["tables"].values() for line in t["lines"])
    assert {g["met"] for g in figures["goals"]} <= {True, False}

    text = readme.read_text()
    assert text.startswith("# Title\n\nbefore\n<!-- bench:start -->\n")
    assert text.endswith("<!-- bench:end -->\nafter\n")
    assert "old figures" not in text and "\n##### 13. flushes per put" in text
    # Nothing left behind but what was asked for.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "out.json"]


def test_flush_counting_reads_strace(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    bench = load_tool(monkeypatch, "bench")
    d = tmp_path
    trace = f"""\
10 access("/blobcache-bench-phase/lib/one", F_OK) = -1 ENOENT
10 openat(AT_FDCWD<{d}>, "{d}/.tmp-1", O_WRONLY|O_CREAT|O_EXCL|O_CLOEXEC, 0644) = 3<{d}/.tmp-1>
10 write(3<{d}/.tmp-1>, ""..., 4096) = 4096
10 fsync(3<{d}/.tmp-1>) = 0
10 rename("{d}/.tmp-1", "{d}/v-0001") = 0
10 openat(AT_FDCWD<{d}>, "{d}/data.mdb", O_RDWR|O_DSYNC|O_CLOEXEC) = 4<{d}/data.mdb>
11 pwrite64(4<{d}/data.mdb>, ""..., 4096, 0 <unfinished ...>
11 <... pwrite64 resumed>) = 4096
10 fdatasync(5<{d}>) = 0
10 close(4<{d}/data.mdb>) = 0
10 openat(AT_FDCWD<{d}>, "{d}/data.mdb", O_RDWR|O_CLOEXEC) = 4<{d}/data.mdb>
10 pwrite64(4<{d}/data.mdb>, ""..., 4096, 0) = 4096
10 access("/blobcache-bench-phase/lib/end", F_OK) = -1 ENOENT
10 fsync(3<{d}/elsewhere>) = 0
"""
    counts = bench.count_flushes(trace)
    one = counts["lib"]["one"]
    assert one.by_file == {
        "fsync value file": 1,  # the temp file, counted as the version it became
        "O_DSYNC write data.mdb": 1,  # the write through the O_DSYNC descriptor only
        "fdatasync directory": 1,
    }
    assert one.created == 1
