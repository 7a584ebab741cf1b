"""Smoke test of ``tools/bench.py`` (blobcache beside the floor, diskcache and LMDB).

A ``--quick`` run completes, prints every table and every goal, writes its JSON
and its report into a file between the markers, and removes its stores. No timing
is looked at: figures from a run this small, on a shared machine, mean nothing.
The counts of flushes are, since they do not depend on the machine: they are what
docs/performance.md says each library does to survive a crash. The run includes the
remote section, against a SeaweedFS of its own (tests/seaweed.py).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import TOOLS, load_tool

BENCH = TOOLS / "bench.py"

GET = "get, 100 B value, 500 str keys present, looked up at random"
GET_BYTES = "get, 100 B value, 500 bytes keys present, looked up at random"
FLOOR_GET = "floor: a method wrapping dict.get"
OPEN = "open a store of 2,000 keys of 100 B, until a get is served"
DISK_GC = "disk space after 10 overwrites of 500 keys of 100 B, then each library's gc"
PROCESSES = "put, 100 B value, 4 processes on one store, one thread each"
MISS = "get of a missing key, 500 keys present, another process holding the store"
STALE = "staleness of a hit while another process overwrites the key every 1 ms"
# The sieve section's traces (tools/sieve_sim.py's QUICK sizes), one table each.
ZIPF = [
    f"miss ratio, 20,000 requests of Zipf alpha={a} over 2,000 keys" for a in ("0.8", "1.0", "1.2")
]
SCAN = (
    "miss ratio, 20,000 requests of Zipf alpha=1.0 over 2,000 keys, a scan of 4,000 others mid-way"
)
MISSED = "(% of requests missed, lower is better)"
BATCH = "put, 100 B value, blobcache 'fsync', 50 puts: one batch or one by one"
TTL_GET = "get, 100 B value, 500 str keys: with a ttl, with a cap, with neither"
CAPPED_PUT = "put, 100 B value, fresh keys, into a store at max_bytes (each put evicts one key)"
MEMO_HIT = "memoize hit: a call whose result is stored, one small int argument"
ARRAY_KEY = "memoize key of a call with a 4 MiB float32 array (C order)"
GET_ARRAY = "get_array of a 4 MiB array, after its first (verified) get"
REMOTE_PUT = "put of 4 MiB, a fresh key, to a remote on the loopback (SeaweedFS)"
REMOTE_GET = "first get of a 4 MiB value held by the remote only, into a fresh store"
REMOTE_SMALL = "put of 1 KiB, fresh keys, one thread, with a remote on the loopback"
TITLES = [
    f"### 1. {GET} (ns per get, lower is better)",
    f"### 2. {GET_BYTES} (ns per get, lower is better)",
    "### 3. get, 4 MiB value, first get after opening the store: time to a usable buffer",
    "### 4. get, 4 MiB value, first get after opening the store, then xxh3 of every byte",
    "### 5. put, 100 B value, one thread (puts/s, higher is better)",
    "### 6. put, 100 B value, 8 threads (puts/s, higher is better)",
    "### 7. put, 100 B value, blobcache 'os', one thread, 200 puts in a row (puts/s,",
    "### 8. put, 4 MiB, a fresh key (MB/s, higher is better)",
    "### 9. put_file of a 8 MiB file, a fresh key (MB/s, higher is better)",
    "### 10. AsyncBlobCache.put of 4 MiB, beside BlobCache.put (MB/s, higher is better)",
    f"### 11. {OPEN} (ms, lower is better)",
    "### 12. resident memory per key, a store of 2,000 keys of 100 B (bytes, lower is better)",
    "### 13. open a store of 20 keys of 512 KiB, until a get is served (ms,",
    "### 14. disk space after 10 overwrites of 500 keys of 100 B (bytes held (du),",
    f"### 15. {DISK_GC} (bytes held (du), lower is better)",
    "### 16. time of that gc (ms, lower is better)",
    "### 17. the maintenance command on a store of 200 keys (s, lower is better)",
    "### 18. after `blobcache gc` on that store (bytes (file sizes), lower is better)",
    "### 19. flushes per put: fsync-family calls and O_DSYNC writes",
    "### 20. put, 100 B value, one process alone (puts/s, higher is better)",
    f"### 21. {PROCESSES} (puts/s, higher is better)",
    f"### 22. {MISS} (ns per get, lower is better)",
    f"### 23. {STALE} (ms, lower is better)",
    *(f"### {n}. {title}, a cache of 200 {MISSED}" for n, title in enumerate(ZIPF, 24)),
    f"### 27. {SCAN}, a cache of 200 {MISSED}",
    f"### 28. {BATCH} (puts/s, higher is better)",
    f"### 29. {TTL_GET} (ns per get, lower is better)",
    f"### 30. {CAPPED_PUT} (puts/s,",
    "### 31. expiry: how long a get still serves a value past its ttl, one thread polling (ms",
    f"### 32. {MEMO_HIT} (µs/call, lower is better)",
    f"### 33. {ARRAY_KEY} (MB/s, higher is better)",
    f"### 34. {GET_ARRAY} (µs, lower is better)",
    f"### 35. {REMOTE_PUT} (ms, lower is better)",
    f"### 36. {REMOTE_GET} (MB/s, higher is better)",
    f"### 37. {REMOTE_SMALL} (ms per put, lower is better)",
]
# Every goal either former tool checked, issue 13's get floor and issue 14's goals of
# several processes: its text and issue.
GOALS = [
    f"| {GET}: blobcache <= 1.2x {FLOOR_GET} | 13 |",
    f"| {GET}: blobcache <= 2.5x {FLOOR_GET} | 3 |",
    f"| {GET}: blobcache, values in files <= 3x {FLOOR_GET} | 3 |",
    f"| {GET}: blobcache >= 50x as fast as diskcache | 7 |",
    f"| {GET}: blobcache faster than LMDB | 7 |",
    f"| {GET}: blobcache faster than LMDB, one read transaction | 7 |",
    f"| {GET_BYTES}: blobcache <= 1.2x {FLOOR_GET} | 13 |",
    "| put, 100 B value, one thread: blobcache 'fsync' <= 1.2x floor: append + fdatasync | 3 |",
    "| put, 100 B value, one thread: blobcache 'fsync' faster than LMDB sync=True | 7 |",
    "| put, 100 B value, one thread: blobcache 'fsync' faster than diskcache sync=2 | 7 |",
    "| put, 100 B value, 8 threads: blobcache 'fsync' faster than LMDB sync=True | 7 |",
    "| put, 100 B value, 8 threads: blobcache 'fsync' faster than diskcache sync=2 | 7 |",
    "| put, 100 B value, 8 threads: blobcache 'fsync' >= 8x its puts/s from one thread | 3 |",
    "| put, 100 B value, 8 threads: blobcache 'fsync' >= 4x its puts/s from one thread | 14 |",
    "| put, 100 B value, blobcache 'os', one thread, 200 puts in a row: blobcache 'os' "
    ">= 100,000 puts/s (absolute) | 3 |",
    "| put, 4 MiB, a fresh key: blobcache 'fsync' >= 0.85x as fast as floor: temp + write + "
    "fsync + rename + fsync(dir) | 3 |",
    "| put, 4 MiB, a fresh key: blobcache 'fsync' >= 2x as fast as diskcache | 7 |",
    "| put_file of a 8 MiB file, a fresh key: blobcache 'fsync' >= 0.85x as fast as floor: "
    "cp + fsync(file) + fsync(dir) | 6 |",
    "| AsyncBlobCache.put of 4 MiB, beside BlobCache.put: AsyncBlobCache.put >= 0.9x as fast "
    "as baseline: BlobCache.put | 6 |",
    f"| {OPEN}: blobcache, no snapshot <= 3.00 ms (absolute) | 3, 7 |",
    f"| {OPEN}: blobcache <= 4x floor: read blobcache's log files | 18 |",
    f"| {OPEN}: blobcache <= 1x floor: read blobcache's log files | 18 (3) |",
    "| open a store of 20 keys of 512 KiB, until a get is served: blobcache <= 1.2x floor: "
    "scandir + stat blobcache's tree | 18 |",
    "| resident memory per key, a store of 2,000 keys of 100 B: blobcache, every key got <= "
    "1x floor: key + value + 100 B (issue 18's bound) | 18 |",
    f"| {DISK_GC}: blobcache <= 1.2x floor: the live keys and values | 3 |",
    f"| {DISK_GC}: blobcache, sum of file sizes <= 1.2x floor: the live keys and values | 3 |",
    "| the maintenance command on a store of 200 keys: blobcache stats <= 5.00 s (absolute) | 5 |",
    "| the maintenance command on a store of 200 keys: blobcache verify <= 10.0 s (absolute) | 5 |",
    "| after `blobcache gc` on that store: blobcache <= 1.1x floor: the live bytes + 64 KiB of "
    "fixed overhead | 5 |",
    f"| {PROCESSES}: blobcache 'fsync' >= 2.5x its puts/s from one process | 14 |",
    f"| {PROCESSES}: blobcache 'os' >= 1x its puts/s from one process | 14 |",
    f"| {MISS}: blobcache, a miss <= 20,000 ns per get (absolute) | 14 |",
    f"| {STALE}: blobcache, p99 <= 55.0 ms (absolute) | 14 |",
    # SIEVE against LRU on each Zipf trace; the scan's trace has no goal.
    *(f"| {title}, a cache of 200: SIEVE <= 1x LRU | 15 |" for title in ZIPF),
    f"| {BATCH}: blobcache, put_many >= 20x as fast as blobcache, put | 15 |",
    f"| {TTL_GET}: blobcache, no ttl <= 1.2x {FLOOR_GET} | 15 |",
    f"| {TTL_GET}: blobcache, every key with a ttl <= 1.4x {FLOOR_GET} | 15 |",
    f"| {TTL_GET}: blobcache, max_bytes set <= 1.4x {FLOOR_GET} | 15 |",
    f"| {CAPPED_PUT}: blobcache, fsync, at its cap <= 1.5x blobcache, fsync, no cap | 15 |",
    f"| {MEMO_HIT}: blobcache memoize <= 3.00 µs/call (absolute) | 16 |",
    f"| {MEMO_HIT}: blobcache memoize faster than diskcache memoize | 16 |",
    f"| {MEMO_HIT}: blobcache memoize faster than joblib Memory.cache | 16 |",
    f"| {ARRAY_KEY}: blobcache memoize key >= 0.8x as fast as floor: xxh3-128 of the array's "
    "bytes | 16 |",
    f"| {GET_ARRAY}: blobcache get_array <= 1,000 µs (absolute) | 16 |",
    f"| {REMOTE_PUT}: blobcache, write-through <= 1.2x floor: obstore.put, multipart | 17 |",
    f"| {REMOTE_GET}: blobcache, read-through >= 0.8x as fast as floor: obstore.get streamed "
    "to a file + fsync | 17 |",
    f"| {REMOTE_SMALL}: blobcache, write-back <= 1.2x blobcache, no remote | 17 |",
    f"| {REMOTE_SMALL}: blobcache, write-through <= 1.5x floor: obstore.put, mode='create' | 17 |",
]
# What each library flushes, counted under strace (docs/performance.md quotes these).
FLUSHES = [
    "| blobcache 'fsync', 100 B (1 fdatasync log) | power loss | 1.00 |",
    "| blobcache 'os', 100 B (none) | process crash | 0.00 |",
    "| diskcache sync=2, 1 MiB, new key (1 fdatasync SQLite; value files created 2, "
    "flushed 0) | process crash | 1.00 |",
    "| diskcache, 1 MiB, new key (value files created 2, flushed 0) | process crash |",
    # A large put fdatasyncs the log once too, for its version record (issue 14).
    "| blobcache 'fsync', 1 MiB, same keys again (1 fdatasync log; 1 fsync directory; "
    "1 fsync value ",
]


def test_quick_run_prints_every_table_and_goal_and_writes_json_and_report(
    tmp_path: Path,
) -> None:
    report = tmp_path / "performance.md"
    report.write_text(
        "# Title\n\nbefore\n<!-- bench:start -->\nold figures\n<!-- bench:end -->\nafter\n"
    )
    out_json = tmp_path / "out.json"
    options = ["--quick", "--dir", str(tmp_path), "--json", str(out_json), "--report", str(report)]
    done = subprocess.run(
        [sys.executable, str(BENCH), *options],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    # It measures this tree, not a copy of blobcache installed earlier.
    assert f"imported from {BENCH.parent.parent / 'blobcache'} " in out
    for fact in ("| cpu |", "| cores |", "| python |", "| file system |", "| date (UTC) |"):
        assert fact in out, fact
    assert "| peers | diskcache " in out
    assert "| run | --quick, a smoke run: its figures mean nothing; sections get, put, " in out
    for title in TITLES:
        assert title in out, title
    assert out.count("\n### ") == len(TITLES)
    for goal in GOALS:
        assert goal in out, goal
    assert "## inline_limit crossover (median [min..max] of 2 repetitions)" in out
    assert "| 1 KiB |" in out and "| 64 KiB |" in out
    assert "The file layout's put is within 1.25x of the log's" in out
    # Each row names the crash it survives.
    assert "| LMDB sync=True (fdatasync + a write through O_DSYNC per commit) | power loss |" in out
    assert "| floor: pwrite into written blocks + fdatasync | power loss |" in out
    assert "| blobcache, write-through (a create-only record, then the local put) | machine" in out
    # A machine without strace gets a table that says so, never invented counts.
    if shutil.which("strace") is None:
        assert "Not measured: strace is not installed." in out
        assert not any(row in out for row in FLUSHES)
    else:
        for row in FLUSHES:
            assert row in out, row

    figures = json.loads(out_json.read_text())
    assert figures["tables"][0]["title"] == GET
    assert len(figures["tables"]) == len(TITLES)
    assert [point["size"] for point in figures["crossover"]] == [1024, 65536]
    assert all(line["samples"] for t in figures["tables"] for line in t["lines"])
    assert len(figures["goals"]) == len(GOALS)
    assert {type(g["met"]) for g in figures["goals"]} == {bool}

    text = report.read_text()
    assert text.startswith("# Title\n\nbefore\n<!-- bench:start -->\n#### Machine\n")
    assert text.endswith("<!-- bench:end -->\nafter\n")
    assert "old figures" not in text and "\n##### 19. flushes per put" in text
    # Nothing left behind but what was asked for.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "performance.md"]


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    return load_tool(monkeypatch, "bench")


def test_only_runs_the_sections_it_names_in_their_order(
    bench: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ran: list[str] = []
    for name in bench.RUNS:
        monkeypatch.setitem(bench.RUNS, name, lambda cfg, root, name=name: ran.append(name) or [])
    monkeypatch.setattr(bench, "bench_crossover", lambda cfg, root: ran.append("crossover") or [])
    out_json = tmp_path / "out.json"
    options = ["--only", "crossover,get", "--dir", str(tmp_path), "--json", str(out_json)]
    assert bench.main(options) == 0
    assert ran == ["get", "crossover"]
    assert json.loads(out_json.read_text())["machine"]["run"] == "full; sections get, crossover"
    ran.clear()
    assert bench.main(["--dir", str(tmp_path), "--json", str(out_json)]) == 0
    assert ran == list(bench.SECTIONS)


def test_only_refuses_a_section_it_does_not_have(
    bench: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        bench.parse_args(["--only", "get,floor"])
    assert "no section named 'floor': choose among get, put, open," in capsys.readouterr().err


def test_report_without_markers_fails_before_measuring(bench: ModuleType, tmp_path: Path) -> None:
    report = tmp_path / "notes.md"
    report.write_text("# Notes\n")
    with pytest.raises(SystemExit, match=re.escape("has no <!-- bench:start --> ... <!-- bench")):
        bench.main(["--report", str(report), "--dir", str(tmp_path / "absent")])
    assert report.read_text() == "# Notes\n"


def test_flush_counting_reads_strace(bench: ModuleType, tmp_path: Path) -> None:
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
