"""Waits and sleeps without a worker: the plan, and the machine's moves as a table."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from celery import Celery, group

import celery_saga
from celery_saga import (
    SagaStateError,
    SagaStatus,
    SagaValidationError,
    StepRecord,
    StepStatus,
    saga_step,
    sleep,
    wait_for,
)
from celery_saga import machine as m
from celery_saga.plan import build_plan
from tests.unit.test_machine import NOW, SETTLE, SWEEP

WAIT = {"signal": "approved", "timeout": 60.0, "on_timeout": "compensate"}
PLAN = [
    {"index": 0, "stage": 0},
    {"index": 1, "stage": 1, "wait": WAIT},
    {"index": 2, "stage": 2},
]


def shape(wait: dict[str, Any] = WAIT, last: bool = False) -> m.Topology:
    steps = [dict(PLAN[0]), {**PLAN[1], "wait": wait}]
    return m.Topology.of_steps(steps if last else [*steps, dict(PLAN[2])])


def step(index: int, status: StepStatus, **kw: Any) -> StepRecord:
    return StepRecord(
        saga_id="s-1", index=index, stage=index, name=f"t{index}", compensate=None,
        status=status, **kw,
    )  # fmt: skip


def waiting(due: float | None, wait: dict[str, Any] = WAIT, **kw: Any) -> m.SagaState:
    until = None if due is None else NOW + timedelta(seconds=due)
    return m.SagaState(
        saga_id="s-1", name="w", status=kw.pop("status", SagaStatus.WAITING),
        steps=kw.pop("steps", (
            step(0, StepStatus.SUCCEEDED, result="r0"),
            step(1, StepStatus.WAITING, lease_expires_at=until, args=["r0"]),
            step(2, StepStatus.PENDING),
        )),
        created_at=NOW - timedelta(hours=1), updated_at=NOW - timedelta(hours=1),
        topology=kw.pop("topology", shape(wait)), **kw,
    )  # fmt: skip


TIMED_OUT = {
    "type": m.WAIT_TIMED_OUT,
    "message": "no signal 'approved' within its timeout of 60 s",
    "traceback": "",
}
S, W = StepStatus.SUCCEEDED, SagaStatus
SLEEP = {"sleep": 60.0}

ROWS: list[tuple[str, m.SagaState, m.Event, Any, tuple[Any, ...], str]] = [
    ("the signal arrives: the wait ends with its payload, the next step gets it",
     waiting(30), m.Signal("approved", {"by": "al"}),
     m.ResolveWait(1, S, W.RUNNING, result={"by": "al"}),
     (m.SendSteps(2, ({"by": "al"},)),), "signal"),
    ("the signal arrives at the last stage: the saga completes",
     waiting(30, topology=shape(last=True), steps=(step(0, S), step(1, StepStatus.WAITING))),
     m.Signal("approved", 1), m.ResolveWait(1, S, W.COMPLETED, result=1),
     (m.Ended(W.COMPLETED),), "signal"),
    ("a signal before the saga gets there is kept",
     waiting(None, status=W.RUNNING,
             steps=(step(0, StepStatus.RUNNING), step(1, StepStatus.PENDING),
                    step(2, StepStatus.PENDING))),
     m.Signal("approved", 2), m.KeepSignal(1, 2), (), "kept"),
    ("waiting, not due: nothing", waiting(30), SWEEP, None, (), "none"),
    ("the timeout passed (compensate): the wait fails, the saga is undone",
     waiting(-1), SWEEP, m.ResolveWait(1, StepStatus.FAILED, W.COMPENSATING, error=TIMED_OUT),
     (m.Reconcile(),), "timeout"),
    ("the timeout passed (fail): the saga is FAILED, nothing undone",
     waiting(-1, {**WAIT, "on_timeout": "fail"}), SETTLE,
     m.ResolveWait(1, StepStatus.FAILED, W.FAILED, error=TIMED_OUT), (m.Ended(W.FAILED),),
     "timeout"),
    ("the timeout passed (continue): go on with None",
     waiting(-1, {**WAIT, "on_timeout": "continue"}), SWEEP,
     m.ResolveWait(1, S, W.RUNNING), (m.SendSteps(2, (None,)),), "continue"),
    ("a sleep ends: the result before it goes on", waiting(-1, SLEEP), SWEEP,
     m.ResolveWait(1, S, W.RUNNING, result="r0"), (m.SendSteps(2, ("r0",)),), "wake"),
    ("past its deadline while waiting: stopped",
     waiting(30, deadline=10.0), SWEEP,
     m.Stop({"type": m.DEADLINE_EXCEEDED, "message": "its deadline of 10 s passed",
             "traceback": ""}), (m.Reconcile(),), "deadline"),
    ("cancelled while waiting", waiting(30), m.Cancel({"type": m.CANCELLED}),
     m.Stop({"type": m.CANCELLED}), (m.Reconcile(),), "cancel"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("state", "event", "transition", "messages", "action"),
    [row[1:] for row in ROWS],
    ids=[row[0] for row in ROWS],
)
def test_wait_moves(
    state: m.SagaState, event: m.Event, transition: Any, messages: tuple[Any, ...], action: str
) -> None:
    """Each event about a saga at a wait gives the move in the table."""
    move = m.decide(state, event)
    assert (move.transition, move.messages, move.action) == (transition, messages, action)


def test_the_signal_rule_is_in_the_table() -> None:
    """The machine's rule for signals appears in this table."""
    assert m.Signal in {type(row[2]) for row in ROWS}
    assert m.Signal in m.SAGA_RULES


def test_a_second_signal_of_a_name_is_refused() -> None:
    """A signal whose wait was resolved (or already holds one) is a SagaStateError."""
    done = waiting(None, steps=(step(0, S), step(1, S), step(2, StepStatus.PENDING)))
    with pytest.raises(SagaStateError, match="again"):
        m.decide(done, m.Signal("approved"))
    kept = step(1, StepStatus.PENDING, finished_at=NOW)
    early = waiting(None, status=W.RUNNING, steps=(step(0, S), kept, step(2, StepStatus.PENDING)))
    with pytest.raises(SagaStateError, match="again"):
        m.decide(early, m.Signal("approved"))


def test_signals_the_saga_does_not_wait_for_are_refused() -> None:
    """A signal of another name, or to a finished saga, is a SagaStateError."""
    with pytest.raises(SagaStateError, match="waits for it"):
        m.decide(waiting(30), m.Signal("rejected"))
    with pytest.raises(SagaStateError, match="COMPLETED"):
        m.decide(waiting(30, status=W.COMPLETED), m.Signal("approved"))


def test_a_wait_ends_the_chain_it_travels_in() -> None:
    """The chain from the saga's start stops at the wait; the rest is sent when it ends."""
    assert shape().run_from(0) == (0, 1)
    assert shape().run_from(1) == (1,)
    assert shape().run_from(2) == (2,)
    assert shape().waits == ((1, WAIT),)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Celery:
    app = Celery("waits", broker="memory://", set_as_current=False)
    app.conf.saga_store_url = f"sqlite:///{tmp_path_factory.mktemp('waits') / 's.sqlite3'}"
    celery_saga.install(app)

    @saga_step
    @app.task(name="w.do", shared=False)
    def do(*args: Any) -> Any:
        """A step of any arguments."""
        return list(args)

    return app


def test_waits_in_the_plan(app: Celery) -> None:
    """wait_for and sleep are stages of the internal wait task, with what they wait for."""
    do = app.tasks["w.do"]
    until = datetime(2027, 1, 1, tzinfo=UTC)
    plan = build_plan(
        app, [do.s(), wait_for("ok", timeout=5), sleep(2), sleep(until=until), do.s()], "w"
    ).as_json()
    assert plan["version"] == 2
    assert [(s["task"], s.get("wait"), s["immutable"]) for s in plan["steps"]] == [
        ("w.do", None, False),
        ("celery_saga.wait", {"signal": "ok", "timeout": 5.0, "on_timeout": "compensate"}, True),
        ("celery_saga.wait", {"sleep": 2.0}, False),
        ("celery_saga.wait", {"until": until.timestamp()}, False),
        ("w.do", None, False),
    ]


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: wait_for(""), "signal name"),
        (lambda: wait_for("x", timeout=-1), "seconds >= 0"),
        (lambda: wait_for("x", on_timeout="later"), "compensate, fail, continue"),
        (lambda: sleep(), "one of them"),
        (lambda: sleep(1, until=datetime.now(UTC)), "one of them"),
        (lambda: sleep(until="tomorrow"), "datetime"),  # type: ignore[arg-type]
    ],
)
def test_bad_waits_are_refused(make: Any, match: str) -> None:
    """A wait or sleep that cannot be kept is a SagaValidationError naming the fix."""
    with pytest.raises(SagaValidationError, match=match):
        make()


def test_a_wait_is_not_a_group_member(app: Celery) -> None:
    """A wait inside a group is refused: it is a stage of its own."""
    with pytest.raises(SagaValidationError, match="stages of their own"):
        build_plan(app, [group(app.tasks["w.do"].s(), wait_for("x"))], "w")  # type: ignore[arg-type]
