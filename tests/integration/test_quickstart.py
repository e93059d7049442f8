"""docs/quickstart.md, run as written: a new venv, the install, the files, the commands."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.envs import ROOT, wait_ready
from tests.support.markdown import Block, code_blocks
from tests.support.services import require

pytestmark = [pytest.mark.pypi, pytest.mark.redis]

QUICKSTART = ROOT / "docs" / "quickstart.md"
_NOT_COPIED = shutil.ignore_patterns(
    ".git", ".venv", "site", "build", "*.egg-info", "__pycache__", "*_cache", "*.sqlite3*"
)


class Terminal:
    """Runs the page's bash blocks in one folder; after the first, inside its venv."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        venv = folder / ".venv"
        self.env = {
            **os.environ,
            "VIRTUAL_ENV": str(venv),
            "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
        }
        self.env.pop("PYTHONPATH", None)
        self.background: list[tuple[subprocess.Popen[bytes], Path]] = []

    def run(self, block: Block) -> str:
        done = subprocess.run(
            ["bash", "-e", "-c", block.code], cwd=self.folder, env=self.env,
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, (
            f"quick start block failed ({done.returncode}):\n{block.code}\n"
            f"{done.stdout}\n{done.stderr}"
        )
        return done.stdout

    def start(self, block: Block) -> None:
        log = self.folder / f"background-{len(self.background)}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                ["bash", "-e", "-c", f"exec {block.code.strip()}"], cwd=self.folder,
                env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.background.append((process, log))
        wait_ready(log, process)

    def close(self) -> None:
        for process, _ in self.background:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Terminal]:
    """A folder holding a copy of this checkout as ./celery_saga, as the page assumes."""
    shutil.copytree(ROOT, tmp_path / "celery_saga", ignore=_NOT_COPIED)
    shell = Terminal(tmp_path)
    try:
        yield shell
    finally:
        shell.close()


def test_every_quickstart_block_runs_as_written(terminal: Terminal) -> None:
    """Install, write the files, start the worker, run the sagas, and get the page's output."""
    require("redis")
    blocks = code_blocks(QUICKSTART)
    assert [b.lang for b in blocks].count("python") >= 2
    assert blocks[0].lang == "bash"
    output: str | None = None
    for block in blocks:
        if block.lang == "python":
            (terminal.folder / block.title).write_text(block.code)
        elif block.lang == "bash" and "keeps running" in block.title:
            terminal.start(block)
        elif block.lang == "bash":
            output = terminal.run(block)
        elif block.lang == "text":
            assert output is not None, "an output block with no command before it"
            assert output.strip() == block.code.strip()
        else:
            raise AssertionError(f"the quick start has a {block.lang} block the test cannot run")
    worker_log = terminal.background[0][1].read_text()
    assert worker_log.index("refunded pay-o-2") < worker_log.index("released res-o-2")
