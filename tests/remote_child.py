"""A writer process for the remote tier's crash and race tests (tests/test_remote.py).

``python -m tests.remote_child '<json>'``: opens a store with a remote and puts keys,
printing ``ack <key> <i>`` after each put returns (``flushed <n>`` after a
``flush_remote()`` returned, every ``flush_every`` puts; then ``deleted <key>`` after
each of ``deletes`` returned), so the parent, which SIGKILLs
it at some line, knows what was acknowledged. The options come as JSON; the retry
settings are rebuilt here (a timedelta does not cross JSON).
"""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from typing import Any

from blobcache import BlobCache


def remote_options(plain: dict[str, Any]) -> dict[str, Any]:
    options = dict(plain)
    options["retry_config"] = {"max_retries": 2, "retry_timeout": timedelta(seconds=5)}
    return options


def plain_options(options: dict[str, Any]) -> dict[str, Any]:
    """The parent's side: options without what JSON cannot carry."""
    return {k: v for k, v in options.items() if k != "retry_config"}


def main() -> None:
    spec = json.loads(sys.argv[1])
    cache = BlobCache(
        spec["path"],
        remote=spec["url"],
        remote_options=remote_options(spec["options"]),
        remote_mode=spec["mode"],
        durability=spec.get("durability", "fsync"),
    )
    print("open", flush=True)
    tag = spec["tag"]
    flush_every = spec.get("flush_every", 0)
    for i in range(spec["count"]):
        key = spec["keys"][i % len(spec["keys"])]
        size = spec["sizes"][i % len(spec["sizes"])]
        value = (f"{tag}:{i}:".encode() * (size // 8 + 1))[:size]
        cache.put(key, value)
        print(f"ack {key} {i}", flush=True)
        if flush_every and (i + 1) % flush_every == 0:
            cache.flush_remote()
            print(f"flushed {i + 1}", flush=True)
    for key in spec.get("deletes", []):
        cache.delete(key)
        print(f"deleted {key}", flush=True)
    if spec.get("flush_at_end"):
        cache.flush_remote()
        print("flushed all", flush=True)
    cache.close()
    print("done", flush=True)


def value_of(tag: str, i: int, size: int) -> bytes:
    """What ``main`` put as its ``i``-th value."""
    return (f"{tag}:{i}:".encode() * (size // 8 + 1))[:size]


if __name__ == "__main__":
    main()
