"""SIEVE eviction (Zhang et al., NSDI '24, "SIEVE is Simpler than LRU") as a data structure.

SIEVE keeps the cached keys in insertion order, one "visited" bit per key and a
hand. A hit only sets the key's bit. To evict, the hand walks from the oldest
key toward the newest, wrapping from the newest back to the oldest: a visited
key has its bit cleared and is passed over, the first unvisited key is the
victim, and the hand stays just past it for the next eviction. New keys enter
at the newest end, unvisited. A key therefore survives one pass of the hand per
hit, and one-hit wonders leave quickly (they are never visited), while nothing
moves on a hit: unlike LRU, a hit needs no lock.

This module is the structure only: it knows nothing of stores, values or
sizes. The cache tells it what happened (:meth:`Sieve.insert`,
:meth:`Sieve.remove`, a hit through ``visited``) and asks it for victims
(:meth:`Sieve.victims`); deciding that room is needed, and what to do when
there are too few victims, stays with the cache.

Layout. A list of keys in insertion order, with lazy deletion, and a dict from
each present key to its position in that list:

* Invariant: a list entry is *valid* iff ``_pos`` maps its key to its index.
  Removing a key only deletes it from ``_pos``; its list entry turns stale. A
  key inserted again after a removal gets a new entry at the end, and its old
  one stays stale.
* Invariant: the list's last entry is valid (or the list is empty). Stale
  entries at the end are popped at once, so the "newest" end is always a
  present key and a hand that runs off the end can wrap at once (see
  ``_advance``), as SIEVE's does, instead of meeting keys appended later.
* Invariant: at most half the list is stale; past that it is compacted (one
  pass; the hand's index is mapped to the same key), so the stale entries the
  hand walks over cost at most one skip per valid entry, and every operation
  is amortised O(1) per key examined.

Why not a doubly linked list of node objects, the paper's own presentation:
a node is a Python object of four slots (key, newer, older, visited bit:
64 bytes with its GC header) besides the dict entry that finds it. Here an
entry is one list pointer and a position int. Measured with ``tracemalloc``
(``python tools/sieve_sim.py --memory``) for 1,000,000 ``str`` keys made
beforehand, so the keys themselves are not counted: 67 bytes per key with no
key visited (the list 8, the dict 31, its position ints 28), and about 34
more per visited key (its entry in the ``visited`` set, measured with every
key visited); 95 bytes per key for the linked list, visited bits included.
So the list costs less unless more than about 80% of the keys are visited at
once (the hand clears bits as it passes). While up to half the list is
stale, the list's part costs up to twice its 8 bytes.

Concurrency. ``visited`` is a plain public ``set``: a cache ``get`` hit does
``sieve.visited.add(key)`` and nothing else, without the cache's lock, since
``set.add`` of a ``str`` or ``bytes`` key is atomic under the GIL (their hash
and equality run in C). Every other method requires the caller's lock. A hit
racing another thread's :meth:`remove` or :meth:`victims` can thus set the bit
of a key just removed, or be served just before its key is evicted (as if it
came just after); neither touches the structure, only which key a later
eviction picks. Such stale bits of absent keys are dropped at each compaction,
so they cannot grow without bound (a hit adds only a key it found, so there
is at most one per key removed since the last compaction), and :meth:`insert`
clears one should its key come back.

The visited bits live in memory only: after a reopen every key starts
unvisited (issue 15).
"""

from __future__ import annotations

from collections.abc import Callable

from ._names import Key


class Sieve:
    """The keys of a cache in SIEVE order, their visited bits and the hand.

    >>> s = Sieve()
    >>> for key in ("a", "b", "c"):
    ...     s.insert(key)
    >>> s.visited.add("a")  # a hit on "a"
    >>> s.victims(1, size=lambda key: 1, spare=lambda key: False)
    ['b']
    >>> s.order()
    ['a', 'c']
    """

    def __init__(self) -> None:
        # Public: the lock-free hit path adds to it (see the module docstring).
        self.visited: set[Key] = set()
        self._keys: list[Key] = []  # insertion order, oldest first; may hold stale entries
        self._pos: dict[Key, int] = {}  # present key -> index of its valid entry in _keys
        # Index in _keys where the hand's next look starts: the hand is at the
        # first valid entry from there on. Invariant: 0 <= _hand < len(_keys), or
        # _hand == 0 when _keys is empty; 0 is SIEVE's "start at the oldest".
        self._hand = 0

    def __len__(self) -> int:
        return len(self._pos)

    def __contains__(self, key: object) -> bool:
        return key in self._pos

    def order(self) -> list[Key]:
        """The present keys, oldest first (for tests and debugging: O(n)).

        REQUIRES: the caller's lock held.
        """
        pos = self._pos
        return [key for index, key in enumerate(self._keys) if pos.get(key) == index]

    def insert(self, key: Key) -> None:
        """Record that ``key`` was stored.

        A new key enters at the newest end, unvisited; a visited bit left over
        from an earlier life of the key (a hit racing its removal) is cleared.
        A key already present (an overwrite) keeps its place and is marked
        visited: an overwrite is an access, as a hit is, and moving the key to
        the newest end would make SIEVE an LRU for writes.

        REQUIRES: the caller's lock held.
        """
        if key in self._pos:
            self.visited.add(key)
            return
        self.visited.discard(key)
        self._pos[key] = len(self._keys)
        self._keys.append(key)

    def remove(self, key: Key) -> None:
        """Forget ``key``, which left the cache another way (deleted, expired, evicted
        by another process), and its visited bit. An absent key is a no-op.

        REQUIRES: the caller's lock held.
        """
        if self._pos.pop(key, None) is None:
            return
        self.visited.discard(key)
        self._trim()
        self._maybe_compact()

    def victims(
        self, need: int, size: Callable[[Key], int], spare: Callable[[Key], bool]
    ) -> list[Key]:
        """Move the hand as SIEVE does and return its victims, oldest-found first, once
        the sum of their ``size`` reaches ``need``; they are removed from the structure.

        :param need: how much room to make, in the unit of ``size``; ``<= 0`` asks
            for nothing.
        :param size: the room a key's eviction frees (1 for a count of keys).
        :param spare: True for a key that must stay (pinned, or being put by the
            very operation making room): the hand passes over it without clearing
            its visited bit, and it is never returned.
        :returns: the victims. Fewer than asked for (possibly none) when the hand
            went two full laps of the present keys without finding one: every key
            left is spared (one lap clears every bit it may; the second finds an
            unvisited key if there is one, unless hits keep setting bits
            meanwhile). The caller decides what that means.

        REQUIRES: the caller's lock held.
        """
        assert self._hand < len(self._keys) or self._hand == 0, "the hand's invariant"
        found: list[Key] = []
        room = 0
        passed = 0  # present keys the hand has passed over since its last victim
        keys, pos, visited = self._keys, self._pos, self.visited  # _trim keeps the list object
        while room < need and pos and passed < 2 * len(pos):
            index = self._hand
            key = keys[index]
            if pos.get(key) != index:
                self._advance(index)  # a stale entry: not a key, not a step of SIEVE
                continue
            if spare(key):
                passed += 1
            elif key in visited:
                # A hit between the test and the discard finds the bit already
                # set: it is a hit just before the hand passed, whose bit SIEVE
                # clears too.
                visited.discard(key)
                passed += 1
            else:
                room += size(key)  # before the removal: should it raise, the key stays
                del pos[key]
                visited.discard(key)
                found.append(key)
                passed = 0
                # The hand stays on the victim's entry, stale now: it is thus on
                # the next newer key, where SIEVE leaves it (or, past the newest,
                # on the oldest: see _trim).
                self._trim()
                continue
            self._advance(index)
        # Compacted only once the walk is over, so it never renumbers under it.
        self._maybe_compact()
        return found

    def _advance(self, index: int) -> None:
        """Put the hand on the entry after ``index``, wrapping to the oldest past the end."""
        index += 1
        self._hand = index if index < len(self._keys) else 0

    def _trim(self) -> None:
        """Pop stale entries off the newest end (keeps its invariant)."""
        keys, pos = self._keys, self._pos
        while keys and pos.get(keys[-1]) != len(keys) - 1:
            keys.pop()
        if self._hand >= len(keys):
            # The hand was past the newest present key: SIEVE's hand wraps there,
            # so it must not wait for a key appended later.
            self._hand = 0

    def _maybe_compact(self) -> None:
        """Rebuild the list without its stale entries once they are more than half of it."""
        keys, pos = self._keys, self._pos
        if 2 * (len(keys) - len(pos)) <= len(keys):
            return
        kept: list[Key] = []
        hand = 0
        for index, key in enumerate(keys):
            if index == self._hand:
                hand = len(kept)  # the first valid entry from the old index on
            if pos.get(key) == index:
                pos[key] = len(kept)
                kept.append(key)
        # Invariant kept: the hand's index is below the old length and the last
        # entry valid, so a valid entry follows it and ``hand < len(kept)``.
        self._keys = kept
        self._hand = hand if hand < len(kept) else 0
        # Stale bits of absent keys (hits racing removals) go here. This is one
        # C call over a set and a dict of str/bytes keys: it cannot interleave
        # with a lock-free ``visited.add``, which lands wholly before or after.
        self.visited.intersection_update(pos)
