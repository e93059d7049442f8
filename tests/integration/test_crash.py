"""A worker killed with ``kill -9`` mid-step: the recovery sweep drives the saga on."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import group

import celery_saga
from celery_saga import (
    SagaCompensated,
    SagaResult,
    SagaStatus,
    StepStatus,
    recover,
    sleep,
    wait_for,
)
from celery_saga._runtime import get_store
from tests.scenarios import new_id
from tests.support.envs import ROOT, broker_env, worker_process
from tests.support.services import REDIS_URL, require

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

LEASE = 2.0
CONF = {"saga_step_lease": LEASE}


def _wait(condition: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_step_killed_mid_run_is_recovered(postgres_url: str, worker_logs: Path) -> None:
    """kill -9 during step 2 of 3: after the lease, recover() re-sends it and the saga completes.

    Redis would redeliver the unacknowledged message only after its visibility timeout
    (an hour by default); the sweep does not wait for it.
    """
    require("redis")
    queue = f"crash-{uuid.uuid4().hex[:8]}"
    extra = {"SAGA_TEST_CONF": json.dumps(CONF)}
    with broker_env("crash", REDIS_URL, postgres_url, postgres_url, queue, **CONF) as env:
        log = worker_logs / "crash-first.log"
        with worker_process(
            REDIS_URL, postgres_url, postgres_url, queue, log, extra_env=extra
        ) as worker:
            result = env.saga(
                env.sig("act", "o-1", tag="a"),
                env.sig("act", tag="b", hang_first=60),
                env.sig("act", tag="c"),
            ).apply_async(saga_id=new_id())
            _wait(lambda: env.ledger.count("do", "b", result.id) == 1)
            os.killpg(worker.pid, signal.SIGKILL)  # the worker and its pool children
            worker.wait()
        assert result.steps[1].status is StepStatus.RUNNING
        (alive,) = recover(env.app, result.id, stalled_after=3600)
        assert alive.action in ("none", "forward")  # the lease may have run out already
        time.sleep(LEASE)
        log = worker_logs / "crash-restarted.log"
        with worker_process(REDIS_URL, postgres_url, postgres_url, queue, log, extra_env=extra):
            if alive.action == "none":
                (plan,) = recover(env.app, result.id, stalled_after=3600)
                assert (plan.action, plan.reason) == ("forward", "the lease of step 1 ran out")
            value = result.get(timeout=60)
    assert result.status is SagaStatus.COMPLETED
    assert value["tag"] == "c"
    assert value["args"][0]["args"][0] == {"tag": "a", "args": ["o-1"]}
    steps = result.steps
    assert [s.attempts for s in steps] == [1, 2, 1]
    # at-least-once: the killed attempt had started; both ran under one idempotency key
    done_b = [e for e in env.ledger.entries(result.id, "do") if e.tag == "b"]
    assert len(done_b) == 2
    assert len({e.key for e in done_b}) == 1
    assert env.ledger.count("do", "c", result.id) == 1


def test_hanging_step_is_stopped_and_undone(postgres_url: str, worker_logs: Path) -> None:
    """A step past its 1 s timeout is stopped by the soft time limit and, in doubt, undone first."""
    require("redis")
    queue = f"timeout-{uuid.uuid4().hex[:8]}"
    log = worker_logs / "timeout.log"
    with (
        broker_env("timeout", REDIS_URL, postgres_url, postgres_url, queue) as env,
        worker_process(REDIS_URL, postgres_url, postgres_url, queue, log),
    ):
        started = time.monotonic()
        result = env.saga(env.sig("act", tag="a"), env.sig("slow", tag="s", sleep=60)).apply_async(
            saga_id=new_id()
        )
        with pytest.raises(SagaCompensated, match="SoftTimeLimitExceeded"):
            result.get(timeout=30)
        elapsed = time.monotonic() - started
        assert elapsed < 20
        step = result.steps[1]
        assert step.status is StepStatus.COMPENSATED  # was TIMED_OUT, then undone
        assert step.error is not None
        assert step.error["type"].endswith(".SoftTimeLimitExceeded")
        undone = env.ledger.entries(result.id, "undo")
        assert [e.tag for e in undone] == ["s", "a"]  # the in-doubt step first
        assert [e.payload["result"] for e in undone] == [None, {"tag": "a", "args": []}]


def test_hanging_member_is_stopped_and_undone_with_its_sibling(
    postgres_url: str, worker_logs: Path
) -> None:
    """A group member past its timeout is stopped and, in doubt, undone with the member that
    succeeded, both before the step before the group."""
    require("redis")
    queue = f"timeout-{uuid.uuid4().hex[:8]}"
    with (
        broker_env("timeout", REDIS_URL, postgres_url, postgres_url, queue) as env,
        worker_process(REDIS_URL, postgres_url, postgres_url, queue, worker_logs / "member.log"),
    ):
        result = env.saga(
            env.sig("act", tag="a"),
            group(env.sig("slow", tag="s", sleep=60), env.sig("act", tag="b")),
        ).apply_async(saga_id=new_id())
        with pytest.raises(SagaCompensated, match="SoftTimeLimitExceeded"):
            result.get(timeout=30)
        assert result.steps[1].status is StepStatus.COMPENSATED  # was TIMED_OUT, then undone
        undone = [e.tag for e in env.ledger.entries(result.id, "undo")]
        assert sorted(undone[:2]) == ["b", "s"]
        assert undone[2:] == ["a"]


def test_fail_fast_stops_a_member_in_flight(postgres_url: str, worker_logs: Path) -> None:
    """With fail_fast, a member's failure stops its sibling still running (a soft time limit
    sent by revoke) instead of waiting a minute for it; what succeeded is undone."""
    require("redis")
    queue = f"fast-{uuid.uuid4().hex[:8]}"
    with (
        broker_env("fast", REDIS_URL, postgres_url, postgres_url, queue) as env,
        worker_process(REDIS_URL, postgres_url, postgres_url, queue, worker_logs / "fast.log"),
    ):
        started = time.monotonic()
        result = env.saga(
            env.sig("act", tag="a"),
            group(env.sig("act", tag="b", sleep=60), env.sig("act", tag="c", sleep=0.5, fail=True)),
            fail_fast=True,
        ).apply_async(saga_id=new_id())
        with pytest.raises(SagaCompensated, match="c failed"):
            result.get(timeout=30)
        assert time.monotonic() - started < 20
        stopped = result.steps[1]
        assert stopped.status is StepStatus.FAILED
        assert stopped.error is not None
        assert stopped.error["type"].endswith("SoftTimeLimitExceeded")
        assert [e.tag for e in env.ledger.entries(result.id, "undo")] == ["a"]


def test_member_killed_mid_group_runs_again_and_the_group_joins(
    postgres_url: str, worker_logs: Path
) -> None:
    """kill -9 while two members run: after the lease the sweep sends the killed ones again,
    the group joins and the step after it gets every member's result."""
    require("redis")
    queue = f"crash-{uuid.uuid4().hex[:8]}"
    extra = {"SAGA_TEST_CONF": json.dumps(CONF)}
    with broker_env("crash", REDIS_URL, postgres_url, postgres_url, queue, **CONF) as env:
        with worker_process(
            REDIS_URL, postgres_url, postgres_url, queue, worker_logs / "group-first.log",
            extra_env=extra,
        ) as worker:  # fmt: skip
            result = env.saga(
                env.sig("act", tag="a"),
                group(
                    env.sig("act", tag="b", hang_first=60), env.sig("act", tag="c", hang_first=60)
                ),
                env.sig("act", tag="e"),
            ).apply_async(saga_id=new_id())
            _wait(lambda: env.ledger.count("do", "c", result.id) == 1)
            _wait(lambda: env.ledger.count("do", "b", result.id) == 1)
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
        time.sleep(LEASE)
        with worker_process(
            REDIS_URL, postgres_url, postgres_url, queue, worker_logs / "group-again.log",
            extra_env=extra,
        ):  # fmt: skip
            (plan,) = recover(env.app, result.id, stalled_after=3600)
            assert (plan.action, plan.steps) == ("forward", (1, 2))
            value = result.get(timeout=60)
    assert value["args"][0] == [{"tag": t, "args": [{"tag": "a", "args": []}]} for t in "bc"]
    assert [s.attempts for s in result.steps] == [1, 2, 2, 1]
    assert env.ledger.count("do", "e", result.id) == 1


def test_child_saga_killed_mid_step_finishes_and_is_undone_as_a_unit(
    postgres_url: str, worker_logs: Path
) -> None:
    """kill -9 during a child saga's step: after the lease the sweep runs it again, the
    child completes, the parent goes on; a later failure undoes the child (its steps newest
    first), then the parent's step before it."""
    require("redis")
    queue = f"child-{uuid.uuid4().hex[:8]}"
    extra = {"SAGA_TEST_CONF": json.dumps(CONF)}
    with broker_env("child", REDIS_URL, postgres_url, postgres_url, queue, **CONF) as env:
        child = env.saga(env.sig("act", tag="b", hang_first=60), env.sig("act", tag="c"))
        with worker_process(
            REDIS_URL, postgres_url, postgres_url, queue, worker_logs / "child-first.log",
            extra_env=extra,
        ) as worker:  # fmt: skip
            result = env.saga(
                env.sig("act", tag="a"), child, env.sig("act", tag="d", fail=True)
            ).apply_async(saga_id=new_id())
            child_id = f"{result.id}.1"
            _wait(lambda: env.ledger.count("do", "b", child_id) == 1)
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
        time.sleep(LEASE)
        with worker_process(
            REDIS_URL, postgres_url, postgres_url, queue, worker_logs / "child-again.log",
            extra_env=extra,
        ):  # fmt: skip
            (plan,) = recover(env.app, child_id, stalled_after=3600)
            assert (plan.action, plan.steps) == ("forward", (0, 1))
            with pytest.raises(SagaCompensated, match="d failed"):
                result.get(timeout=60)
    undone = [(e.saga_id, e.tag) for e in env.ledger.entries(action="undo")
              if e.saga_id in (result.id, child_id)]  # fmt: skip
    assert undone == [(child_id, "c"), (child_id, "b"), (result.id, "a")]
    done_b = [e for e in env.ledger.entries(child_id, "do") if e.tag == "b"]
    assert len(done_b) == 2  # the killed attempt and the one after, under one key
    assert len({e.key for e in done_b}) == 1
    assert SagaResult(child_id, app=env.app).status is SagaStatus.COMPENSATED


def _kill_while_waiting(env: Any, result: Any, worker: subprocess.Popen[bytes]) -> None:
    _wait(lambda: result.status is SagaStatus.WAITING)
    os.killpg(worker.pid, signal.SIGKILL)  # it held the wake-up's countdown message
    worker.wait()


def test_wait_timeout_fires_after_the_worker_was_killed(
    postgres_url: str, worker_logs: Path
) -> None:
    """kill -9 while a saga waits: its timeout is in the store, so the sweep fires it on
    time on a new worker (Redis would give the killed worker's countdown back in an hour)."""
    require("redis")
    queue = f"wait-{uuid.uuid4().hex[:8]}"
    with broker_env("wait", REDIS_URL, postgres_url, postgres_url, queue) as env:
        with worker_process(
            REDIS_URL, postgres_url, postgres_url, queue, worker_logs / "wait-first.log"
        ) as worker:
            result = env.saga(
                env.sig("act", tag="a"), wait_for("approved", timeout=3), env.sig("act", tag="b")
            ).apply_async(saga_id=new_id())
            _kill_while_waiting(env, result, worker)
        with worker_process(
            REDIS_URL, postgres_url, postgres_url, queue, worker_logs / "wait-again.log"
        ):
            _wait(lambda: recover(env.app, result.id, stalled_after=3600)[0].action == "timeout")
            with pytest.raises(SagaCompensated, match="no signal 'approved'"):
                result.get(timeout=30)
    assert [e.tag for e in env.ledger.entries(result.id, "undo")] == ["a"]


def test_sleep_across_a_worker_restart_sleeps_only_what_is_left(
    postgres_url: str, worker_logs: Path
) -> None:
    """A saga sleeping 4 s whose worker is killed and replaced wakes 4 s after it fell
    asleep, not 4 s after the restart."""
    require("redis")
    queue = f"sleep-{uuid.uuid4().hex[:8]}"
    with broker_env("sleep", REDIS_URL, postgres_url, postgres_url, queue) as env:
        with worker_process(
            REDIS_URL, postgres_url, postgres_url, queue, worker_logs / "sleep-first.log"
        ) as worker:
            result = env.saga(
                env.sig("act", tag="a"), sleep(4), env.sig("act", tag="b")
            ).apply_async(saga_id=new_id())
            _kill_while_waiting(env, result, worker)
        asleep = result.steps[1].started_at
        assert asleep is not None
        time.sleep(2)  # the restart takes a while
        with worker_process(
            REDIS_URL, postgres_url, postgres_url, queue, worker_logs / "sleep-again.log"
        ):
            _wait(lambda: recover(env.app, result.id, stalled_after=3600)[0].action == "wake")
            assert result.get(timeout=30)["tag"] == "b"
    woke = result.steps[1].finished_at
    assert woke is not None
    assert 4.0 <= (woke - asleep).total_seconds() < 6.0


def test_worker_without_a_task_parks_the_saga_until_one_with_it_comes(
    postgres_url: str, worker_logs: Path
) -> None:
    """A worker of another deploy, without a step's task, does not drop the message: the
    saga is parked (which task, which version, which worker) and a worker that has the task
    finishes it, the saga run with the plan it was stored with."""
    require("redis")
    queue = f"park-{uuid.uuid4().hex[:8]}"
    old = {"SAGA_TEST_WITHOUT": "shop.note", "SAGA_TEST_CONF": json.dumps({"saga_park_retry": 0.5})}
    with broker_env("park", REDIS_URL, postgres_url, postgres_url, queue) as env:
        saga = env.saga(env.sig("act", tag="a"), env.sig("note", tag="n"), name="parked")
        result = celery_saga.saga(*saga.steps, name="parked", app=env.app, version="1")
        started = result.apply_async(saga_id=new_id())
        with worker_process(
            REDIS_URL, postgres_url, postgres_url, queue, worker_logs / "park-old.log",
            extra_env=old,
        ):  # fmt: skip
            _wait(lambda: started.record is not None and started.record.parked is not None)
            record = started.record
            assert record is not None
            assert record.parked is not None
            assert record.version == "1"
            assert (record.parked["task"], record.parked["version"]) == ("shop.note", "1")
            assert f"is not registered on {queue}@" in record.parked["message"]
            parked = get_store(env.app).list_sagas(parked=True, version="1")
            assert [s.id for s in parked] == [started.id]
        assert started.status is SagaStatus.RUNNING
        with worker_process(
            REDIS_URL, postgres_url, postgres_url, queue, worker_logs / "park-new.log"
        ):
            assert started.get(timeout=30) == "n"
        record = started.record
        assert record is not None
        assert record.parked is None
    assert env.ledger.count("do", "n", started.id) == 1


def test_worker_without_a_compensation_parks_it_instead_of_giving_up(
    postgres_url: str, worker_logs: Path
) -> None:
    """A worker without a compensation's task gives it back unrun and parks the saga; a
    worker that has the task undoes the step, once, and the saga ends COMPENSATED."""
    require("redis")
    queue = f"park-{uuid.uuid4().hex[:8]}"
    old = {"SAGA_TEST_WITHOUT": "shop.undo", "SAGA_TEST_CONF": json.dumps({"saga_park_retry": 0.5})}
    with broker_env("park", REDIS_URL, postgres_url, postgres_url, queue) as env:
        started = env.saga(
            env.sig("act", tag="a"), env.sig("act", tag="b", fail=True), name="parked"
        ).apply_async(saga_id=new_id())
        with worker_process(
            REDIS_URL, postgres_url, postgres_url, queue, worker_logs / "park-undo-old.log",
            extra_env=old,
        ):  # fmt: skip
            _wait(lambda: started.record is not None and started.record.parked is not None)
            record = started.record
            assert record is not None
            assert record.parked is not None
            assert record.parked["task"] == "shop.undo"
            assert started.status is SagaStatus.COMPENSATING
        with (
            worker_process(
                REDIS_URL, postgres_url, postgres_url, queue, worker_logs / "park-undo-new.log"
            ),
            pytest.raises(SagaCompensated),
        ):
            started.get(timeout=30)
        record = started.record
        assert record is not None
        assert record.parked is None
        assert started.steps[0].compensation_attempts == 1  # the give-backs were no attempts
    assert env.ledger.count("undo", "a", started.id) == 1


def test_killed_step_runs_again_within_a_minute_with_the_defaults(
    postgres_url: str, worker_logs: Path, tmp_path: Path
) -> None:
    """With the default lease and the beat schedule install() sets, a step whose worker was
    kill -9ed on Redis runs again within about a minute (not after the visibility timeout)."""
    require("redis")
    queue = f"defaults-{uuid.uuid4().hex[:8]}"
    with broker_env("defaults", REDIS_URL, postgres_url, postgres_url, queue) as env:
        with worker_process(
            REDIS_URL, postgres_url, postgres_url, queue, worker_logs / "defaults-first.log"
        ) as worker:
            result = env.saga(
                env.sig("act", tag="a"), env.sig("act", tag="b", hang_first=600)
            ).apply_async(saga_id=new_id())
            _wait(lambda: env.ledger.count("do", "b", result.id) == 1)
            os.killpg(worker.pid, signal.SIGKILL)
            killed = time.monotonic()
            worker.wait()
        with (
            worker_process(
                REDIS_URL, postgres_url, postgres_url, queue, worker_logs / "defaults-again.log"
            ),
            _beat(queue, postgres_url, tmp_path, worker_logs / "defaults-beat.log"),
        ):
            _wait(lambda: env.ledger.count("do", "b", result.id) == 2, timeout=120)
            again = time.monotonic() - killed
            assert result.get(timeout=30)["tag"] == "b"
    print(f"\nstep running again {again:.1f} s after the kill -9 (lease 30 s, sweep every 30 s)")
    assert again < 75
    assert [s.attempts for s in result.steps] == [1, 2]


@contextlib.contextmanager
def _beat(queue: str, store_url: str, folder: Path, log: Path) -> Iterator[None]:
    """``celery beat`` for the test app, with the schedule install() gives it."""
    env = {
        **os.environ,
        "SAGA_TEST_BROKER": REDIS_URL,
        "SAGA_TEST_STORE": store_url,
        "SAGA_TEST_LEDGER": store_url,
        "SAGA_TEST_QUEUE": queue,
        "PYTHONPATH": str(ROOT),
    }
    command = [
        sys.executable, "-m", "celery", "-A", "tests.support.worker_app", "beat", "-l", "INFO",
        "-s", str(folder / "celerybeat-schedule"), "--max-interval", "1",
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield
    finally:
        process.terminate()
        process.wait(timeout=20)
