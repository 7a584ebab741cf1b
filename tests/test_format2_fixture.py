"""A store written by the previous format, format 2 (git 2fc676d), opens and keeps working.

``tests/fixtures/format2/`` is that code's own output, made once by
``tools/make_format2_fixture.py`` (never to be run again with newer code):
``store/`` as the old code left it on disk, closed without gc, and
``manifest.json``, what it holds and every file's sha256. Each test opens a
copy: a writer's open of a store of an older format upgrades it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from blobcache import BlobCache
from blobcache import _format as F
from blobcache.cache import Value
from tests.test_cli import run_json

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "format2"
# A literal, not F.MARKER_CONTENT: that is the marker of the format this code
# writes, which moves on; the fixture's stays format 2's.
MARKER_OF_FORMAT_2 = b"blobcache 2\n"
INLINE_LIMIT = 64  # the fixture's: a value this long or longer is in a file

Key = str | bytes
Digest = tuple[int, str]  # a value's length and sha256, as the manifest lists it


@dataclass(frozen=True)
class Manifest:
    """What ``manifest.json`` says the fixture holds."""

    written_by: dict[str, Any]
    live: dict[Key, Digest]
    layouts: dict[Key, str]  # "log" or "file", as the old code kept each live value
    deleted: dict[Key, str]  # the layout the value had before its delete
    files: dict[str, dict[str, Any]]  # path in store/ -> its size and sha256


def _key(entry: dict[str, Any]) -> Key:
    key: str = entry["key"]
    return bytes.fromhex(key) if entry["type"] == "bytes" else key


@pytest.fixture
def manifest() -> Manifest:
    with open(FIXTURE / "manifest.json", encoding="utf-8") as f:
        data = json.load(f)
    return Manifest(
        written_by=data["written_by"],
        live={_key(e): (e["length"], e["sha256"]) for e in data["live"]},
        layouts={_key(e): e["layout"] for e in data["live"]},
        deleted={_key(e): e["layout"] for e in data["deleted"]},
        files=data["files"],
    )


@pytest.fixture
def copy(tmp_path: Path) -> str:
    """A copy of the fixture's store, modes and times included, to open."""
    path = tmp_path / "store"
    shutil.copytree(FIXTURE / "store", path)
    return str(path)


def _digest(value: Value) -> Digest:
    return len(value), hashlib.sha256(value).hexdigest()


def _layout(length: int) -> str:
    return "file" if length >= INLINE_LIMIT else "log"


def _check(cache: BlobCache, live: dict[Key, Digest], deleted: Iterable[Key]) -> None:
    """``cache`` holds exactly ``live``, each value where its length puts it,
    and none of ``deleted``; its open found nothing wrong."""
    assert {key: _digest(cache[key]) for key in cache} == live
    for key, (length, _) in live.items():
        assert ("log" if cache.path(key) is None else "file") == _layout(length), key
    for key in deleted:
        assert key not in cache and cache.get(key) is None, key
    assert cache.problems == ()


def _tree(root: str) -> dict[str, tuple[int, int, bytes]]:
    """Every file and directory under ``root``: mode, modification time, bytes."""
    found = {}
    for directory, _, names in os.walk(root):
        st = os.stat(directory)
        found[os.path.relpath(directory, root)] = (st.st_mode, st.st_mtime_ns, b"")
        for name in names:
            path = os.path.join(directory, name)
            st = os.stat(path)
            with open(path, "rb") as f:
                found[os.path.relpath(path, root)] = (st.st_mode, st.st_mtime_ns, f.read())
    return found


def _marker(store: str) -> bytes:
    with open(os.path.join(store, F.MARKER_NAME), "rb") as f:
        return f.read()


def test_the_fixture_is_the_format_2_codes_output_byte_for_byte(manifest: Manifest) -> None:
    """Read as files, never opened as a store: lost or changed files (a global
    ``*.log`` ignore, a line-ending filter, a rerun of the script with newer code)
    fail here rather than as a puzzling difference in a test below."""
    assert manifest.written_by["commit"] == "2fc676d" and manifest.written_by["format"] == 2
    store = str(FIXTURE / "store")
    assert _marker(store) == MARKER_OF_FORMAT_2
    files = {
        path: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        for path, (_, _, data) in _tree(store).items()
        if os.path.isfile(os.path.join(store, path))
    }
    assert files == manifest.files
    # What the fixture is for: both layouts of both kinds of key, live and deleted,
    # in a log of a sealed segment and the active one.
    kinds = {(type(key).__name__, layout) for key, layout in manifest.layouts.items()}
    assert kinds == {("str", "log"), ("str", "file"), ("bytes", "log"), ("bytes", "file")}
    assert set(manifest.deleted.values()) == {"log", "file"}
    assert all(_layout(manifest.live[key][0]) == layout for key, layout in manifest.layouts.items())
    assert (0, hashlib.sha256(b"").hexdigest()) in manifest.live.values()
    assert any(isinstance(key, str) and not key.isascii() for key in manifest.live)
    assert len([path for path in files if path.startswith(F.LOG_DIR + os.sep)]) >= 2


def test_a_reader_finds_every_value_and_changes_nothing(copy: str, manifest: Manifest) -> None:
    before = _tree(copy)
    with BlobCache(copy, readonly=True) as cache:
        _check(cache, manifest.live, manifest.deleted)
        assert len(cache) == len(manifest.live)
    assert _tree(copy) == before


def test_a_writer_finds_every_value_and_writes_beside_the_old_records(
    copy: str, manifest: Manifest
) -> None:
    live = dict(manifest.live)
    logged = [key for key, layout in manifest.layouts.items() if layout == "log"]
    filed = [key for key, layout in manifest.layouts.items() if layout == "file"]
    was_small, was_large = (
        next(key for key, layout in manifest.deleted.items() if layout == kind)
        for kind in ("log", "file")
    )
    puts: dict[Key, bytes] = {
        "new-small": b"put by the code that reads format 2",
        b"new-large": b"L" * 500,
        logged[0]: b"a small value grown large " * 10,
        filed[0]: b"a large value shrunk small",
        was_small: b"deleted small, back large " * 10,
        was_large: b"deleted large, back small",
    }
    deletes = [logged[1], filed[1]]
    with BlobCache(copy, inline_limit=INLINE_LIMIT) as cache:
        _check(cache, live, manifest.deleted)
        assert _marker(copy) == F.MARKER_CONTENT  # this code's format: upgraded if newer
        for key, value in puts.items():
            cache.put(key, value)
            live[key] = _digest(value)
        for key in deletes:
            assert cache.delete(key)
            del live[key]
        _check(cache, live, deletes)
    with BlobCache(copy, inline_limit=INLINE_LIMIT) as cache:
        _check(cache, live, deletes)
        assert cache.stats().torn_bytes_at_open == 0


def test_gc_and_verify_keep_every_value(copy: str, manifest: Manifest) -> None:
    assert run_json("verify", copy) == {"path": copy, "ok": True, "problems": []}
    with BlobCache(copy, inline_limit=INLINE_LIMIT) as cache:
        # The old code's garbage: superseded versions, a deleted large key's
        # directory, overwritten and deleted records in both segments.
        before = cache.stats()
        assert before.dirs_awaiting_gc > 0 and before.log_stale_bytes > 0
        done = cache.gc()
        assert done.files_removed > 0 and done.segments_compacted > 0
        after = cache.stats()
        assert after.dirs_awaiting_gc == 0 and after.log_stale_bytes == 0
        _check(cache, manifest.live, manifest.deleted)
    assert run_json("verify", copy) == {"path": copy, "ok": True, "problems": []}
    with BlobCache(copy, readonly=True) as cache:
        _check(cache, manifest.live, manifest.deleted)
