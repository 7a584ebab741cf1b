"""Issue 18's review: what it found in the index snapshot's path, each a test.

A pin recorded after the snapshot (a process killed before its close) was lost
at the next open, and the key could be evicted; a compaction whose catch-up
rebuilt the index through another process's snapshot dropped every key the
rebuild left in it (their only records were in its inputs).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

from blobcache import BlobCache
from blobcache import _format as F

LIMIT = 1024


def _killed_after(store: str, script: str, **opts: object) -> None:
    child = textwrap.dedent(
        f"""
        import os, signal, sys
        from blobcache import BlobCache
        cache = BlobCache({store!r}, inline_limit={LIMIT}, **{opts!r})
        {script}
        sys.stdout.write("acked\\n"); sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL and done.stdout == "acked\n", done.stderr


def test_pin_after_the_snapshot_survives_a_kill(tmp_path: object) -> None:
    store = str(tmp_path)
    with BlobCache(store, inline_limit=LIMIT) as cache:
        for i in range(20):
            cache.put(f"k{i}", b"v%d" % i)
    assert os.path.exists(os.path.join(store, F.SNAPSHOT_NAME))
    _killed_after(store, "cache.pin('k3')")
    with BlobCache(store, inline_limit=LIMIT) as cache:
        assert cache.stats().snapshot_at_open == "loaded"
        assert cache.pinned("k3"), "pin lost when opened through INDEX"
    os.unlink(os.path.join(store, F.SNAPSHOT_NAME))
    with BlobCache(store, inline_limit=LIMIT) as cache:
        assert cache.pinned("k3")  # (the log alone keeps it)


def test_a_pin_after_the_snapshot_protects_from_eviction(tmp_path: object) -> None:
    store = str(tmp_path)
    with BlobCache(store, inline_limit=LIMIT) as cache:
        cache.put("precious", b"p" * 500)
    _killed_after(store, "cache.pin('precious')")
    with BlobCache(store, inline_limit=LIMIT, max_bytes=2000) as cache:
        for i in range(20):
            cache.put(f"filler{i}", b"f" * 500)
        assert cache.get("precious") == b"p" * 500, "a pinned key was evicted"


def _fill(store: str, n: int = 200) -> dict[str, bytes]:
    model = {}
    with BlobCache(store, inline_limit=LIMIT) as cache:
        for i in range(n):
            cache.put(f"k{i}", b"first %d" % i)
        for i in range(0, n, 2):
            cache.put(f"k{i}", b"second %d" % i)  # stale bytes: compaction has work
            cache.put(f"k{i}", b"second %d" % i)
            model[f"k{i}"] = b"second %d" % i
        for i in range(1, n, 2):
            model[f"k{i}"] = b"first %d" % i
    return model


def test_compaction_after_a_rebuild_through_the_snapshot_keeps_cold_keys(tmp_path: object) -> None:
    """Handle A (as a process) opens through the snapshot and runs gc(). While its
    janitor runs, B (another process) compacts twice, writing a snapshot. A's
    compaction then warms its index, rolls, and its follower finds the segment
    after its own replaced by a COMPACTED one: it rebuilds the index -- through
    B's snapshot, so every key is cold again -- and the compaction copies only
    the keys in ``meta`` (none of the cold ones), then deletes its inputs."""
    store = str(tmp_path)
    model = _fill(store)
    a = BlobCache(store, inline_limit=LIMIT, refresh_interval=3600)
    assert a._index.cold is not None
    b = BlobCache(store, inline_limit=LIMIT)
    take_dirty = a._index.take_dirty

    def b_compacts_meanwhile() -> set[str]:
        b.put("from b", b"b")
        model["from b"] = b"b"
        b.put("k0", b"third 0")
        b.gc()  # compacts (segment 1, COMPACTED; 2 active)
        b.put("k0", b"fourth 0")
        model["k0"] = b"fourth 0"
        b.gc()  # compacts again (2, COMPACTED; 3 active); writes a snapshot of it
        return take_dirty()

    a._index.take_dirty = b_compacts_meanwhile  # type: ignore[method-assign]
    a.gc()
    a.close()
    b.close()
    os.unlink(os.path.join(store, F.SNAPSHOT_NAME))  # the log alone
    with BlobCache(store, inline_limit=LIMIT) as c:
        missing = [k for k, v in model.items() if c.get(k) != v]
        assert not missing, (len(missing), missing[:5])
