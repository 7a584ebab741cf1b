"""Unit tests of tools/sieve_sim.py: its policies on hand-checked traces, its traces' shape.

The bench smoke test runs the whole simulation; these check that what it
counts is what each policy does, so that its miss ratios can be trusted.
"""

from __future__ import annotations

from collections import Counter
from types import ModuleType

import pytest

from tests.conftest import load_tool


@pytest.fixture
def sim(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    return load_tool(monkeypatch, "sieve_sim")


# a b c fill a cache of 3; a is hit; d misses. LRU evicts b (least recent),
# FIFO a (oldest), SIEVE b (a's hit spares it). Then a: a hit for LRU and
# SIEVE, a miss for FIFO (which evicts b for it).
TRACE = ["a", "b", "c", "a", "d", "a", "b"]


def test_policies_count_the_misses_a_hand_check_gives(sim: ModuleType) -> None:
    # b at the end: a miss for LRU and SIEVE (evicted), and for FIFO too (evicted for a).
    assert sim.lru_misses(TRACE, 3) == 5
    assert sim.fifo_misses(TRACE, 3) == 6
    assert sim.sieve_misses(TRACE, 3) == 5


def test_sieve_keeps_a_hit_key_through_a_burst_that_lru_and_fifo_flush(sim: ModuleType) -> None:
    # a hit once, then three new keys in a cache of 3. LRU and FIFO evict a at
    # the third; SIEVE's hand cleared a's bit on the first eviction and moved
    # on toward the newer keys, evicting b, c and d, so the last a is a hit.
    trace = ["a", "b", "c", "a", "d", "e", "f", "a"]
    assert sim.lru_misses(trace, 3) == 7
    assert sim.fifo_misses(trace, 3) == 7
    assert sim.sieve_misses(trace, 3) == 6


def test_both_zipf_samplers_follow_the_same_law(sim: ModuleType) -> None:
    keys, count = 50, 40_000
    numpy_ranks, name = sim.zipf_ranks(keys, count, 1.0, seed=1)
    python_ranks = sim.zipf_ranks_python(keys, count, 1.0, seed=1)
    assert name == "numpy"
    total = sum((i + 1) ** -1.0 for i in range(keys))
    for ranks in (numpy_ranks, python_ranks):
        assert min(ranks) == 0 and max(ranks) == keys - 1
        seen = Counter(ranks)
        for rank in (0, 1, 9):
            expected = count * (rank + 1) ** -1.0 / total
            assert abs(seen[rank] - expected) < 5 * expected**0.5, rank


def test_scan_trace_splices_unique_unseen_keys_in_the_middle(sim: ModuleType) -> None:
    sizes = sim.Sizes(keys=100, requests=1_000)
    made, _ = sim.traces(sizes)
    assert [t.zipf for t in made] == [True, True, True, False]
    scan = made[-1].requests
    assert len(scan) == sizes.requests
    scanned = [i for i, key in enumerate(scan) if key.startswith("scan-")]
    assert len(scanned) == len(set(scan[i] for i in scanned)) == sizes.requests // 5
    assert scanned == list(range(400, 600))  # one run, mid-way through the 800 Zipf requests
    assert all(int(key) < sizes.keys for key in scan if not key.startswith("scan-"))
