"""The pytest plugin with pytest-celery 1.x installed, in a venv of its own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.envs import ROOT
from tests.support.sample import plugins_line, run_sample_project
from tests.support.services import in_ci

pytestmark = pytest.mark.pypi


@pytest.fixture(scope="session")
def pytest_celery_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with celery_saga and pytest-celery 1.x installed from the package index."""
    venv = tmp_path_factory.mktemp("pytest-celery-venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    packages = ["-e", str(ROOT), "pytest", "pytest-celery>=1,<2"]
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", *packages],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if install.returncode != 0:
        message = f"could not install pytest-celery from the package index:\n{install.stderr}"
        if in_ci():
            pytest.fail(f"{message}\nCI=true requires it", pytrace=False)
        pytest.skip(message)
    return python


def test_sample_project_passes_with_pytest_celery_installed(pytest_celery_venv: Path) -> None:
    """pytest-celery replaces Celery's ``celery_worker``; the saga fixtures work beside it."""
    output = run_sample_project(pytest_celery_venv)

    plugins = plugins_line(output)
    assert "celery-sagas-" in plugins
    assert "celery-1." in plugins  # pytest-celery's plugin was loaded
