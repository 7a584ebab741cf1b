"""The wall clock expiry is measured by: milliseconds since the Unix epoch.

Wall-clock time, not a monotonic clock, since an expiry must mean the same after
a restart and in every process (FORMAT.md, "Expiry"). Every reader of the time
for expiry calls ``now_ms`` through this module, so a test can stand in a
clock of its own (``monkeypatch.setattr(_clock, "now_ms", ...)``).
"""

from __future__ import annotations

import math
import time


def now_ms() -> int:
    return time.time_ns() // 1_000_000


MAX_TTL = float(2**32)  # seconds, about 136 years: far from overflowing the u64 of ms


def check_ttl(name: str, ttl: object) -> float:
    """``ttl``, checked: a positive, finite number of seconds, at most ``MAX_TTL``.

    :raises TypeError: not a number (a bool neither).
    :raises ValueError: zero, negative, NaN, infinite or above ``MAX_TTL``.
    """
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(ttl).__name__}")
    if not (math.isfinite(ttl) and 0 < ttl <= MAX_TTL):
        raise ValueError(
            f"{name} must be a positive, finite number of seconds, at most {MAX_TTL:.0f} "
            f"(about 136 years); got {ttl!r}"
        )
    return float(ttl)


def expires_at(ttl: float) -> int:
    """When a value put now with ``ttl`` seconds expires: ms since the epoch,
    rounded up, so it is served for at least ``ttl``."""
    return now_ms() + math.ceil(ttl * 1000)
