"""Shared fixtures and byte-editing helpers for the tests."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from blobcache import BlobCache, _fsio
from blobcache import _format as F

# The remote tier's fixtures (``seaweed``, ``remote_prefix``, ``place``) for every module:
# a session that asks for none starts no server.
pytest_plugins = ["tests.remote_fixtures"]


@pytest.fixture
def store(tmp_path: Path) -> str:
    """A path for a new store (not yet created)."""
    return str(tmp_path / "store")


@pytest.fixture
def cache(store: str) -> Iterator[BlobCache]:
    with BlobCache(store) as c:
        yield c


@pytest.fixture
def blob_cache(store: str) -> Iterator[BlobCache]:
    """A store that puts every value, however small, in a file of its own."""
    with BlobCache(store, inline_limit=0) as c:
        yield c


def file_of(cache: BlobCache, key: str | bytes) -> str:
    """The version file of ``key``, which must be a large value."""
    path = cache.path(key)
    assert path is not None, f"{key!r} is a small value: it has no file"
    return path


def files_named(root: str, prefix: str) -> list[str]:
    """Every file under ``root`` whose name starts with ``prefix``, sorted."""
    return sorted(
        os.path.join(d, n) for d, _, names in os.walk(root) for n in names if n.startswith(prefix)
    )


def versions(root: str) -> list[str]:
    """Every version file under ``root``, sorted."""
    return files_named(root, F.VERSION_PREFIX)


def flip_bit(path: str, offset: int, bit: int = 0) -> None:
    """Flip one bit of a file in place, the way a failing disk would."""
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ (1 << bit)]))


def truncate(path: str, size: int) -> None:
    os.truncate(path, size)


def fail_once(
    monkeypatch: pytest.MonkeyPatch, name: str, code: int, before: Callable[..., None] | None = None
) -> None:
    """Make the next call of ``_fsio.<name>`` raise OSError(code), after ``before(*args)``."""
    failed: list[int] = []
    real = getattr(_fsio, name)

    def failing(*args: Any) -> Any:
        if not failed:
            failed.append(1)
            if before is not None:
                before(*args)
            raise OSError(code, os.strerror(code))
        return real(*args)

    monkeypatch.setattr(_fsio, name, failing)


DURABILITY_CALLS = (
    "fsync_file",
    "fsync_dir",
    "fsync_path",
    "fdatasync",
    "rename",
    "mkdir",
    "unlink",
    "rmdir",
)


def record_calls(
    monkeypatch: pytest.MonkeyPatch, names: tuple[str, ...] = DURABILITY_CALLS
) -> list[tuple[str, str]]:
    """Record every call of the named ``_fsio`` functions, in order, as
    (function, basename of its last argument: a path, or an fd's number)."""
    calls: list[tuple[str, str]] = []
    for name in names:
        real = getattr(_fsio, name)

        def wrapper(*args: Any, _real: Any = real, _name: str = name) -> Any:
            calls.append((_name, os.path.basename(str(args[-1]))))
            return _real(*args)

        monkeypatch.setattr(_fsio, name, wrapper)
    return calls


TOOLS = Path(__file__).resolve().parent.parent / "tools"


def load_tool(monkeypatch: pytest.MonkeyPatch, name: str) -> ModuleType:
    """Import ``tools/<name>.py``: tools/ is not a package, so it is loaded from its
    path, and registered while it loads (dataclasses look their module up in
    sys.modules) under a name no other test's import takes."""
    spec = importlib.util.spec_from_file_location(f"blobcache_tool_{name}", TOOLS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module
