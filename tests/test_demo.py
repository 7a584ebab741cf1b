"""``blobcache demo`` (the README's first command) kills a writer and loses nothing."""

from __future__ import annotations

import subprocess
import sys


def test_demo_runs_and_every_acknowledged_put_comes_back(tmp_path: object) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "blobcache", "demo", str(tmp_path) + "/store"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "killed it (SIGKILL) during put" in out.stdout
    assert "every acknowledged put came back" in out.stdout
    assert "LOST" not in out.stdout
    assert "intact" in out.stdout
