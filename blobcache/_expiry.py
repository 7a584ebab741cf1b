"""Expiry: taking values out of memory once their time has come.

A put with a ``ttl`` writes its expiry into its record (FORMAT.md, "Expiry");
every reader of the record keeps it beside the value (``Index.expiry``, and a
heap of deadlines). ``get`` stays one dict lookup: it does not look at the
clock. Instead ``Expiry.sweep`` removes every value whose expiry has passed
from memory (``Index.expire``: as a delete of that number, written nowhere),
run by a background thread woken at the earliest deadline, and by every slow
path that must be exact (a miss, ``in``, ``path``, ``open``, iteration,
``len``, ``stats``, ``gc``, ``refresh``). So a ``get`` may return a value for
as long as that thread takes to wake after its deadline (``tools/bench.py``
measures it); everything else sees it gone from the deadline on.

Reopening needs none of this: recovery reads an expired put as a delete, and so
does the follower reading another process's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from . import _clock
from . import _names as N
from ._index import Index

_LONGEST_WAIT = 3600.0  # seconds
_RETRY_AFTER = 1.0  # seconds, after a sweep that failed


class Expiry:
    """The sweeps of one handle."""

    def __init__(
        self,
        index: Index,
        blobs: str,
        key_dirs: set[str],
        catch_up: Callable[[], object],
        active: Callable[[], int],
    ) -> None:
        self.index = index
        self.blobs = blobs
        self.key_dirs = key_dirs
        self._catch_up = catch_up  # the follower's: see Index.expire's REQUIRES
        self._active = active  # the active segment's number
        self.expired = 0  # values taken out of memory so far

    def sweep(self) -> int:
        """Take every value whose expiry is not after now out of memory; return how
        many. Cheap when none is due: a look at the heap's top."""
        deadline = self.index.next_deadline()
        now = _clock.now_ms()
        if deadline is None or deadline > now:
            return 0
        self._catch_up()
        count = 0
        for key, seq in self.index.due(now):
            keydir = N.key_dir(self.blobs, N.key_hash(*N.encode_key(key)))
            known = keydir if keydir in self.key_dirs else None
            if self.index.expire(key, seq, known, self._active()):
                count += 1
        self.expired += count
        return count

    def is_expired(self, key: N.Key) -> bool:
        """Whether ``key``'s live value has expired (swept or not)."""
        expires = self.index.expiry.get(key)
        return expires is not None and expires <= _clock.now_ms()

    def waiter(self, stop: threading.Event) -> Callable[[], bool]:
        """The background thread's wait: until the earliest deadline (or one
        earlier comes in); False once ``stop`` is set (which also sets
        ``Index.sooner``, see ``_held``)."""
        sooner = self.index.sooner
        last: list[int | None] = [None]  # the deadline the last sweep was woken for

        def wait() -> bool:
            while not stop.is_set():
                sooner.clear()  # before looking: a deadline noted meanwhile sets it again
                deadline = self.index.next_deadline()
                if deadline is not None and deadline == last[0]:
                    # Still there: that sweep failed (logged by the thread). Try
                    # again a second later, not in a loop.
                    last[0] = None
                    stop.wait(_RETRY_AFTER)
                    continue
                if deadline is not None:
                    delay = (deadline - _clock.now_ms()) / 1000
                    if delay <= 0:
                        last[0] = deadline
                        return True
                    # At most an hour at a time: a clock set forward meanwhile
                    # is noticed then (and Event.wait refuses huge timeouts).
                    sooner.wait(min(delay, _LONGEST_WAIT))
                else:
                    sooner.wait()
            return False

        return wait
