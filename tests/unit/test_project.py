"""The project as a newcomer meets it: the demo runs as written, CI runs the README's command."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import services

ROOT = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    """The shell commands in README.md's bash blocks."""
    text = (ROOT / "README.md").read_text()
    return [c.strip() for c in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_ci_runs_exactly_the_readme_test_command() -> None:
    """The last line of .ci/run is the README's test command, to the letter."""
    commands = readme_commands()
    test_command = next(c for c in commands if "pytest" in c)
    ci_lines = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci_lines[-1] == test_command


def test_demo_runs_as_written(tmp_path: Path) -> None:
    """examples/demo.py runs a real worker and shows one completed and one compensated saga."""
    demo = next(c for c in readme_commands() if "demo.py" in c)
    assert demo.endswith("examples/demo.py")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert re.search(r"saga order-\w+-1: COMPLETED", out)
    assert re.search(r"saga order-\w+-2: COMPENSATED", out)
    assert "SagaCompensated" in out
    assert "refunded pay-o-" in out
    assert "released res-sku-1-sku-out-of-stock" in out
    assert re.search(r"cancelled courier courier-o-\w+-2", out)  # the group's members, undone
    assert re.search(r"'courier': 'courier-o-\w+-1'", out)  # the group's results, joined
    assert (tmp_path / "celery_saga.sqlite3").exists()  # the default store, in the cwd
    left = sorted(path.name for path in tmp_path.iterdir())
    assert [name for name in left if not name.startswith("celery_saga.sqlite3")] == []
    assert not [path for path in tmp_path.iterdir() if path.is_dir()]  # no control/ folder


def test_approval_example_runs_as_written(tmp_path: Path) -> None:
    """examples/approval.py: a large order approved by a signal, one refunded at its timeout,
    and a checkout child saga undone as a unit when its approval never comes."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "approval.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert re.search(r"saga big-\w+-1 is WAITING: no worker is busy with it", out)
    assert "'approved_by': 'alice'" in out
    assert re.search(r"saga big-\w+-2: COMPENSATED", out)
    assert "WaitTimedOut" in out
    assert re.search(
        r"saga composed-\w+: COMPENSATED\n.*\n  0  celery_saga.child +COMPENSATED", out
    )
    assert re.search(r"saga composed-\w+\.0: COMPENSATED", out)  # the child, undone as a unit


def test_missing_service_skips_locally(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without CI, an unreachable service skips its tests and says why."""
    monkeypatch.setitem(services.SERVICES, "redis", ("127.0.0.1", 1))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"redis is not reachable at 127\.0\.0\.1:1"):
        services.require("redis")


def test_missing_service_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """With CI=true, an unreachable service fails its tests instead of skipping them."""
    monkeypatch.setitem(services.SERVICES, "redis", ("127.0.0.1", 1))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true requires every service"):
        services.require("redis")


def test_every_setting_is_in_the_configuration_reference() -> None:
    """docs/configuration.md has a row for every saga_* setting SagaConfig reads."""
    from dataclasses import fields

    from celery_saga import SagaConfig

    reference = (ROOT / "docs" / "configuration.md").read_text()
    documented = set(re.findall(r"^\| `(saga_\w+)` \|", reference, flags=re.M))
    assert documented == {f"saga_{field.name}" for field in fields(SagaConfig)}


def test_every_cli_command_is_in_the_cli_reference() -> None:
    """docs/cli.md has a section for every `celery saga` command, and for no other."""
    import click

    from celery_saga.cli import saga

    def commands(group: click.Group, prefix: str = "") -> set[str]:
        found: set[str] = set()
        for name, command in group.commands.items():
            if isinstance(command, click.Group):
                found |= commands(command, f"{prefix}{name} ")
            else:
                found.add(f"{prefix}{name}")
        return found

    def command_of(usage: str) -> str:  # "`cancel ID [--reason TEXT]`" -> "cancel"
        words = usage.strip("` ").split()
        end = next((i for i, w in enumerate(words) if w.isupper() or w[0] in "[-"), len(words))
        return " ".join(words[:end])

    reference = (ROOT / "docs" / "cli.md").read_text()
    headings = re.findall(r"^## (.+)$", reference, flags=re.M)
    documented = {command_of(usage) for heading in headings for usage in heading.split(" / ")}
    assert documented == commands(saga)


def test_observability_code_blocks_fit_the_column() -> None:
    """Every line of every code block on the observability page is at most 80 characters."""
    text = (ROOT / "docs" / "observability.md").read_text()
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)
    assert blocks
    too_wide = [line for block in blocks for line in block.splitlines() if len(line) > 80]
    assert too_wide == []


def test_home_page_draws_a_saga(tmp_path: Path) -> None:
    """docs/index.md has a Mermaid saga (chain, errback chain, store, sweep) that mkdocs renders."""
    index = (ROOT / "docs" / "index.md").read_text()
    (diagram,) = re.findall(r"^```mermaid\n(.*?)^```", index, flags=re.S | re.M)
    for part in ("Celery chain", "errback chain", "saga store", "recovery sweep"):
        assert part in diagram
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet",
         "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    html = (tmp_path / "site" / "index.html").read_text()
    assert '<pre class="mermaid"><code>flowchart TB' in html
