"""Run the sample user project (tests/sample_project) with some Python, in a subprocess."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .envs import ROOT

SAMPLE_PROJECT = ROOT / "tests" / "sample_project"
SAMPLE_TESTS = 9


def run_sample_project(python: str | Path, *pytest_args: str) -> str:
    """Run the sample project's suite; return its output, or fail with it."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST_")}
    env.pop("PYTHONPATH", None)
    done = subprocess.run(
        [str(python), "-m", "pytest", "-v", *pytest_args],
        cwd=SAMPLE_PROJECT, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"the sample project's tests failed:\n{output}"
    assert f"{SAMPLE_TESTS} passed" in output, output
    return output


def plugins_line(output: str) -> str:
    """The ``plugins:`` line of pytest's header."""
    return next(line for line in output.splitlines() if line.startswith("plugins:"))
