"""docs/quickstart.md, run as written: a new venv, the install, the files, the commands."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
        if "instead of" in block.title:  # the page says: stop the one before (Ctrl-C)
            self.close()
        log = self.folder / f"background-{len(self.background)}.log"
        *setup, command = block.code.strip().splitlines()
        script = "\n".join([*setup, f"exec {command}"])
        with log.open("wb") as out:
            process = subprocess.Popen(
                ["bash", "-e", "-c", script], cwd=self.folder,
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
    traced_log = terminal.background[-1][1]
    assert len(terminal.background) == 2, "the page restarts the worker with tracing"
    saga_trace = wait_for_trace(traced_log, "saga checkout")
    assert sorted(saga_trace) == [
        "compensate shop.refund", "compensate shop.release_stock", "saga checkout",
        "step shop.charge", "step shop.reserve_stock", "step shop.ship",
    ]  # fmt: skip
    assert saga_trace["saga checkout"]["attributes"]["saga.status"] == "COMPENSATED"
    assert saga_trace["saga checkout"]["attributes"]["saga.id"] == "order-o-3"


def console_spans(log: Path) -> list[dict[str, Any]]:
    """The spans the console exporter printed into a worker's log (one JSON object each)."""
    text = log.read_text(errors="replace")
    decoder = json.JSONDecoder()
    spans = []
    for start in re.finditer(r"^\{$", text, flags=re.M):
        try:
            span, _ = decoder.raw_decode(text[start.start() :])
        except json.JSONDecodeError:
            continue  # still being written
        spans.append(span)
    return spans


def wait_for_trace(log: Path, root: str, timeout: float = 60.0) -> dict[str, dict[str, Any]]:
    """The celery_saga spans of the trace whose root is ``root``, by name, once it is printed."""
    deadline = time.monotonic() + timeout
    while True:
        spans = console_spans(log)
        roots = [span for span in spans if span["name"] == root]
        if roots:
            trace_id = roots[0]["context"]["trace_id"]
            return {
                span["name"]: span
                for span in spans
                if span["context"]["trace_id"] == trace_id
                and span["name"].split()[0] in ("saga", "step", "compensate", "start")
            }
        assert time.monotonic() < deadline, f"no {root!r} span printed:\n{log.read_text()}"
        time.sleep(0.5)
