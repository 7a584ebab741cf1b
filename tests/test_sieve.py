"""Unit tests of _sieve: one test per named behaviour, and a property test against a model.

The model (``ModelSieve``) is SIEVE as the paper draws it, on a plain list:
O(n) removals by index, no lazy deletion, no compaction, so that it is easy
to check by eye. Hypothesis runs random inserts, hits, removals and evictions
on both and wants the same victims in the same order, and the same keys in the
same order with the same visited bits, after every step.
"""

from __future__ import annotations

import doctest
from collections.abc import Callable, Collection

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blobcache import _sieve
from blobcache._names import Key
from blobcache._sieve import Sieve


def unit(_key: Key) -> int:
    return 1


def nobody(_key: Key) -> bool:
    return False


def spared(keys: Collection[Key]) -> Callable[[Key], bool]:
    return lambda key: key in keys


def filled(*keys: Key) -> Sieve:
    sieve = Sieve()
    for key in keys:
        sieve.insert(key)
    return sieve


def stale_entries(sieve: Sieve) -> int:
    """List entries the structure holds beyond its keys (lazy deletion's leftovers)."""
    return len(sieve._keys) - len(sieve)


def test_the_docstring_example_runs() -> None:
    assert doctest.testmod(_sieve).failed == 0


def test_new_key_is_unvisited_and_is_the_first_victim_after_older_hits() -> None:
    sieve = Sieve()
    sieve.visited.add("c")  # left by a hit racing an earlier removal of "c"
    for key in ("a", "b", "c"):
        sieve.insert(key)
    assert "c" not in sieve.visited
    sieve.visited.update({"a", "b"})
    assert sieve.victims(1, unit, nobody) == ["c"]


def test_overwrite_keeps_its_place_and_counts_as_a_hit() -> None:
    sieve = filled("a", "b", "c")
    sieve.insert("a")
    assert sieve.order() == ["a", "b", "c"] and len(sieve) == 3
    assert sieve.visited == {"a"}
    assert sieve.victims(1, unit, nobody) == ["b"]


def test_hit_spares_a_key_for_one_pass_only() -> None:
    sieve = filled("a", "b")
    sieve.visited.add("a")
    assert sieve.victims(1, unit, nobody) == ["b"]  # "a" passed over, its bit cleared
    assert "a" not in sieve.visited
    sieve.insert("c")
    assert sieve.victims(1, unit, nobody) == ["a"]  # no hit since: the next pass takes it


def test_victim_order_of_a_hand_checked_example() -> None:
    # A cache of 5 keys; each miss makes room for one. Oldest first throughout.
    sieve = filled("A", "B", "C", "D", "E")
    sieve.visited.update({"A", "C"})
    # Hand at A: visited, cleared; B unvisited: evicted. Hand on C.
    assert sieve.victims(1, unit, nobody) == ["B"]
    sieve.insert("F")
    assert sieve.order() == ["A", "C", "D", "E", "F"] and sieve.visited == {"C"}
    sieve.visited.update({"E", "A"})
    # C cleared, D evicted. Hand on E.
    assert sieve.victims(1, unit, nobody) == ["D"]
    sieve.insert("G")
    # E cleared, F evicted, G (newest, unvisited) evicted; the hand wraps to A.
    assert sieve.victims(2, unit, nobody) == ["F", "G"]
    assert sieve.order() == ["A", "C", "E"] and sieve.visited == {"A"}
    # A cleared (its hit came before the hand reached it), C evicted.
    assert sieve.victims(1, unit, nobody) == ["C"]
    assert sieve.order() == ["A", "E"] and sieve.visited == set()


def test_hand_wraps_from_newest_to_oldest() -> None:
    sieve = filled("a", "b", "c")
    sieve.visited.update({"a", "b", "c"})
    # One lap clears every bit; past the newest the hand starts again at the oldest.
    assert sieve.victims(1, unit, nobody) == ["a"]
    assert sieve.visited == set()


def test_hand_past_the_newest_wraps_at_once_not_onto_a_later_key() -> None:
    sieve = filled("a", "b")
    sieve.visited.add("a")
    assert sieve.victims(1, unit, nobody) == ["b"]  # the newest: the hand wraps to "a"
    sieve.insert("c")
    # SIEVE's hand is at the oldest now; "c", inserted after, is not next.
    assert sieve.victims(1, unit, nobody) == ["a"]


def test_removing_the_newest_key_under_the_hand_wraps_the_hand() -> None:
    sieve = filled("a", "b", "c", "d")
    assert sieve.victims(1, unit, spared({"a", "b"})) == ["c"]  # the hand on d, the newest
    sieve.remove("d")  # the hand's key was the newest: the hand wraps to the oldest
    assert stale_entries(sieve) == 0  # c's and d's entries popped off the end
    sieve.insert("e")
    assert sieve.victims(1, unit, nobody) == ["a"]


def test_victims_add_up_sizes_until_the_need_is_met() -> None:
    sizes: dict[Key, int] = {"a": 3, "b": 1, "c": 4, "d": 1}
    sieve = filled(*sizes)
    assert sieve.victims(4, sizes.__getitem__, nobody) == ["a", "b"]
    assert sieve.victims(0, sizes.__getitem__, nobody) == []
    assert sieve.order() == ["c", "d"]


def test_spared_keys_are_never_returned_and_keep_their_marks() -> None:
    sieve = filled("a", "b", "c", "d")
    sieve.visited.update({"a", "b"})
    # a spared (bit kept), b cleared, c spared, d evicted; wrap: a spared, b evicted.
    assert sieve.victims(2, unit, spared({"a", "c"})) == ["d", "b"]
    assert sieve.visited == {"a"}
    assert sieve.order() == ["a", "c"]


def test_all_spared_returns_short_and_stops_after_two_laps() -> None:
    sieve = filled("a", "b", "c")
    sieve.visited.add("b")
    asked: list[Key] = []

    def spare_all(key: Key) -> bool:
        asked.append(key)
        return True

    assert sieve.victims(1, unit, spare_all) == []
    assert asked == ["a", "b", "c"] * 2
    assert sieve.visited == {"b"} and len(sieve) == 3


def test_some_spared_returns_what_it_found_then_stops() -> None:
    sieve = filled("a", "b", "c")
    sieve.visited.add("c")
    # c's bit is cleared on the first lap, so c is found on the second; then
    # only spared keys remain.
    assert sieve.victims(5, unit, spared({"a", "b"})) == ["c"]
    assert sieve.order() == ["a", "b"]
    assert sieve.victims(1, unit, spared({"a", "b"})) == []


def test_remove_forgets_the_key_and_reinsert_puts_it_newest_unvisited() -> None:
    sieve = filled("a", "b", "c")
    sieve.visited.add("a")
    sieve.remove("a")
    sieve.remove("zz")  # absent: nothing happens
    assert "a" not in sieve and len(sieve) == 2 and "a" not in sieve.visited
    sieve.insert("a")
    assert "a" in sieve and sieve.order() == ["b", "c", "a"] and "a" not in sieve.visited
    sieve.visited.update({"b", "c"})
    assert sieve.victims(1, unit, nobody) == ["a"]


def test_str_and_bytes_keys_are_different_keys() -> None:
    sieve = filled("a", b"a")
    sieve.remove("a")
    assert sieve.order() == [b"a"]


def test_compaction_keeps_order_and_hand() -> None:
    keys = [f"k{i}" for i in range(10)]
    sieve = filled(*keys)
    sieve.visited.update(keys[:4])
    assert sieve.victims(1, unit, nobody) == ["k4"]  # k0..k3 cleared; the hand on k5
    for key in ("k0", "k1", "k2", "k6"):
        sieve.remove(key)
    assert stale_entries(sieve) == 5  # 5 stale of 10: not more than half yet
    sieve.remove("k8")
    assert stale_entries(sieve) == 0  # compacted
    assert sieve.order() == ["k3", "k5", "k7", "k9"]
    sieve.visited.add("k5")
    # The hand is still on k5: passed over (bit cleared), then k7.
    assert sieve.victims(1, unit, nobody) == ["k7"]


def test_compaction_moves_a_hand_on_a_stale_entry_to_the_next_key() -> None:
    sieve = filled("a", "b", "c", "d", "e", "f", "g", "h")
    sieve.visited.update({"a", "b"})
    assert sieve.victims(1, unit, nobody) == ["c"]  # a and b cleared; the hand on d
    sieve.remove("d")  # the hand's own key: its newer neighbour is next
    for key in ("e", "g"):
        sieve.remove(key)
    assert stale_entries(sieve) == 4  # 4 of 8: not more than half
    sieve.remove("f")  # now f, e, d and g were the hand's next keys: h is
    assert stale_entries(sieve) == 0 and sieve.order() == ["a", "b", "h"]
    # A hand reset to the oldest would take a (unvisited since the last pass).
    assert sieve.victims(1, unit, nobody) == ["h"]


def test_stale_trailing_entries_are_dropped_at_once() -> None:
    sieve = filled("a", "b", "c")
    sieve.remove("c")
    assert stale_entries(sieve) == 0


def test_stale_visited_marks_are_dropped_at_compaction() -> None:
    keys = [f"k{i}" for i in range(8)]
    sieve = filled(*keys)
    sieve.visited.add("k7")
    sieve.remove("k0")
    sieve.visited.add("k0")  # a get that found k0 just before its removal, landing after
    sieve.visited.add("never")  # nor may a mark of a key never inserted stay for ever
    assert {"k0", "never"} <= sieve.visited
    for key in ("k1", "k2", "k3", "k4"):
        sieve.remove(key)
    assert stale_entries(sieve) == 0  # compacted
    assert sieve.visited == {"k7"}


# --- The model ------------------------------------------------------------------------


class ModelSieve:
    """SIEVE on a list, oldest first, and an index for the hand; O(n) and plain."""

    def __init__(self) -> None:
        self.order: list[Key] = []
        self.visited: set[Key] = set()
        self.hand = 0  # index in order; the paper's "no hand: start at the tail" is 0

    def insert(self, key: Key) -> None:
        if key in self.order:
            self.visited.add(key)
        else:
            self.order.append(key)
            self.visited.discard(key)

    def remove(self, key: Key) -> None:
        if key not in self.order:
            return
        index = self.order.index(key)
        del self.order[index]
        self.visited.discard(key)
        if index < self.hand:
            self.hand -= 1
        self._wrap()  # the hand's own key gone: its newer neighbour, or the oldest

    def victims(
        self, need: int, size: Callable[[Key], int], spare: Callable[[Key], bool]
    ) -> list[Key]:
        found: list[Key] = []
        room = 0
        passed = 0
        while room < need and self.order and passed < 2 * len(self.order):
            key = self.order[self.hand]
            if spare(key):
                self.hand += 1
                passed += 1
            elif key in self.visited:
                self.visited.discard(key)
                self.hand += 1
                passed += 1
            else:
                del self.order[self.hand]  # the hand now on the next newer key
                found.append(key)
                room += size(key)
                passed = 0
            self._wrap()
        return found

    def _wrap(self) -> None:
        if self.hand >= len(self.order):
            self.hand = 0


KEYS: list[Key] = [f"k{i}" for i in range(16)] + [b"k0", b"k1"]
# Weighted toward inserts and small evictions, and runs of at least 30 steps,
# so that the structure grows to a dozen keys, the hand laps it, and removals
# turn enough of it stale to compact with the hand anywhere.
OPS = st.one_of(
    st.tuples(st.just("insert"), st.sampled_from(KEYS)),
    st.tuples(st.just("insert"), st.sampled_from(KEYS)),
    st.tuples(st.just("hit"), st.sampled_from(KEYS)),  # absent keys too: a racing get
    st.tuples(st.just("remove"), st.sampled_from(KEYS)),
    st.tuples(st.just("victims"), st.integers(0, 3), st.frozensets(st.sampled_from(KEYS))),
)


def weight(key: Key) -> int:
    return len(key) % 3  # 0 too: a victim that frees nothing


RUNS = st.lists(OPS, min_size=30, max_size=200)


# The default run draws 200 runs; the slow run the 400 it drew before.
@settings(max_examples=200, deadline=None)
@given(RUNS)
def test_matches_the_model(ops: list[tuple[object, ...]]) -> None:
    _check_against_the_model(ops)


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(RUNS)
def test_matches_the_model_long(ops: list[tuple[object, ...]]) -> None:
    _check_against_the_model(ops)


def _check_against_the_model(ops: list[tuple[object, ...]]) -> None:
    sieve, model = Sieve(), ModelSieve()
    for op in ops:
        if op[0] == "victims":
            need, keep = op[1], op[2]
            assert isinstance(need, int) and isinstance(keep, frozenset)
            assert sieve.victims(need, weight, spared(keep)) == model.victims(
                need, weight, spared(keep)
            )
        else:
            key = op[1]
            assert isinstance(key, str | bytes)
            if op[0] == "insert":
                sieve.insert(key)
                model.insert(key)
            elif op[0] == "hit":
                sieve.visited.add(key)
                model.visited.add(key)
            else:
                sieve.remove(key)
                model.remove(key)
        assert sieve.order() == model.order
        assert len(sieve) == len(model.order)
        assert all(key in sieve for key in model.order)
        # Marks of absent keys are the model's too, until a compaction drops them.
        present = set(model.order)
        assert sieve.visited & present == model.visited & present
        assert sieve.visited <= model.visited
