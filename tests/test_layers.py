"""The module layers DESIGN.md draws: the two layouts meet only in the cache.

Read from each module's own import statements (``ast``), since importing any
module runs the package's ``__init__``, which imports them all.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "blobcache"


def _imports(module: str) -> set[str]:
    """The package's modules that ``module`` imports, at any level of its code."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module is not None:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
    return found


# Opening a store: recovery, what it found, the store's directory.
_OPEN = ("_recovery", "_recovered", "_storedir")


@pytest.mark.parametrize(
    ("module", "not_imported"),
    [
        ("_log", {"_blob", "_keydir", "_mapping", *_OPEN, "_janitor", "_compaction", "cache"}),
        (
            "_logwriter",
            {"_blob", "_keydir", "_mapping", *_OPEN, "_janitor", "_compaction", "cache"},
        ),
        (
            "_blob",
            {"_log", "_logwriter", "_index", *_OPEN, "_janitor", "_compaction", "cache"},
        ),
        (
            "_keydir",
            {"_log", "_logwriter", "_index", *_OPEN, "_janitor", "_compaction", "cache"},
        ),
        (
            "_mapping",
            {"_log", "_logwriter", "_index", *_OPEN, "_janitor", "_compaction", "cache"},
        ),
        ("_index", {"_log", "_logwriter", *_OPEN, "cache"}),
        ("_problems", {"_log", "_logwriter", "_blob", "_keydir", "_mapping", "_index", "cache"}),
    ],
)
def test_a_layout_does_not_import_the_other(module: str, not_imported: set[str]) -> None:
    assert not _imports(module) & not_imported, _imports(module)


@pytest.mark.parametrize(
    ("module", "not_imported"), [("_keydir", {"_blob", "_mapping"}), ("_mapping", {"_blob"})]
)
def test_the_key_directory_imports_neither_the_writer_nor_the_mapping(
    module: str, not_imported: set[str]
) -> None:
    # Record lives in _keydir, the lowest of the three: _blob makes records and
    # _mapping maps them; reading a directory needs neither, serving no writer.
    assert not _imports(module) & not_imported, _imports(module)


def test_the_log_reader_does_not_import_its_writer() -> None:
    """``_logwriter`` appends the records ``_log`` frames and reads; recovery,
    stats and verify read the log without the writer."""
    assert "_logwriter" not in _imports("_log"), _imports("_log")


@pytest.mark.parametrize(
    ("module", "not_imported"),
    [("_recovered", {"_storedir", "_recovery", "cache"}), ("_storedir", {"_recovery", "cache"})],
)
def test_the_store_directory_and_what_open_found_sit_below_recovery(
    module: str, not_imported: set[str]
) -> None:
    # recover() judges a missing blobs/ or log/ with _storedir and fills a
    # _recovered.Recovered; neither knows how the index is rebuilt.
    assert not _imports(module) & not_imported, _imports(module)


def test_stats_and_verify_do_not_import_gc() -> None:
    """``_collect`` (gc from outside) walks the store with ``_maintenance``'s
    helpers; the arrow points one way only."""
    assert "_collect" not in _imports("_maintenance"), _imports("_maintenance")


# The bottom layer's leaves: _fsio stands on them too (a temp file's name, what
# kind of file a name holds), and none of them on _fsio.
_LEAVES = {"_format", "_names", "_filekinds", "errors"}


@pytest.mark.parametrize(
    "module",
    ["_filekinds", "_filesystems", "_format", "_fsio", "_futex", "_names", "_problems", "errors"],
)
def test_the_bottom_layer_imports_only_the_format_names_file_kinds_and_errors(
    module: str,
) -> None:
    assert _imports(module) <= _LEAVES - {module}, _imports(module)
