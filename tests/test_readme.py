"""The README's examples run, and its two commands are the ones CI and newcomers use."""

from __future__ import annotations

import os
import re

import pytest

ROOT = os.path.join(os.path.dirname(__file__), os.pardir)


def _read(name: str) -> str:
    with open(os.path.join(ROOT, name), encoding="utf-8") as f:
        return f.read()


def _blocks(language: str, name: str = "README.md") -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", _read(name), re.DOTALL | re.MULTILINE)


# The README's examples, and those it sends a reader to.
_EXAMPLES = [
    (name, index)
    for name in ("README.md", "docs/examples.md")
    for index in range(len(_blocks("python", name)))
]


@pytest.mark.parametrize(("name", "index"), _EXAMPLES)
def test_readme_python_example_runs(
    name: str,
    index: int,
    tmp_path: object,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    monkeypatch.chdir(str(tmp_path))
    code = _blocks("python", name)[index]
    if "BLOBCACHE_REMOTE" in code:  # the remote tier's: run against the tests' SeaweedFS
        place = request.getfixturevalue("remote_prefix")
        monkeypatch.setenv("BLOBCACHE_REMOTE", place.url)
        monkeypatch.setenv("BLOBCACHE_ENDPOINT", place.options["endpoint"])
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", place.options["access_key_id"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", place.options["secret_access_key"])
        monkeypatch.setenv("AWS_REGION", place.options["region"])
    exec(compile(code, f"{name} python block {index}", "exec"), {"__name__": "readme"})


def test_readme_opens_with_the_two_commands_and_ci_runs_the_second() -> None:
    first_block = _blocks("sh")[0].strip().splitlines()
    assert len(first_block) == 2
    install_and_demo, install_and_test = first_block
    assert install_and_demo.endswith("blobcache demo")
    assert "[test]" in install_and_test and "pytest" in install_and_test
    assert _read("README.md").index("```sh") < _read("README.md").index("\n## ")
    ci_lines = [ln for ln in _read(".ci/run").splitlines() if ln and not ln.startswith("#")]
    assert ci_lines[-1] == install_and_test


def test_where_things_live_names_every_module_and_only_modules_there_are() -> None:
    """docs/internals.md's "Where things live" table matches the package's files."""
    table = _read("docs/internals.md")
    named = set(re.findall(r"`(_?[a-z_]+\.py)`", table))
    package = {
        name
        for name in os.listdir(os.path.join(ROOT, "blobcache"))
        if name.endswith(".py") and name not in ("__init__.py", "__main__.py")
    }
    assert named == package, (sorted(package - named), sorted(named - package))
