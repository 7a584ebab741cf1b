"""Long power-loss crash sweep: more workloads, seeds, kill points and states than CI.

Crash model: power loss / kernel crash, alone and after a process crash (the
process running a workload is killed, a new one recovers and carries on, then
the power goes). It runs ``tests/crashsim.py`` (see its docstring for what a
crash state is and what is checked) over:

* every workload of the catalogue (``crashsim.WORKLOADS``),
* ``--seeds`` random workloads per durability level ("fsync" and "os"),
* ``--beside-gc`` random workloads per durability level with ``blobcache gc``
  (another lock holder) run between the writer's steps, in their middle, or
  suspended in its own middle while the writer goes on,
* for each replayable workload, ``--kills`` points where its process is killed,

in ``--jobs`` processes, and prints how many distinct crash states it checked
and every failure, each with the command that checks that crash point again.
Failures explained by a bug already reported (``crashsim.KNOWN_BUGS``) are
counted apart and do not fail the run unless ``--strict``. Exit status: 0 if
nothing failed, 1 otherwise.

    python tools/crash_sweep.py                      # the default sweep (a few minutes)
    python tools/crash_sweep.py --seeds 200 --kills 20 --max-states 128
    python tools/crash_sweep.py --seeds 0 --beside-gc 300 --kills 4   # catalogue, 600 beside gc
    python tools/crash_sweep.py --workloads gc-deletes beside-gc-os-7 --kills 10
    python tools/crash_sweep.py --workloads janitor --kill-after 15 --points 59 --strict
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Imported only once the repository root is on the path.
from tests import crashsim as C


@dataclass(frozen=True)
class Job:
    """One workload (by name, so it can cross to a worker process), explored
    plainly and at ``kills`` kill points, or only killed after ``kill_after``."""

    workload: str
    config: C.Config
    kills: int
    kill_after: int | None = None
    omit: tuple[tuple[str, str], ...] = ()  # (sync call, regular expression over its path)


def omissions(pairs: Sequence[tuple[str, str]]) -> C.Omit:
    """``--omit`` as the recorder takes it: call -> "is this path's call skipped?"."""
    out: dict[str, list[re.Pattern[str]]] = {}
    for call, pattern in pairs:
        out.setdefault(call, []).append(re.compile(pattern))

    def skips(patterns: list[re.Pattern[str]]) -> Callable[[str], bool]:
        return lambda path: any(p.search(path) for p in patterns)

    return {call: skips(patterns) for call, patterns in out.items()}


def run_job(job: Job) -> list[C.Report]:
    workload = C.workload_by_name(job.workload)
    omit = omissions(job.omit) if job.omit else None
    if job.kill_after is not None:
        return [C.explore(workload, job.config, omit=omit, kill_after=job.kill_after)]
    return C.explore_with_kills(workload, job.config, job.kills, omit=omit)


def jobs_for(args: argparse.Namespace) -> list[Job]:
    points = frozenset(args.points) if args.points else None
    config = C.Config(
        max_states=args.max_states,
        exhaustive=args.exhaustive,
        seed=args.seed,
        deep_probe=not args.shallow,
        points=points,
        max_failures=args.max_failures,
        known_bugs=() if args.strict else C.KNOWN_BUGS,
    )
    names = list(args.workloads or C.WORKLOADS)
    if not args.workloads:
        first = args.first_seed
        names += [
            f"{kind}-{durability}-{seed}"
            for kind, count in (("random", args.seeds), ("beside-gc", args.beside_gc))
            for seed in range(first, first + count)
            for durability in ("fsync", "os")
        ]
    for name in names:
        C.workload_by_name(name)  # an unknown name fails here, before any work
    # The longest jobs first, so the workers finish together.
    names.sort(key=lambda n: ("-os-" not in n, not n.startswith("os"), n))
    omit = tuple(tuple(o.split(":", 1)) for o in args.omit or ())
    for call, pattern in omit:
        if call.rpartition(".")[2] not in C.SYNC_CALLS:
            raise SystemExit(f"--omit: {call!r} is not one of {', '.join(C.SYNC_CALLS)}")
        re.compile(pattern)
    return [Job(name, config, args.kills, args.kill_after, omit) for name in names]


def run_all(jobs: Sequence[Job], workers: int) -> Iterator[list[C.Report]]:
    if workers <= 1:
        for job in jobs:
            yield run_job(job)
        return
    # fork: the workers inherit the imported modules (a killed-process recording
    # forks again inside them, which spawn-started workers could do as well).
    context = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = [pool.submit(run_job, job) for job in jobs]
        for future in concurrent.futures.as_completed(futures):
            yield future.result()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Power-loss crash-state sweep of blobcache: record workloads, build every "
            "(or a sample of) the crash states a power cut could leave, and check that "
            "each one recovers what was acknowledged."
        ),
        epilog="Exit status 0: no failure; 1: at least one failure (printed in full).",
    )
    parser.add_argument(
        "--workloads",
        nargs="+",
        metavar="NAME",
        help=(
            "only these workloads: names from the catalogue "
            f"({', '.join(sorted(C.WORKLOADS))}), random-fsync-N / random-os-N or "
            "beside-gc-fsync-N / beside-gc-os-N "
            "(default: the whole catalogue, --seeds random ones and --beside-gc ones)"
        ),
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=20,
        help="random workloads per durability level (default: 20)",
    )
    parser.add_argument(
        "--beside-gc",
        type=int,
        default=10,
        metavar="SEEDS",
        help="random workloads per durability level with blobcache gc beside the writer "
        "(beside-gc-fsync-N, beside-gc-os-N; default: 10)",
    )
    parser.add_argument("--first-seed", type=int, default=0, help="of the random workloads")
    parser.add_argument(
        "--kills",
        type=int,
        default=8,
        help="points per workload where its process is killed before the power cut (default: 8)",
    )
    parser.add_argument(
        "--kill-after",
        type=int,
        metavar="OPS",
        help="only the run whose process is killed after this many operations (replay)",
    )
    parser.add_argument(
        "--points",
        type=lambda text: [int(p) for p in text.split(",")],
        metavar="N[,N...]",
        help="only these crash points (replay)",
    )
    parser.add_argument(
        "--max-states",
        type=int,
        default=64,
        help="states sampled at a crash point with too many to try all (default: 64)",
    )
    parser.add_argument(
        "--exhaustive",
        type=int,
        default=256,
        help="try every state of a crash point that has at most this many (default: 256)",
    )
    parser.add_argument("--seed", type=int, default=0, help="of the state sampling")
    parser.add_argument(
        "--omit",
        action="append",
        metavar="CALL:REGEX",
        help=(
            "skip (and do not record) every call CALL (one of "
            f"{', '.join(C.SYNC_CALLS)}; gc.CALL: only blobcache gc's) on a path matching "
            "REGEX, as a store missing that fsync would: what would the sweep catch? "
            "(repeatable)"
        ),
    )
    parser.add_argument(
        "--shallow",
        action="store_true",
        help="skip gc() and the re-put of every key on each state (faster, weaker)",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="count failures of already reported bugs (crashsim.KNOWN_BUGS) too",
    )
    parser.add_argument(
        "--max-failures",
        type=int,
        default=5,
        help="per recording: stop checking it after this many failures (default: 5)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=os.cpu_count() or 1,
        help="worker processes (default: one per CPU)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="a line per recording")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    jobs = jobs_for(args)
    started = time.monotonic()
    print(
        f"crash sweep: {len(jobs)} workloads, {args.kills} kill points each, "
        f"up to {args.max_states} states per crash point ({args.exhaustive} exhaustively), "
        f"{args.jobs} jobs, states under {C.scratch_dir()}",
        flush=True,
    )
    total = C.Report("crash sweep")
    recordings = 0
    for reports in run_all(jobs, args.jobs):
        for report in reports:
            recordings += 1
            total.add(report)
            if args.verbose or report.failures:
                print(report.summary(), flush=True)
            for failure in report.failures:
                print(f"\n{failure}\n", flush=True)
        if not args.verbose:
            print(".", end="", flush=True)
    seconds = time.monotonic() - started
    print()
    print(
        f"checked {total.states_checked} distinct crash states ({total.states_built} built) "
        f"at {total.crash_points} crash points of {recordings} recordings "
        f"({total.fs_ops} recorded file-system operations) in {seconds:.0f} s: "
        f"{len(total.failures)} failures"
    )
    if total.tolerated:
        print(
            f"  {total.tolerated} gets raised CorruptionError where the key could read as absent "
            "(documented in FORMAT.md, section 5: a never-synced version with no older record)"
        )
    for name, count in sorted(total.known.items()):
        print(f"  known bug {name!r} (reported, see crashsim.KNOWN_BUGS): {count} failing states")
    return 1 if total.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
