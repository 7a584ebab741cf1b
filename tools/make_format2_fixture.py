"""Write the format 2 store that ``tests/test_format2_fixture.py`` opens: the
previous format's own output, for the format that follows it to keep reading.

Written by blobcache at git 2fc676d (on-disk format 2, FORMAT.md "version 2"),
into ``tests/fixtures/format2/``:

    PYTHONPATH=$PWD python tools/make_format2_fixture.py tests/fixtures/format2

DO NOT RUN THIS AGAIN WITH NEWER CODE. The fixture is worth something only
because code of the previous format wrote it: rerun with a blobcache that
writes format 3, it would be a format 3 store, and the test would check that
format 3 reads format 3. The script refuses to run unless the code writes
the ``blobcache 2`` marker, and refuses a directory that already holds a
fixture. To build the fixture again (it should never be needed), run this
file, as committed, with the package of 2fc676d on the path:

    git worktree add /tmp/blobcache-2fc676d 2fc676d
    git show HEAD:tools/make_format2_fixture.py > /tmp/make_format2_fixture.py
    cd /tmp/blobcache-2fc676d && PYTHONPATH=$PWD python /tmp/make_format2_fixture.py OUT

What it writes: ``OUT/store/``, a store of str and bytes keys, small values
(records in the log) and large ones (version files under ``blobs/``), with
``inline_limit=64`` and 4 KiB segments so that the log has a sealed segment
and an active one; overwrites within and across the two layouts, deletes of
both, a non-ASCII key, an empty key and an empty value, closed cleanly and
never collected (its superseded versions and stale records are garbage for
the test's ``gc()``). Then ``OUT/manifest.json``: every live key with its
value's length, sha256 and layout, every deleted key, and every file of the
store with its size and sha256, so that the test can tell that the copy in
git is still byte for byte what this code wrote.

Every value and operation is fixed; only what the store makes random itself
(the ``troubles`` field of ``STATE``) differs between two runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

from blobcache import BlobCache
from blobcache import _format as F

COMMIT = "2fc676d"
FORMAT_VERSION = 2
INLINE_LIMIT = 64
SEGMENT_BYTES = 4096  # the least segment_bytes takes; the filler below outgrows it
# No background compaction: it would run in a thread, at a moment no run can
# repeat, and leave one COMPACTED segment where the test wants a sealed segment
# beside the active one. With ratio 1 it runs only when every record of the
# sealed segments is stale, and the filler's records stay live.
COMPACT_RATIO = 1.0
OPTIONS: dict[str, Any] = {
    "durability": "fsync",
    "inline_limit": INLINE_LIMIT,
    "segment_bytes": SEGMENT_BYTES,
    "compact_ratio": COMPACT_RATIO,
}

Key = str | bytes


def pattern(name: str, length: int) -> bytes:
    """``length`` bytes that differ from key to key, from ``name`` alone."""
    seed = hashlib.sha256(name.encode()).digest()
    return (seed * (length // len(seed) + 1))[:length]


def small(name: str) -> bytes:
    """A value well under ``inline_limit``: a record in the log."""
    return f"small value of {name}".encode()[: INLINE_LIMIT - 1]


def filler() -> Iterator[tuple[str, bytes]]:
    """Enough live records (50 of 79 bytes) to seal the first 4 KiB segment."""
    for i in range(50):
        yield f"filler-{i:02d}", f"filler value {i:02d} ".encode() * 3


class Fixture:
    """The store being written, and what it must hold: a dict model beside it."""

    def __init__(self, cache: BlobCache) -> None:
        self.cache = cache
        self.live: dict[Key, bytes] = {}
        self.deleted: dict[Key, str] = {}  # key -> the layout its value had

    def put(self, key: Key, value: bytes) -> None:
        self.cache.put(key, value)
        self.live[key] = value
        self.deleted.pop(key, None)

    def delete(self, key: Key) -> None:
        self.deleted[key] = self.layout(key)
        assert self.cache.delete(key)
        del self.live[key]

    def layout(self, key: Key) -> str:
        """Where the cache keeps ``key``'s value, as it says: "file" or "log"."""
        in_a_file = self.cache.path(key) is not None
        assert in_a_file == (len(self.live[key]) >= INLINE_LIMIT), key
        return "file" if in_a_file else "log"


def write_store(fixture: Fixture) -> None:
    """Every operation of the fixture, in order. The first values of the keys
    overwritten or deleted go into the first segment and their last records
    into the second, so that opening must weigh the two segments (and the
    version files) against each other."""
    put, delete = fixture.put, fixture.delete
    put("overwritten-small", small("overwritten-small, first"))
    put("small-to-large", small("small-to-large, first"))
    put("large-to-small", pattern("large-to-small, first", 800))
    put("overwritten-large", pattern("overwritten-large, first", 200))
    put("deleted-small", small("deleted-small"))
    put(b"deleted-large", pattern("deleted-large", 400))
    put("str-small", small("str-small"))
    put("str-large", pattern("str-large", 1000))
    put(b"bytes-small", bytes(range(40)))
    put(b"bytes-large", pattern("bytes-large", 3000))
    put(b"\xff\xfe not UTF-8", small("a bytes key that is not UTF-8"))
    put("same", b"the str key 'same'")
    put(b"same", b"the bytes key b'same', another key")  # the tag tells them apart
    put("just-under-the-limit", pattern("just-under-the-limit", INLINE_LIMIT - 1))
    put("at-the-limit", pattern("at-the-limit", INLINE_LIMIT))  # a file: shorter goes to the log
    put("ключ 鍵 🔑", small("a non-ASCII key"))
    put("größe", pattern("a non-ASCII key of a large value", 300))
    put("empty-value", b"")
    put(b"", small("the empty bytes key"))
    for key, value in filler():
        put(key, value)
    put("overwritten-small", small("overwritten-small, last"))
    put("small-to-large", pattern("small-to-large, last", 500))
    put("large-to-small", small("large-to-small, last"))
    put("overwritten-large", pattern("overwritten-large, last", 300))
    delete("deleted-small")
    delete(b"deleted-large")


def check_segments(store: str) -> None:
    """The log holds a sealed segment and the active one, none COMPACTED."""
    logdir = os.path.join(store, F.LOG_DIR)
    names = sorted(os.listdir(logdir))
    if len(names) < 2:
        raise SystemExit(f"{logdir}: {names}: the filler no longer seals a segment")
    for name in names:
        with open(os.path.join(logdir, name), "rb") as f:
            magic, flags, _ = F.SEGMENT_HEADER.unpack(f.read(F.SEGMENT_HEADER.size))
        if magic != F.SEGMENT_MAGIC or flags & F.SEGMENT_FLAG_COMPACTED:
            raise SystemExit(f"{logdir}/{name}: magic {magic!r}, flags {flags}: compacted?")


def check_no_empty_directory(store: str) -> None:
    """git keeps no empty directory: the copy in git would lack it."""
    for directory, dirs, files in os.walk(store):
        if not dirs and not files:
            raise SystemExit(f"{directory}: an empty directory, which git would not keep")


def check_reads_back(store: str, fixture: Fixture) -> None:
    """The closed store, opened read-only (which changes nothing), holds the model."""
    with BlobCache(store, readonly=True) as cache:
        assert {key: bytes(value) for key, value in cache.items()} == fixture.live
        assert not any(key in cache for key in fixture.deleted)
        assert not cache.problems, cache.problems


def key_entry(key: Key) -> dict[str, str]:
    """A key in JSON: a str as it is, a bytes key in hex."""
    if isinstance(key, bytes):
        return {"key": key.hex(), "type": "bytes"}
    return {"key": key, "type": "str"}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def files_of(store: str) -> dict[str, dict[str, Any]]:
    """Every file of the store, by its path relative to the store: size and sha256."""
    found = {}
    for directory, _, names in os.walk(store):
        for name in names:
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                data = f.read()
            found[os.path.relpath(path, store)] = {"bytes": len(data), "sha256": sha256(data)}
    return dict(sorted(found.items()))


def manifest(store: str, fixture: Fixture, layouts: dict[Key, str]) -> dict[str, Any]:
    return {
        "written_by": {
            "commit": COMMIT,
            "format": FORMAT_VERSION,
            "script": "tools/make_format2_fixture.py",
            "options": OPTIONS,
        },
        "live": [
            {**key_entry(key), "length": len(v), "sha256": sha256(v), "layout": layouts[key]}
            for key, v in fixture.live.items()
        ],
        "deleted": [{**key_entry(key), "layout": was} for key, was in fixture.deleted.items()],
        "files": files_of(store),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the format 2 store of the tests.")
    parser.add_argument("out", help="directory to write store/ and manifest.json into")
    args = parser.parse_args(argv)
    if F.MARKER_CONTENT != b"blobcache %d\n" % FORMAT_VERSION:
        print(
            f"this code writes {F.MARKER_CONTENT!r}, not format {FORMAT_VERSION}: run this "
            f"script with the package of git {COMMIT} (see its docstring)",
            file=sys.stderr,
        )
        return 2
    store = os.path.join(args.out, "store")
    manifest_path = os.path.join(args.out, "manifest.json")
    if os.path.lexists(store) or os.path.lexists(manifest_path):
        print(f"{args.out} already holds a fixture: remove it first", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    with BlobCache(store, **OPTIONS) as cache:
        fixture = Fixture(cache)
        write_store(fixture)
        layouts = {key: fixture.layout(key) for key in fixture.live}
    check_segments(store)
    check_no_empty_directory(store)
    check_reads_back(store, fixture)
    with open(manifest_path, "w", encoding="utf-8") as f:
        json.dump(manifest(store, fixture, layouts), f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {store} and {manifest_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
