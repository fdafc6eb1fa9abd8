"""The `splitspec` command run as a user runs it, and the one-line error it must give for a mistake."""

from __future__ import annotations

import os
import subprocess
import sys


def splitspec(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "splitspec", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, **(env or {})),
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("splitspec: error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert result.stdout == ""
