"""The vLLM-style examples run unchanged but for the import (on the bundled default model)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.default_model, pytest.mark.e2e]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("script", ["ngram.py", "ngram_legacy_args.py", "draft_model.py", "fibonacci.py"])
def test_example_runs(script, default_model_path):
    env = dict(os.environ)
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script)], capture_output=True, text=True, timeout=600, env=env
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    if script == "fibonacci.py":
        assert "def " in result.stdout and "mean tokens per target pass" in result.stdout
    else:
        assert result.stdout.startswith("Prompt: 'The future of AI is', Generated text: '")
