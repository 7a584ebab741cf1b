"""File systems where flock or fsync may not hold (issue 14, item 7): a writer
there is refused before anything is made or changed, unless trust_filesystem.

No NFS, SMB or FUSE mount is at hand in a test run, so a shim stands in for
statfs(2) (``_filesystems.statfs``) and reports each file system's number; the
real call is checked against ``stat -f`` on this machine's own file systems,
and against any FUSE or 9P mount the machine happens to have.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from blobcache import (
    AsyncBlobCache,
    BlobCache,
    BlobCacheError,
    UnsafeFilesystemError,
    _filesystems,
    cli,
)

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="statfs f_type")

Tree = dict[str, tuple[int, bytes | None, int]]


def _tree(root: Path | str) -> Tree:
    """Every entry under ``root``: its mode, its bytes (None for a directory), its mtime."""
    found: Tree = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(directory, name)
            st = os.lstat(path)
            data = None if name in dirs else Path(path).read_bytes()
            found[os.path.relpath(path, root)] = (st.st_mode, data, st.st_mtime_ns)
    return found


@pytest.fixture
def pretend(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], list[str]]:
    """``pretend(f_type)``: from now on statfs(2) reports ``f_type`` for every
    path; returns the list of paths it is asked about."""
    asked: list[str] = []

    def install(f_type: int) -> list[str]:
        def fake_statfs(path: str) -> _filesystems.Statfs:
            asked.append(path)
            result = _filesystems.Statfs()
            result.f_type = f_type
            return result

        monkeypatch.setattr(_filesystems, "statfs", fake_statfs)
        return asked

    return install


def _filled(path: str) -> Tree:
    """A store with a small and a large value, closed; what it holds."""
    with BlobCache(path, inline_limit=64) as cache:
        cache.put("small", b"s" * 10)
        cache.put("large", b"L" * 1000)
    return _tree(path)


UNTRUSTED = sorted(_filesystems.UNTRUSTED.items())


@pytest.mark.parametrize(("f_type", "name"), UNTRUSTED, ids=[n for _, n in UNTRUSTED])
def test_a_writer_on_an_untrusted_file_system_is_refused_and_nothing_is_made(
    tmp_path: Path, pretend: Callable[[int], list[str]], f_type: int, name: str
) -> None:
    store = tmp_path / "a" / "b" / "store"
    asked = pretend(f_type)
    with pytest.raises(UnsafeFilesystemError) as info:
        BlobCache(store)
    assert asked == [str(tmp_path)]  # the nearest ancestor that exists
    assert os.listdir(tmp_path) == []  # not even a/ was made
    error = info.value
    assert isinstance(error, BlobCacheError)
    assert (error.path, error.filesystem) == (str(store), name)
    message = str(error)
    said = (str(store), f"on {name}, a file system", "flock", "fsync", "trust_filesystem=True")
    assert all(part in message for part in said), message
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is UnsafeFilesystemError and str(again) == message
    assert (again.path, again.filesystem) == (str(store), name)


@pytest.mark.parametrize("kind", ["empty directory", "store"])
def test_an_existing_directory_there_stays_exactly_as_it_was(
    store: str, pretend: Callable[[int], list[str]], kind: str
) -> None:
    if kind == "store":
        before = _filled(store)
    else:
        os.mkdir(store)
        before = {}
    asked = pretend(0x6969)
    with pytest.raises(UnsafeFilesystemError, match="NFS"):
        BlobCache(store)
    assert asked == [store]
    assert _tree(store) == before  # no LOCK, no marker, no fsync'd segment, no mtime moved


def test_trust_filesystem_opens_and_works(store: str, pretend: Callable[[int], list[str]]) -> None:
    asked = pretend(0x65735546)  # FUSE
    with BlobCache(store, trust_filesystem=True, inline_limit=64) as cache:
        cache.put("small", b"s" * 10)
        cache.put("large", b"L" * 1000)
        assert cache.options.trust_filesystem is True
    with BlobCache(store, trust_filesystem=True) as cache:
        assert bytes(cache["small"]) == b"s" * 10 and bytes(cache["large"]) == b"L" * 1000
    assert asked == []  # not even looked at


def test_a_reader_there_is_not_refused_and_changes_nothing(
    store: str, pretend: Callable[[int], list[str]]
) -> None:
    before = _filled(store)
    pretend(0xFF534D42)  # CIFS
    with BlobCache(store, readonly=True) as cache:
        assert bytes(cache["large"]) == b"L" * 1000
    assert _tree(store) == before


def test_the_async_handle_passes_the_option_on(
    store: str, pretend: Callable[[int], list[str]]
) -> None:
    pretend(0x0BD00BD0)  # Lustre

    async def open_and_put(**options: bool) -> bytes:
        async with AsyncBlobCache(store, **options) as cache:
            await cache.put("k", b"v")
            value = await cache.get("k")
            assert value is not None
            return bytes(value)

    with pytest.raises(UnsafeFilesystemError, match="Lustre"):
        asyncio.run(open_and_put())
    assert not os.path.exists(store)
    assert asyncio.run(open_and_put(trust_filesystem=True)) == b"v"


def test_a_32_bit_long_s_negative_f_type_is_read_unsigned(
    store: str, pretend: Callable[[int], list[str]]
) -> None:
    # On a 32-bit ABI f_type is a signed long: CIFS's 0xFF534D42 comes back negative.
    pretend(0xFF534D42 - (1 << 32))
    with pytest.raises(UnsafeFilesystemError, match=r"CIFS \(SMB\)"):
        BlobCache(store)


def test_trust_filesystem_must_be_a_bool(store: str) -> None:
    with pytest.raises(TypeError, match="trust_filesystem must be True or False"):
        BlobCache(store, trust_filesystem="yes")  # type: ignore[arg-type]
    assert not os.path.exists(store)


def test_blobcache_gc_there_is_refused_in_one_line_unless_trusted(
    store: str, pretend: Callable[[int], list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    before = _filled(store)
    pretend(0x47504653)  # GPFS
    assert cli.main(["gc", store]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1
    assert "GPFS" in err and "blobcache gc --trust-filesystem PATH" in err
    assert _tree(store) == before
    # What changes nothing runs there: a dry run, stats, verify.
    for command in (["gc", "--dry-run", store], ["stats", store], ["verify", store]):
        assert cli.main(command) == 0, command
    assert _tree(store) == before
    capsys.readouterr()
    assert cli.main(["gc", "--trust-filesystem", store]) == 0
    assert "removed" in capsys.readouterr().out


def test_blobcache_demo_there_is_refused_in_one_line_before_its_writer_starts(
    tmp_path: Path, pretend: Callable[[int], list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    """The demo's writer is a child process: refused there, it died with a
    traceback and the demo said only that the writer exited. Now the demo asks
    first, and makes nothing."""
    store = tmp_path / "demo"
    pretend(0x6969)  # NFS
    assert cli.main(["demo", str(store)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1
    assert "NFS" in err and str(store) in err
    assert not store.exists()


def test_off_linux_nothing_is_refused(store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    assert _filesystems.statfs(os.path.dirname(store)) is None
    with BlobCache(store) as cache:
        cache.put("k", b"v")


@linux_only
def test_a_failed_statfs_refuses_nothing(tmp_path: Path) -> None:
    assert _filesystems.statfs(str(tmp_path / "missing")) is None
    assert _filesystems.statfs_type(str(tmp_path / "missing")) is None
    _filesystems.require_trusted(str(tmp_path / "missing"), str(tmp_path / "missing"))


def _stat_f_type(path: str) -> int:
    """What ``stat -f -c %t`` (coreutils) says the file system type of ``path`` is."""
    done = subprocess.run(["stat", "-f", "-c", "%t", path], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip(), 16)


_LOCAL = [p for p in ("/tmp", "/dev/shm", tempfile.gettempdir()) if os.path.isdir(p)]


@linux_only
@pytest.mark.skipif(shutil.which("stat") is None, reason="no stat(1)")
@pytest.mark.parametrize("path", sorted(set(_LOCAL)))
def test_the_real_statfs_reads_what_stat_f_reads(path: str) -> None:
    """The ctypes struct's f_type is where the C library puts it, and so is
    f_bsize, the word after it (which statvfs reports too)."""
    result = _filesystems.statfs(path)
    assert result is not None
    assert _filesystems.statfs_type(path) == _stat_f_type(path)
    assert result.f_bsize == os.statvfs(path).f_bsize


@linux_only
@pytest.mark.parametrize("path", sorted(set(_LOCAL)))
def test_this_machine_s_local_file_systems_are_not_refused(path: str) -> None:
    """ext4, tmpfs (/dev/shm), whatever holds the temp directory here: a
    store opens for writing there (skipped if that is itself a network mount)."""
    name = _filesystems.UNTRUSTED.get(_filesystems.statfs_type(path) or 0)
    if name is not None:
        pytest.skip(f"{path} is on {name}")
    directory = tempfile.mkdtemp(dir=path)
    try:
        with BlobCache(os.path.join(directory, "store")) as cache:
            cache.put("k", b"v")
    finally:
        shutil.rmtree(directory)
