"""The directory book of the index snapshot: which directories under ``blobs/``
an open may stat instead of listing (issue 18).

Listing and sorting out every key directory made an open of 1,000 large keys
1.6x a scan of the tree. The snapshot (``_snapshotwrite``) records, for
``blobs/``, each fan-out directory and each key directory, its *stamp* (inode,
mtime and ctime in ns) and what its listing held: a fan-out directory's
subdirectories; a key directory's one version file, when the directory holds
exactly its key file and the live version the snapshot names (it is
*clean*), else nothing (the open lists it). An open (``walk``) stats each
directory and, where the stamp is the one booked, takes the booked listing.

Invariant: a directory's entries change only with its mtime and ctime (every
create, rename and unlink in it sets both to the file system's clock), so a
stamp seen again means the listing booked with it still holds. One trap: two
changes within one tick of that clock leave one mtime, so a listing taken in
the same tick as a change could miss a later change of that tick. Hence a
stamp is booked only if it is older than ``t0``, the mtime of a file the
writer creates just before it stats anything: a change after the stat gets a
time of at least ``t0`` (the clock never goes back; an NTP step back that hits
a booked stamp exactly is the one case this misses), so it can never show the
stamp again. A directory stamped at or after ``t0`` is not booked: the next
open lists it, and counts it as a reason to write the snapshot again.

A booked key directory's version file is still lstat'ed (its size and kind:
a file cut short in place leaves the directory's stamp, and is reported at
open as a listing would). What is not checked, as for the key file already
(``_keydir.scan_key_dir``): the key file's content; ``verify`` (which opens
without the snapshot) reads all.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable

from . import _filekinds
from . import _format as F
from . import _names as N
from ._keydir import Record
from ._problems import Problem, stray

# st_ino, st_mtime_ns, st_ctime_ns
Stamp = tuple[int, int, int]
# "" (blobs/ itself), "ab", "ab/cd" -> stamp and the names of its subdirectories
# (None: something else is there too, so the open lists it: strays are reported)
Fanouts = dict[str, tuple[int, int, int, tuple[str, ...] | None]]
# key directory name -> stamp, its version file (name, seq, length, checksum)
# and its key (name "": not clean, the open lists it; key None then)
KeyDir = tuple[int, int, int, str, int, int, int, "N.Key | None"]
KeyDirs = dict[str, KeyDir]
Book = tuple[Fanouts, KeyDirs]
# (path, its path relative to blobs/, depth: 0 blobs/, 1 and 2 fan-outs) -> the
# names of its subdirectories
Lister = Callable[[str, str, int], list[str]]


def stamp_of(st: os.stat_result) -> Stamp:
    return st.st_ino, st.st_mtime_ns, st.st_ctime_ns


def key_dirs(blobs: str, subdirs: Lister, empty: set[str]) -> list[str]:
    """Every ``blobs/ab/cd/<hash>`` directory, as ``subdirs`` lists each level;
    empty fan-out directories (a put killed while making them, say) are added to
    ``empty`` for the janitor."""
    found: list[str] = []
    add = found.append
    for a in subdirs(blobs, "", 0):
        level1 = f"{blobs}/{a}"  # (not os.path.join: an open of a large store runs this per key)
        level2s = subdirs(level1, a, 1)
        if not level2s:
            empty.add(level1)
        for b in level2s:
            level2 = f"{level1}/{b}"
            names = subdirs(level2, f"{a}/{b}", 2)
            if not names:
                empty.add(level2)
            for name in names:
                add(f"{level2}/{name}")
    return found


def listed(path: str, depth: int, problems: list[Problem]) -> list[str]:
    """The subdirectories of ``path`` whose names are of its level; anything
    else there, a symbolic link to a directory too, is reported and never
    entered."""
    name_ok = N.is_key_dir_name if depth == 2 else N.is_fanout_name
    out: list[str] = []
    with os.scandir(path) as entries:
        for entry in entries:
            if not name_ok(entry.name):
                problems.append(stray(entry.path))
            elif entry.is_dir(follow_symlinks=False):
                out.append(entry.name)
            else:
                kind = _filekinds.kind_of(entry.stat(follow_symlinks=False).st_mode)
                problems.append(Problem(entry.path, _filekinds.misplaced(kind, "a directory")))
    return out


# --- At open --------------------------------------------------------------------------


class Walk:
    """The key directories under ``blobs/`` through a book: ``scan``, those to
    list; ``vouched``, (key directory, its key, its one version) for the others;
    ``misses``, how many directories the book did not vouch for that a new
    book could (changed since, or stamped too late to be booked)."""

    def __init__(self, blobs: str, book: Book, problems: list[Problem], empty: set[str]) -> None:
        self.fanouts, booked = book
        self.problems = problems
        self.misses = 0
        self.scan: list[str] = []
        self.vouched: list[tuple[str, N.Key, Record]] = []
        lstat, width = os.lstat, F.KEY_HASH_HEX_DIGITS
        for path in key_dirs(blobs, self._subdirs, empty):
            entry = booked.get(path[-width:])
            if entry is None or stamp_of(lstat(path)) != entry[:3]:
                self.misses += 1
                self.scan.append(path)
                continue
            _ino, _m, _c, name, seq, length, checksum, key = entry
            version = f"{path}/{name}"
            if key is None or not _is_long(version, length):
                # Unchanged and not clean, or its version cut short in place:
                # listed again, so the open reports what a listing finds.
                self.scan.append(path)
            else:
                self.vouched.append((path, key, Record(seq, version, length, checksum)))

    def _subdirs(self, path: str, rel: str, depth: int) -> list[str]:
        entry = self.fanouts.get(rel)
        if entry is None or stamp_of(os.lstat(path)) != entry[:3]:
            self.misses += 1
        elif entry[3] is not None:
            return list(entry[3])
        return listed(path, depth, self.problems)


def _is_long(path: str, length: int) -> bool:
    """Whether the version file at ``path`` is a regular file of ``length`` bytes:
    a file cut short in place leaves its directory's stamp, and an open reports
    it as one without a snapshot does (one lstat per key; its mapping would
    only find it at the first get)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size == length


# --- Writing ------------------------------------------------------------------------------


def write_book(
    blobs: str, versions: dict[str, tuple[str, N.Key]], previous: Book, t0: int, dev: int
) -> Book:
    """The book of ``blobs/`` now, for a snapshot whose live version files are
    ``versions`` (key directory name -> version file name, key). A directory whose
    stamp is the one ``previous`` booked is not listed again.

    REQUIRES: ``t0`` is the mtime of a file created after ``versions`` was
    captured and before this is called (see the module's invariant), on file
    system ``dev``: a directory on another (a mount under ``blobs/``) is never
    booked, since its clock may be coarser or another machine's.
    """
    old_fanouts, old_keydirs = previous
    fanouts: Fanouts = {}
    keydirs: KeyDirs = {}

    def bookable(st: os.stat_result) -> bool:
        return st.st_dev == dev and max(st.st_mtime_ns, st.st_ctime_ns) < t0

    def subdirs(path: str, rel: str, depth: int) -> list[str]:
        try:
            st = os.lstat(path)
            old = old_fanouts.get(rel)
            stamp = stamp_of(st)
            if old is not None and old[:3] == stamp and old[3] is not None:
                fanouts[rel] = old
                return list(old[3])
            problems: list[Problem] = []
            names = listed(path, depth, problems)
        except FileNotFoundError:
            return []  # removed meanwhile (the janitor): the next open lists its parent
        if bookable(st):  # (empty too: the open adds it to those the janitor removes)
            fanouts[rel] = (*stamp, None if problems else tuple(names))
        return names

    for path in key_dirs(blobs, subdirs, set()):
        name = os.path.basename(path)
        entry = _key_dir_entry(path, versions.get(name), old_keydirs.get(name), bookable)
        if entry is not None:
            keydirs[name] = entry
    return fanouts, keydirs


def _key_dir_entry(
    path: str,
    live: tuple[str, N.Key] | None,
    old: KeyDir | None,
    bookable: Callable[[os.stat_result], bool],
) -> KeyDir | None:
    """What the book says of key directory ``path`` whose live version is
    ``live`` (its name and key; None: none is, the log holds the key's live
    record), or None if it cannot say (gone, or stamped too late)."""
    version, key = live if live is not None else ("", None)
    try:
        st = os.lstat(path)
        stamp = stamp_of(st)
        if old is not None and old[:3] == stamp and old[3] == version and old[7] == key:
            return old
        parsed = N.parse_version_name(version) if key is not None else None
        clean = parsed is not None and _holds_only(path, version, parsed.length)
    except FileNotFoundError:
        return None
    if not bookable(st):
        return None
    if not clean or parsed is None:
        return (*stamp, "", 0, 0, 0, None)
    return (*stamp, version, parsed.seq, parsed.length, parsed.checksum, key)


def _holds_only(path: str, version: str, length: int) -> bool:
    """Whether key directory ``path`` holds its key file and ``version``, both
    regular files, the version of ``length`` bytes, and nothing else."""
    with os.scandir(path) as entries:
        kinds = {entry.name: entry.is_file(follow_symlinks=False) for entry in entries}
    key_file = kinds.get(F.KEY_FILE_NAME, False)
    return len(kinds) == 2 and key_file and _is_long(f"{path}/{version}", length)
