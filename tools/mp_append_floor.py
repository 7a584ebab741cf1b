"""The floor for issue 14's "durable puts from 4 processes >= 2.5x one process":
what plain Python gets from N processes appending 138-byte records to one file
under a short flock, each put made durable by an fdatasync, in four ways.

* ``own``: every process fdatasyncs after each of its appends (the kernel may
  merge concurrent fdatasyncs in the journal);
* ``serial``: one fdatasync at a time across processes (a blocking flock),
  skipped when a mapped "durable up to" mark already covers the record;
* ``mark``: concurrent fdatasyncs, each raising the shared durable mark to what
  was appended before it began;
* ``shared``: one fdatasync at a time (an flock taken without waiting), the
  others asleep on a futex (``blobcache._futex``, where there is one) until
  the mark moves, then returning if covered, else taking the lead.

Run: ``python tools/mp_append_floor.py [--rounds 3]``. Measured 2026-12-01 on the
2-core reference VM (ext4, virtio): one process 8.7-10.6k puts/s; 4 processes
own 1.31-1.77x, serial 0.87-1.12x (the waiting processes' records seldom made
the syncer's cut: 3,600-3,900 fdatasyncs for 4,000 puts; a waiter sleeps in
the flock long after an fdatasync covered it, while the holder takes it
again), mark 1.37-1.57x; and (a later run, 16:20 UTC) shared 2.0-2.3x, 2.3-2.6
records per fdatasync. Between the fdatasyncs lie the waiters' wake-ups
(50-90 us each on this VM, traced), so even with the records of the other
three processes gathered for each fdatasync, 4 processes stay near 2x one:
2.5x is out of this protocol's reach here, before any work of blobcache's own.

``shared`` is blobcache's protocol (``SharedState.sync_shared``) without what
makes it safe and live there: the lock is an open file description lock of a
byte of STATE, a ``troubles`` value voids marks across a failed fdatasync or a
cut (waiters then fdatasync their own descriptor), and waiters give up on a
stopped syncer after 20 naps. Measured in
blobcache, tools/bench.py --only processes, 2026-12-01 16:31 UTC: 4 processes
x 100 B durable puts 1.22x one process (9,043 puts/s; 0.44 fdatasyncs per put,
was 1.00 and 1.13x before it), CPU per put 126 us against 69 us alone. Of the
gap to this floor, the following of the others' records is about 5% (the
background refresh turned off); the rest is each put's own Python path
between the wake-up and the next fdatasync, on 2 cores shared by 4 processes.
"""

from __future__ import annotations

import argparse
import fcntl
import mmap
import multiprocessing as mp
import os
import struct
import tempfile
import time

from blobcache import _futex

RECORD = b"x" * 138  # a 100 B value under a short key, with its 20-byte header
MARKS = struct.Struct("<QQ")  # appended up to, durable up to; then a u32 wake count


def _shared_sync(log: int, sync: int, marks: mmap.mmap, address: int, mine: int) -> int:
    """Durable up to ``mine`` the ``shared`` way; returns the fdatasyncs made."""
    while MARKS.unpack_from(marks, 0)[1] < mine:
        seen = struct.unpack_from("<I", marks, 16)[0]
        try:
            fcntl.flock(sync, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if MARKS.unpack_from(marks, 0)[1] < mine:
                _futex.wait(address, seen, 0.005)
            continue
        synced = 0
        appended, durable = MARKS.unpack_from(marks, 0)
        if durable < mine:
            os.fdatasync(log)
            synced = 1
            struct.pack_into("<Q", marks, 8, appended)
        fcntl.flock(sync, fcntl.LOCK_UN)
        count = (struct.unpack_from("<I", marks, 16)[0] + 1) & 0xFFFFFFFF
        struct.pack_into("<I", marks, 16, count)  # after the unlock, as blobcache
        _futex.wake(address)
        return synced
    return 0


def _worker(path: str, puts: int, how: str, results: mp.Queue[tuple[float, int]]) -> None:
    log = os.open(os.path.join(path, "log"), os.O_RDWR)
    append = os.open(os.path.join(path, "APPEND"), os.O_RDWR)
    state = os.open(os.path.join(path, "STATE"), os.O_RDWR)
    sync = os.open(os.path.join(path, "SYNC"), os.O_RDWR)
    marks = mmap.mmap(state, mmap.PAGESIZE)
    address = _futex.address_of(marks, 16) if _futex.available else 0
    syncs = 0
    start = time.perf_counter()
    for _ in range(puts):
        fcntl.flock(append, fcntl.LOCK_EX)
        end, _durable = MARKS.unpack_from(marks, 0)
        os.pwrite(log, RECORD, end)
        mine = end + len(RECORD)
        struct.pack_into("<Q", marks, 0, mine)
        fcntl.flock(append, fcntl.LOCK_UN)
        if how == "own":
            os.fdatasync(log)
            syncs += 1
        elif how == "shared":
            syncs += _shared_sync(log, sync, marks, address, mine)
        elif how == "serial":
            if MARKS.unpack_from(marks, 0)[1] >= mine:
                continue
            fcntl.flock(state, fcntl.LOCK_EX)
            appended, durable = MARKS.unpack_from(marks, 0)
            if durable < mine:
                os.fdatasync(log)
                syncs += 1
                struct.pack_into("<Q", marks, 8, appended)
            fcntl.flock(state, fcntl.LOCK_UN)
        else:
            appended = MARKS.unpack_from(marks, 0)[0]
            os.fdatasync(log)
            syncs += 1
            fcntl.flock(append, fcntl.LOCK_EX)
            if appended > MARKS.unpack_from(marks, 0)[1]:
                struct.pack_into("<Q", marks, 8, appended)
            fcntl.flock(append, fcntl.LOCK_UN)
    results.put((time.perf_counter() - start, syncs))


def _run(root: str, processes: int, puts: int, how: str) -> tuple[float, int]:
    """Puts per second over all processes, and the fdatasyncs made."""
    with tempfile.TemporaryDirectory(dir=root) as path:
        for name in ("log", "APPEND", "SYNC"):
            open(os.path.join(path, name), "wb").close()
        with open(os.path.join(path, "STATE"), "wb") as f:
            f.write(bytes(mmap.PAGESIZE))
        os.truncate(os.path.join(path, "log"), 64 << 20)
        results: mp.Queue[tuple[float, int]] = mp.Queue()
        workers = [
            mp.Process(target=_worker, args=(path, puts, how, results)) for _ in range(processes)
        ]
        start = time.perf_counter()
        for worker in workers:
            worker.start()
        done = [results.get() for _ in workers]
        for worker in workers:
            worker.join()
        return processes * puts / (time.perf_counter() - start), sum(s for _, s in done)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--puts", type=int, default=4000, help="puts per round, all processes")
    parser.add_argument("--dir", default="/var/tmp")
    args = parser.parse_args()
    mp.set_start_method("fork")
    for _ in range(args.rounds):
        one, _ = _run(args.dir, 1, args.puts, "own")
        line = [f"1 process {one:,.0f} puts/s"]
        for how in ("own", "serial", "mark", "shared")[: 4 if _futex.available else 3]:
            four, syncs = _run(args.dir, 4, args.puts // 4, how)
            line.append(f"4 {how} {four / one:.2f}x ({syncs} fdatasyncs)")
        print("; ".join(line))


if __name__ == "__main__":
    main()
