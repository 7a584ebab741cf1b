#!/usr/bin/env python3
"""Miss ratios of SIEVE, LRU and FIFO on the same synthetic traces, by simulation.

SIEVE is ``blobcache._sieve.Sieve`` itself, driven as the cache will drive it
(a hit adds to ``visited``; a miss asks for one victim when full, then
inserts); LRU is an ``OrderedDict`` moved to the end on a hit; FIFO a deque.
Every object is of size 1 and the cache holds a tenth of the key space. The
traces, all from one seed:

* Zipf with alpha 0.8, 1.0 and 1.2 over ``keys`` keys (key ``i`` drawn with a
  probability proportional to ``1 / (i + 1) ** alpha``), by inverse CDF: numpy's
  generator when numpy is installed, else Python's ``random`` (the two give
  different traces of the same law, so the output says which);
* Zipf 1.0 with a one-pass scan spliced into its middle: a fifth of the
  requests, each a key of its own, requested nowhere else. The cache is the
  same size as for the plain traces: the scan pollutes it, it does not grow it.

A miss ratio counts every miss, the cold start's included. The paper's claim
(Zhang et al., NSDI '24) is that SIEVE misses no more than LRU on skewed web
traces like Zipf's; on a scan, no algorithm keeps a key requested once, and
the figure says how each recovers. ``tools/bench.py`` runs :func:`simulate` as
its section ``sieve``, with goals; this script prints the same figures alone:

    python tools/sieve_sim.py [--quick] [--seed N]
    python tools/sieve_sim.py --memory   # bytes per key of Sieve, for its docstring
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import random
import sys
import time
import tracemalloc
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

# Measure this tree, not a copy installed earlier (this script's own directory,
# tools/, is what comes first on sys.path when it is run).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from blobcache._sieve import Sieve

SEED = 2024
ZIPF_ALPHAS = (0.8, 1.0, 1.2)
SCAN_ALPHA = 1.0
SCAN_SHARE = 5  # one request in this many is the scan's
CACHE_SHARE = 10  # the cache holds one key in this many of the key space
POLICIES = ("SIEVE", "LRU", "FIFO")
MEMORY_KEYS = 1_000_000


@dataclass(frozen=True)
class Sizes:
    keys: int  # the Zipf key space
    requests: int  # per trace


FULL = Sizes(100_000, 1_000_000)
QUICK = Sizes(2_000, 20_000)  # well under a second: the bench's smoke run uses it


@dataclass(frozen=True)
class Trace:
    name: str
    requests: list[str]
    zipf: bool  # a plain Zipf trace: SIEVE should miss no more than LRU there


@dataclass(frozen=True)
class Outcome:
    """What one trace did to every policy."""

    trace: str
    zipf: bool
    requests: int
    distinct: int  # keys requested at least once
    cache: int  # keys the cache holds
    misses: dict[str, int]  # policy -> misses

    def ratio(self, policy: str) -> float:
        return self.misses[policy] / self.requests


# --- Traces ---------------------------------------------------------------------------


def zipf_ranks(keys: int, count: int, alpha: float, seed: int) -> tuple[list[int], str]:
    """``count`` draws of Zipf(alpha) over ranks 0..keys-1, and the sampler's name."""
    try:
        import numpy as np
    except ImportError:
        return zipf_ranks_python(keys, count, alpha, seed), "Python's random"
    weights = np.arange(1, keys + 1, dtype=np.float64) ** -alpha
    cdf = np.cumsum(weights)
    uniform = np.random.default_rng(seed).random(count) * cdf[-1]
    # side="right": a draw equal to a bound belongs to the next rank, so rank i
    # gets exactly the interval [cdf[i-1], cdf[i]); the clip guards rounding at
    # the top end.
    ranks = np.minimum(np.searchsorted(cdf, uniform, side="right"), keys - 1)
    return [int(rank) for rank in ranks], "numpy"


def zipf_ranks_python(keys: int, count: int, alpha: float, seed: int) -> list[int]:
    """The same law as :func:`zipf_ranks` without numpy (another sequence)."""
    cdf = list(itertools.accumulate((i + 1) ** -alpha for i in range(keys)))
    draw = random.Random(seed).random
    top = keys - 1
    return [min(bisect.bisect_right(cdf, draw() * cdf[-1]), top) for _ in range(count)]


def traces(sizes: Sizes, seed: int = SEED) -> tuple[list[Trace], str]:
    """The four traces (see the module docstring) and the Zipf sampler's name."""
    # str keys, since Sieve takes str or bytes; one object per key, shared by
    # all of its requests, so a trace of a million requests is a million pointers.
    names = [str(i) for i in range(sizes.keys)]
    made: list[Trace] = []
    sampler = ""
    for alpha in ZIPF_ALPHAS:
        ranks, sampler = zipf_ranks(sizes.keys, sizes.requests, alpha, seed)
        name = f"Zipf alpha={alpha:.1f} over {sizes.keys:,} keys"
        made.append(Trace(name, [names[r] for r in ranks], zipf=True))
    scan = sizes.requests // SCAN_SHARE
    ranks, _ = zipf_ranks(sizes.keys, sizes.requests - scan, SCAN_ALPHA, seed)
    middle = len(ranks) // 2
    requests = [names[r] for r in ranks]
    requests[middle:middle] = [f"scan-{i}" for i in range(scan)]
    name = (
        f"Zipf alpha={SCAN_ALPHA:.1f} over {sizes.keys:,} keys, a scan of {scan:,} others mid-way"
    )
    made.append(Trace(name, requests, zipf=False))
    return made, sampler


# --- Policies -------------------------------------------------------------------------


def sieve_misses(requests: Sequence[str], capacity: int) -> int:
    sieve = Sieve()
    visited = sieve.visited
    misses = 0
    for key in requests:
        if key in sieve:
            visited.add(key)  # the whole of a hit, as in the cache
            continue
        misses += 1
        if len(sieve) >= capacity:
            (_victim,) = sieve.victims(1, size=_one, spare=_never)
        sieve.insert(key)
    return misses


def _one(_key: object) -> int:
    return 1


def _never(_key: object) -> bool:
    return False


def lru_misses(requests: Sequence[str], capacity: int) -> int:
    cache: OrderedDict[str, None] = OrderedDict()
    misses = 0
    for key in requests:
        if key in cache:
            cache.move_to_end(key)
            continue
        misses += 1
        if len(cache) >= capacity:
            cache.popitem(last=False)
        cache[key] = None
    return misses


def fifo_misses(requests: Sequence[str], capacity: int) -> int:
    # A deque beside a set, not a plain dict popped from its front: CPython's
    # dict leaves a dummy at each popped slot, so finding the front again would
    # walk them all, O(n) per eviction.
    order: deque[str] = deque()
    present: set[str] = set()
    misses = 0
    for key in requests:
        if key in present:
            continue
        misses += 1
        if len(order) >= capacity:
            present.remove(order.popleft())
        order.append(key)
        present.add(key)
    return misses


SIMULATORS: dict[str, Callable[[Sequence[str], int], int]] = {
    "SIEVE": sieve_misses,
    "LRU": lru_misses,
    "FIFO": fifo_misses,
}


def simulate(sizes: Sizes, seed: int = SEED) -> tuple[list[Outcome], str]:
    """Run every policy on every trace; return the outcomes and the Zipf sampler's name.

    >>> outcomes, _ = simulate(Sizes(keys=100, requests=1_000))
    >>> [o.cache for o in outcomes]
    [10, 10, 10, 10]
    >>> all(0 < o.ratio("SIEVE") < 1 for o in outcomes)
    True
    """
    capacity = max(1, sizes.keys // CACHE_SHARE)
    made, sampler = traces(sizes, seed)
    outcomes = [
        Outcome(
            trace.name,
            trace.zipf,
            len(trace.requests),
            len(set(trace.requests)),
            capacity,
            {policy: SIMULATORS[policy](trace.requests, capacity) for policy in POLICIES},
        )
        for trace in made
    ]
    return outcomes, sampler


def render(outcomes: Sequence[Outcome]) -> list[str]:
    """A Markdown table: miss ratio per trace and policy, and SIEVE against LRU."""
    lines = [
        "| trace | requests | distinct keys | cache | "
        + " | ".join(f"{p} miss ratio" for p in POLICIES)
        + " | SIEVE <= LRU |",
        "|---|---:|---:|---:|" + "---:|" * len(POLICIES) + "---|",
    ]
    for o in outcomes:
        verdict = ("yes" if o.misses["SIEVE"] <= o.misses["LRU"] else "**NO**") if o.zipf else "-"
        ratios = " | ".join(f"{o.ratio(p):.4f}" for p in POLICIES)
        lines.append(
            f"| {o.trace} | {o.requests:,} | {o.distinct:,} | {o.cache:,} | {ratios} | {verdict} |"
        )
    return lines


# --- Memory ---------------------------------------------------------------------------


class _Node:
    """A node of the doubly linked list Sieve does without: the baseline of --memory."""

    __slots__ = ("key", "newer", "older", "visited")

    def __init__(self, key: str, older: _Node | None) -> None:
        self.key = key
        self.newer: _Node | None = None
        self.older = older
        self.visited = False


def memory_per_key(count: int = MEMORY_KEYS) -> list[tuple[str, float]]:
    """Bytes per key, by tracemalloc, of Sieve (unvisited, then every key visited) and
    of a linked list of nodes with a dict to find them. The keys are made first:
    they belong to the cache, not to the structure."""
    keys = [f"key-{i:09d}" for i in range(count)]
    tracemalloc.start()
    try:
        sieve = Sieve()
        for key in keys:
            sieve.insert(key)
        structure = tracemalloc.get_traced_memory()[0]
        sieve.visited.update(keys)
        with_marks = tracemalloc.get_traced_memory()[0]
        del sieve
        base = tracemalloc.get_traced_memory()[0]
        nodes: dict[str, _Node] = {}
        newest: _Node | None = None
        for key in keys:
            node = _Node(key, newest)
            if newest is not None:
                newest.newer = node
            nodes[key] = newest = node
        linked = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    return [
        ("Sieve, no key visited", structure / count),
        ("Sieve's visited set, every key visited (extra)", (with_marks - structure) / count),
        ("linked list of __slots__ nodes + dict", linked / count),
    ]


# --- Command line ---------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"small traces: {QUICK.keys:,} keys, {QUICK.requests:,} requests",
    )
    parser.add_argument("--seed", type=int, default=SEED, help=f"default {SEED}")
    parser.add_argument(
        "--memory",
        action="store_true",
        help=f"print bytes per key of Sieve for {MEMORY_KEYS:,} keys instead",
    )
    args = parser.parse_args(argv)
    if args.memory:
        print(f"| structure, {MEMORY_KEYS:,} str keys | bytes per key |\n|---|---:|")
        for what, size in memory_per_key():
            print(f"| {what} | {size:.1f} |")
        return 0
    sizes = QUICK if args.quick else FULL
    started = time.perf_counter()
    outcomes, sampler = simulate(sizes, args.seed)
    seconds = time.perf_counter() - started
    print("\n".join(render(outcomes)))
    print(
        f"\n{sizes.keys:,} keys, {sizes.requests:,} requests per trace, seed {args.seed}, "
        f"Zipf sampled by {sampler}; unit-size objects, cache = keys / {CACHE_SHARE}; "
        f"{seconds:.1f} s."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
