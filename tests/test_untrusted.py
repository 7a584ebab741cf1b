"""Names in the store are not trusted to say what a file is.

Another program or a user may put a symbolic link, a FIFO, a device, a socket or
a directory where blobcache keeps a regular file (or a file where it keeps a
directory), make a directory that is not a store look like one being set up,
or take read permission away. Open, a reader, ``stats``, ``verify`` and ``gc``
must then never follow, open, block on or remove such an entry: it is reported
with its path, or the store is refused with a sentence saying what is there.
The tests run as root, so the permission tests drop to ``nobody`` in a forked
child (and check that the kernel really answers EACCES there).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import io
import os
import pickle
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar, cast

import pytest
import xxhash

from blobcache import BlobCache, BlobCacheError, CorruptionError, _collect, _maintenance, cli
from blobcache import _format as F
from blobcache import _names as N
from tests.conftest import file_of, flip_bit

BIG = b"big value " * 100  # in a file of its own (inline_limit below)
SMALL = b"small"  # in the log
SECRET = b"not the cache's: must never be served or changed\n"
TEMP = ".tmp-0123456789abcdef"  # a name N.temp_name could give


@pytest.fixture(autouse=True)
def no_hang() -> Iterator[None]:
    """A FIFO opened for reading blocks forever: fail the test instead of the run."""

    def expire(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError("blocked: something opened a FIFO or waited on a lock")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(30)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "blobcache", *args], capture_output=True, text=True, timeout=60
    )


def _make_store(store: str) -> dict[str, str]:
    """A closed store holding BIG in a file and SMALL in the log; its paths by role."""
    with BlobCache(store, inline_limit=256) as cache:
        cache.put("big", BIG)
        cache.put("small", SMALL)
        version = cache.path("big")
    assert version is not None
    keydir = os.path.dirname(version)
    logdir = os.path.join(store, F.LOG_DIR)
    (segment,) = os.listdir(logdir)
    return {
        "version": version,
        "key file": os.path.join(keydir, F.KEY_FILE_NAME),
        "temp in a key directory": os.path.join(keydir, TEMP),
        "temp in log/": os.path.join(logdir, TEMP),
        "newest segment": os.path.join(logdir, _next_segment(segment)),
        "FORMAT": os.path.join(store, F.MARKER_NAME),
        "LOCK": os.path.join(store, F.LOCK_NAME),
        "STATE": os.path.join(store, F.STATE_NAME),
        "COMPACT": os.path.join(store, F.COMPACT_NAME),  # made by the first compaction
        "key directory": keydir,
        "fan-out level 2": os.path.dirname(keydir),
        "fan-out level 1": os.path.dirname(os.path.dirname(keydir)),
        "blobs/": os.path.join(store, F.BLOBS_DIR),
        "log/": logdir,
    }


def _next_segment(name: str) -> str:
    return format(int(name[: F.FIELD_HEX_DIGITS], 16) + 1, "016x") + F.SEGMENT_SUFFIX


FILE_KINDS = ["symlink", "symlink to /dev/null", "FIFO", "directory", "char device", "socket"]
DIR_KINDS = ["symlink", "FIFO", "regular file", "char device"]
WORDS = {  # what the report must call it
    "symlink": "a symbolic link",
    "symlink to /dev/null": "a symbolic link",
    "FIFO": "a FIFO",
    "directory": "a directory",
    "char device": "a character device",
    "socket": "a socket",
    "regular file": "a regular file",
}
FILE_LOCATIONS = [
    "version",
    "key file",
    "temp in a key directory",
    "temp in log/",
    "newest segment",
    "FORMAT",
    "LOCK",
    "STATE",
]
DIR_LOCATIONS = ["key directory", "fan-out level 2", "fan-out level 1", "blobs/", "log/"]
# Where the store cannot be used at all: refused with a sentence, by writers (w)
# and readers (r). Elsewhere the entry is reported and the store works.
REFUSED = {
    "newest segment": "w",  # a writer cannot know the records, nor write past it
    "FORMAT": "wr",
    "LOCK": "wr",
    "STATE": "wr",  # every handle maps it: a reader too, to follow the writers
    "blobs/": "wr",
    "log/": "wr",
}
GONE = {"version", "key file", "key directory", "fan-out level 2", "fan-out level 1"}
# Where the writer opens and serves but its gc() stops with what to do: a
# directory named like the next segment is a stray until compaction's roll
# would make that segment (the large put's version record is stale at once).
ROLL_STOPPED = {("newest segment", "directory")}


def _put_kind(path: str, kind: str, outside: Path) -> Callable[[], object]:
    """Put an entry of ``kind`` at ``path``; return what to compare before and after.

    Where a real file or directory was, it is moved out of the store and a link
    to it is put in its place: following the link would find exactly the real
    thing, so only not following it passes.
    """
    real = outside / "real"
    if os.path.lexists(path):
        shutil.move(path, real)
    else:  # a temp file or a segment that could be someone's
        real.write_bytes(SECRET)
    if kind == "symlink":
        os.symlink(real, path)
    elif kind == "symlink to /dev/null":
        os.symlink("/dev/null", path)
    elif kind == "FIFO":
        os.mkfifo(path)
    elif kind == "directory":
        os.mkdir(path)
    elif kind == "regular file":
        Path(path).write_bytes(SECRET)
    elif kind == "char device":
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # as /dev/null
    elif kind == "socket":
        os.mknod(path, stat.S_IFSOCK | 0o600)
    else:  # pragma: no cover
        raise AssertionError(kind)

    def snapshot() -> object:
        st = os.lstat(path)
        return stat.S_IFMT(st.st_mode), st.st_ino, _tree(real)

    return snapshot


def _tree(path: Path) -> object:
    if path.is_dir():
        return sorted((p.name, _tree(p)) for p in path.iterdir())
    return path.read_bytes()


def _cases() -> Iterator[Any]:
    for location in FILE_LOCATIONS:
        for kind in FILE_KINDS:
            yield pytest.param(location, kind, id=f"{location}-{kind}")
    for location in DIR_LOCATIONS:
        for kind in DIR_KINDS:
            yield pytest.param(location, kind, id=f"{location}-{kind}")


def _refused(location: str, kind: str, who: str) -> bool:
    if location == "newest segment" and kind == "directory":
        return False  # a directory never held a segment's bytes: a stray
    return who in REFUSED.get(location, "")


def _gc_outcome(location: str, kind: str) -> contextlib.AbstractContextManager[object]:
    """What a writer's gc of the store with that entry does: stop, or go through."""
    if (location, kind) in ROLL_STOPPED:
        return pytest.raises(BlobCacheError, match="in the way of the log's next segment")
    return contextlib.nullcontext()


@pytest.mark.parametrize(("location", "kind"), list(_cases()))
def test_an_entry_of_the_wrong_kind_is_never_followed_opened_or_removed(
    location: str, kind: str, tmp_path: Path
) -> None:
    store = str(tmp_path / "store")
    outside = tmp_path / "outside"
    outside.mkdir()
    path = _make_store(store)[location]
    snapshot = _put_kind(path, kind, outside)
    before = snapshot()
    says = WORDS[kind]

    def check_problem(problems: list[str]) -> None:
        assert any(p.startswith(path) and says in p for p in problems), problems

    # A writer, and the maintenance commands that open one (gc).
    if _refused(location, kind, "w"):
        with pytest.raises(BlobCacheError, match=says) as refused:
            BlobCache(store)
        assert path in str(refused.value)
        with pytest.raises(BlobCacheError, match=says):
            _collect.collect(store)
    else:
        with BlobCache(store) as cache:
            check_problem([str(p) for p in cache.problems])
            assert cache.get("small") == SMALL
            got = cache.get("big")
            if location in GONE:  # its only version cannot be used: absent, not served
                assert got is None
                assert "big" not in cache
            else:
                assert got is not None and bytes(got) == BIG
            with _gc_outcome(location, kind):
                cache.gc()
        with _gc_outcome(location, kind):
            _collect.collect(store)
    # A reader, and the commands that read: stats, verify.
    if _refused(location, kind, "r"):
        with pytest.raises(BlobCacheError, match=says):
            BlobCache(store, readonly=True)
        with pytest.raises(BlobCacheError, match=says):
            _maintenance.store_stats(store)
        with pytest.raises(BlobCacheError, match=says):
            _maintenance.verify(store)
    else:
        with BlobCache(store, readonly=True) as reader:
            check_problem([str(p) for p in reader.problems])
            assert reader.get("small") == SMALL
        check_problem(_maintenance.store_stats(store).problems)
        check_problem([str(p) for p in _maintenance.verify(store)])
    assert snapshot() == before, "the entry, or what it points to, was changed"


@pytest.mark.parametrize("kind", FILE_KINDS)
def test_a_compact_lock_of_the_wrong_kind_stops_compaction_alone_with_what_to_do(
    kind: str, tmp_path: Path
) -> None:
    """``COMPACT`` is flocked only by the process compacting the log, so only a
    compaction opens it: gc() and ``blobcache gc`` are refused with what is there,
    before anything is rolled or removed; the writer goes on serving and taking
    puts, and readers, ``stats`` and ``verify`` never look at it."""
    store = str(tmp_path / "store")
    outside = tmp_path / "outside"
    outside.mkdir()
    path = _make_store(store)["COMPACT"]
    assert not os.path.lexists(path)  # no compaction ran yet
    snapshot = _put_kind(path, kind, outside)
    before = snapshot()
    files = sorted(e.path for e in _maintenance.store_files(store))
    says = WORDS[kind]
    with BlobCache(store) as cache:
        assert cache.get("small") == SMALL
        with pytest.raises(CorruptionError, match=f"{says}.*move it away") as refused:
            cache.gc()  # compacts: the large put's version record is stale at once
        assert path in str(refused.value)
        assert sorted(e.path for e in _maintenance.store_files(store)) == files
        cache.put("small", b"again")
        assert bytes(cache["big"]) == BIG and cache["small"] == b"again"
    with pytest.raises(CorruptionError, match=says) as refused:
        _collect.collect(store)
    assert path in str(refused.value)
    with BlobCache(store, readonly=True) as reader:
        assert reader.get("small") == b"again" and bytes(reader["big"]) == BIG
    assert _maintenance.store_stats(store).keys == 2
    assert _maintenance.verify(store) == []
    assert snapshot() == before, "the entry, or what it points to, was changed"


@pytest.mark.parametrize("command", ["stats", "verify", "gc"])
@pytest.mark.parametrize("location", ["temp in a key directory", "temp in log/", "LOCK", "STATE"])
def test_a_fifo_named_like_a_store_file_hangs_no_command(
    command: str, location: str, tmp_path: Path
) -> None:
    """e5dfd61: the orphan-temp sweep opened a FIFO ``.tmp-*`` and blocked forever."""
    store = str(tmp_path / "store")
    path = _make_store(store)[location]
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    os.mkfifo(path)
    done = run_cli(command, store)
    assert "Traceback" not in done.stderr
    assert "a FIFO" in done.stderr + done.stdout
    assert stat.S_ISFIFO(os.lstat(path).st_mode)
    if location in ("LOCK", "STATE"):
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    else:
        assert done.returncode == (1 if command == "verify" else 0), done.stderr


def test_a_symlinked_version_is_never_served_even_padded_to_its_length(tmp_path: Path) -> None:
    """e5dfd61 checked only the link's own size (the length of the path it holds):
    named for that length, with a target of that length too, ``open()``,
    ``path()`` and ``get()`` served the target, checksum and all."""
    store = str(tmp_path / "store")
    version = _make_store(store)["version"]
    secret = tmp_path / "secret"
    length = len(str(secret))  # what lstat says of the link
    content = SECRET.ljust(length, b"!")[:length]
    secret.write_bytes(content)
    os.unlink(version)
    # Numbered above every record, as the newest version would be.
    link = N.version_name(1000, length, xxhash.xxh3_64_intdigest(content))
    version = os.path.join(os.path.dirname(version), link)
    os.symlink(secret, version)
    for readonly, verify_on_get in ((False, True), (True, False)):
        with BlobCache(store, verify_on_get=verify_on_get, readonly=readonly) as cache:
            assert cache.get("big") is None
            with pytest.raises(KeyError):
                cache.path("big")
            with pytest.raises(KeyError):
                cache.open("big")
            assert [p.path for p in cache.problems] == [version]
    with BlobCache(store) as cache:  # a new put takes a number above the link's
        assert cache.stats().next_seq > 1000
        cache.put("big", BIG)
        assert bytes(cache["big"]) == BIG
    assert os.path.islink(version) and secret.read_bytes() == content


def test_a_symlinked_newest_segment_is_refused_with_what_to_do(tmp_path: Path) -> None:
    """e5dfd61: a writer met the link's name when it made a segment, "File exists"."""
    store = str(tmp_path / "store")
    logdir = os.path.join(store, F.LOG_DIR)
    _make_store(store)
    (segment,) = os.listdir(logdir)
    moved = tmp_path / segment
    shutil.move(os.path.join(logdir, segment), moved)
    os.symlink(moved, os.path.join(logdir, segment))
    with pytest.raises(CorruptionError, match=r"symbolic link.*move it away"):
        BlobCache(store)
    done = run_cli("gc", store)
    assert done.returncode == 2
    assert "symbolic link" in done.stderr and "File exists" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("where", ["log/", "key directory", "fan-out level 2", "root"])
def test_a_stray_temp_directory_is_reported_never_fatal(where: str, tmp_path: Path) -> None:
    """e5dfd61: IsADirectoryError at open, a traceback from ``blobcache gc``."""
    store = str(tmp_path / "store")
    paths = _make_store(store)
    parent = store if where == "root" else paths["log/" if where == "log/" else where]
    stray = os.path.join(parent, TEMP)
    os.mkdir(stray)
    Path(stray, "inside").write_bytes(SECRET)
    with BlobCache(store) as cache:
        assert bytes(cache["big"]) == BIG
        if where != "root":  # open does not list the store's root
            assert any(p.path == stray for p in cache.problems)
        cache.gc()
    for command in ("gc", "stats"):
        done = run_cli(command, store)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert Path(stray, "inside").read_bytes() == SECRET


def test_a_directory_named_like_a_version_leaves_gc_working(tmp_path: Path) -> None:
    """e5dfd61 took it for a version of the wrong size and gc failed unlinking it."""
    store = str(tmp_path / "store")
    keydir = _make_store(store)["key directory"]
    folder = os.path.join(keydir, N.version_name(0, 0, 0))  # below the live version
    os.mkdir(folder)
    for _ in range(2):
        done = run_cli("gc", store)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert os.path.isdir(folder)
    with BlobCache(store) as cache:
        assert bytes(cache["big"]) == BIG
        assert any(p.path == folder and "a directory" in p.message for p in cache.problems)


# --- The highest segment, created but empty ---------------------------------------------


def test_an_empty_highest_segment_left_by_a_killed_writer_does_not_crash_readers(
    tmp_path: Path,
) -> None:
    """A writer SIGKILLed between creating a segment and writing its header: until
    a writer reopens, e5dfd61's readers failed with ``KeyError: 2``."""
    store = str(tmp_path / "store")
    code = textwrap.dedent(
        f"""
        import os, signal
        from blobcache import BlobCache, _fsio
        real = _fsio.pwrite_all
        def pwrite_all(fd, data, offset):
            if os.readlink(f"/proc/self/fd/{{fd}}").endswith("0000000000000002.log"):
                os.kill(os.getpid(), signal.SIGKILL)  # the header of segment 2
            real(fd, data, offset)
        _fsio.pwrite_all = pwrite_all
        with BlobCache({store!r}, segment_bytes=4096) as cache:
            for i in range(100):
                cache.put(f"k{{i}}", bytes(100))
                print("ack", i, flush=True)
        """
    )
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert child.returncode == -signal.SIGKILL, child.stderr
    acked = [int(line.split()[1]) for line in child.stdout.splitlines()]
    assert acked
    assert os.path.getsize(os.path.join(store, F.LOG_DIR, "0000000000000002.log")) == 0
    with BlobCache(store, readonly=True) as reader:
        stats = reader.stats()
        assert stats.keys == len(acked)
        assert all(reader.get(f"k{i}") == bytes(100) for i in acked)
    for command in ("stats", "verify"):
        done = run_cli(command, store)
        assert done.returncode == 0, done.stderr
    assert _maintenance.store_stats(store).keys == len(acked)


# --- A directory that is not a store -----------------------------------------------------


def _listing(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir()}


@pytest.mark.parametrize(
    "name,content",
    [
        (".tmp-upload-3f2a", b""),  # another tool's staging file, empty
        (".tmp-upload-3f2a", F.MARKER_CONTENT[:4]),  # ...even with a marker's prefix
        (TEMP, b"other bytes"),  # a temp file name of ours, bytes not a marker's
        (TEMP, F.MARKER_CONTENT + b"more"),  # longer than any marker
        (TEMP.upper().replace(".TMP", ".tmp"), b""),  # not lower-case hex
    ],
)
def test_a_directory_of_other_tools_temp_files_is_refused_and_left_alone(
    name: str, content: bytes, tmp_path: Path
) -> None:
    """e5dfd61 took any ``.tmp-*`` for its own: deleted them and made a store."""
    (tmp_path / name).write_bytes(content)
    before = _listing(tmp_path)
    with pytest.raises(BlobCacheError, match=r"not a blobcache store.*nothing was changed"):
        BlobCache(tmp_path)
    assert _listing(tmp_path) == before


@pytest.mark.parametrize("held", [TEMP, F.LOCK_NAME])
def test_a_file_someone_holds_is_not_an_interrupted_init(held: str, tmp_path: Path) -> None:
    """A temp file or LOCK that another process holds an flock on is no crashed
    init's leftover (a concurrent init waits on the directory's own flock)."""
    path = tmp_path / held
    path.write_bytes(b"")
    with open(path, "rb") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # another open file description: conflicts
        with pytest.raises(BlobCacheError, match="not a blobcache store"):
            BlobCache(tmp_path)
    assert _listing(tmp_path) == {held: b""}


@pytest.mark.parametrize(
    "leftovers",
    [
        {TEMP: b""},
        {TEMP: F.MARKER_CONTENT[:5]},
        {TEMP: F.MARKER_CONTENT},
        {TEMP: bytes(len(F.MARKER_CONTENT))},  # written, not fsynced, then a power cut
        {TEMP: b"", ".tmp-fedcba9876543210": F.MARKER_CONTENT, F.LOCK_NAME: b""},
        {F.LOCK_NAME: b""},  # left by e5dfd61: LOCK durable before FORMAT
    ],
)
def test_what_an_interrupted_init_leaves_is_finished(
    leftovers: dict[str, bytes], tmp_path: Path
) -> None:
    for name, content in leftovers.items():
        (tmp_path / name).write_bytes(content)
    with BlobCache(tmp_path) as cache:
        cache.put("k", b"v")
    names = set(os.listdir(tmp_path))
    assert names == {
        F.MARKER_NAME,
        F.LOCK_NAME,
        F.STATE_NAME,
        F.SNAPSHOT_NAME,
        F.LOG_DIR,
        F.BLOBS_DIR,
    }
    with BlobCache(tmp_path, readonly=True) as reader:
        assert reader.get("k") == b"v"


def test_an_init_killed_before_its_marker_is_published_is_finished(tmp_path: Path) -> None:
    """SIGKILL right before the rename of FORMAT's temp file: the next open takes
    the directory for an interrupted init, not for a foreign one."""
    store = str(tmp_path / "store")
    code = textwrap.dedent(
        f"""
        import os, signal
        from blobcache import BlobCache, _fsio
        def rename(src, dst):
            if dst.endswith("FORMAT"):
                os.kill(os.getpid(), signal.SIGKILL)
        _fsio.rename = rename
        BlobCache({store!r})
        """
    )
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert child.returncode == -signal.SIGKILL, child.stderr
    (temp,) = set(os.listdir(store)) - {F.BLOBS_DIR, F.LOG_DIR}  # made, empty, before FORMAT
    assert N.is_temp_name(temp)
    assert (
        os.listdir(os.path.join(store, F.BLOBS_DIR))
        == os.listdir(os.path.join(store, F.LOG_DIR))
        == []
    )
    with BlobCache(store) as cache:
        cache.put("k", b"v")
    assert sorted(os.listdir(store)) == sorted(
        [F.MARKER_NAME, F.LOCK_NAME, F.STATE_NAME, F.SNAPSHOT_NAME, F.LOG_DIR, F.BLOBS_DIR]
    )


# --- Permissions: as a user who may not read ----------------------------------------------

NOBODY = 65534
T = TypeVar("T")


def _as_nobody(fn: Callable[[], T]) -> T:
    """Run ``fn`` in a forked child that dropped root for ``nobody``; return its
    result or raise what it raised."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            outcome: tuple[str, object] = ("returned", fn())
        except BaseException as exc:
            outcome = ("raised", exc)
        with os.fdopen(w, "wb") as out:
            out.write(pickle.dumps(outcome))
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    how, value = pickle.loads(data)
    if how == "raised":
        assert isinstance(value, BaseException)
        raise value
    return cast(T, value)


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A directory ``nobody`` may enter (pytest's tmp_path lies under a 0700 one)."""
    top = Path(tempfile.mkdtemp(prefix="blobcache-perm-"))
    top.chmod(0o755)
    try:
        yield top
    finally:
        shutil.rmtree(top)


def _cli_as_nobody(*args: str) -> tuple[int, str]:
    def run() -> tuple[int, str]:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            status = cli.main(list(args))
        return status, err.getvalue()

    return _as_nobody(run)


def test_another_users_store_is_a_permission_error_not_a_foreign_directory(
    shared_tmp: Path,
) -> None:
    """e5dfd61 said "has no FORMAT file, so it is not a blobcache store"."""
    store = str(shared_tmp / "store")
    _make_store(store)
    os.chmod(store, 0o700)  # root's
    assert _as_nobody(lambda: os.access(store, os.X_OK)) is False
    for readonly in (True, False):
        with pytest.raises(PermissionError) as denied:
            _as_nobody(functools.partial(_open_and_close, store, readonly))
        assert denied.value.errno == errno.EACCES
        assert denied.value.filename == os.path.join(store, F.MARKER_NAME)
    for command in ("stats", "verify", "gc"):
        status, err = _cli_as_nobody(command, store)
        assert status == 2
        assert "Permission denied" in err and "not a blobcache store" not in err
        assert len(err.strip().splitlines()) == 1


def _open_and_close(store: str, readonly: bool) -> None:
    BlobCache(store, readonly=readonly).close()


def _owned_by_nobody(store: str) -> None:
    for directory, dirs, files in os.walk(store):
        for name in [directory, *(os.path.join(directory, n) for n in dirs + files)]:
            os.chown(name, NOBODY, NOBODY)


def test_an_unreadable_key_file_is_reported_and_its_key_absent(shared_tmp: Path) -> None:
    store = str(shared_tmp / "store")
    key_file = _make_store(store)["key file"]
    # An open through the index snapshot, which knows the key, does not read its
    # key file (issue 18): this is the open that does (as verify's, or one after a
    # crash before any close).
    os.unlink(os.path.join(store, F.SNAPSHOT_NAME))
    _owned_by_nobody(store)
    os.chmod(key_file, 0)
    assert _as_nobody(lambda: os.access(key_file, os.R_OK)) is False

    def read() -> tuple[object, list[str]]:
        with BlobCache(store) as cache:
            return cache.get("big"), [str(p) for p in cache.problems]

    got, problems = _as_nobody(read)
    assert got is None
    assert any(p.startswith(key_file) and "Permission denied" in p for p in problems)


@pytest.mark.parametrize("what", ["segment", "fan-out level 1", "FORMAT"])
def test_an_unreadable_store_file_stops_the_commands_in_one_line(
    what: str, shared_tmp: Path
) -> None:
    store = str(shared_tmp / "store")
    paths = _make_store(store)
    target = (
        os.path.join(store, F.LOG_DIR, os.listdir(os.path.join(store, F.LOG_DIR))[0])
        if what == "segment"
        else paths[what]
    )
    _owned_by_nobody(store)
    os.chmod(target, 0)
    assert _as_nobody(lambda: os.access(target, os.R_OK)) is False
    with pytest.raises(PermissionError) as denied:
        _as_nobody(lambda: _open_and_close(store, True))
    assert denied.value.errno == errno.EACCES and denied.value.filename == target
    for command in ("stats", "verify", "gc"):
        status, err = _cli_as_nobody(command, store)
        assert status == 2, err
        assert target in err and "Permission denied" in err
        assert len(err.strip().splitlines()) == 1


def test_a_key_directory_holding_only_a_symlinked_key_file_is_left_whole(
    tmp_path: Path,
) -> None:
    """e5dfd61 took it for a put killed before its key file, and gc removed the link."""
    store = str(tmp_path / "store")
    paths = _make_store(store)
    os.unlink(paths["version"])
    target = tmp_path / "key"
    shutil.move(paths["key file"], target)
    os.symlink(target, paths["key file"])
    for _ in range(2):
        with BlobCache(store) as cache:
            assert "big" not in cache
            assert any(p.path == paths["key file"] for p in cache.problems)
            cache.gc()
        assert run_cli("gc", store).returncode == 0
    assert os.path.islink(paths["key file"]) and target.exists()


def test_a_version_swapped_for_a_link_after_open_is_never_read_through(store: str) -> None:
    """The listing at open saw a regular file; a link put in its place later is
    refused by ``get`` and ``open`` (O_NOFOLLOW on the opened name), not followed."""
    outside = os.path.join(os.path.dirname(store), "outside")
    with open(outside, "wb") as f:
        f.write(b"S" * 300)
    with BlobCache(store, inline_limit=64) as cache:
        cache.put("k", b"v" * 300)
    with BlobCache(store, inline_limit=64) as cache:
        version = cache.path("k")
        assert version is not None
        os.unlink(version)
        os.symlink(outside, version)
        with pytest.raises(CorruptionError, match="symbolic link"):
            cache.get("k")
        with pytest.raises(CorruptionError, match="symbolic link"):
            cache.open("k")


def test_a_directory_named_like_the_next_segment_stops_the_roll_with_what_to_do(
    store: str,
) -> None:
    """Regression (review of issue 12): a directory carrying the next segment's
    name was reported at open, then the roll to it raised a bare FileExistsError."""
    with BlobCache(store, segment_bytes=4096) as cache:
        cache.put("a", b"v")
    os.mkdir(os.path.join(store, F.LOG_DIR, "0000000000000002.log"))
    with BlobCache(store, segment_bytes=4096) as cache:
        assert any("a directory, where blobcache keeps" in p.message for p in cache.problems)
        with pytest.raises(BlobCacheError, match="in the way of the log's next segment"):
            for i in range(100):
                cache.put(f"k{i}", b"x" * 100)
        assert cache["a"] == b"v"


def test_a_fifo_named_like_a_segment_after_open_does_not_hang_a_fallback(store: str) -> None:
    """Regression (review of issue 12): a damaged value's fallback scans the log's
    segments for older records of its key; it opened them with a plain open(), so
    a FIFO named like a segment that appeared after open blocked it for ever,
    with the key's stripe lock held."""
    with BlobCache(store, inline_limit=64) as cache:
        cache.put("k", b"A" * 100)
        cache.put("k", b"C" * 100)
        fifo = os.path.join(store, F.LOG_DIR, "00000000000000ff.log")
        os.mkfifo(fifo)
        flip_bit(file_of(cache, "k"), 10)
        assert cache.get("k") == b"A" * 100  # fell back, past the FIFO, to the older version
        assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
