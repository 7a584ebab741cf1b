"""A power-loss crash-state explorer for blobcache (test code only).

Crash model: power loss / kernel crash (DESIGN.md). Only what was fsynced is
sure to survive; what was not may survive in part, in any order the file system
likes. In the spirit of ALICE (Pillai et al., OSDI 2014) and LevelDB's
fault-injection environment, the explorer works in three steps:

1. **Record.** A workload runs against a real store while every durability call
   of ``blobcache._fsio`` is wrapped (``Recorder``): each call that succeeded is
   appended, in kernel order, to one trace, together with markers of the
   workload (``Begin``/``Ack`` around each put and delete, ``Synced`` after a
   ``sync()`` or ``close()`` returned). Files are named by a synthetic id given
   at creation (inode numbers are reused after an unlink), directories too.
2. **Build crash states.** Replaying the trace through a small file-system
   model (``FsModel``), the explorer stops after each operation (a *crash
   point*) and builds the states a power cut there could leave: per directory,
   any subset of the entry operations (create, rename, unlink, mkdir, rmdir)
   since its last fsync; per file, its content at its last fsync plus a prefix
   of the writes since, the last one possibly torn at a page boundary, or its
   new size with none of the new data (zeros). Few combinations: all of them;
   many: a seeded sample, always with "only what was fsynced" and "everything
   the kernel had".
3. **Check.** Each state is written out to a fresh directory and opened with
   the workload's options: open must succeed, every key must hold what its
   last acknowledged (and, for ``durability="os"``, synced) operation left, or
   what an operation begun after that left; no key may appear that was never
   written; and the store must accept, keep and serve new puts across a
   reopen. With ``Config.jobs`` above 1, worker processes open and check the
   states, and this one judges their answers in the order it built them: the
   same report as checking them here (``_PooledChecks``).

A second crash model rides on the same machinery: ``record(kill_after=N)``
runs the workload in a forked child that dies (as abruptly as SIGKILL) after N
operations, leaving the kernel's view of the files, unsynced parts included;
this process then recovers the store and finishes the workload, still
recording. Its crash points are power cuts after a process crash: what neither
process made durable may be lost, nothing owed may.

A second party rides on it too: ``blobcache gc`` (``_collect.collect``)
on the same store beside the writer, another lock holder (``Janitor``), run
between the workload's operations, in their middle (right after a recorded call
of the writer's: ``INTERRUPTS``), or suspended in its own middle while the
writer goes on. The two take turns at recorded calls, so both are in one trace,
in the kernel's order, the same on every run; each of gc's operations carries
``by="gc"``. Every crash point of that trace is checked as above, and what gc
itself raises beside the writer is a failure (``gc-raised``) at its point. After
a process crash (``kill_after``) of a ``beside_gc`` workload, gc runs on what
the dead writer left before the next process opens.

Failures come with the crash point, the operations before it, what each file
and directory with unsynced changes kept or lost, and a command that checks
that point again (``tools/crash_sweep.py``). Bugs already reported are listed
in ``KNOWN_BUGS`` and counted apart, so a run still fails on anything new.

The model is deliberately more hostile than ext4 (which commits metadata in
order): a later entry operation of a directory may survive without an earlier
one. It is no more hostile than POSIX allows: what an fsync covered stays; a
rename is atomic within its directory; an fsync of a directory makes its own
entries durable, not those of its subdirectories, nor its own entry in its
parent.
"""

from __future__ import annotations

import collections
import concurrent.futures
import concurrent.futures.process
import contextlib
import copy
import hashlib
import itertools
import logging
import multiprocessing
import os
import pickle
import random
import re
import shutil
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal, TypeAlias

import numpy as np

from blobcache import BlobCache, BlobCacheError, CorruptionError, _codecs, _collect, _format, _fsio

PAGE: Final = 4096
"""Writes are torn only at page boundaries: the unit a page cache writes back."""

ROOT: Final = 0
"""The id of the scratch directory the store lives in: it exists, durably, before
the recording starts (the store directory itself is created while recording)."""

STORE_NAME: Final = "store"

Key: TypeAlias = str | bytes


class ModelError(Exception):
    """The recording met something the file-system model does not cover: a bug of
    the explorer (or a new kind of call in the store), never of the store."""


# --- The trace -------------------------------------------------------------------------
#
# Operations name files and directories by synthetic ids. Each carries ``where``,
# the path (relative to the scratch directory) it acted on, and ``by``, the party
# that made the call, for messages only.

WRITER: Final = ""
"""The ``by`` of the workload's store (its threads included)."""

GC: Final = "gc"
"""The ``by`` of ``blobcache gc`` run beside the writer (``Janitor``)."""


@dataclass(frozen=True)
class _FsOpBase:
    by: str = field(default=WRITER, kw_only=True)


@dataclass(frozen=True)
class Create(_FsOpBase):
    """A new file ``name`` in directory ``parent`` (create_exclusive, the LOCK file)."""

    parent: int
    name: str
    node: int
    where: str


@dataclass(frozen=True)
class Mkdir(_FsOpBase):
    parent: int
    name: str
    node: int
    where: str


@dataclass(frozen=True)
class Rename(_FsOpBase):
    """``name`` -> ``new_name`` within directory ``parent`` (the store renames
    nothing across directories; the model refuses it rather than guess)."""

    parent: int
    name: str
    new_name: str
    node: int
    where: str


@dataclass(frozen=True)
class Unlink(_FsOpBase):
    parent: int
    name: str
    node: int
    where: str


@dataclass(frozen=True)
class Rmdir(_FsOpBase):
    parent: int
    name: str
    node: int
    where: str


@dataclass(frozen=True)
class Write(_FsOpBase):
    node: int
    offset: int
    data: bytes
    where: str


@dataclass(frozen=True)
class Truncate(_FsOpBase):
    node: int
    size: int
    where: str


@dataclass(frozen=True)
class Fsync(_FsOpBase):
    """fsync_file, fdatasync or fsync_path: the file's content is durable. fdatasync
    is treated as fsync: the size changes it may skip are zero-fills the log made
    durable before (FORMAT.md, section 3)."""

    node: int
    call: str
    where: str


@dataclass(frozen=True)
class FsyncDir(_FsOpBase):
    node: int
    where: str


@dataclass(frozen=True)
class Begin:
    """A put (``value``) or delete (``value`` None) of ``key`` is about to be called."""

    op: int
    key: Key
    value: bytes | None


@dataclass(frozen=True)
class Ack:
    """The put or delete ``op`` returned."""

    op: int


@dataclass(frozen=True)
class Together:
    """The operations ``ops`` are one batch (``cache.batch()``): all of them land,
    or none. Marked before their ``Begin``s."""

    ops: tuple[int, ...]


@dataclass(frozen=True)
class Synced:
    """``sync()`` or ``close()`` returned: with ``durability="os"`` every operation
    acknowledged before this is owed after a power cut."""

    call: str


@dataclass(frozen=True)
class Note:
    """Something the workload did that is not a put or delete (gc, close, open)."""

    text: str


EntryOp: TypeAlias = Create | Mkdir | Rename | Unlink | Rmdir
FileOp: TypeAlias = Write | Truncate
FsOp: TypeAlias = Create | Mkdir | Rename | Unlink | Rmdir | Write | Truncate | Fsync | FsyncDir
Marker: TypeAlias = Begin | Ack | Synced | Note | Together
Event: TypeAlias = FsOp | Marker

MARKERS: Final = (Begin, Ack, Synced, Note, Together)


def describe_op(op: Event) -> str:
    """One line a human can read: the call and the path it acted on."""
    if isinstance(op, Begin):
        what = "delete" if op.value is None else f"put {len(op.value)} B"
        return f"begin {what} of {op.key!r} (op {op.op})"
    if isinstance(op, Ack):
        return f"ack of op {op.op}"
    if isinstance(op, Synced):
        return f"{op.call}() returned"
    if isinstance(op, Note):
        return op.text
    if isinstance(op, Together):
        return f"a batch of ops {', '.join(map(str, op.ops))}"
    if op.by:
        return f"[{op.by}] " + describe_op(replace(op, by=WRITER))
    if isinstance(op, Write):
        return f"pwrite {len(op.data)} B at {op.offset} to {op.where}"
    if isinstance(op, Truncate):
        return f"truncate {op.where} to {op.size}"
    if isinstance(op, Fsync):
        return f"{op.call} {op.where}"
    if isinstance(op, FsyncDir):
        return f"fsync_dir {op.where or '.'}"
    if isinstance(op, Rename):
        return f"rename {op.where} -> {op.new_name}"
    return f"{type(op).__name__.lower()} {op.where}"


# --- Recording -------------------------------------------------------------------------

SYNC_CALLS: Final = ("fsync_file", "fdatasync", "fsync_path", "fsync_dir")
"""The calls a self-test may omit (``Recorder(omit=...)``) to prove the checker
notices: skipping one of these leaves the store working, just not durable."""

RECORDED_CALLS: Final = (
    "pwrite_all",
    "copy_range",
    "truncate",
    "fsync_file",
    "fdatasync",
    "fsync_path",
    "fsync_dir",
    "rename",
    "unlink",
    "rmdir",
    "mkdir",
    "create_exclusive",
    "open_lock_file",
)

BYPASSES: Final = (
    "fsync",
    "fdatasync",
    "sync",
    "rename",
    "replace",
    "unlink",
    "remove",
    "rmdir",
    "removedirs",
    "mkdir",
    "makedirs",
    "truncate",
    "ftruncate",
    "posix_fallocate",
    "write",
    "pwrite",
    "writev",
    "pwritev",
    "copy_file_range",
    "sendfile",
    "link",
    "symlink",
    "open",  # only with O_CREAT or O_TRUNC: see ``Recorder._guard``
)
"""``os`` calls that change what a crash leaves. Made by blobcache anywhere but in
``_fsio`` (directly, or through shutil and the like), the trace would miss
them and the crash states would be wrong: while recording, such a call is a
``ModelError`` naming the caller."""

Omit: TypeAlias = Mapping[str, Callable[[str], bool]]
"""Sync call -> "is this path's call skipped?". A key ``"gc.fsync_path"`` (a party,
a dot, a call) skips only the calls that party makes."""

Hook: TypeAlias = Callable[["FsOp"], None]


@dataclass
class RecorderState:
    """How a recorder names what it has seen: inode -> id, which ids are
    directories, each id's path, the next id, and how many operations so far."""

    inodes: dict[tuple[int, int], int]
    dirs: set[int]
    paths: dict[int, str]
    next_id: int
    fs_ops: int = 0


class Recorder:
    """Wraps the primitives of ``blobcache._fsio`` and appends what they did to
    ``trace``; usable as a context manager (``with Recorder(root) as rec:``).

    Wrapping the module attributes is enough: the store calls them as
    ``_fsio.name(...)``, and ``_fsio``'s own composites (``write_file_atomically``,
    ``open_temp``, ``makedirs``, ``discard``) look them up as globals of the same
    module. Every call runs under one lock, real call first and append after
    (only what succeeded happened), so the trace is in kernel order even with
    the store's background threads (compaction; the "os" sync thread).

    ``omit`` maps a name of ``SYNC_CALLS`` to a predicate over the path acted on
    (relative to ``root``): when it says True, the call is skipped and not
    recorded, as a store missing that fsync would behave.

    A second party (``Janitor``) runs in threads named in ``parties``: its
    operations carry its name in ``by``. ``hooks`` are called with each recorded
    operation right after it, outside the lock, in the thread that made it: the
    points where the parties hand over to each other.
    """

    def __init__(
        self,
        root: str,
        *,
        omit: Omit | None = None,
        resume: RecorderState | None = None,
        kill_after: int | None = None,
        on_kill: Callable[[Recorder], None] | None = None,
    ) -> None:
        self.root = os.path.abspath(root)
        self.trace: list[Event] = []
        self.omitted = 0  # calls skipped because of ``omit``
        self.steps_started = 0  # workload steps entered (the Driver counts them)
        self._omit: dict[tuple[str | None, str], Callable[[str], bool]] = {}
        for name, predicate in (omit or {}).items():
            party, _, call = name.rpartition(".")
            if call not in SYNC_CALLS:
                raise ValueError(f"only sync calls can be omitted ({SYNC_CALLS}), not {name!r}")
            self._omit[(party or None, call)] = predicate
        self.parties: dict[int, str] = {}  # thread ident -> party (absent: the writer)
        self.hooks: list[Hook] = []
        self._kill_after = kill_after
        self._on_kill = on_kill
        self._lock = threading.RLock()
        self._saved: dict[str, Any] = {}
        self.errors: list[str] = []  # model errors met inside the store's calls
        if resume is not None:
            # Continuing in a directory a killed process wrote: same inodes, same ids.
            self.state = resume
            return
        st = os.stat(self.root)
        self.state = RecorderState({(st.st_dev, st.st_ino): ROOT}, {ROOT}, {ROOT: ""}, ROOT + 1)
        if os.listdir(self.root):
            raise ModelError(f"recording must start from an empty directory; {root} is not")

    # -- installing --

    def __enter__(self) -> Recorder:
        self.install()
        return self

    def __exit__(self, *exc: object) -> None:
        self.uninstall()

    def install(self) -> None:
        for name in RECORDED_CALLS:
            real = getattr(_fsio, name)
            self._saved[name] = real
            setattr(_fsio, name, self._wrap(name, real))
        for name in BYPASSES:
            real = getattr(os, name)
            self._saved["os." + name] = real
            setattr(os, name, self._guard(name, real))

    def uninstall(self) -> None:
        for name, real in self._saved.items():
            module, _, attr = name.rpartition(".")
            setattr(os if module == "os" else _fsio, attr, real)
        self._saved.clear()

    def _guard(self, name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        """``os.<name>`` that notes a call from blobcache outside ``_fsio``."""

        def guard(*args: Any, **kwargs: Any) -> Any:
            flags = args[1] if len(args) > 1 else kwargs.get("flags", 0)
            if name != "open" or flags & (os.O_CREAT | os.O_TRUNC):
                caller = _blobcache_caller(sys._getframe(1))
                if caller is not None and caller != _fsio.__name__:
                    self.errors.append(
                        f"{caller} called os.{name} itself, not through blobcache._fsio: "
                        "the trace misses that call, so the crash states built from it are wrong"
                    )
            return real(*args, **kwargs)

        return guard

    # -- markers --

    def mark(self, event: Marker) -> None:
        with self._lock:
            self.trace.append(event)

    # -- the wrappers --

    def party(self) -> str:
        """Who is calling: the party of this thread (``WRITER`` if none)."""
        return self.parties.get(threading.get_ident(), WRITER)

    def _skips(self, name: str, first: Any) -> bool:
        """REQUIRES: the lock. Whether ``omit`` says this call is not made."""
        predicates = [self._omit.get((None, name)), self._omit.get((self.party(), name))]
        found = [p for p in predicates if p is not None]
        return bool(found) and any(p(self._subject(name, first)) for p in found)

    def _wrap(self, name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                if self._skips(name, args[0]):
                    self.omitted += 1
                    return None
                before = self._before(name, args)
                result = real(*args, **kwargs)
                length = len(self.trace)
                try:
                    self._after(name, args, result, before)
                except ModelError as exc:
                    self.errors.append(str(exc))
                    raise
                op = self.trace[-1] if len(self.trace) > length else None
            if op is not None:
                # Outside the lock: a hook may hand over to the other party, which
                # then records calls of its own.
                assert not isinstance(op, MARKERS)
                for hook in list(self.hooks):
                    hook(op)
            return result

        return wrapper

    def _append(self, op: FsOp) -> None:
        """REQUIRES: the lock. With ``kill_after``, the process ends right after
        that many operations: ``on_kill`` saves the trace, then ``os._exit``, as
        abrupt for the store as a SIGKILL (no close, no sync, threads gone)."""
        by = self.party()
        self.trace.append(replace(op, by=by) if by != WRITER else op)
        self.state.fs_ops += 1
        if self._kill_after is not None and self.state.fs_ops >= self._kill_after:
            if self._on_kill is not None:
                self._on_kill(self)
            os._exit(0)

    def _rel(self, path: str) -> str:
        rel = os.path.relpath(os.path.abspath(path), self.root)
        if rel == ".":
            return ""
        if rel == os.pardir or rel.startswith(os.pardir + os.sep):
            raise ModelError(f"the store touched {path}, outside the recorded directory")
        return rel

    def _key(self, st: os.stat_result) -> tuple[int, int]:
        return (st.st_dev, st.st_ino)

    def _node_of_path(self, path: str) -> int:
        node = self.state.inodes.get(self._key(os.lstat(path)))
        if node is None:
            raise ModelError(f"{path} was not created while recording: no id for it")
        return node

    def _node_of_fd(self, fd: int) -> int:
        node = self.state.inodes.get(self._key(os.fstat(fd)))
        if node is None:
            raise ModelError(f"fd {fd} is a file not created while recording")
        return node

    def _subject(self, name: str, first: Any) -> str:
        """The path (relative to root) a call acts on, for ``omit`` predicates."""
        if isinstance(first, int):
            return self.state.paths.get(self._node_of_fd(first), "?")
        return self._rel(str(first))

    def _new(self, path: str, *, directory: bool) -> int:
        state = self.state
        node = state.next_id
        state.next_id += 1
        # A fresh id on every create: the inode number of an unlinked file comes back.
        state.inodes[self._key(os.lstat(path))] = node
        if directory:
            state.dirs.add(node)
        state.paths[node] = self._rel(path)
        return node

    def _parent(self, path: str) -> tuple[int, str]:
        parent = os.path.dirname(os.path.abspath(path))
        node = self._node_of_path(parent)
        if node not in self.state.dirs:
            raise ModelError(f"{parent} is not a directory the model knows")
        return node, os.path.basename(path)

    def _before(self, name: str, args: tuple[Any, ...]) -> Any:
        """What must be looked up before the call changes it."""
        if name in ("unlink", "rmdir"):
            try:
                return self._node_of_path(args[0])
            except FileNotFoundError:
                return None  # the real call fails too, and nothing is recorded
        if name == "open_lock_file":
            return os.path.lexists(args[0])
        return None

    def _after(self, name: str, args: tuple[Any, ...], result: Any, before: Any) -> None:
        append = self._append
        paths = self.state.paths
        if name == "pwrite_all":
            fd, data, offset = args
            node = self._node_of_fd(fd)
            append(Write(node, offset, bytes(data), paths[node]))
        elif name == "copy_range":  # the kernel copied ``result`` bytes: a write of them
            src, fd, _count, offset = args
            node = self._node_of_fd(fd)
            append(Write(node, offset, os.pread(src, result, offset), paths[node]))
        elif name == "truncate":
            node = self._node_of_fd(args[0])
            append(Truncate(node, args[1], paths[node]))
        elif name in ("fsync_file", "fdatasync"):
            node = self._node_of_fd(args[0])
            append(Fsync(node, name, paths[node]))
        elif name == "fsync_path":
            node = self._node_of_path(args[0])
            append(Fsync(node, name, paths[node]))
        elif name == "fsync_dir":
            node = self._node_of_path(args[0])
            if node not in self.state.dirs:
                raise ModelError(f"fsync_dir of {args[0]}, which is not a directory")
            append(FsyncDir(node, paths[node]))
        elif name in ("create_exclusive", "open_lock_file"):
            if name == "open_lock_file" and before:
                return  # the LOCK file of an earlier open: nothing created
            parent, base = self._parent(args[0])
            node = self._new(args[0], directory=False)
            append(Create(parent, base, node, paths[node]))
        elif name == "mkdir":
            parent, base = self._parent(args[0])
            node = self._new(args[0], directory=True)
            append(Mkdir(parent, base, node, paths[node]))
        elif name == "rename":
            src, dst = args
            parent, base = self._parent(src)
            dst_parent, new_base = self._parent(dst)
            if dst_parent != parent:
                raise ModelError(f"rename across directories ({src} -> {dst}) is not modelled")
            node = self._node_of_path(dst)
            where = paths[node]
            paths[node] = self._rel(dst)
            append(Rename(parent, base, new_base, node, os.path.join(os.path.dirname(where), base)))
        elif name in ("unlink", "rmdir"):
            parent, base = self._parent(args[0])
            where = self._rel(args[0])
            if name == "unlink":
                append(Unlink(parent, base, before, where))
            else:
                append(Rmdir(parent, base, before, where))
        else:  # pragma: no cover - RECORDED_CALLS and this chain are kept in step
            raise ModelError(f"no recording rule for _fsio.{name}")


def _blobcache_caller(frame: Any) -> str | None:
    """The innermost blobcache module on the stack from ``frame`` up (None: none)."""
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module == "blobcache" or module.startswith("blobcache."):
            return str(module)
        frame = frame.f_back
    return None


# --- The file-system model -------------------------------------------------------------


@dataclass
class FileModel:
    durable: bytes = b""
    pending: list[FileOp] = field(default_factory=list)

    def current(self) -> bytes:
        return self.content(len(self.pending), None, zeros=False)

    def content(self, keep: int, cut: int | None, *, zeros: bool) -> bytes:
        """The durable bytes plus the first ``keep`` pending operations; then the
        next write up to offset ``cut`` if given; with ``zeros``, the size all
        pending operations reach, with none of their data."""
        data = bytearray(self.durable)
        if zeros:
            size = len(self.current())
            return bytes(data[:size]) + bytes(max(0, size - len(data)))
        for op in self.pending[:keep]:
            _apply_file_op(data, op)
        if cut is not None:
            op = self.pending[keep]
            assert isinstance(op, Write)
            _apply_file_op(data, Write(op.node, op.offset, op.data[: cut - op.offset], op.where))
        return bytes(data)


def _apply_file_op(data: bytearray, op: FileOp) -> None:
    if isinstance(op, Truncate):
        if op.size < len(data):
            del data[op.size :]
        else:
            data.extend(bytes(op.size - len(data)))
        return
    end = op.offset + len(op.data)
    if op.offset > len(data):
        data.extend(bytes(op.offset - len(data)))
    data[op.offset : end] = op.data


@dataclass
class DirModel:
    durable: dict[str, int] = field(default_factory=dict)
    current: dict[str, int] = field(default_factory=dict)
    pending: list[EntryOp] = field(default_factory=list)

    def entries(self, kept: frozenset[int] | None) -> dict[str, int]:
        """The durable entries with the kept pending operations applied in order;
        an operation that no longer makes sense (renaming or removing a name
        whose create was dropped) is skipped."""
        if kept is None:
            return dict(self.durable)
        out = dict(self.durable)
        for index, op in enumerate(self.pending):
            if index not in kept:
                continue
            if isinstance(op, (Create, Mkdir)):
                out[op.name] = op.node
            elif isinstance(op, Rename):
                if out.get(op.name) == op.node:
                    del out[op.name]
                    out[op.new_name] = op.node
            elif out.get(op.name) == op.node:  # Unlink, Rmdir
                del out[op.name]
        return out


@dataclass(frozen=True)
class FileChoice:
    """What a crash leaves of one file's unsynced writes."""

    keep: int  # pending operations that landed in full
    cut: int | None = None  # the next write landed up to this page boundary
    zeros: bool = False  # the new size landed, none of the data

    def describe(self, f: FileModel) -> str:
        total = len(f.pending)
        if self.zeros:
            return f"new size {len(f.current())} B, none of its {total} unsynced ops' data"
        if self.keep == 0 and self.cut is None:
            return f"only the fsynced {len(f.durable)} B (all {total} unsynced ops lost)"
        if self.keep == total:
            return f"all {total} unsynced ops"
        text = f"the first {self.keep} of {total} unsynced ops"
        if self.cut is not None:
            op = f.pending[self.keep]
            assert isinstance(op, Write)
            text += (
                f", then op {self.keep + 1} (pwrite of {op.offset}..{op.offset + len(op.data)})"
                f" torn at {self.cut}"
            )
        return text


Choice: TypeAlias = FileChoice | frozenset[int]


def _describe_dir_choice(d: DirModel, kept: frozenset[int]) -> str:
    ops = [describe_op(op) for op in d.pending]
    if len(kept) == len(ops):
        return f"all {len(ops)} unsynced entry ops: " + "; ".join(ops)
    if not kept:
        return f"none of its {len(ops)} unsynced entry ops: lost " + "; ".join(ops)
    return (
        "kept: "
        + "; ".join(o for i, o in enumerate(ops) if i in kept)
        + " | lost: "
        + "; ".join(o for i, o in enumerate(ops) if i not in kept)
    )


class FsModel:
    """The file system as the trace changed it: per directory its entries (durable
    and current) and the entry operations since its last fsync; per file its
    durable content and the writes since its last fsync."""

    def __init__(self) -> None:
        self.files: dict[int, FileModel] = {}
        self.dirs: dict[int, DirModel] = {ROOT: DirModel()}

    def apply(self, op: FsOp) -> None:
        if isinstance(op, (Write, Truncate)):
            self.files[op.node].pending.append(op)
        elif isinstance(op, Fsync):
            f = self.files[op.node]
            f.durable, f.pending = f.current(), []
        elif isinstance(op, FsyncDir):
            d = self.dirs[op.node]
            d.durable, d.pending = dict(d.current), []
        else:
            d = self.dirs[op.parent]
            if isinstance(op, Create):
                self.files[op.node] = FileModel()
                d.current[op.name] = op.node
            elif isinstance(op, Mkdir):
                self.dirs[op.node] = DirModel()
                d.current[op.name] = op.node
            elif isinstance(op, Rename):
                if d.current.get(op.name) != op.node:
                    raise ModelError(f"rename of {op.where}, which the model does not hold")
                del d.current[op.name]
                d.current[op.new_name] = op.node
            else:
                if d.current.get(op.name) != op.node:
                    raise ModelError(f"removal of {op.where}, which the model does not hold")
                del d.current[op.name]
            d.pending.append(op)

    def reachable(self) -> set[int]:
        """Every node some crash state may show: reachable from the root through
        durable entries or entries a pending operation adds."""
        seen = {ROOT}
        todo = [ROOT]
        while todo:
            d = self.dirs[todo.pop()]
            targets = set(d.durable.values()) | set(d.current.values())
            targets |= {op.node for op in d.pending if isinstance(op, (Create, Mkdir, Rename))}
            for node in targets - seen:
                seen.add(node)
                if node in self.dirs:
                    todo.append(node)
        return seen

    def units(self) -> list[tuple[int, list[Choice]]]:
        """The nodes with something unsynced, each with the choices a crash has."""
        out: list[tuple[int, list[Choice]]] = []
        for node in sorted(self.reachable()):
            if node in self.dirs:
                if self.dirs[node].pending:
                    out.append((node, list(_dir_choices(len(self.dirs[node].pending)))))
            elif self.files[node].pending:
                out.append((node, list(_file_choices(self.files[node]))))
        return out

    def build(self, choice: Mapping[int, Choice]) -> tuple[list[str], dict[str, bytes]]:
        """The directories and files (paths relative to the root) of one crash state;
        a node missing from ``choice`` keeps only what was synced."""
        dirs: list[str] = []
        files: dict[str, bytes] = {}
        todo: list[tuple[int, str]] = [(ROOT, "")]
        while todo:
            node, prefix = todo.pop()
            picked = choice.get(node)
            assert picked is None or isinstance(picked, frozenset)
            for name, child in sorted(self.dirs[node].entries(picked).items()):
                path = prefix + name
                if child in self.dirs:
                    dirs.append(path)
                    todo.append((child, path + "/"))
                else:
                    f = self.files[child]
                    got = choice.get(child)
                    if got is None:
                        files[path] = f.durable
                    else:
                        assert isinstance(got, FileChoice)
                        files[path] = f.content(got.keep, got.cut, zeros=got.zeros)
        return sorted(dirs), files

    def describe(self, node: int, picked: Choice) -> str:
        if isinstance(picked, FileChoice):
            return picked.describe(self.files[node])
        return _describe_dir_choice(self.dirs[node], picked)

    def current_choice(self, units: Sequence[tuple[int, list[Choice]]]) -> dict[int, Choice]:
        return {node: choices[-1] for node, choices in units}


def _dir_choices(pending: int) -> Iterator[frozenset[int]]:
    """Subsets of a directory's pending entry operations; all of them when few,
    else the structured ones (none, prefixes, all but one, only one). The
    full set comes last: ``current_choice`` takes it."""
    everything = frozenset(range(pending))
    if pending <= 4:
        subsets = [
            frozenset(c)
            for r in range(pending + 1)
            for c in itertools.combinations(range(pending), r)
        ]
    else:
        subsets = [frozenset(range(k)) for k in range(pending + 1)]
        subsets += [everything - {i} for i in range(pending)]
        subsets += [frozenset({i}) for i in range(pending)]
    seen: set[frozenset[int]] = set()
    for s in subsets:
        if s != everything and s not in seen:
            seen.add(s)
            yield s
    yield everything


def _tear_points(op: Write) -> list[int]:
    """Page boundaries strictly inside a write: where a power cut may tear it.
    At most three (first, middle, last) so a megabyte of zero-fill does not
    multiply the states by 256."""
    first = (op.offset // PAGE + 1) * PAGE
    end = op.offset + len(op.data)
    points = list(range(first, end, PAGE))
    if len(points) > 3:
        points = [points[0], points[len(points) // 2], points[-1]]
    return points


def _file_choices(f: FileModel) -> Iterator[FileChoice]:
    """What a crash may leave of a file: durable only, a prefix of its pending
    operations (the last write possibly torn), its new size with zeros; the
    full content last (``current_choice`` takes it)."""
    total = len(f.pending)
    yield FileChoice(0)
    for keep, op in enumerate(f.pending):
        if isinstance(op, Write):
            for cut in _tear_points(op):
                yield FileChoice(keep, cut)
        if 0 < keep + 1 < total:
            yield FileChoice(keep + 1)
    if any(isinstance(op, Write) for op in f.pending):
        yield FileChoice(total, zeros=True)
    yield FileChoice(total)


# --- Expectations ----------------------------------------------------------------------


@dataclass
class Ledger:
    """What the workload's markers say each key may hold after a crash.

    Operations are kept in the order they began (threads may take operation
    numbers in one order and begin in another); a key's "later" operations are
    those that began after its owed one.
    """

    durability: str
    ops: list[Begin] = field(default_factory=list)
    position: dict[int, int] = field(default_factory=dict)  # op number -> index in ops
    owed_at_sync: dict[Key, int] = field(default_factory=dict)  # key -> index in ops
    owed_now: dict[Key, int] = field(default_factory=dict)
    batches: list[tuple[int, ...]] = field(default_factory=list)  # op numbers, see Together

    def note(self, marker: Marker) -> None:
        if isinstance(marker, Together):
            self.batches.append(marker.ops)
        elif isinstance(marker, Begin):
            self.position[marker.op] = len(self.ops)
            self.ops.append(marker)
        elif isinstance(marker, Ack):
            index = self.position[marker.op]
            key = self.ops[index].key
            # Each key belongs to one thread, so its acks come in begin order.
            self.owed_now[key] = max(index, self.owed_now.get(key, -1))
        elif isinstance(marker, Synced):
            self.owed_at_sync = dict(self.owed_now)

    def allowed(self, every_key: Sequence[Key]) -> dict[Key, tuple[bytes | None, ...]]:
        """Per key: the owed value first, then any other value it may show.

        Owed: the result of the key's last acknowledged operation ("fsync"), or
        of the last one acknowledged before the last ``Synced`` ("os"). Also
        allowed: the result of any operation on the key begun after the owed
        one (in flight at the crash, or acknowledged but not yet synced).
        """
        owed_map = self.owed_now if self.durability == "fsync" else self.owed_at_sync
        out: dict[Key, tuple[bytes | None, ...]] = {}
        for key in every_key:
            index = owed_map.get(key, -1)
            owed = self.ops[index].value if index >= 0 else None
            values: list[bytes | None] = [owed]
            for op in self.ops[index + 1 :]:
                if op.key == key and op.value not in values:
                    values.append(op.value)
            out[key] = tuple(values)
        return out

    def batches_begun(self) -> list[list[tuple[Begin, set[bytes | None]]]]:
        """Every batch whose operations have all begun: the last operation of
        each of its keys (what the key holds if the batch landed), with what the
        key's operations begun after the batch put (a key holding one of those
        tells nothing of the batch)."""
        out = []
        for ops in self.batches:
            if not all(op in self.position for op in ops):
                continue
            last = {self.ops[self.position[op]].key: self.position[op] for op in ops}
            end = max(self.position[op] for op in ops)
            out.append(
                [
                    (self.ops[i], {o.value for o in self.ops[end + 1 :] if o.key == key})
                    for key, i in last.items()
                ]
            )
        return out


Batches: TypeAlias = Sequence[Sequence[tuple[Begin, set[bytes | None]]]]


def torn_batches(
    batches: Batches,
    allowed: Mapping[Key, tuple[bytes | None, ...]],
    found: Mapping[Key, bytes | None],
) -> list[tuple[str, str]]:
    """A batch of which some keys hold what it put and others what they held
    before: all or none must land (FORMAT.md, "Batches"). A key whose value from
    the batch is also what it is owed says nothing (it holds that either way),
    nor does one holding what a later operation put."""
    problems = []
    for batch in batches:
        landed = {
            op.key: found.get(op.key) == op.value
            for op, later in batch
            if op.key in found
            and allowed[op.key][0] != op.value
            and (found.get(op.key) == op.value or found.get(op.key) not in later)
        }
        if len(set(landed.values())) > 1:
            shown = ", ".join(f"{k!r}: {'landed' if v else 'not'}" for k, v in landed.items())
            problems.append(("torn-batch", f"a batch landed in part: {shown}"))
    return problems


# --- The second party: `blobcache gc` beside the writer ----------------------------------


def _is_temp(where: str) -> bool:
    return os.path.basename(where).startswith(_format.TEMP_PREFIX)


def _is_record_write(op: FsOp) -> bool:
    """A write of log records: not a segment's header, nor the zeros the log
    writes ahead to reserve room (FORMAT.md, section 3)."""
    return (
        isinstance(op, Write)
        and op.where.endswith(_format.SEGMENT_SUFFIX)
        and op.offset >= _format.SEGMENT_HEADER.size
        and any(op.data)
    )


INTERRUPTS: Final[dict[str, tuple[str, Callable[[FsOp], bool]]]] = {
    "temp-created": (
        "between a temp file's create and its flock",
        lambda op: isinstance(op, Create) and _is_temp(op.where),
    ),
    "temp-written": (
        "between a temp file's write and its fsync",
        lambda op: isinstance(op, Write) and _is_temp(op.where),
    ),
    "temp-synced": (
        "between a temp file's fsync and its rename",
        lambda op: isinstance(op, Fsync) and _is_temp(op.where),
    ),
    "renamed": (
        "between a version's rename and the fsync of its directory",
        lambda op: isinstance(op, Rename) and op.new_name.startswith(_format.VERSION_PREFIX),
    ),
    "key-file": (
        "between a key file's rename and the fsync of its directory",
        lambda op: isinstance(op, Rename) and op.new_name == _format.KEY_FILE_NAME,
    ),
    "mkdir": ("between a mkdir and the fsync of its parent", lambda op: isinstance(op, Mkdir)),
    "appended": ("between a log record's write and its fdatasync", _is_record_write),
    "compacted": (
        "between a compacted segment's rename and the removal of its inputs",
        lambda op: isinstance(op, Rename) and op.new_name.endswith(_format.SEGMENT_SUFFIX),
    ),
    "unlinked": (
        "between an unlink and the fsync of its directory",
        lambda op: isinstance(op, Unlink),
    ),
    "rmdir": ("between an rmdir and the fsync of its parent", lambda op: isinstance(op, Rmdir)),
    "file-synced": ("right after a file's fsync", lambda op: isinstance(op, Fsync)),
    "dir-synced": ("right after a directory's fsync", lambda op: isinstance(op, FsyncDir)),
}
"""Where one party may hand over to the other: right after the ``nth`` recorded
call of a kind (a name here, with what lies on either side of that point)."""


@dataclass(frozen=True)
class Raised:
    """A party's call failed on the live store, beside the other party: no power
    cut needed. ``point``: the operations recorded before; ``by``: ``GC`` or
    ``WRITER``."""

    point: int
    by: str
    detail: str

    @property
    def kind(self) -> str:
        return "gc-raised" if self.by == GC else "writer-raised"


STUCK_SECONDS: Final = 60.0
"""A hand-over not answered in this long is a deadlock of the explorer's making
(a party waiting for something the other, waiting for its turn, holds): fail
loudly rather than hang the test run. Nothing is timed by it."""


class Janitor:
    """``blobcache gc PATH`` beside the workload's writer: ``_collect.collect``
    on the same store, in a thread that takes turns with the workload's (one
    runs while the other waits), so both parties' calls land in one trace, in
    the order the kernel saw them, and in the same order on every run.

    Why a thread of this process and not a forked one: every call of both goes
    through the one ``Recorder``, real call first and record right after under
    its lock, so the trace *is* the kernel's order, with no clocks or pipes to
    merge; and the hand-overs happen at recorded calls the workload names
    (``INTERRUPTS``), so the interleaving is chosen, not left to a scheduler
    (the store's background compaction thread takes no turns: the ``Driver``
    lets it settle before it hands over between steps). It is still a
    distinct lock holder: flocks belong to an open file description
    and collect opens its own (its probe of ``LOCK``, the exclusive flock of a
    key directory, its temp-file probes), so they conflict with the writer's as
    across processes; and its ``readonly`` handle shares no state with the
    writer's (the page cache is shared either way, so its fsyncs make the
    writer's data durable, as they would from another process).

    A suspended janitor may hold a key directory exclusively; a writer that then
    needs that directory would wait for ever for a janitor waiting for its turn.
    So while it is suspended, the writer's ``lock_dir`` first tries without
    waiting and, when that fails, lets the janitor finish first: the kernel
    would block the writer until the other process unlocks.

    What collect raises goes to ``raised`` (a ``Raised`` at the crash point it
    was at) and becomes a failure of the recording: ``blobcache gc`` beside a
    live writer must not fail because the writer changed the store under it.
    """

    def __init__(self, recorder: Recorder, store: str, raised: list[Raised]) -> None:
        self.recorder = recorder
        self.store = store
        self.raised = raised
        self.runs = 0
        self._turn = threading.Condition()
        self._gc_turn = False  # whose turn it is: the janitor's, or the workload's
        self._done = False
        self._thread: threading.Thread | None = None
        self._pause: tuple[str, int] | None = None
        self._seen = 0  # the janitor's calls matching ``_pause`` so far
        self._real_lock_dir: Callable[..., int | None] | None = None
        recorder.hooks.append(self._after)

    def run(self, *, pause: tuple[str, int] | None = None, why: str = "") -> None:
        """Run ``blobcache gc`` on the store; return when it has returned or, with
        ``pause`` (a name of ``INTERRUPTS`` and n), right after its n-th call of
        that kind: it is then suspended until ``finish``."""
        self.finish(": another is about to start")
        self.runs += 1
        self._pause, self._seen, self._done = pause, 0, False
        self.recorder.mark(Note(f"blobcache gc #{self.runs} starts{why}"))
        self._thread = threading.Thread(target=self._main, name=f"crashsim-gc-{self.runs}")
        self._install_lock_dir()
        self._hand_over()

    def finish(self, why: str = "") -> None:
        """Let a suspended ``blobcache gc`` run to its end (nothing if none is)."""
        if self._thread is None:
            return
        self.recorder.mark(Note(f"blobcache gc #{self.runs} resumes{why}"))
        self._hand_over()

    def _hand_over(self) -> None:
        """Give the janitor its turn and wait for it to end, or to suspend itself."""
        thread = self._thread
        assert thread is not None
        with self._turn:
            self._gc_turn = True
            if thread.ident is None:
                thread.start()
            self._turn.notify_all()
            self._wait(gc_turn=False)
            done = self._done
        if done:
            thread.join()
            self._thread = None
            self._uninstall_lock_dir()

    def _wait(self, *, gc_turn: bool) -> None:
        """REQUIRES: ``_turn``.

        Two processes have a registry of flocked descriptors each
        (``_fsio._flocked_lock``); these two parties share one. A party waiting for
        its turn while it holds that lock (a hand-over right after a temp file's
        create, inside the registry's critical section) lets go of it for the
        wait, as the other process would never have seen it held.
        """
        registry: Any = _fsio._flocked_lock
        held = registry._is_owned()
        saved = registry._release_save() if held else None
        try:
            if not self._turn.wait_for(lambda: self._gc_turn == gc_turn, STUCK_SECONDS):
                raise ModelError(f"blobcache gc #{self.runs} and the writer wait for each other")
        finally:
            if held:
                registry._acquire_restore(saved)

    def _main(self) -> None:
        self.recorder.parties[threading.get_ident()] = GC
        try:
            with self._turn:
                self._wait(gc_turn=True)
            report = _collect.collect(self.store)
            how = "beside the writer" if report.beside_writer else "with no writer: offline"
            outcome = f"returned ({how}; {len(report.removed)} paths removed)"
        except BlobCacheError as exc:
            if os.path.exists(os.path.join(self.store, _format.MARKER_NAME)):
                outcome = f"raised {_raised(exc, self.recorder.root)}"
                self.raised.append(
                    Raised(self.recorder.state.fs_ops, GC, f"blobcache gc {outcome}")
                )
            else:  # a writer killed in its init: not a store yet, and gc never makes one
                outcome = f"refused a directory with no {_format.MARKER_NAME} yet: {exc}"
        except Exception as exc:
            outcome = f"raised {_raised(exc, self.recorder.root)}"
            self.raised.append(Raised(self.recorder.state.fs_ops, GC, f"blobcache gc {outcome}"))
        finally:
            del self.recorder.parties[threading.get_ident()]
        self.recorder.mark(Note(f"blobcache gc #{self.runs} {outcome}"))
        with self._turn:
            self._done, self._gc_turn = True, False
            self._turn.notify_all()

    def _after(self, op: FsOp) -> None:
        """A recorder hook: suspend the janitor at its pause point."""
        if op.by != GC or self._pause is None:
            return
        at, nth = self._pause
        if not INTERRUPTS[at][1](op):
            return
        self._seen += 1
        if self._seen < nth:
            return
        self._pause = None
        what = INTERRUPTS[at][0]
        self.recorder.mark(Note(f"blobcache gc #{self.runs} is suspended {what}"))
        with self._turn:
            self._gc_turn = False
            self._turn.notify_all()
            self._wait(gc_turn=True)

    def _install_lock_dir(self) -> None:
        real = _fsio.lock_dir
        self._real_lock_dir = real

        def lock_dir(path: str, *, exclusive: bool, wait: bool = True) -> int | None:
            if wait and self.recorder.party() != GC and self._thread is not None:
                fd = real(path, exclusive=exclusive, wait=False)
                if fd is not None:
                    return fd
                rel = os.path.relpath(path, self.recorder.root)
                self.finish(f": the writer waits for its flock of {rel}")
            return real(path, exclusive=exclusive, wait=wait)

        _fsio.lock_dir = lock_dir

    def _uninstall_lock_dir(self) -> None:
        if self._real_lock_dir is not None:
            _fsio.lock_dir = self._real_lock_dir
            self._real_lock_dir = None


def _raised(exc: BaseException, root: str) -> str:
    """``exc``, the path it names (relative to ``root``) and the blobcache
    functions it came through, innermost first: a failure's message, and what a
    ``KnownBug`` matches (names, not line numbers, which other changes move)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/blobcache/" in f.filename]
    calls = [f"{os.path.basename(f.filename)[:-3]}.{f.name}" for f in reversed(frames)]
    filename = getattr(exc, "filename", None)
    what = type(exc).__name__
    if isinstance(filename, str):
        what += f" on {os.path.relpath(filename, root)}"
    elif str(exc):
        what += ": " + str(exc).replace(root + os.sep, "")
    return what + (" in " + " < ".join(calls[:3]) if calls else "")


# --- Workloads -------------------------------------------------------------------------


class Driver:
    """Runs a workload's operations on a store while marking them in the trace.

    Values are made unique per operation (key, operation number, size), so a
    value found after a crash names the put that wrote it.

    ``resume_at``: the workload continues after a process crash. The steps
    before it ran in the killed process (the one in flight at the kill too):
    they are skipped here, numbering operations as they did, and the store is
    opened (recovery) at the first step run.
    """

    def __init__(
        self,
        recorder: Recorder,
        store: str,
        options: Mapping[str, Any],
        *,
        resume_at: int = 0,
    ) -> None:
        self.recorder = recorder
        self.store = store
        self.options = dict(options)
        self.resume_at = resume_at
        self.steps = 0
        self._ops = 0
        self._count_lock = threading.Lock()  # workloads may run steps in threads
        self._cache: BlobCache | None = None
        self._second: BlobCache | None = None  # another writer's handle (another process's)
        self._via = threading.local()  # .second: this thread's steps go through it
        self._janitor: Janitor | None = None
        self.raised: list[Raised] = []  # what a party raised beside the other

    @property
    def janitor(self) -> Janitor:
        """``blobcache gc`` on this store, as another process would run it."""
        if self._janitor is None:
            self._janitor = Janitor(self.recorder, self.store, self.raised)
        return self._janitor

    @contextlib.contextmanager
    def _beside_gc(self, what: str) -> Iterator[None]:
        """A writer's step, which must not fail because ``blobcache gc`` ran beside
        it: once gc has run, what the step raises is noted (``Raised``, a failure
        of the recording) and the workload goes on; before, it propagates (a
        workload's own failure)."""
        try:
            yield
        except Exception as exc:
            # ModelError is the explorer's own; an assert of blobcache's firing is a bug too.
            if self._janitor is None or isinstance(exc, ModelError):
                raise
            self.note_raised(f"{what} raised {_raised(exc, self.recorder.root)}")

    def note_raised(self, detail: str) -> None:
        """Note that the writer failed on the live store (paths made relative)."""
        detail = detail.replace(self.recorder.root + os.sep, "")
        self.recorder.mark(Note(detail))
        self.raised.append(Raised(self.recorder.state.fs_ops, WRITER, detail))

    @contextlib.contextmanager
    def background_failures(self) -> Iterator[None]:
        """While recording: the store's background threads failing (an uncaught
        exception, which ends the thread; an error it logs and carries on
        after, such as a failed compaction) is noted like a step's failure:
        nothing in the workload would see it otherwise."""
        driver = self

        class Logged(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                driver.note_raised(f"the store logged: {record.getMessage()}")

        def died(args: threading.ExceptHookArgs) -> None:
            name = args.thread.name if args.thread is not None else "?"
            if not name.startswith("blobcache-") or args.exc_value is None:
                previous(args)
                return
            self.note_raised(
                f"the store's thread {name} died: {_raised(args.exc_value, self.recorder.root)}"
            )

        logger = logging.getLogger("blobcache")
        handler = Logged(logging.ERROR)
        previous = threading.excepthook
        logger.addHandler(handler)
        threading.excepthook = died
        try:
            yield
        finally:
            threading.excepthook = previous
            logger.removeHandler(handler)

    @property
    def cache(self) -> BlobCache:
        if getattr(self._via, "second", False) and self._second is not None:
            return self._second
        if self._cache is None:
            raise RuntimeError("the workload used the cache while it was closed")
        return self._cache

    @property
    def inline_limit(self) -> int:
        return int(self.options.get("inline_limit", 256 << 10))

    def _step(self) -> bool:
        """Enter a step; False if it ran in a killed process and is skipped here."""
        with self._count_lock:
            index = self.steps
            self.steps += 1
            self.recorder.steps_started = self.steps
        if index < self.resume_at:
            return False
        if self._cache is None:
            self.open()
        return True

    def _take_op(self) -> int:
        with self._count_lock:
            self._ops += 1
            return self._ops - 1

    def parallel(self, *runs: Callable[[], None]) -> None:
        """Run ``runs`` in threads at once (puts share the log's group commit).
        Each should own its keys: the ledger orders a key's operations by their
        begin, which threads racing on one key would not respect."""
        errors: list[BaseException] = []

        def run(fn: Callable[[], None]) -> None:
            try:
                fn()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(fn,)) for fn in runs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]

    def open(self) -> None:
        self.recorder.mark(Note("open"))
        self._cache = BlobCache(self.store, **self.options)

    def finish(self) -> None:
        """Close the store at the end of the workload (opening it first if every
        step ran in a killed process: recovery is what is left to record), once a
        suspended ``blobcache gc`` has run to its end."""
        if self._janitor is not None:
            self.settle()
            self._janitor.finish(": the workload ends")
        if self._cache is None:
            self.open()
        self.close()

    def put(
        self,
        key: Key,
        value: int | bytes,
        via: Literal["put", "file", "stream"] = "put",
        ttl: float | None = None,
    ) -> None:
        """Put ``value`` (or a value of that many bytes) with ``put``, with
        ``put_file`` from a file outside the store (the kernel copies it), or with
        ``put_stream`` as chunks of an iterable; with ``ttl``, one that expires
        (long after the checks: what is tested is its record's framing)."""
        op = self._take_op()
        data = value if isinstance(value, bytes) else make_value(key, op, value)
        if not self._step():
            return
        self.recorder.mark(Begin(op, key, data))
        with self._beside_gc(f"the writer's put of {key!r} (op {op})"):
            if via == "put":
                self.cache.put(key, data, ttl=ttl)
            elif via == "stream":
                chunks = (data[i : i + 1000] for i in range(0, len(data), 1000))
                self.cache.put_stream(key, chunks, ttl=ttl)
            else:
                sources = os.path.join(os.path.dirname(self.store), "sources")
                os.makedirs(sources, exist_ok=True)
                source = os.path.join(sources, str(op))
                with open(source, "wb") as f:
                    f.write(data)
                self.cache.put_file(key, source, ttl=ttl)
            self.recorder.mark(Ack(op))

    def batch(self, items: Sequence[tuple[Key, int | None]]) -> None:
        """Put (a value of that many bytes) or delete (None) each key, as one batch."""
        ops = [self._take_op() for _ in items]
        values = [
            None if size is None else make_value(key, op, size)
            for op, (key, size) in zip(ops, items, strict=True)
        ]
        if not self._step():
            return
        self.recorder.mark(Together(tuple(ops)))
        for op, (key, _size), value in zip(ops, items, values, strict=True):
            self.recorder.mark(Begin(op, key, value))
        with self._beside_gc(f"the writer's batch (ops {ops[0]}-{ops[-1]})"):
            with self.cache.batch() as b:
                for (key, _size), value in zip(items, values, strict=True):
                    if value is None:
                        b.delete(key)
                    else:
                        b.put(key, value)
            for op in ops:
                self.recorder.mark(Ack(op))

    def typed(self, key: Key, size: int) -> None:
        """``put_object`` of a uint8 array of ``size`` bytes: a .npy value, its codec
        in its record (a b- file when large); the checker reads it back by codec."""
        op = self._take_op()
        array = np.frombuffer(make_value(key, op, size), dtype=np.uint8)
        data = b"".join(_codecs.encode(array).parts)
        if not self._step():
            return
        self.recorder.mark(Begin(op, key, data))
        with self._beside_gc(f"the writer's put_object of {key!r} (op {op})"):
            self.cache.put_object(key, array)
            self.recorder.mark(Ack(op))

    def typed_batch(self, items: Sequence[tuple[Key, int]]) -> None:
        """``put_object`` of each (key, size) as above, as one batch."""
        ops = [self._take_op() for _ in items]
        arrays = [
            np.frombuffer(make_value(key, op, size), dtype=np.uint8)
            for op, (key, size) in zip(ops, items, strict=True)
        ]
        if not self._step():
            return
        self.recorder.mark(Together(tuple(ops)))
        for op, (key, _size), array in zip(ops, items, arrays, strict=True):
            self.recorder.mark(Begin(op, key, b"".join(_codecs.encode(array).parts)))
        with self._beside_gc(f"the writer's typed batch (ops {ops[0]}-{ops[-1]})"):
            with self.cache.batch() as b:
                for (key, _size), array in zip(items, arrays, strict=True):
                    b.put_object(key, array)
            for op in ops:
                self.recorder.mark(Ack(op))

    # Op numbers a capped put reserves for the evictions it may make.
    EVICTIONS_PER_PUT: Final = 4

    def capped_put(self, key: Key, size: int, *, pin: bool = False) -> None:
        """Put under ``max_bytes``: the keys SIEVE will evict (asked beforehand, of
        a copy of its state) are deletes of the put's batch, all or none."""
        op = self._take_op()
        spare = [self._take_op() for _ in range(self.EVICTIONS_PER_PUT)]
        data = make_value(key, op, size)
        if not self._step():
            return
        cache = self.cache
        cap = cache._writes.cap
        assert cap is not None, "a capped put needs max_bytes"
        real = cap.sieve
        cap.sieve = copy.deepcopy(real)
        try:
            victims = cap.plan([(key, len(data))])
        finally:
            cap.sieve = real
        assert len(victims) <= len(spare), victims
        ops = [*spare[: len(victims)], op]
        before = set(cache)
        if victims:
            self.recorder.mark(Together(tuple(ops)))
        for victim_op, victim in zip(spare, victims, strict=False):
            self.recorder.mark(Begin(victim_op, victim, None))
        self.recorder.mark(Begin(op, key, data))
        with self._beside_gc(f"the writer's capped put of {key!r} (op {op})"):
            cache.put(key, data, pin=pin)
            evicted = before - set(cache) - {key}
            if evicted != set(victims):
                raise ModelError(f"the put evicted {sorted(evicted)}, not {sorted(victims)}")
            for done in ops:
                self.recorder.mark(Ack(done))

    def pin(self, key: Key, pinned: bool = True) -> None:
        """Pin (or unpin) a key: a record, no value changes."""
        if self._step():
            self.recorder.mark(Note(f"pin {key!r} {pinned}"))
            with self._beside_gc(f"the writer's pin of {key!r}"):
                if pinned:
                    self.cache.pin(key)
                else:
                    self.cache.unpin(key)

    def put_file(self, key: Key, size: int = 3000, *, stream: bool = False) -> None:
        """Put a value that gets a file of its own, from a file or a stream."""
        self.put(key, max(size, self.inline_limit), "stream" if stream else "file")

    def small(self, key: Key, size: int = 20) -> None:
        """Put a value that goes to the log."""
        assert size < self.inline_limit
        self.put(key, size)

    def large(self, key: Key, size: int = 3000) -> None:
        """Put a value that gets a file of its own."""
        self.put(key, max(size, self.inline_limit))

    def delete(self, key: Key) -> None:
        op = self._take_op()
        if not self._step():
            return
        self.recorder.mark(Begin(op, key, None))
        with self._beside_gc(f"the writer's delete of {key!r} (op {op})"):
            self.cache.delete(key)
            self.recorder.mark(Ack(op))

    def sync(self) -> None:
        if self._step():
            self.cache.sync()
            self.recorder.mark(Synced("sync"))

    def gc(self) -> None:
        if self._step():
            self.recorder.mark(Note("gc"))
            with self._beside_gc("the writer's gc()"):
                self.cache.gc()
                self.recorder.mark(Note("gc returned"))

    def collect(self) -> None:
        """``blobcache gc`` between two operations of the writer."""
        if self._step():
            self.settle()
            self.janitor.run()

    def collect_suspended(self, at: str, nth: int = 1) -> None:
        """Start ``blobcache gc`` and suspend it right after its ``nth`` call of kind
        ``at`` (``INTERRUPTS``), or let it end if it makes fewer. The writer's next
        steps run while it waits; ``finish_collect`` resumes it (so does the
        writer needing a flock it holds, another ``collect``, or the end)."""
        if at not in INTERRUPTS:
            raise ValueError(f"no interrupt point {at!r}: one of {sorted(INTERRUPTS)}")
        if self._step():
            self.settle()
            self.janitor.run(pause=(at, nth))

    def finish_collect(self) -> None:
        if self._step() and self._janitor is not None:
            self.settle()
            self._janitor.finish()

    @contextlib.contextmanager
    def collect_during(
        self,
        at: str,
        nth: int = 1,
        *,
        strict: bool = True,
        pause: tuple[str, int] | None = None,
    ) -> Iterator[None]:
        """Run ``blobcache gc`` in the middle of the writer's steps inside the
        block: right after the writer's ``nth`` call of kind ``at``
        (``INTERRUPTS``); with ``pause``, gc is suspended there in turn (as in
        ``collect_suspended``) and the writer's call goes on. If the block made
        fewer: with ``strict`` that is an error of the workload (it no longer
        tests what it says); else, and after a process crash (an offline gc may
        have left the writer less to do), gc runs after the block."""
        what, matches = INTERRUPTS[at]
        seen = 0
        fired = False
        # The workload's own thread: not a background one of the store's, whose
        # calls come when the scheduler says.
        mine = threading.get_ident()

        def hook(op: FsOp) -> None:
            nonlocal seen, fired
            if fired or threading.get_ident() != mine or op.by != WRITER or not matches(op):
                return
            seen += 1
            if seen == nth:
                fired = True
                self.janitor.run(pause=pause, why=f" {what} ({describe_op(op)})")

        first = self.steps
        self.recorder.hooks.append(hook)
        try:
            yield
        finally:
            self.recorder.hooks.remove(hook)
        ran = self.steps > max(first, self.resume_at)  # not all skipped (a killed process ran them)
        if ran and not fired:
            if strict and not self.resume_at:
                raise ModelError(f"collect_during({at!r}, {nth}): the writer made no such call")
            self.janitor.run(why=f" after the step: it made no call {what}")

    @contextlib.contextmanager
    def second(self) -> Iterator[None]:
        """Run this thread's enclosed steps through a second writer's handle on the
        same store, opened at its first use: another process's, as far as the
        store can tell (its own flocks, index and follower; only the trace is
        shared). Its acknowledgements count as the first's do."""
        if self._cache is None:
            self.open()
        with self._count_lock:
            if self._second is None:
                self.recorder.mark(Note("open (second writer)"))
                self._second = BlobCache(self.store, **self.options)
        self._via.second = True
        try:
            yield
        finally:
            self._via.second = False

    def close(self) -> None:
        if self._second is not None:
            self.recorder.mark(Note("close (second writer)"))
            self._second.close()
            self._second = None
        self.recorder.mark(Note("close"))
        self.cache.close()
        self._cache = None
        self.recorder.mark(Synced("close"))

    def reopen(self) -> None:
        if self._step():
            self.close()
            self.open()

    def settle(self, timeout: float = 10.0) -> None:
        """Wait until background compaction is idle, so the recording depends on
        the scheduler as little as it can. (Reads two private attributes of the
        cache; if they are gone, it only sleeps a little.)"""
        if self._cache is None:
            return
        wanted = getattr(self._cache, "_compact_wanted", None)
        lock = getattr(self._cache, "_compact_lock", None)
        if not isinstance(wanted, threading.Event) or lock is None:
            time.sleep(0.01)
            return
        deadline = time.monotonic() + timeout
        quiet = 0
        while quiet < 2 and time.monotonic() < deadline:
            busy = wanted.is_set() or lock.locked()
            quiet = 0 if busy else quiet + 1
            time.sleep(0.0005)


def _codec_agrees(cache: BlobCache, key: Key, value: bytes) -> bool:
    """Whether ``key``'s codec is the one its bytes were put with: npy for the
    values of ``Driver.typed`` (the only ones starting with numpy's magic), raw
    for every other."""
    found = cache._typed_get(key)
    if found is None:
        return False
    if not value.startswith(b"\x93NUMPY"):
        return found[1] == _format.CODEC_RAW
    if found[1] != _format.CODEC_NPY:
        return False
    return bytes(cache.get_array(key).data) == value[len(value) - cache.get_array(key).nbytes :]


def make_value(key: Key, op: int, size: int) -> bytes:
    """``size`` bytes that say which key and operation wrote them."""
    stamp = f"<{key!r}#{op}:{size}>".encode()
    return (stamp * (size // len(stamp) + 1))[:size]


@dataclass(frozen=True)
class Workload:
    """A named sequence of operations on a store opened with ``options``."""

    name: str
    options: Mapping[str, Any]
    steps: Callable[[Driver], None]
    about: str = ""
    killable: bool = True  # its steps replay in one order (no threads): see ``Driver``
    beside_gc: bool = False  # killed: ``blobcache gc`` runs before the next process opens

    @property
    def durability(self) -> str:
        return str(self.options.get("durability", "fsync"))


@dataclass(frozen=True)
class Recording:
    """A workload's trace. With ``killed_at``, the process running it was killed
    after that many file-system operations and a new one carried on (crash
    points before it are those of the plain recording)."""

    workload: Workload
    trace: list[Event]
    omitted: int = 0
    killed_at: int | None = None
    raised: tuple[Raised, ...] = ()  # a party's call that failed beside the other

    @property
    def name(self) -> str:
        if self.killed_at is None:
            return self.workload.name
        return f"{self.workload.name}, killed after op {self.killed_at}"

    @property
    def fs_ops(self) -> int:
        return sum(1 for e in self.trace if not isinstance(e, MARKERS))


def record(
    workload: Workload, scratch: str, *, omit: Omit | None = None, kill_after: int | None = None
) -> Recording:
    """Run ``workload`` in an empty directory under ``scratch`` with every
    durability call recorded; return the trace.

    With ``kill_after``, the workload first runs in a forked child that dies
    (``os._exit``, as abrupt as SIGKILL) right after that many file-system
    operations, leaving the kernel's state of the files (crash model: process
    crash). This process then opens the store and runs the rest of the
    workload, recording on: a power cut later may lose what neither process
    made durable. For a ``beside_gc`` workload, ``blobcache gc`` runs first,
    on the store the dead writer left (it then finds no writer and collects
    offline, compaction included).
    """
    root = tempfile.mkdtemp(prefix="rec-", dir=scratch)
    store = os.path.join(root, STORE_NAME)
    try:
        if kill_after is None:
            recorder = Recorder(root, omit=omit)
            driver = Driver(recorder, store, workload.options)
            _run(workload, driver, recorder, first=True)
            return Recording(
                workload, list(recorder.trace), recorder.omitted, raised=tuple(driver.raised)
            )
        killed = _run_until_killed(workload, root, store, omit, kill_after)
        if killed is None:  # the workload ended first: nothing to carry on
            return record(workload, scratch, omit=omit)
        recorder = Recorder(root, omit=omit, resume=killed.state)
        driver = Driver(recorder, store, workload.options, resume_at=killed.steps_started)
        _run(workload, driver, recorder, first=False)
        note = Note(f"the process is killed (SIGKILL) after op {kill_after}; a new one opens")
        trace = [*killed.trace, note, *recorder.trace]
        errors = (*killed.raised, *driver.raised)
        return Recording(workload, trace, killed.omitted + recorder.omitted, kill_after, errors)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _run(workload: Workload, driver: Driver, recorder: Recorder, *, first: bool) -> None:
    with recorder, driver.background_failures():
        try:
            if first:
                driver.open()
            elif workload.beside_gc:
                driver.janitor.run(why=" on what the killed writer left")
            workload.steps(driver)
        finally:
            if driver._cache is not None or not first:
                driver.finish()
    if recorder.errors:
        raise ModelError("; ".join(recorder.errors))


@dataclass
class _Killed:
    """What a killed child recorded, sent back to the parent."""

    trace: list[Event]
    state: RecorderState
    steps_started: int
    omitted: int
    raised: list[Raised]


def _run_until_killed(
    workload: Workload, root: str, store: str, omit: Omit | None, kill_after: int
) -> _Killed | None:
    """Run ``workload`` in a forked child killed after ``kill_after`` operations;
    return what it recorded (None if it finished first)."""
    dump = os.path.join(os.path.dirname(root), f"killed-{os.path.basename(root)}.pickle")
    drivers: list[Driver] = []  # the child's, once made

    def save(recorder: Recorder) -> None:
        errors = drivers[0].raised if drivers else []
        with open(dump, "wb") as f:
            pickle.dump(
                _Killed(
                    recorder.trace,
                    recorder.state,
                    recorder.steps_started,
                    recorder.omitted,
                    errors,
                ),
                f,
            )

    pid = os.fork()
    if pid == 0:  # the child: never returns into the caller (pytest, say)
        code = 3
        try:
            recorder = Recorder(root, omit=omit, kill_after=kill_after, on_kill=save)
            drivers.append(Driver(recorder, store, workload.options))
            _run(workload, drivers[0], recorder, first=True)
            code = 2  # finished before the kill point
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    try:
        if code == 2:
            return None
        if code != 0:
            raise ModelError(f"the killed child failed on its own (exit {code}): see its stderr")
        with open(dump, "rb") as f:
            killed = pickle.load(f)
        assert isinstance(killed, _Killed)
        return killed
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(dump)


def kill_points(recording: Recording, count: int) -> list[int]:
    """Where to kill a process running the workload: ``count`` crash points, half
    right after an acknowledgement or a sync (something is owed and, with "os",
    not yet durable), half spread evenly over the trace (mid-put, mid-gc)."""
    acked: list[int] = []
    ops = 0
    for e in recording.trace:
        if isinstance(e, (Ack, Synced)):
            if ops and (not acked or acked[-1] != ops):
                acked.append(ops)
        elif not isinstance(e, MARKERS):
            ops += 1
    spread = list(range(1, ops))
    chosen: list[int] = []
    for pool, want in ((acked, (count + 1) // 2), (spread, count)):
        if not pool:
            continue
        step = max(1, len(pool) // max(1, want))
        for point in pool[step // 2 :: step]:
            if len(chosen) < count and point not in chosen:
                chosen.append(point)
    return sorted(chosen)


# --- Exploring -------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """How hard to look. ``max_states``: per crash point, when the product of the
    choices is above ``exhaustive``; ``points``: only these crash points (None:
    all)."""

    max_states: int = 24
    exhaustive: int = 64
    seed: int = 0
    deep_probe: bool = False
    points: frozenset[int] | None = None
    max_failures: int = 10
    scratch: str | None = None
    known_bugs: tuple[KnownBug, ...] = ()
    jobs: int = 1
    """Processes that open and check the states (``check_jobs``): 1, this one;
    more, worker processes that share each recording's states. The states
    checked, their order and the report are the same either way."""


@dataclass(frozen=True)
class KnownBug:
    """A store bug already reported: failures it explains are counted apart, so a
    run still fails on anything else. Remove it once the bug is fixed (the
    strict-xfail test reproducing it then starts to pass, and fails the suite)."""

    name: str
    kind: str  # the failure kind it produces
    durability: str | None = None  # the durability level it needs (None: either)
    killed: bool = False  # only after a process crash (``Recording.killed_at``)
    detail: str = ""  # a regular expression found in the failure's detail
    state: str = ""  # a regular expression found in the crash state's description

    def explains(self, recording: Recording, failure: Failure) -> bool:
        return (
            self.durability in (None, recording.workload.durability)
            and (recording.killed_at is not None or not self.killed)
            and failure.kind == self.kind
            and re.search(self.detail, failure.detail) is not None
            and re.search(self.state, "\n".join(failure.choices), re.MULTILINE) is not None
        )


@dataclass(frozen=True)
class Failure:
    """One crash state the store mishandled, with what a human needs to replay it."""

    workload: str
    point: int  # crash after this many file-system operations of the trace
    kind: str  # open-failed | lost | unexpected-value | unknown-key | read-failed | gc-changed
    # | probe-failed | gc-raised | writer-raised (one party failed beside the other: no
    # crash state)
    detail: str
    last_op: str
    next_op: str
    choices: tuple[str, ...]
    context: tuple[str, ...]
    replay: str = ""  # the sweep command that checks this crash point again

    def __str__(self) -> str:
        lines = [
            f"[{self.workload}] crash point {self.point}: {self.kind}: {self.detail}",
            f"  last op before the crash: {self.last_op}",
            f"  next op (not done): {self.next_op}",
            "  crash state, per file or directory with unsynced changes (the rest: as fsynced):",
            *(f"    {c}" for c in self.choices),
            "  trace before the crash:",
            *(f"    {c}" for c in self.context),
        ]
        if self.replay:
            lines.append(f"  replay: {self.replay}")
        return "\n".join(lines)


@dataclass
class Report:
    workload: str
    fs_ops: int = 0
    crash_points: int = 0
    states_built: int = 0
    states_checked: int = 0  # distinct (state, expectation) pairs opened and checked
    failures: list[Failure] = field(default_factory=list)
    known: dict[str, int] = field(default_factory=dict)  # known bug -> failures it explains
    omitted: int = 0  # sync calls skipped on purpose (``omit``)
    tolerated: int = 0  # see ``Checker.tolerated``
    seconds: float = 0.0

    def add(self, other: Report) -> None:
        for name, count in other.known.items():
            self.known[name] = self.known.get(name, 0) + count
        self.fs_ops += other.fs_ops
        self.omitted += other.omitted
        self.tolerated += other.tolerated
        self.crash_points += other.crash_points
        self.states_built += other.states_built
        self.states_checked += other.states_checked
        self.failures.extend(other.failures)
        self.seconds += other.seconds

    def summary(self) -> str:
        return (
            f"{self.workload}: {self.fs_ops} recorded ops, {self.crash_points} crash points, "
            f"{self.states_checked} distinct crash states checked ({self.states_built} built), "
            f"{len(self.failures)} failures, {self.seconds:.1f} s"
            + (
                f"; {self.tolerated} gets raised CorruptionError, not absent (documented)"
                if self.tolerated
                else ""
            )
            + "".join(f"; known bug {n!r} seen {c} times" for n, c in sorted(self.known.items()))
        )


def scratch_dir() -> str:
    """Where to build states: $CRASHSIM_TMPDIR, else /dev/shm (a tmpfs, where the
    store's own fsyncs cost nothing), else the system temp directory."""
    chosen = os.environ.get("CRASHSIM_TMPDIR")
    if chosen:
        return chosen
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        return "/dev/shm"
    return tempfile.gettempdir()


def explore(
    workload: Workload,
    config: Config = Config(),
    *,
    omit: Omit | None = None,
    kill_after: int | None = None,
) -> Report:
    """Record ``workload`` (killing its process after ``kill_after`` operations, if
    given), then build and check the crash states of every crash point."""
    started = time.monotonic()
    base = tempfile.mkdtemp(prefix="crashsim-", dir=config.scratch or scratch_dir())
    try:
        recording = record(workload, base, omit=omit, kill_after=kill_after)
        report = check_recording(recording, config, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    report.seconds = time.monotonic() - started
    return report


def explore_with_kills(
    workload: Workload, config: Config, kills: int, *, omit: Omit | None = None
) -> list[Report]:
    """Explore ``workload`` (one report), then, if it is killable, the same
    workload with its process killed at ``kills`` points (one report each)."""
    base = tempfile.mkdtemp(prefix="crashsim-", dir=config.scratch or scratch_dir())
    reports: list[Report] = []
    try:
        started = time.monotonic()
        recording = record(workload, base, omit=omit)
        reports.append(check_recording(recording, config, base))
        reports[-1].seconds = time.monotonic() - started
        points = kill_points(recording, kills) if workload.killable else []
        for kill_after in points:
            started = time.monotonic()
            killed = record(workload, base, omit=omit, kill_after=kill_after)
            reports.append(check_recording(killed, config, base))
            reports[-1].seconds = time.monotonic() - started
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return reports


def check_recording(recording: Recording, config: Config, base: str) -> Report:
    """Build and check the crash states of ``recording`` (with ``killed_at``: only
    the crash points from the kill on) in directories under ``base``."""
    workload = recording.workload
    report = Report(recording.name, fs_ops=recording.fs_ops, omitted=recording.omitted)
    model = FsModel()
    ledger = Ledger(workload.durability)
    every_key = sorted({e.key for e in recording.trace if isinstance(e, Begin)}, key=repr)
    fs_trace = [e for e in recording.trace if not isinstance(e, MARKERS)]
    first = recording.killed_at or 0
    seen: set[bytes] = set()
    point = 0
    position = 0  # index in the full trace (markers too) just after ``point`` ops
    written: dict[Key, set[bytes]] = {}
    for e in recording.trace:
        if isinstance(e, Begin) and e.value is not None:
            written.setdefault(e.key, set()).add(e.value)
    checker = Checker(workload, base, config.deep_probe, written)

    def add(failure: Failure) -> None:
        failure = replace(failure, replay=_replay(recording, config, failure.point))
        bug = _known(config, recording, failure)
        if bug is None:
            report.failures.append(failure)
        else:
            report.known[bug] = report.known.get(bug, 0) + 1

    def judge(at: _StateAt, problems: list[tuple[str, str]], tolerated: int, now: FsModel) -> bool:
        """Count one checked state (``now``: the model at its crash point); True
        once there are ``max_failures`` failures."""
        report.states_checked += 1
        report.tolerated += tolerated
        for kind, detail in problems:
            add(_failure(recording, fs_trace, now, at.point, at.position, at.choice, kind, detail))
        if len(report.failures) < config.max_failures:
            return False
        # (With worker processes, more may have been built since: not counted.)
        report.crash_points, report.states_built = at.crash_points, at.built
        return True

    pooled = _PooledChecks(config.jobs, checker, fs_trace, judge) if config.jobs > 1 else None
    try:
        while True:
            # Markers right after an operation happened before the next one: an ack
            # logged here was given after everything up to this point.
            while position < len(recording.trace) and isinstance(
                recording.trace[position], MARKERS
            ):
                marker = recording.trace[position]
                assert isinstance(marker, MARKERS)
                ledger.note(marker)
                position += 1
            if point >= first and (config.points is None or point in config.points):
                report.crash_points += 1
                raised_here = [r for r in recording.raised if r.point == point]
                if raised_here and pooled is not None and pooled.drain():
                    return report  # (the failures of the states before come first)
                for raised in raised_here:  # no power cut needed: the live store failed
                    failure = _failure(recording, fs_trace, model, point, position, {}, "", "")
                    add(replace(failure, kind=raised.kind, detail=raised.detail, choices=NO_CRASH))
                allowed = ledger.allowed(every_key)
                for choice in states_at(model, config, recording.name, point):
                    report.states_built += 1
                    dirs, files = model.build(choice)
                    fingerprint = _fingerprint(dirs, files, allowed)
                    if fingerprint in seen:
                        continue
                    seen.add(fingerprint)
                    at = _StateAt(point, position, choice, report.crash_points, report.states_built)
                    batches = ledger.batches_begun()
                    if pooled is not None:
                        if pooled.submit(at, (dirs, files, allowed, batches)):
                            return report
                        continue
                    before = checker.tolerated
                    problems = checker.check(dirs, files, allowed, batches)
                    if judge(at, problems, checker.tolerated - before, model):
                        return report
            if point == len(fs_trace):
                if pooled is not None:
                    pooled.drain()
                return report
            op = recording.trace[position]
            assert not isinstance(op, MARKERS)
            model.apply(op)
            point += 1
            position += 1
    finally:
        if pooled is not None:
            pooled.stop()


NO_CRASH: Final = ("(no power cut: this failed on the live store, one party beside the other)",)


def _known(config: Config, recording: Recording, failure: Failure) -> str | None:
    for bug in config.known_bugs:
        if bug.explains(recording, failure):
            return bug.name
    return None


# --- Checking states in worker processes -------------------------------------------------


def check_jobs() -> int:
    """How many processes to check crash states in: $CRASHSIM_JOBS, else the
    CPUs this process may run on, at most 4 (1: check in this process)."""
    chosen = os.environ.get("CRASHSIM_JOBS")
    if chosen:
        return max(1, int(chosen))
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 4))


@dataclass(frozen=True)
class _StateAt:
    """Where a state was built: its crash point, the choices that made it, and
    how many crash points and states the report counted then."""

    point: int
    position: int
    choice: Mapping[int, Choice]
    crash_points: int  # ``Report.crash_points`` once it was built
    built: int  # ``Report.states_built`` once it was


_State: TypeAlias = tuple[
    list[str], dict[str, bytes], Mapping[Key, tuple[bytes | None, ...]], Batches
]
_CheckerSpec: TypeAlias = tuple[str, dict[str, Any], str, bool, dict[Key, set[bytes]]]
_POOLS: dict[int, concurrent.futures.ProcessPoolExecutor] = {}


def _pool(jobs: int) -> concurrent.futures.ProcessPoolExecutor:
    """Worker processes, kept for the rest of this process's life. Spawned, not
    forked: a worker holds none of this process's threads, locks or patches of
    blobcache; only a state's files and what each key is owed go to it."""
    pool = _POOLS.get(jobs)
    if pool is None:
        context = multiprocessing.get_context("spawn")
        pool = _POOLS[jobs] = concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context)
    return pool


def _no_steps(d: Driver) -> None:
    """A worker's stand-in for a workload's steps: it only checks states."""


def _check_in_worker(
    spec: _CheckerSpec, states: list[_State]
) -> list[tuple[list[tuple[str, str]], int]]:
    """In a worker: check ``states`` as ``Checker.check`` does, each with how many
    gets it tolerated (``Checker.tolerated``)."""
    name, options, base, deep, written = spec
    checker = Checker(Workload(name, options, _no_steps), base, deep, written)
    out = []
    for dirs, files, allowed, batches in states:
        before = checker.tolerated
        problems = checker.check(dirs, files, allowed, batches)
        out.append((problems, checker.tolerated - before))
    return out


class _PooledChecks:
    """The states of one recording, checked in worker processes a few at a time
    and judged here in the order they were built, as ``check_recording`` judges
    them in this process: the same states are counted and the same failures
    reported, then it stops at the same one. A failure is described with the
    model at its own crash point, rebuilt from the trace."""

    CHUNK: Final = 4  # states per task
    AHEAD: Final = 3  # tasks under way per worker

    def __init__(
        self,
        jobs: int,
        checker: Checker,
        fs_trace: Sequence[Event],
        judge: Callable[[_StateAt, list[tuple[str, str]], int, FsModel], bool],
    ) -> None:
        self._jobs = jobs
        self._pool = _pool(jobs)
        self._spec: _CheckerSpec = (
            checker.workload.name,
            dict(checker.options),
            checker.base,
            checker.deep,
            dict(checker.written),
        )
        self._fs_trace = fs_trace
        self._judge = judge
        self._limit = jobs * self.AHEAD
        self._chunk: list[tuple[_StateAt, _State]] = []
        self._under_way: collections.deque[
            tuple[list[_StateAt], concurrent.futures.Future[Any]]
        ] = collections.deque()
        self._done = False

    def submit(self, at: _StateAt, state: _State) -> bool:
        """Queue one state; True once judging has stopped (``max_failures``)."""
        self._chunk.append((at, state))
        if len(self._chunk) >= self.CHUNK:
            self._send()
            while len(self._under_way) > self._limit and not self._done:
                self._judge_oldest()
        return self._done

    def drain(self) -> bool:
        """Check and judge every state queued; True once judging has stopped."""
        if self._chunk:
            self._send()
        while self._under_way and not self._done:
            self._judge_oldest()
        return self._done

    def stop(self) -> None:
        """Wait for every task still under way (they write under the recording's
        base directory, which goes next); their results are not judged."""
        pending = [future for _ats, future in self._under_way]
        for future in pending:
            future.cancel()
        concurrent.futures.wait(pending)
        self._under_way.clear()

    def _send(self) -> None:
        ats = [at for at, _state in self._chunk]
        states = [state for _at, state in self._chunk]
        self._chunk = []
        self._under_way.append((ats, self._pool.submit(_check_in_worker, self._spec, states)))

    def _judge_oldest(self) -> None:
        ats, future = self._under_way.popleft()
        try:
            results = future.result()
        except concurrent.futures.process.BrokenProcessPool:
            _POOLS.pop(self._jobs, None)  # a worker died: the next recording starts anew
            raise
        for at, (problems, tolerated) in zip(ats, results, strict=True):
            now = self._model_at(at.point) if problems else FsModel()
            if self._judge(at, problems, tolerated, now):
                self._done = True
                return

    def _model_at(self, point: int) -> FsModel:
        model = FsModel()
        for op in self._fs_trace[:point]:
            assert not isinstance(op, MARKERS)
            model.apply(op)
        return model


def states_at(model: FsModel, config: Config, name: str, point: int) -> Iterator[dict[int, Choice]]:
    """The crash states of one crash point, as choices per unsynced node."""
    units = model.units()
    durable: dict[int, Choice] = {}
    current = model.current_choice(units)
    total = 1
    for _node, choices in units:
        total *= len(choices)
        if total > config.exhaustive:
            break
    if total <= config.exhaustive:
        for combo in itertools.product(*(choices for _node, choices in units)):
            yield {node: c for (node, _choices), c in zip(units, combo, strict=True)}
        return
    yield durable
    yield current
    rng = random.Random(f"{config.seed}:{name}:{point}")
    # One node away from "all durable" or "all current": the states that say
    # which single missing fsync matters. Then random mixes.
    singles: list[dict[int, Choice]] = []
    for node, choices in units:
        for c in choices:
            singles.append({**durable, node: c})
            singles.append({**current, node: c})
    pool = rng.sample(singles, min(len(singles), (config.max_states - 2) // 2))
    while len(pool) < config.max_states - 2:
        pool.append({node: _random_choice(rng, model, node, choices) for node, choices in units})
    yield from pool


def _random_choice(rng: random.Random, model: FsModel, node: int, choices: list[Choice]) -> Choice:
    if node in model.dirs:
        pending = len(model.dirs[node].pending)
        return frozenset(i for i in range(pending) if rng.random() < 0.5)
    return rng.choice(choices)


def _fingerprint(
    dirs: list[str], files: dict[str, bytes], allowed: Mapping[Key, tuple[bytes | None, ...]]
) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for d in dirs:
        h.update(b"d\0" + d.encode() + b"\0")
    for path in sorted(files):
        h.update(b"f\0" + path.encode() + b"\0")
        h.update(hashlib.blake2b(files[path], digest_size=16).digest())
    for key in sorted(allowed, key=repr):
        h.update(repr(key).encode() + b"\0")
        for v in allowed[key]:
            h.update(b"-" if v is None else hashlib.blake2b(v, digest_size=16).digest())
    return h.digest()


def _failure(
    recording: Recording,
    fs_trace: Sequence[Event],
    model: FsModel,
    point: int,
    position: int,
    choice: Mapping[int, Choice],
    kind: str,
    detail: str,
) -> Failure:
    described = []
    for node, _choices in model.units():  # every node with something unsynced
        durable: Choice = frozenset() if node in model.dirs else FileChoice(0)
        picked = choice.get(node, durable)
        where = _where(recording.trace, node)
        described.append(f"{where or '.'}: {model.describe(node, picked)}")
    before = recording.trace[max(0, position - 12) : position]
    context = tuple(describe_op(e) for e in before)
    return Failure(
        workload=recording.name,
        point=point,
        kind=kind,
        detail=detail,
        last_op=describe_op(fs_trace[point - 1]) if point else "(none: before the first op)",
        next_op=describe_op(fs_trace[point]) if point < len(fs_trace) else "(none: the end)",
        choices=tuple(described) or ("(nothing unsynced: the state is what was fsynced)",),
        context=context,
    )


def _replay(recording: Recording, config: Config, point: int) -> str:
    killed = recording.killed_at is not None
    kill = f" --kill-after {recording.killed_at}" if killed else " --kills 0"
    if recording.omitted:
        kill += " --omit <the same omissions>"
    deep = "" if config.deep_probe else " --shallow"
    return (
        f"python tools/crash_sweep.py --workloads {recording.workload.name}{kill} "
        f"--points {point} --max-states {config.max_states} --exhaustive {config.exhaustive} "
        f"--seed {config.seed}{deep} --strict"
    )


def _where(trace: Sequence[Event], node: int) -> str:
    """The last path ``node`` had in the trace, for messages."""
    where = ""
    for e in trace:
        if isinstance(e, (Create, Mkdir)) and e.node == node:
            where = e.where
        elif isinstance(e, Rename) and e.node == node:
            where = os.path.join(os.path.dirname(e.where), e.new_name)
    return where


# --- Checking one state ----------------------------------------------------------------

PROBE_SMALL: Final = "crashsim-probe-small"
PROBE_LARGE: Final = "crashsim-probe-large"


class Checker:
    """Writes a crash state to disk and checks what the store makes of it."""

    def __init__(
        self, workload: Workload, base: str, deep: bool, written: Mapping[Key, set[bytes]]
    ) -> None:
        self.written = written  # every value each key was given in the recording
        self.tolerated = 0  # gets that raised CorruptionError for a key that may be absent
        self.workload = workload
        self.base = base
        self.deep = deep
        self.options = dict(workload.options)
        self.inline_limit = int(self.options.get("inline_limit", 256 << 10))

    def check(
        self,
        dirs: list[str],
        files: dict[str, bytes],
        allowed: Mapping[Key, tuple[bytes | None, ...]],
        batches: Batches = (),
    ) -> list[tuple[str, str]]:
        root = tempfile.mkdtemp(prefix="state-", dir=self.base)
        try:
            materialise(root, dirs, files)
            with _quiet_store_logger():
                return self._check_store(os.path.join(root, STORE_NAME), allowed, batches)
        finally:
            shutil.rmtree(root, ignore_errors=True)

    def _open(self, store: str) -> BlobCache:
        # Without a cap: a state above it shows as such (``over-cap``), not as the
        # evictions an open with the cap would make.
        return BlobCache(store, **{k: v for k, v in self.options.items() if k != "max_bytes"})

    def _check_store(
        self,
        store: str,
        allowed: Mapping[Key, tuple[bytes | None, ...]],
        batches: Batches = (),
    ) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        try:
            cache = self._open(store)
        except Exception as exc:
            return [("open-failed", f"BlobCache(store) raised {exc!r}")]
        found: dict[Key, bytes | None] = {}
        stage = "reading the keys"
        try:
            noted = [str(p) for p in cache.problems]
            for key, values in allowed.items():
                try:
                    got = cache.get(key)
                except CorruptionError as exc:
                    if None in values and self.workload.durability == "os":
                        # Documented (FORMAT.md, section 5): a version never synced
                        # may come back zero-filled, and with no intact older record
                        # the get raises. Tolerated only where the key may read as
                        # absent: loud instead of absent, never instead of a value.
                        self.tolerated += 1
                        continue
                    problems.append(("read-failed", f"get({key!r}) raised {exc!r}"))
                    continue
                except Exception as exc:
                    problems.append(("read-failed", f"get({key!r}) raised {exc!r}"))
                    continue
                value = None if got is None else bytes(got)
                found[key] = value
                if value is not None and not _codec_agrees(cache, key, value):
                    problems.append(("wrong-codec", f"{key!r}: {_show(value)} has another codec"))
                if value not in values:
                    # An older state of the key (a value it had, or absence) is a lost
                    # acknowledgement; bytes no operation gave it are something else.
                    older = value is None or value in self.written.get(key, ())
                    kind = "lost" if older else "unexpected-value"
                    problems.append(
                        (
                            kind,
                            f"{key!r} holds {_show(value)}; owed {_show(values[0])}"
                            + (f", or {', '.join(map(_show, values[1:]))}" if values[1:] else "")
                            + (f" (problems at open: {noted})" if noted else ""),
                        )
                    )
            problems += torn_batches(batches, allowed, found)
            cap = self.options.get("max_bytes")
            if cap is not None and cache.stats().live_bytes > cap:
                problems.append(
                    ("over-cap", f"{cache.stats().live_bytes:,} live bytes, max_bytes {cap:,}")
                )
            unknown = [k for k in list(cache) if k not in allowed]
            if unknown:
                problems.append(("unknown-key", f"keys never written appear: {unknown!r}"))
            if self.deep and not problems:
                stage = "gc()"
                problems += self._collect(cache, found)
            probes = self._probe_values(found)
            for key, value in probes.items():
                stage = f"put({key!r}, {len(value)} B)"
                cache.put(key, value)
        except Exception as exc:
            problems.append(("probe-failed", f"{stage} on the opened store raised {exc!r}"))
            probes = {}
        finally:
            with contextlib.suppress(Exception):
                cache.close()
        if problems:
            return problems
        return self._check_reopen(store, probes, found)

    def _collect(
        self, cache: BlobCache, found: Mapping[Key, bytes | None]
    ) -> list[tuple[str, str]]:
        """gc() on what recovery found (the janitor and compaction decide what is
        garbage in a state no writer left cleanly) must not change a value."""
        cache.gc()
        for key, value in found.items():
            got = cache.get(key)
            if (None if got is None else bytes(got)) != value:
                shown = _show(None if got is None else bytes(got))
                return [("gc-changed", f"gc() changed {key!r} from {_show(value)} to {shown}")]
        return []

    def _probe_values(self, found: Mapping[Key, bytes | None]) -> dict[Key, bytes]:
        """New values the opened store must accept: one small and one large under
        new keys, and (deep) a new value for every key of the workload, so a
        key whose directory a crash left half made is written to as well."""
        big = max(self.inline_limit, 100) + 37
        probes: dict[Key, bytes] = {
            PROBE_SMALL: make_value(PROBE_SMALL, 0, 11),
            PROBE_LARGE: make_value(PROBE_LARGE, 0, big),
        }
        if self.deep and self.inline_limit > 11:
            for i, key in enumerate(sorted(found, key=repr)):
                probes[key] = make_value(key, -1 - i, 11 if i % 2 else big)
        return probes

    def _check_reopen(
        self, store: str, probes: Mapping[Key, bytes], found: Mapping[Key, bytes | None]
    ) -> list[tuple[str, str]]:
        try:
            with self._open(store) as cache:
                expect = {**found, **probes}
                for key, value in expect.items():
                    got = cache.get(key)
                    if (None if got is None else bytes(got)) != value:
                        return [
                            (
                                "probe-failed",
                                f"after putting new values and reopening, {key!r} holds "
                                f"{_show(None if got is None else bytes(got))}, not {_show(value)}",
                            )
                        ]
        except Exception as exc:
            return [("probe-failed", f"reopening after new puts raised {exc!r}")]
        return []


def _show(value: bytes | None) -> str:
    if value is None:
        return "nothing"
    head = value[: value.find(b">") + 1] if value.startswith(b"<") else value[:16]
    return f"{len(value)} B {head.decode(errors='replace')!r}"


@contextlib.contextmanager
def _quiet_store_logger() -> Iterator[None]:
    """Crash states are full of files recovery reports; thousands of warnings
    would only bury a real failure. Restored afterwards."""
    logger = logging.getLogger("blobcache")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def materialise(root: str, dirs: Sequence[str], files: Mapping[str, bytes]) -> None:
    """Write a crash state under ``root``: its directories, then its files."""
    for d in dirs:  # sorted: a parent comes before its children
        os.mkdir(os.path.join(root, d))
    for path, data in files.items():
        fd = os.open(os.path.join(root, path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)


# --- Known bugs --------------------------------------------------------------------------
#
# When the explorer finds a store bug, it goes here (a ``KnownBug`` whose
# ``kind``/``detail``/``state`` match its failures) with a strict-xfail
# reproduction in tests/test_crash_states.py, so CI stays green and still fails
# on anything else; whoever fixes it removes both. None is open: the seven found
# before (fixed in 23867b4) and the three of the writer and `blobcache gc`
# racing (fixed for issue 12) have regression tests there.

KNOWN_BUGS: Final[tuple[KnownBug, ...]] = ()


# --- The workloads ---------------------------------------------------------------------
#
# Small on purpose: a value of a few KiB is "large" with inline_limit=64, so
# every file the store writes stays small and a crash state costs a few
# hundred microseconds to write out. sync_interval is an hour so the "os"
# background sync never fires: the recording then depends only on the
# workload (and, where compaction runs in the background, on ``settle``).

BASE: Final[Mapping[str, Any]] = {
    "inline_limit": 64,
    "segment_bytes": 16384,
    "sync_interval": 3600.0,
}
ROLLING: Final[Mapping[str, Any]] = {
    **BASE,
    "inline_limit": 1024,
    "segment_bytes": 4096,  # the smallest allowed (_options.py): 3-4 records of 900 B
}


def _small_puts(d: Driver) -> None:
    d.small("a")
    d.small("b", 40)
    d.small(b"a", 7)  # a bytes key: not the str key "a"
    d.small("a", 33)


def _large_puts(d: Driver) -> None:
    d.large("big", 3000)
    d.large("huge", 9000)  # crosses two page boundaries: tearable
    d.large(b"big", 100)


def _overwrites(d: Driver) -> None:
    d.small("s")
    d.small("s", 30)
    d.large("L", 3000)
    d.large("L", 5000)
    d.large("L", 200)


def _cross_limit(d: Driver) -> None:
    d.small("k")
    d.large("k", 3000)
    d.small("k", 10)
    d.large("k", 5000)
    d.gc()
    d.small("k", 12)
    d.gc()


def _deletes(d: Driver) -> None:
    d.small("s")
    d.large("L")
    d.delete("s")
    d.delete("L")
    d.gc()
    d.large("L", 2000)
    d.delete("L")
    d.small("s", 9)


def _rollover(d: Driver) -> None:
    for i in range(10):
        d.small(f"r{i % 6}", 900)
        d.settle()


def _compaction(d: Driver) -> None:
    for i in range(7):
        d.small(f"c{i % 2}", 900)
    d.delete("c0")
    d.large("c1", 2000)
    d.gc()
    d.small("c2", 900)
    d.gc()


def _batches(d: Driver) -> None:
    d.small("a")
    d.large("w", 3000)
    d.small("x")
    # Small and large values, a new key directory, a delete: all or none.
    d.batch([("a", 30), ("w", 5000), ("x", None), ("n", 9000)])
    d.batch([("a", 12), ("b", 20), ("w", 200)])  # w back to the log
    d.gc()  # compaction copies n's batch record forward, the janitor cleans w and x
    d.batch([("n", 4000), ("a", None)])
    d.small("a", 7)


_LONG_TTL: Final = 10.0**7  # seconds: never reached while a state is checked


def _expiry(d: Driver) -> None:
    d.put("s", 20, ttl=_LONG_TTL)  # to the log, with 8 bytes of expiry
    d.put("L", 3000, ttl=_LONG_TTL)  # a file, its expiry in its version record
    d.small("s", 30)  # no expiry now
    d.put("L", 4000, "stream", ttl=_LONG_TTL)
    d.gc()  # compaction copies L's version record forward: its expiry is only there
    d.put("s", 12, ttl=_LONG_TTL)
    d.gc()


def _evictions(d: Driver) -> None:
    # max_bytes 6000 (EVICTING): small and large values, a pin, evictions of both.
    d.capped_put("p", 900, pin=True)
    for i in range(4):
        d.capped_put(f"s{i}", 900)
    d.capped_put("L", 2500)  # evicts two small values
    d.capped_put("s0", 900)
    d.gc()  # the pin survives compaction
    d.capped_put("M", 3000)  # evicts L and more, never p
    d.pin("M")
    d.capped_put("s5", 900)


def _typed(d: Driver) -> None:
    # inline_limit 1024: a 100-element array (228 B with its header) in the log,
    # 3000 in a b- file; overwrites across codecs and layouts, a batch, gc.
    d.typed("t", 100)
    d.typed("T", 3000)
    d.small("t", 500)  # raw now: its codec ends
    d.typed("T", 200)  # from a file to the log
    d.typed_batch([("b1", 100), ("b2", 3000)])
    d.gc()  # compaction copies the puts and the b- record with their codecs
    d.typed("t", 3000)
    d.delete("b1")
    d.typed("b2", 100)


def _torn_batches(d: Driver) -> None:
    d.small("a", 900)
    d.small("c", 900)
    # Records of 900 B: the batch's write spans pages, which a power cut tears.
    d.batch([("a", 900), ("b", 900), ("c", None), ("d", 2000)])
    # Its first record ends before a page boundary, the next ones cross it.
    d.batch([("b", 200), ("c", 700), ("a", 900)])


def _background_compaction(d: Driver) -> None:
    for _ in range(10):
        d.small("hot", 900)  # each overwrite makes the sealed segments staler
        d.settle()
    d.small("cold", 500)
    d.settle()


def _janitor(d: Driver) -> None:
    d.large("j", 3000)
    d.large("j", 4000)
    d.large("gone", 2500)
    d.gc()
    d.delete("gone")
    d.large("j", 100)
    d.gc()


def _reopen(d: Driver) -> None:
    d.small("a")
    d.large("B", 3000)
    d.reopen()
    d.small("a", 30)
    d.delete("B")
    d.reopen()
    d.large("B", 2000)
    d.gc()


def _os_synced(d: Driver) -> None:
    d.small("a")
    d.large("B", 3000)
    d.sync()
    d.small("a", 30)
    d.large("B", 5000)
    d.delete("a")
    d.sync()
    d.large("C", 2000)
    d.gc()
    d.small("a", 12)


def _os_overwrite_unsynced(d: Driver) -> None:
    d.large("B", 3000)
    d.small("a")
    d.sync()
    d.large("B", 5000)  # owed: only the synced 3000 B
    d.small("a", 40)
    d.reopen()  # close syncs


def _os_rollover(d: Driver) -> None:
    for i in range(6):
        d.small(f"r{i % 4}", 900)
        if i == 2:
            d.sync()
        d.settle()
    d.gc()


def _put_file(d: Driver) -> None:
    d.put_file("F", 5000)  # a new key: the kernel copies the file
    d.put_file("F", 7000)
    d.put_file("S", 6000, stream=True)  # chunks, written as they come
    d.small("F")
    d.put_file("S", 3000)
    d.gc()


def _os_put_file(d: Driver) -> None:
    d.put_file("F", 5000)
    d.put_file("S", 4000, stream=True)
    d.sync()
    d.put_file("F", 7000)  # owed: only the synced 5000 B
    d.put_file("S", 3000, stream=True)
    d.reopen()  # close syncs


def _threads(d: Driver) -> None:
    def writer(name: str) -> Callable[[], None]:
        def run() -> None:
            for i in range(3):
                d.small(f"{name}-s", 10 + i)
                d.large(f"{name}-L", 1000 + 1000 * i)
            d.delete(f"{name}-s")

        return run

    d.parallel(writer("t0"), writer("t1"), writer("t2"))
    d.gc()


# Two writers: a second handle on the store (another process, to the store) puts,
# deletes and compacts between the first's steps, and at the same time in threads.


def _two_writers(d: Driver) -> None:
    d.small("a", 10)
    with d.second():
        d.small("a", 11)  # numbered after the first's: it wins everywhere
        d.large("L", 3000)
    d.large("L", 4000)
    d.small("b", 12)
    with d.second():
        d.delete("a")
        d.gc()  # the second compacts and collects while the first has the store open
    d.small("a", 13)
    d.gc()


def _two_writers_threads(d: Driver) -> None:
    def writer(name: str, *, second: bool) -> Callable[[], None]:
        def run() -> None:
            with d.second() if second else contextlib.nullcontext():
                for i in range(2):
                    d.small(f"{name}-s", 10 + i)
                    d.large(f"{name}-L", 1000 + 1000 * i)
                d.small("shared", 20 + i)  # one key, both writers: the higher number wins
                d.delete(f"{name}-s")

        return run

    d.parallel(writer("t0", second=False), writer("t1", second=True))
    d.gc()


# Beside `blobcache gc`: the same store collected by another lock holder between
# the writer's operations, in their middle, or suspended while the writer goes on.


def _gc_versions(d: Driver) -> None:
    d.large("L", 3000)
    d.large("L", 5000)
    d.collect()  # the 3000 B version goes, once the 5000 B one is durable
    with d.collect_during("renamed"):
        d.large("L", 4000)  # gc sees the new version before its directory is fsynced
    with d.collect_during("temp-synced"):
        d.large("L", 2000)  # gc finds a temp file the writer holds: not its to remove
    with d.collect_during("temp-created"):
        d.large("L", 2500)  # ...or not yet holds: the directory, held shared, keeps gc out
    d.collect_suspended("unlinked")  # suspended after removing the 5000 B version
    d.large("L", 6000)
    d.finish_collect()


def _gc_layouts(d: Driver) -> None:
    d.large("k", 3000)
    with d.collect_during("appended"):
        d.small("k", 10)  # gc beside an append under way: it reads what STATE says appended
    d.collect()  # k's live record is in the log: its directory goes
    with d.collect_during("key-file"):
        d.large("k", 5000)  # gc removes the directory the writer has just made
    d.small("k", 12)
    d.collect()  # k's directory goes again
    with d.collect_during("dir-synced", 4):
        d.large("k", 2500)  # gc after the new key file's directory fsync: the put holds it
    d.collect()
    d.small("k", 20)
    d.gc()


def _gc_deletes(d: Driver) -> None:
    d.large("gone", 3000)
    d.large("kept", 2500)
    d.small("s")
    d.delete("gone")
    d.delete("s")
    # gc unlinks gone's version, then, holding its directory, the key file: suspended.
    d.collect_suspended("unlinked", 2)
    d.large("gone", 2000)  # waits for gc's flock: gc removes the directory, the put makes it again
    d.delete("gone")
    d.collect_suspended("rmdir")  # gone's directory removed, its parent not fsynced yet
    d.large("gone", 1500)  # makes the directory again while gc is suspended
    d.finish_collect()  # gc's rmdir of the fan-out now fails: not empty
    with d.collect_during("appended"):
        d.delete("kept")
    d.gc()
    d.collect()


def _gc_compaction(d: Driver) -> None:
    for i in range(6):
        d.small(f"c{i % 2}", 900)  # segments of 4096 B: three sealed
        d.settle()
    d.large("c0", 2000)  # c0 moves to a file: its log records are stale
    d.small("c0", 900)  # and back: its directory is garbage
    # Suspended after fsyncing the first segment (the record that makes c0's
    # version garbage is in one of them), before it removes the version...
    d.collect_suspended("file-synced")
    d.gc()  # ...while the writer removes c0's directory and compacts the log
    d.finish_collect()
    d.large("c1", 3000)
    d.small("c1", 500)
    with d.collect_during("compacted"):
        d.gc()  # gc between the compacted segment's rename and its inputs' removal
    d.small("c1", 600)
    with d.collect_during("unlinked"):
        d.gc()
    d.reopen()
    d.collect()


def _os_gc(d: Driver) -> None:
    d.large("B", 3000)
    d.small("a")
    d.sync()
    d.large("B", 5000)  # not synced: gc makes it durable before removing the 3000 B one
    d.collect()
    d.small("B", 40)  # B to the log, not synced: gc syncs the log before removing B's directory
    d.collect()
    d.delete("a")
    d.large("C", 2000)
    d.collect()
    d.sync()
    d.large("C", 4000)
    d.collect_suspended("unlinked")
    d.reopen()  # close syncs; the new process's recovery runs beside the suspended gc
    d.finish_collect()


BESIDE_GC: Final = (
    Workload(
        "gc-versions",
        BASE,
        _gc_versions,
        "blobcache gc beside large overwrites: between, mid-put, suspended",
        beside_gc=True,
    ),
    Workload(
        "gc-layouts",
        BASE,
        _gc_layouts,
        "blobcache gc while a key moves between file and log and back",
        beside_gc=True,
    ),
    Workload(
        "gc-deletes",
        BASE,
        _gc_deletes,
        "blobcache gc removing deleted keys' directories while they are put again",
        beside_gc=True,
    ),
    Workload(
        "gc-compaction",
        {**ROLLING, "compact_ratio": 1.0},  # compaction by gc() only, when the workload says
        _gc_compaction,
        "blobcache gc around the writer's own gc and compaction",
        beside_gc=True,
    ),
    Workload(
        "os-gc",
        {**BASE, "durability": "os"},
        _os_gc,
        'durability="os": blobcache gc syncs what it supersedes with, then removes',
        beside_gc=True,
    ),
)

WORKLOADS: Final[dict[str, Workload]] = {
    w.name: w
    for w in [
        Workload("small-puts", BASE, _small_puts, "puts to the log, str and bytes keys"),
        Workload("large-puts", BASE, _large_puts, "new key directories and version files"),
        Workload("overwrites", BASE, _overwrites, "overwrites in the log and in files"),
        Workload("cross-limit", BASE, _cross_limit, "one key: small, large, small, large, gc"),
        Workload("deletes", BASE, _deletes, "deletes of small and large keys, gc, re-put"),
        Workload("rollover", ROLLING, _rollover, "segments sealed and started"),
        Workload("batches", BASE, _batches, "atomic batches of small and large values, gc"),
        Workload("expiry", BASE, _expiry, "puts with a ttl, small and large, and gc"),
        Workload(
            "evictions",
            {**BASE, "max_bytes": 6000},
            _evictions,
            "puts under max_bytes: each with its evict records, a pin",
        ),
        Workload(
            "typed",
            {**BASE, "inline_limit": 1024},
            _typed,
            "put_object of arrays, small and large, across codecs, a batch, gc",
        ),
        Workload(
            "torn-batches",
            {**ROLLING, "segment_bytes": 16384},
            _torn_batches,
            "batches whose write spans pages",
        ),
        Workload(
            "os-batches",
            {**BASE, "durability": "os"},
            _batches,
            'durability="os": atomic batches, gc',
        ),
        Workload("compaction", ROLLING, _compaction, "gc(): forced compaction of the log"),
        Workload(
            "background-compaction",
            {**ROLLING, "compact_ratio": 0.25},
            _background_compaction,
            "compaction by the background thread",
        ),
        Workload("janitor", BASE, _janitor, "janitor after large overwrites and deletes"),
        Workload("put-file", BASE, _put_file, "put_file (a kernel copy) and put_stream"),
        Workload(
            "os-put-file",
            {**BASE, "durability": "os"},
            _os_put_file,
            'durability="os": put_file and put_stream, synced and not',
        ),
        Workload(
            "threads",
            BASE,
            _threads,
            "three threads putting at once: group commit",
            killable=False,
        ),
        Workload("reopen", BASE, _reopen, "close and reopen mid-workload: recovery writes"),
        Workload("two-writers", ROLLING, _two_writers, "a second writer's handle between steps"),
        Workload(
            "two-writers-threads",
            BASE,
            _two_writers_threads,
            "two writers' handles putting at once, one key shared",
            killable=False,
        ),
        Workload(
            "os-two-writers",
            {**ROLLING, "durability": "os"},
            _two_writers,
            'durability="os": a second writer between steps',
        ),
        Workload(
            "os-synced", {**BASE, "durability": "os"}, _os_synced, 'durability="os" with sync()'
        ),
        Workload(
            "os-overwrite-unsynced",
            {**BASE, "durability": "os"},
            _os_overwrite_unsynced,
            'durability="os": unsynced overwrites of synced values',
        ),
        Workload(
            "os-rollover",
            {**ROLLING, "durability": "os"},
            _os_rollover,
            'durability="os": segments sealed between syncs',
        ),
        *BESIDE_GC,
    ]
}


def workload_by_name(name: str) -> Workload:
    """A workload of the catalogue, ``random-<durability>-<seed>`` or
    ``beside-gc-<durability>-<seed>``."""
    if name in WORKLOADS:
        return WORKLOADS[name]
    match = re.fullmatch(r"(random|beside-gc)-(fsync|os)-(\d+)", name)
    if match is None:
        raise KeyError(
            f"no workload {name!r}: one of {sorted(WORKLOADS)}, random-fsync|os-N "
            "or beside-gc-fsync|os-N"
        )
    make = random_workload if match.group(1) == "random" else beside_gc_workload
    return make(int(match.group(3)), match.group(2))


def random_workload(seed: int, durability: str = "fsync", steps: int = 14) -> Workload:
    """A workload drawn from ``seed``: puts of both sizes, deletes, gc, sync and
    reopen over a few keys, with small segments so the log rolls and compacts."""
    rng = random.Random(f"crashsim-workload:{seed}")
    keys: list[Key] = ["x", "y", b"z"]
    plan: list[tuple[str, Key, int]] = []
    for _ in range(steps):
        kind = rng.choices(
            ["small", "large", "delete", "gc", "sync", "reopen", "batch"], [6, 4, 2, 1, 1, 1, 2]
        )[0]
        plan.append((kind, rng.choice(keys), rng.choice([10, 300, 900, 2000, 5000])))

    def steps_(d: Driver) -> None:
        for kind, key, size in plan:
            _writer_step(d, kind, key, min(size, 900) if kind == "small" else size)
            d.settle()

    options = {**ROLLING, "durability": durability, "compact_ratio": 0.5}
    about = ", ".join(
        f"{k} {key!r}" + (f" {s} B" if k in ("small", "large", "batch") else "")
        for k, key, s in plan
    )
    return Workload(f"random-{durability}-{seed}", options, steps_, about)


# Where a seeded beside-gc workload interrupts each kind of writer step: the
# calls that step makes (a kind it does not make runs gc after it, noted).
_STEP_INTERRUPTS: Final[Mapping[str, tuple[str, ...]]] = {
    "small": ("appended", "appended", "dir-synced"),  # a directory fsync: when the log rolls
    "large": (
        "temp-created",
        "temp-written",
        "temp-synced",
        "renamed",
        "key-file",
        "mkdir",
        "dir-synced",
    ),
    "delete": ("appended",),
    "batch": ("temp-created", "temp-written", "temp-synced", "renamed", "appended", "dir-synced"),
    "gc": ("unlinked", "rmdir", "compacted", "temp-created", "temp-written", "dir-synced"),
    "sync": ("file-synced", "dir-synced"),
    "reopen": ("dir-synced", "unlinked", "mkdir"),
}
_GC_PAUSES: Final = ("file-synced", "dir-synced", "unlinked", "rmdir")
"""Where a seeded workload suspends ``blobcache gc``: the calls it makes."""
_REPEATED: Final = frozenset(
    {"temp-created", "temp-written", "mkdir", "unlinked", "rmdir", "file-synced", "dir-synced"}
)
"""Calls a step (or gc) may make more than once: a seeded workload may pick the second."""


def beside_gc_workload(seed: int, durability: str = "fsync", steps: int = 12) -> Workload:
    """A workload drawn from ``seed`` with ``blobcache gc`` beside the writer: the
    writer's steps as in ``random_workload`` (over keys that move between file
    and log), and at each, drawn too, gc before it, in its middle (right after
    one of the calls that kind of step makes: ``_STEP_INTERRUPTS``), or started
    before it and suspended in its own middle (``_GC_PAUSES``) until after it or
    the next one. Also the killed variant: gc runs on what the dead writer left."""
    rng = random.Random(f"crashsim-beside-gc:{seed}")
    keys: list[Key] = ["x", "y", b"z"]
    kinds = ["small", "large", "delete", "gc", "sync", "reopen", "batch"]
    weights = [5, 5, 2, 1, 1 if durability == "os" else 0, 1, 2]
    plan: list[tuple[str, Key, int, str, str, int]] = []
    for _ in range(steps):
        kind = rng.choices(kinds, weights)[0]
        size = rng.choice([10, 300, 900] if kind == "small" else [1500, 3000, 5000])
        how = rng.choices(["no", "before", "during", "suspend"], [3, 2, 4, 2])[0]
        at = rng.choice(_STEP_INTERRUPTS[kind] if how == "during" else _GC_PAUSES)
        nth = rng.choice([1, 1, 2]) if at in _REPEATED else 1
        plan.append((kind, rng.choice(keys), size, how, at, nth))
    rng_resume = [rng.choice([0, 1]) for _ in plan]  # a suspended gc resumes after 1 or 2 steps

    def steps_(d: Driver) -> None:
        resume_after = -1
        for index, (kind, key, size, how, at, nth) in enumerate(plan):
            if how == "before":
                d.collect()
            elif how == "suspend":
                d.collect_suspended(at, nth)
                resume_after = index + rng_resume[index]  # after this step, or the next
            with d.collect_during(at, nth, strict=False) if how == "during" else _nothing():
                _writer_step(d, kind, key, size)
            d.settle()
            if index == resume_after:
                d.finish_collect()

    options = {**ROLLING, "durability": durability, "compact_ratio": 0.5}
    about = ", ".join(
        (f"[gc {how}{' ' + at if how in ('during', 'suspend') else ''}] " if how != "no" else "")
        + kind
        + (f" {key!r}" if kind in ("small", "large", "delete", "batch") else "")
        + (f" {size} B" if kind in ("small", "large", "batch") else "")
        for kind, key, size, how, at, _nth in plan
    )
    return Workload(f"beside-gc-{durability}-{seed}", options, steps_, about, beside_gc=True)


def _writer_step(d: Driver, kind: str, key: Key, size: int) -> None:
    if kind == "small":
        d.small(key, size)
    elif kind == "large":
        d.large(key, size)
    elif kind == "delete":
        d.delete(key)
    elif kind == "gc":
        d.gc()
    elif kind == "batch":
        # The key drawn gets the size drawn, the next one a small value, the
        # third is deleted: both layouts and a delete in one batch.
        keys: list[Key] = ["x", "y", b"z"]
        at = keys.index(key)
        d.batch([(key, size), (keys[(at + 1) % 3], 10), (keys[(at + 2) % 3], None)])
    elif kind == "sync":
        d.sync()
    else:
        d.reopen()


@contextlib.contextmanager
def _nothing() -> Iterator[None]:
    yield
