"""The durability ledger: the fsyncs a handle owes, and the rule after one fails.

With ``durability="os"`` a put returns once its bytes are in the kernel; the
files and directories it wrote are noted here and fsynced by the next
``sync()`` (the background one, ``close()``, or the caller's), files before
the directories that name them. With ``"fsync"`` nothing is owed, but the same
rule holds for the fsyncs the janitor and compaction make of records found at
open: once an fsync of data not known durable has failed, it is never retried
(a retry can report success for pages the kernel already dropped; see
``_fsio.earlier_sync_failed``) and every later sync or gc refuses.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable, Mapping

from . import _format as F
from . import _fsio
from ._index import Mapped
from ._names import Key


class Ledger:
    """The files and directories owed an fsync, and the failure that ends syncing.

    REQUIRES: ``lock`` for every field.
    """

    def __init__(self, root: str) -> None:
        self.root = root
        self.where = os.path.join(root, F.BLOBS_DIR)  # named by the error after a failed fsync
        self.lock = threading.Lock()
        self.files: set[str] = set()
        self.dirs: set[str] = set()
        self.error: OSError | None = None  # a failed fsync of written data: final

    def add(self, path: str | None, dirs: Iterable[str]) -> None:
        with self.lock:
            if path is not None:
                self.files.add(path)
            self.dirs.update(dirs)

    def owe_file(self, path: str | None, keydir: str) -> None:
        """Owe ``path`` (a version or key file) and ``keydir``, which names it."""
        self.add(path, [keydir])

    def owe_dirs(self, keydir: str) -> None:
        """Owe every directory from ``blobs`` down to ``keydir``'s parent
        (``keydir`` itself is owed by what goes in it)."""
        dirs = []
        directory = os.path.dirname(keydir)
        while directory != self.root:
            dirs.append(directory)
            directory = os.path.dirname(directory)
        self.add(None, dirs)

    def owe_found(self, dir_of: Mapping[Key, str], files: Mapping[Key, Mapped]) -> None:
        """With "os", a killed process may have left versions, key files and
        directories that were never fsynced; they hold values this process
        serves, so its ``sync()`` owes them too. (With "fsync" every put made
        them durable before it returned.) ``dir_of``: each key's directory;
        ``files``: the values in files."""
        for key, keydir in dir_of.items():
            self.owe_file(os.path.join(keydir, F.KEY_FILE_NAME), keydir)
            self.owe_dirs(keydir)
            value = files.get(key)
            if value is not None:
                self.owe_file(value.record.path, keydir)

    def failed(self, error: OSError) -> None:
        """Never retried: see ``_fsio.earlier_sync_failed``."""
        with self.lock:
            self.error = error

    def refuse_after_failure(self) -> None:
        """Raise once an fsync of data not known durable has failed."""
        with self.lock:
            if self.error is not None:
                raise _fsio.earlier_sync_failed(self.where, self.error)

    def sync(self) -> None:
        """fsync every file owed, then every directory (files before their entries)."""
        self.refuse_after_failure()
        with self.lock:
            files, self.files = self.files, set()
            dirs, self.dirs = self.dirs, set()
        try:
            for path in sorted(files):
                # A missing file was superseded and collected; the janitor synced its successor.
                with contextlib.suppress(FileNotFoundError):
                    _fsio.fsync_path(path)
            for keydir in sorted(dirs):
                # A missing directory was removed by the janitor, after it made
                # the key's newer record durable.
                with contextlib.suppress(FileNotFoundError):
                    _fsio.fsync_dir(keydir)
        except OSError as exc:
            self.failed(exc)
            raise

    def make_durable(self, keydir: str, version: str, *, parents: bool) -> None:
        """fsync a live version that may not be durable (found at open, or put with
        "os"), its key file (without it the version is unattributable) and its
        directory; with ``parents``, every directory up to the store's too. A failure
        is final, as in ``sync()``."""
        try:
            _fsio.fsync_path(os.path.join(keydir, F.KEY_FILE_NAME))
            _fsio.fsync_path(version)
            _fsio.fsync_dir(keydir)
            directory = os.path.dirname(keydir)
            while parents and directory != self.root:
                _fsio.fsync_dir(directory)
                directory = os.path.dirname(directory)
        except FileNotFoundError:
            raise  # gone (by hand, or collected once superseded): no write was lost
        except OSError as exc:
            self.failed(exc)
            raise
