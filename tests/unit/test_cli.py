"""``celery saga ...`` against a real SQLite store holding sagas in every status."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from celery import chain, group
from celery.bin.base import CLIContext
from click.testing import CliRunner, Result
from sqlalchemy import update

import celery_saga
from celery_saga import SagaCompensated, SagaFailed, SagaResult, SagaStatus, StepStatus
from celery_saga._runtime import get_store
from celery_saga.cli import parse_duration, saga
from celery_saga.store import SCHEMA_VERSION
from celery_saga.store.schema import sagas as saga_table
from tests.support.envs import ROOT, SagaEnv, sqlite_thread_env

TIMEOUT = 30


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Sagas:
    """One saga per status, made by running them (the two unfinished ones never run)."""

    def __init__(self, env: SagaEnv) -> None:
        self.env = env
        self.completed = self._run(
            new_id("ok"), env.sig("act", 1, tag="a"), env.sig("act", tag="b")
        )
        self.compensated = self._run(
            new_id("undone"), env.sig("act", tag="a"), env.sig("act", tag="b", fail=True)
        )
        self.failed = self._run(
            new_id("stuck"),
            env.sig("act", tag="a", fail_undo=3),
            env.sig("act", tag="b", fail=True),
        )
        self.running = self.parked(new_id("parked"))
        self.compensating = self.parked(new_id("halting"))
        store = get_store(env.app)
        store.claim_step(self.compensating, 0, "owner", [], {"tag": "p"}, 600,
                         stage=0, task="shop.act", compensate="shop.undo")  # fmt: skip
        assert SagaResult(self.compensating, app=env.app).cancel("stop")  # its step still runs

    def _run(self, saga_id: str, *steps: Any) -> str:
        result = self.env.saga(*steps, name="order").apply_async(saga_id=saga_id)
        with contextlib.suppress(SagaCompensated, SagaFailed):
            result.get(timeout=TIMEOUT)
        return saga_id

    def parked(self, saga_id: str) -> str:
        """A RUNNING saga whose first step waits in a queue no worker reads."""
        step = self.env.sig("act", tag="p").set(queue="nobody")
        self.env.saga(step, name="parked").apply_async(saga_id=saga_id)
        return saga_id


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SagaEnv]:
    with sqlite_thread_env(tmp_path_factory.mktemp("cli"), "cli") as env:
        yield env


@pytest.fixture(scope="module")
def sagas(env: SagaEnv) -> Sagas:
    return Sagas(env)


def run(env: SagaEnv, *args: str) -> Result:
    """``celery -A <env.app> saga <args>``, without colour."""
    context = CLIContext(app=env.app, no_color=True, workdir=None)
    return CliRunner().invoke(saga, list(args), obj=context, catch_exceptions=False)


def ok(env: SagaEnv, *args: str) -> str:
    result = run(env, *args)
    assert result.exit_code == 0, result.output
    return result.output


def as_json(env: SagaEnv, *args: str) -> Any:
    return json.loads(ok(env, *args, "--json"))


def wait_for(env: SagaEnv, saga_id: str, *statuses: SagaStatus) -> None:
    deadline = time.monotonic() + TIMEOUT
    while SagaResult(saga_id, app=env.app).status not in statuses:
        assert time.monotonic() < deadline, f"saga {saga_id} never reached {statuses}"
        time.sleep(0.02)


def test_list_shows_every_saga_newest_first(env: SagaEnv, sagas: Sagas) -> None:
    """`list` prints one line per saga, newest first, with its status."""
    header, *lines = ok(env, "list").splitlines()
    assert header.split() == ["ID", "STATUS", "STARTED", "TOOK", "NAME"]
    ids = [line.split()[0] for line in lines]
    assert ids[:5] == [sagas.compensating, sagas.running, sagas.failed, sagas.compensated,
                       sagas.completed]  # fmt: skip
    assert lines[0].split()[1] == "COMPENSATING"
    assert lines[4].split()[1] == "COMPLETED"


def test_list_filters_by_status_name_and_age(env: SagaEnv, sagas: Sagas) -> None:
    """`list --status/--name/--older-than/--newer-than` keep only the matching sagas."""
    failed = as_json(env, "list", "--status", "failed")
    assert [s["id"] for s in failed] == [sagas.failed]
    assert failed[0]["status"] == "FAILED"
    assert failed[0]["error"]["type"] == "tests.support.app.StepFailure"
    unfinished = {s["id"] for s in as_json(env, "list", "--status", "RUNNING",
                                           "--status", "compensating")}  # fmt: skip
    assert {sagas.running, sagas.compensating} <= unfinished
    assert all(s["name"] == "parked" for s in as_json(env, "list", "--name", "parked"))
    assert as_json(env, "list", "--older-than", "1h") == []
    assert len(as_json(env, "list", "--newer-than", "1h")) >= 5


def test_list_pages(env: SagaEnv, sagas: Sagas) -> None:
    """`list --limit 2 --page N` walks the sagas two at a time without overlap."""
    first = [s["id"] for s in as_json(env, "list", "--limit", "2")]
    second = [s["id"] for s in as_json(env, "list", "--limit", "2", "--page", "2")]
    assert len(first) == len(second) == 2
    assert not set(first) & set(second)
    assert "--page 2 for more" in ok(env, "list", "--limit", "2")


def test_show_draws_the_step_tree(env: SagaEnv, sagas: Sagas) -> None:
    """`show` gives each step with status, attempts and result, its undo, and the error."""
    lines = ok(env, "show", sagas.compensated).splitlines()
    assert lines[0] == f"saga {sagas.compensated}  order  COMPENSATED"
    assert lines[1].startswith("  started ")
    assert " ended " in lines[1]
    assert lines[2] == "  why: step 1: tests.support.app.StepFailure: b failed"
    assert lines[3].startswith("├─ 0 shop.act  COMPENSATED  1 attempt  ")
    assert lines[4] == '│     result: {"args": [], "tag": "a"}'
    assert lines[5].startswith("│     ↩ undo shop.undo  done  1 attempt  ")
    assert lines[6].startswith("└─ 1 shop.act  FAILED  1 attempt  ")
    assert lines[7] == "      error: tests.support.app.StepFailure: b failed"


def test_show_draws_a_group_side_by_side(env: SagaEnv) -> None:
    """`show` draws a group's members under it, side by side, a chain member as its steps."""
    result = env.saga(
        env.sig("act", tag="a"),
        group(env.sig("act", tag="b"), chain(env.sig("act", tag="c1"), env.sig("act", tag="c2"))),
        env.sig("act", tag="e", fail=True),
        name="fan-out",
    ).apply_async(saga_id=f"cli-{uuid.uuid4().hex}")
    with pytest.raises(SagaCompensated):
        result.get(timeout=30)
    drawn = [line for line in ok(env, "show", result.id).splitlines() if "─" in line]
    assert [re.sub(r"  [A-Z]{4,}.*", "", line) for line in drawn] == [
        "├─ 0 shop.act",
        "├─ group: 2 members at once",
        "│  ├─ 1 shop.act",
        "│  └─ chain",
        "│     ├─ 2 shop.act",
        "│     └─ 3 shop.act",
        "└─ 4 shop.act",
    ]
    assert drawn[2].startswith("│  ├─ 1 shop.act  COMPENSATED  1 attempt  ")


def test_show_and_list_link_a_child_saga_and_its_parent(env: SagaEnv) -> None:
    """`show` names a stage's child saga and a child's parent; `list --parent` finds the
    children, and `list` marks them."""
    child = env.saga(env.sig("act", tag="b"), name="stay")
    result = env.saga(env.sig("act", tag="a"), child, name="trip").apply_async(
        saga_id=f"cli-{uuid.uuid4().hex}"
    )
    result.get(timeout=TIMEOUT)
    child_id = f"{result.id}.1"
    drawn = ok(env, "show", result.id).splitlines()
    step = next(n for n, line in enumerate(drawn) if "1 celery_saga.child" in line)
    assert drawn[step + 1].split() == ["child", "saga", child_id, "stay", "COMPLETED"]
    assert [c["id"] for c in as_json(env, "show", result.id)["children"]] == [child_id]
    assert f"child saga of {result.id} (its step 1)" in ok(env, "show", child_id)
    listed = ok(env, "list", "--parent", result.id).splitlines()
    assert len(listed) == 2
    assert listed[1].startswith(child_id)
    assert listed[1].endswith(f"stay  (child of {result.id})")
    assert as_json(env, "list", "--parent", result.id)[0]["parent_step"] == 1


def test_list_marks_a_parked_saga(env: SagaEnv, sagas: Sagas) -> None:
    """`list` says which task a parked saga waits for a worker with."""
    store = get_store(env.app)
    store.park(sagas.running, {"task": "shop.gone", "message": "task 'shop.gone' is not ..."})
    try:
        (line,) = [ln for ln in ok(env, "list").splitlines() if ln.startswith(sagas.running)]
        assert line.endswith("parked  (parked: no worker has shop.gone)")
        assert [s["id"] for s in as_json(env, "list", "--parked")] == [sagas.running]
    finally:
        store.park(sagas.running, None)


def test_signal_ends_a_wait_with_the_data_as_payload(env: SagaEnv) -> None:
    """`signal ID NAME --data JSON` ends the saga's wait; bad JSON or a second one is an error."""
    result = env.saga(
        env.sig("act", tag="a"), celery_saga.wait_for("approved"), env.sig("act", tag="b")
    ).apply_async(saga_id=f"cli-{uuid.uuid4().hex}")
    wait_for(env, result.id, SagaStatus.WAITING)
    bad = run(env, "signal", result.id, "approved", "--data", "{not json")
    assert bad.exit_code != 0
    assert "not JSON" in bad.output
    said = ok(env, "signal", result.id, "approved", "--data", '{"by": "alice"}')
    assert said.strip() == f"saga {result.id}: signal 'approved' received; the saga goes on"
    assert result.get(timeout=TIMEOUT)["args"] == [{"by": "alice"}]
    again = run(env, "signal", result.id, "approved")
    assert again.exit_code == 1
    assert "COMPLETED" in again.output


def test_show_a_failed_saga_gives_the_compensation_error(env: SagaEnv, sagas: Sagas) -> None:
    """`show` of a FAILED saga names the compensation that gave up, and why."""
    output = ok(env, "show", sagas.failed)
    assert "↩ undo shop.undo  gave up  3 attempts" in output
    assert "error: tests.support.app.StepFailure: undo of a failed (attempt 3)" in output


def test_show_why_of_a_failed_saga_names_the_compensation(env: SagaEnv, sagas: Sagas) -> None:
    """A FAILED saga's `why:` names the compensation that gave up first, then the step error."""
    lines = ok(env, "show", sagas.failed).splitlines()
    assert lines[2] == (
        "  why: step 0 shop.act: compensation shop.undo gave up: "
        "tests.support.app.StepFailure: undo of a failed (attempt 3)"
    )
    assert lines[3] == "  why: after step 1: tests.support.app.StepFailure: b failed"


def test_show_tells_when_a_running_steps_lease_ends(env: SagaEnv, sagas: Sagas) -> None:
    """`show` of a step a worker holds says when its lease ends, in UTC and from now."""
    output = ok(env, "show", sagas.compensating)
    when = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC"
    left = r"in (10 minutes|9 minutes \d+ seconds)"
    assert re.search(rf"\n\s+lease ends {when} \({left}\)\n", output), output


def test_show_prints_decimals_as_numbers(env: SagaEnv, sagas: Sagas) -> None:
    """A Decimal in a step's result is a number in `show` and in `show --json`."""
    saga_id = sagas._run(new_id("money"), env.sig("act", Decimal("9.99"), tag="d"))
    assert '      result: {"args": [9.99], "tag": "d"}\n' in ok(env, "show", saga_id)
    text = ok(env, "show", saga_id, "--json")
    assert '"args": [\n        9.99\n      ]' in text
    assert json.loads(text)["steps"][0]["result"]["args"] == [9.99]


def test_help_mentions_json(env: SagaEnv) -> None:
    """`celery saga --help` says every command takes --json."""
    assert "--json" in ok(env, "--help")


def test_json_errors_are_json(env: SagaEnv, sagas: Sagas) -> None:
    """With --json, an error is a JSON object on stdout (code, type, message), exit status 1."""
    result = run(env, "show", "no-such-saga", "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout) == {"error": {
        "code": "not_found", "type": "SagaNotFound", "retryable": False,
        "message": "no saga with id 'no-such-saga' in the saga store",
    }}  # fmt: skip
    result = run(env, "cancel", sagas.completed, "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["error"]["code"] == "illegal_transition"


def test_list_status_takes_only_stored_statuses(env: SagaEnv, sagas: Sagas) -> None:
    """`list --status pending` is refused: PENDING is never stored (it means 'unknown id')."""
    result = run(env, "list", "--status", "pending")
    assert result.exit_code == 2
    assert "'pending' is not one of" in result.output


def test_show_json_has_steps_and_attempt_errors(env: SagaEnv, sagas: Sagas) -> None:
    """`show --json` gives the saga and every step field, attempt errors included."""
    data = as_json(env, "show", sagas.failed)
    assert data["status"] == "FAILED"
    first = data["steps"][0]
    assert first["status"] == StepStatus.COMPENSATION_FAILED.value
    assert [e["attempt"] for e in first["attempt_errors"]] == [1, 2, 3]
    assert data["steps"][1]["error"]["message"] == "b failed"


def test_show_pending_step_of_a_parked_saga(env: SagaEnv, sagas: Sagas) -> None:
    """`show` of a saga whose step has not started marks it as not started."""
    assert "└─ 0 shop.act  PENDING (not started)" in ok(env, "show", sagas.running)


def test_unknown_id_is_one_line_and_exit_1(env: SagaEnv, sagas: Sagas) -> None:
    """Every command given an unknown id says so in one line and exits 1."""
    for command in ("show", "cancel", "resume", "retry-compensation"):
        result = run(env, command, "no-such-saga")
        assert result.exit_code == 1, command
        assert result.output == "Error: no saga with id 'no-such-saga' in the saga store\n"


def test_illegal_transitions_are_refused(env: SagaEnv, sagas: Sagas) -> None:
    """Resuming, cancelling or retrying a saga in the wrong status is a one-line error."""
    cases = [
        ("resume", sagas.completed,
         "is COMPLETED: only a RUNNING or COMPENSATING saga can be resumed"),
        ("cancel", sagas.completed,
         "is COMPLETED: only a RUNNING or WAITING saga can be cancelled"),
        ("retry-compensation", sagas.compensated,
         "is COMPENSATED: only a FAILED saga can be retried"),
    ]  # fmt: skip
    for command, saga_id, message in cases:
        result = run(env, command, saga_id)
        assert result.exit_code == 1
        assert result.output == f"Error: saga {saga_id!r} {message}\n"
    assert SagaResult(sagas.completed, app=env.app).status is SagaStatus.COMPLETED


def test_cancel_a_running_saga(env: SagaEnv, sagas: Sagas) -> None:
    """`cancel ID --reason` stops a running saga; it ends COMPENSATED with the reason."""
    saga_id = sagas.parked(new_id("to-cancel"))
    data = as_json(env, "cancel", saga_id, "--reason", "customer asked")
    assert data == {"id": saga_id, "cancelled": True, "reason": "customer asked"}
    wait_for(env, saga_id, SagaStatus.COMPENSATED)
    assert "why: celery_saga.Cancelled: customer asked" in ok(env, "show", saga_id)


def test_resume_sends_a_lost_step_again(env: SagaEnv, sagas: Sagas) -> None:
    """`resume ID` of a saga whose step message is lost sends the step again at once."""
    data = as_json(env, "resume", sagas.running)
    assert (data["action"], data["steps"]) == ("forward", [0])
    assert ok(env, "resume", sagas.running).startswith(f"saga {sagas.running}: forward steps [0]")


def test_resume_force_takes_over_a_step_whose_worker_is_dead(env: SagaEnv, sagas: Sagas) -> None:
    """`resume ID` leaves a step under a live lease alone; `resume --force ID` takes it over."""
    saga_id = sagas.parked(new_id("dead-owner"))
    store = get_store(env.app)
    store.claim_step(saga_id, 0, "dead", [], {"tag": "p"}, 600,
                     stage=0, task="shop.act", compensate="shop.undo")  # fmt: skip
    assert ok(env, "resume", saga_id) == f"saga {saga_id}: none (step 0 is running)\n"
    assert ok(env, "resume", "--force", saga_id) == (
        f"saga {saga_id}: forward steps [0] (the owner of step 0 is known dead)\n"
    )
    (step,) = store.get_steps(saga_id)
    assert step.lease_expires_at is not None
    assert step.lease_expires_at <= datetime.now(UTC)


def test_retry_compensation_of_a_failed_saga(env: SagaEnv, sagas: Sagas) -> None:
    """`retry-compensation ID` re-sends the undo that gave up; the saga ends COMPENSATED."""
    saga_id = new_id("retry")
    sagas._run(saga_id, env.sig("act", tag="a", fail_undo=3), env.sig("act", tag="b", fail=True))
    assert ok(env, "retry-compensation", saga_id) == (
        f"saga {saga_id}: compensations of steps [0] sent again\n"
    )
    wait_for(env, saga_id, SagaStatus.COMPENSATED)


def test_recover_dry_run_reports_without_acting(env: SagaEnv, sagas: Sagas) -> None:
    """`recover --dry-run --stalled-after 0` lists what it would do and does nothing."""
    data = as_json(env, "recover", "--dry-run", "--stalled-after", "0")
    assert data["dry_run"] is True
    acting = {a["saga_id"]: a["action"] for a in data["actions"]}
    assert acting.get(sagas.running) == "forward"
    assert sagas.compensating not in acting  # its step's owner holds a live lease
    assert "would act on" in ok(env, "recover", "--dry-run")
    every = {a["saga_id"]: (a["action"], a["reason"]) for a in data["sagas"]}
    assert every[sagas.compensating] == ("none", "step 0 is running (the saga was stopped)")
    printed = ok(env, "recover", "--dry-run", "--stalled-after", "0")
    assert f"saga {sagas.compensating}: none (step 0 is running (the saga was stopped))" in printed


def test_show_prints_what_the_sweep_could_not_do(env: SagaEnv, sagas: Sagas) -> None:
    """A recovery error kept on the saga is printed by `show` and returned in --json."""
    saga_id = sagas.parked(new_id("sweep-error"))
    error = {"type": "OperationalError", "message": "broker down", "at": "2026-12-01T12:00:00"}
    get_store(env.app).note_recovery_error(saga_id, error)
    assert "recovery failed 2026-12-01T12:00:00: broker down" in ok(env, "show", saga_id)
    assert as_json(env, "show", saga_id)["recovery_error"] == error


def test_purge_deletes_only_old_finished_sagas(env: SagaEnv, sagas: Sagas) -> None:
    """`purge` counts with --dry-run, deletes finished sagas, and keeps unfinished ones."""
    counted = as_json(env, "purge", "--older-than", "0s", "--dry-run")
    assert counted["deleted"] == 0
    assert counted["matched"] >= 2
    assert SagaResult(sagas.completed, app=env.app).status is SagaStatus.COMPLETED
    assert as_json(env, "purge", "--older-than", "1d")["deleted"] == 0
    output = ok(env, "purge", "--older-than", "0s", "--status", "completed")
    assert output.startswith("deleted ")
    assert "(COMPLETED) that ended more than 0 seconds ago" in output
    assert "ended more than 7 days ago" in ok(env, "purge", "--older-than", "7d")
    assert "ended more than 1 day 12 hours ago" in ok(env, "purge", "--older-than", "1d12h")
    assert "ended more than 1 minute 30 seconds ago" in ok(
        env, "purge", "--older-than", "90", "--dry-run"
    )
    assert SagaResult(sagas.completed, app=env.app).status is SagaStatus.PENDING  # gone
    assert SagaResult(sagas.failed, app=env.app).status is SagaStatus.FAILED
    assert SagaResult(sagas.compensating, app=env.app).status is SagaStatus.COMPENSATING
    bad = run(env, "purge", "--older-than", "0s", "--status", "running")
    assert bad.exit_code == 2
    assert "'running' is not one of" in bad.output


def test_purge_needs_a_valid_age(env: SagaEnv, sagas: Sagas) -> None:
    """`purge` without --older-than, or with a bad one, is a usage error."""
    assert run(env, "purge").exit_code == 2
    result = run(env, "purge", "--older-than", "seven days")
    assert result.exit_code == 2
    assert "not a duration" in result.output


def test_db_current_and_upgrade(env: SagaEnv, sagas: Sagas) -> None:
    """`db current` tells the schema version; `db upgrade` on an up-to-date store is a no-op."""
    assert as_json(env, "db", "current")["current"] == SCHEMA_VERSION
    assert "up to date" in ok(env, "db", "current")
    store = as_json(env, "db", "current")["store"]
    assert as_json(env, "db", "upgrade") == {
        "before": SCHEMA_VERSION, "after": SCHEMA_VERSION, "store": store
    }  # fmt: skip


def test_store_unreachable_is_one_line(tmp_path: Path) -> None:
    """A store that cannot be opened gives one error line and exit 1, not a traceback."""
    from tests.support.app import make_app

    url = f"sqlite:///{tmp_path / 'missing' / 'store.sqlite3'}"
    app = make_app("memory://", url, f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    context = CLIContext(app=app, no_color=True, workdir=None)
    for args in (["list"], ["db", "current"]):
        result = CliRunner().invoke(saga, args, obj=context)
        assert result.exit_code == 1
        assert result.output.startswith("Error: saga store sqlite:///")
        assert "cannot be reached" in result.output
        assert "unable to open database file" in result.output
        assert len(result.output.splitlines()) == 1


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql+nodriver://u:secret@db/shop", "SQLAlchemy has no database or driver"),
        ("oracle-ish://u:secret@db/shop", "is not a SQLAlchemy URL"),
        ("postgresql+psycopg2://u:secret@db/shop", "its driver is not installed"),
    ],
)
def test_store_url_mistakes_are_one_line(tmp_path: Path, url: str, message: str) -> None:
    """A store URL SQLAlchemy cannot use is one line naming it (password hidden), no traceback."""
    from tests.support.app import make_app

    app = make_app("memory://", url, f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    context = CLIContext(app=app, no_color=True, workdir=None)
    for args in (["list"], ["db", "current"], ["list", "--json"]):
        result = CliRunner().invoke(saga, args, obj=context)
        assert result.exit_code == 1, result.output
        assert message in result.output
        assert "secret" not in result.output
        assert "Traceback" not in result.output
        if args[-1] == "--json":
            assert json.loads(result.stdout)["error"]["code"] == "misconfigured"
        else:
            assert len(result.output.splitlines()) == 1


def test_parse_duration() -> None:
    """Durations take s/m/h/d/w units, combined, or plain seconds; anything else is refused."""
    assert parse_duration("7d").total_seconds() == 7 * 86400
    assert parse_duration("1d12h").total_seconds() == 36 * 3600
    assert parse_duration("90").total_seconds() == 90
    assert parse_duration("1.5h").total_seconds() == 5400
    for bad in ("", "7 days", "d", "5y"):
        with pytest.raises(ValueError, match="not a duration"):
            parse_duration(bad)


def test_celery_command_entry_point(env: SagaEnv, sagas: Sagas, tmp_path: Path) -> None:
    """`celery -A app saga show ID --json` works as a real command, through the entry point."""
    store = env.app.conf.saga_store_url
    environ = {**os.environ, "SAGA_TEST_BROKER": "memory://", "SAGA_TEST_STORE": store,
               "SAGA_TEST_LEDGER": f"sqlite:///{tmp_path / 'ledger.sqlite3'}"}  # fmt: skip
    command = [sys.executable, "-m", "celery", "-A", "tests.support.worker_app", "saga", "show",
               sagas.failed, "--json"]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, env=environ, capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["id"] == sagas.failed


def test_retention_task_purges_what_saga_result_expires_says(tmp_path: Path) -> None:
    """celery_saga.purge deletes finished sagas older than saga_result_expires, nothing else."""
    with sqlite_thread_env(tmp_path, "retention", saga_result_expires=60) as env:
        sagas = Sagas(env)
        assert env.app.conf.beat_schedule["celery_saga.purge"]["task"] == "celery_saga.purge"
        assert env.app.tasks["celery_saga.purge"].apply().get() == 0  # none old enough yet
        with get_store(env.app).engine.begin() as connection:  # as if they ended long ago
            connection.execute(
                update(saga_table)
                .where(saga_table.c.finished_at.is_not(None))
                .values(finished_at=datetime(2026, 1, 1))
            )
        assert env.app.tasks["celery_saga.purge"].apply().get() == 2
        left = {s["id"]: s["status"] for s in as_json(env, "list")}
        assert left == {sagas.failed: "FAILED", sagas.running: "RUNNING",
                        sagas.compensating: "COMPENSATING"}  # fmt: skip
