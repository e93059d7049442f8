"""Parallel groups without a worker: the plan's stages, the topology, the machine's moves."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from celery import Celery, chain, chord, group

import celery_saga
from celery_saga import SagaStatus, SagaValidationError, StepRecord, StepStatus, saga_step
from celery_saga import machine as m
from celery_saga._runtime import get_store
from celery_saga.dispatch import HEADER, step_delivery, step_signatures
from celery_saga.plan import build_plan
from celery_saga.store import ClaimOutcome, SagaStore, utcnow
from tests.unit.test_machine import COMPENSATING, NOW, RUNNING, SETTLE, SWEEP, P, R, S, alive, dead
from tests.unit.test_machine import step as linear_step

# a(0) -> group(b(1), chain(c1(2), c2(3))) -> e(4)
PLAN_STEPS = [
    {"index": 0, "stage": 0},
    {"index": 1, "stage": 1, "branch": 0},
    {"index": 2, "stage": 1, "branch": 1},
    {"index": 3, "stage": 1, "branch": 1},
    {"index": 4, "stage": 2},
]
SHAPE = m.Topology.of_steps(PLAN_STEPS)
FAST = m.Topology.of_steps(PLAN_STEPS, fail_fast=True)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Celery:
    folder = tmp_path_factory.mktemp("groups")
    app = Celery("groups", broker="memory://", set_as_current=False)
    app.conf.saga_store_url = f"sqlite:///{folder / 'store.sqlite3'}"
    celery_saga.install(app)

    @app.task(name="g.undo", shared=False)
    def undo(result: Any, *args: Any) -> None:
        """Undo."""

    @saga_step(compensate=undo)
    @app.task(name="g.do", shared=False)
    def do(*args: Any) -> Any:
        """A step of any arguments."""
        return list(args)

    @saga_step
    @app.task(name="g.one", shared=False)
    def one(value: Any) -> Any:
        """A step of exactly one argument."""
        return value

    return app


# -- topology ----------------------------------------------------------------------------


def test_topology_reads_stages_and_branches() -> None:
    """A plan's steps become stages; a group's members become branches in member order."""
    assert [(s.number, s.branches, s.group) for s in SHAPE.stages] == [
        (0, ((0,),), False), (1, ((1,), (2, 3)), True), (2, ((4,),), False)
    ]  # fmt: skip
    assert SHAPE.grouped
    assert SHAPE.stages[1].ends == (1, 3)
    assert SHAPE.count == 5


def test_a_plan_stored_before_groups_is_a_line_of_steps() -> None:
    """A plan without branch keys (the form of every plan before groups) is one step per stage."""
    old = m.Topology.of({"steps": [{"index": i, "stage": i} for i in range(3)]})
    assert not old.grouped
    assert old.run_from(1) == (1, 2)
    assert old.feeds(1) == 0
    assert old.undo_batch((1, 0)) == ((1, 0),)


@pytest.mark.parametrize(
    ("start", "run"),
    [(0, (0,)), (1, (1,)), (2, (2, 3)), (3, (3,)), (4, (4,))],
)
def test_run_from_stops_at_a_group_and_at_a_branch_end(start: int, run: tuple[int, ...]) -> None:
    """One chain carries the rest of a branch, or the single steps up to the next group."""
    assert SHAPE.run_from(start) == run


@pytest.mark.parametrize(
    ("index", "feeds", "joins"),
    [(0, None, True), (1, 0, True), (2, 0, False), (3, 2, True), (4, (1, 3), False)],
)
def test_what_feeds_each_step_and_which_steps_join(index: int, feeds: Any, joins: bool) -> None:
    """A branch's first step gets the stage before's output; after a group, its ends' list."""
    assert SHAPE.feeds(index) == feeds
    assert SHAPE.joins(index) is joins


def test_output_of_a_saga_ending_with_a_group_is_the_list() -> None:
    """A saga ending with a group returns its branch ends' results in member order."""
    ending = m.Topology.of_steps(PLAN_STEPS[:4])
    assert ending.output({0: "a", 1: "b", 2: "c1", 3: "c2"}) == ["b", "c2"]
    assert SHAPE.output({4: "e"}) == "e"


@pytest.mark.parametrize(
    ("undo", "batch"),
    [
        ((4, 3, 2, 1, 0), ((4,),)),
        ((3, 2, 1, 0), ((1,), (3, 2))),
        ((2, 1, 0), ((1,), (2,))),
        ((0,), ((0,),)),
        ((), ()),
    ],
)
def test_undo_batch_is_the_newest_stage_branches_side_by_side(
    undo: tuple[int, ...], batch: tuple[tuple[int, ...], ...]
) -> None:
    """Compensations go out one group at a time, each branch a chain, newest stage first."""
    assert SHAPE.undo_batch(undo) == batch


# -- the plan ----------------------------------------------------------------------------


def test_plan_of_a_group_numbers_stages_and_branches(app: Celery) -> None:
    """A group stage's members get its stage and their branch; chains in it are branches."""
    do = app.tasks["g.do"]
    plan = build_plan(
        app, [do.s(1), group(do.s(), chain(do.s(), do.s())), do.s()], "g", fail_fast=True
    ).as_json()
    assert plan["version"] == 2
    assert plan["fail_fast"] is True
    assert [(s["index"], s["stage"], s.get("branch")) for s in plan["steps"]] == [
        (0, 0, None), (1, 1, 0), (2, 1, 1), (3, 1, 1), (4, 2, None)
    ]  # fmt: skip


def test_plan_without_groups_keeps_its_form_and_hash(app: Celery) -> None:
    """A straight-line saga is stored as before groups existed, so its saga_id still matches."""
    do = app.tasks["g.do"]
    plan = build_plan(app, [do.s(1), do.s()], "g", fail_fast=True).as_json()
    assert plan["version"] == 1
    assert "fail_fast" not in plan
    assert all("branch" not in s for s in plan["steps"])
    assert set(plan) == {"version", "name", "steps"}


def test_chain_with_a_group_becomes_the_group_then_the_rest(app: Celery) -> None:
    """chain(a, group(b, c), d) (which Celery turns into a chord) is three stages."""
    do = app.tasks["g.do"]
    flow = chain(do.s(1), group(do.s(), do.s()), do.s())
    plan = build_plan(app, [flow], "g").as_json()
    assert [(s["stage"], s.get("branch")) for s in plan["steps"]] == [
        (0, None), (1, 0), (1, 1), (2, None)
    ]  # fmt: skip
    plan = build_plan(app, [chord([do.s(1), do.s(2)], do.s())], "g").as_json()
    assert [(s["stage"], s.get("branch")) for s in plan["steps"]] == [(0, 0), (0, 1), (1, None)]


def test_group_from_a_generator(app: Celery) -> None:
    """A group given a generator has one member per item."""
    do = app.tasks["g.do"]
    plan = build_plan(app, [group(do.si(w) for w in range(5))], "g").as_json()
    assert [s["args"] for s in plan["steps"]] == [[w] for w in range(5)]


@pytest.mark.parametrize(
    ("steps", "match"),
    [
        (lambda do: [group(group(do.s(), do.s()), do.s())], "group inside a group member"),
        (lambda do: [group(chain(do.s(), group(do.s(), do.s())))], "group inside a group"),
        (lambda do: [group([])], "at least one member"),
        (lambda do: [group(do.s(), 3)], "are Celery signatures"),  # type: ignore[arg-type]
    ],
    ids=["nested group", "group in a branch", "empty group", "not a signature"],
)
def test_groups_the_saga_cannot_run_are_refused(app: Celery, steps: Any, match: str) -> None:
    """Nested groups, empty groups and non-signatures in a group are clear errors at start."""
    with pytest.raises(SagaValidationError, match=match):
        build_plan(app, steps(app.tasks["g.do"]), "g")


def test_members_arguments_are_checked_against_what_they_get(app: Celery) -> None:
    """A member's .s() gets the output of the stage before first; in a first stage nothing."""
    one = app.tasks["g.one"]
    do = app.tasks["g.do"]
    build_plan(app, [group(one.s(1), one.s(2))], "g")  # first stage: nothing passed
    build_plan(app, [do.s(), group(one.s(), one.si(2))], "g")
    with pytest.raises(SagaValidationError, match="do not fit"):
        build_plan(app, [do.s(), group(one.s(1))], "g")


def test_member_messages_carry_the_join(app: Celery) -> None:
    """Members' headers name their stage's branch ends; no step of a grouped saga has errbacks."""
    do = app.tasks["g.do"]
    plan = build_plan(app, [do.s(1), group(do.s(), chain(do.s(), do.s())), do.s()], "g")
    stored = plan.as_json()
    first = step_signatures(app, "s-1", stored, 0)
    assert len(first) == 1  # the chain stops before the group
    header = first[0].options["headers"][HEADER]
    assert (header["g"], header["j"], header["l"]) == (1, [0], False)
    assert "link_error" not in first[0].options
    branch = step_signatures(app, "s-1", stored, 2)
    assert [s.options["task_id"] for s in branch] == ["s-1:2", "s-1:3"]
    deliveries = [step_delivery(s.options["headers"][HEADER]) for s in branch]
    assert [(d.ends, d.member, d.stage) for d in deliveries] == [((), True, 1), ((1, 3), True, 1)]
    last = step_delivery(step_signatures(app, "s-1", stored, 4)[0].options["headers"][HEADER])
    assert (last.ends, last.is_last_step, last.grouped) == ((), True, True)


# -- the machine -------------------------------------------------------------------------


def member(index: int, ends: tuple[int, ...] = (1, 3), **kw: Any) -> m.Delivery:
    kw.setdefault("stage", 1)
    kw.setdefault("member", True)
    return m.Delivery("s-1", "g", index, 5, (), grouped=True, ends=ends, **kw)


STEP_ROWS: list[tuple[str, m.Delivery, m.Event, Any, tuple[Any, ...], str]] = [
    ("a member succeeded: record it and join", member(1), m.AttemptSucceeded(),
     m.Join((1, 3), False), (), "none"),
    ("a member of the last group: the join completes the saga", member(1, final=True),
     m.AttemptSucceeded(), m.Join((1, 3), True), (), "none"),
    ("recorded, siblings not done: nothing more", member(1), m.SuccessRecorded(m.Outcome.RECORDED),
     None, (), "none"),
    ("joined: send the next stage the members' results", member(3),
     m.SuccessRecorded(m.Outcome.JOINED, ("b", "c2")), None,
     (m.SendStage(2, (["b", "c2"],)),), "forward"),
    ("the step before a group joined: send the group its result",
     member(0, ends=(0,), stage=0, member=False), m.SuccessRecorded(m.Outcome.JOINED, ("a",)),
     None, (m.SendStage(1, ("a",)),), "forward"),
    ("recorded after the saga stopped: settle it (the member is undone too)", member(1),
     m.SuccessRecorded(m.Outcome.HALTED), None, (m.Reconcile(),), "none"),
    ("a member fails for good with nothing before it: compensating, siblings may run",
     member(1, stage=0), m.AttemptFailed(1), m.Fail(StepStatus.FAILED, COMPENSATING), (), "fail"),
    ("a member's failure is recorded: settle from the store", member(1),
     m.FailureRecorded(True, True, COMPENSATING), None, (m.Reconcile(),), "compensate"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("state", "event", "transition", "messages", "action"),
    [row[1:] for row in STEP_ROWS],
    ids=[row[0] for row in STEP_ROWS],
)
def test_group_member_moves(
    state: m.Delivery, event: m.Event, transition: Any, messages: tuple[Any, ...], action: str
) -> None:
    """Each event of a group member's message gives the move in the table."""
    move = m.decide(state, event)
    assert (move.transition, move.messages, move.action) == (transition, messages, action)


def step(index: int, status: StepStatus, **kw: Any) -> StepRecord:
    stage = {0: 0, 1: 1, 2: 1, 3: 1, 4: 2}[index]
    record = linear_step(index, status, **kw)
    return StepRecord(**{**record.__dict__, "stage": stage})


def grouped(status: Any, *statuses: Any, shape: m.Topology = SHAPE, **kw: Any) -> m.SagaState:
    steps = tuple(s if isinstance(s, StepRecord) else step(i, s) for i, s in enumerate(statuses))
    return m.SagaState(
        saga_id="s-1", name="g", status=status, steps=steps, created_at=NOW - timedelta(hours=1),
        updated_at=kw.pop("updated_at", NOW - timedelta(hours=1)), topology=shape, **kw,
    )  # fmt: skip


C, F, U = StepStatus.COMPENSATED, StepStatus.FAILED, StepStatus.COMPENSATING
RECENT = NOW - timedelta(seconds=5)

SAGA_ROWS: list[tuple[str, m.SagaState, m.Event, Any, tuple[Any, ...], str, tuple[int, ...]]] = [
    ("a member's worker died while its sibling runs: send it again, the sibling goes on",
     grouped(RUNNING, S, step(1, R, lease=dead), step(2, R, lease=alive), P, P,
             updated_at=RECENT),
     SWEEP, None, (m.SendSteps(1),), "forward", (1,)),
    ("the group was never sent: send every branch",
     grouped(RUNNING, S, P, P, P, P), SWEEP, None, (m.SendSteps(1), m.SendSteps(2)), "forward",
     (1, 2, 3)),
    ("a branch stopped midway: send the rest of it", grouped(RUNNING, S, S, S, P, P), SWEEP,
     None, (m.SendSteps(3),), "forward", (3,)),
    ("the group joined but the next stage was lost: send it", grouped(RUNNING, S, S, S, S, P),
     SWEEP, None, (m.SendSteps(4),), "forward", (4,)),
    ("a member failed, its sibling in flight: wait for it",
     grouped(COMPENSATING, S, step(1, R, lease=alive), F, P, P), SETTLE, None, (), "none", ()),
    ("fail_fast: ask the sibling in flight to stop",
     grouped(COMPENSATING, S, step(1, R, lease=alive), F, P, P, shape=FAST), SETTLE, None,
     (m.Revoke((1,)),), "revoke", (1,)),
    ("a member failed, siblings done: undo the group first, not the step before",
     grouped(COMPENSATING, S, S, F, P, P), SETTLE, m.QueueCompensations((1,)),
     (m.SendCompensations((1,)),),
     "compensate", (1,)),
    ("the step after the group failed: undo the branches side by side",
     grouped(COMPENSATING, S, S, S, S, F), SETTLE, m.QueueCompensations((1, 3, 2)),
     (m.SendCompensations((1,)), m.SendCompensations((3, 2))), "compensate", (1, 3, 2)),
    ("a branch's undo still running: wait for it",
     grouped(COMPENSATING, S, C, S, step(3, U, lease=alive), F), SETTLE, None, (), "none", ()),
    ("the group undone: undo the stage before",
     grouped(COMPENSATING, S, C, C, C, F), SETTLE, m.QueueCompensations((0,)),
     (m.SendCompensations((0,)),),
     "compensate", (0,)),
    ("a compensation queued, not claimed yet: wait for it",
     grouped(COMPENSATING, S, C, S, step(3, U, lease=alive), F), SWEEP, None, (), "none", ()),
    ("a queued compensation overdue: send it again",
     grouped(COMPENSATING, S, C, C, step(3, U, lease=dead), F), SWEEP, m.QueueCompensations((3,)),
     (m.SendCompensations((3,)),), "compensate", (3,)),
    ("everything undone: the saga is compensated",
     grouped(COMPENSATING, C, C, C, C, F), SETTLE, m.EndCompensation(),
     (m.Ended(SagaStatus.COMPENSATED),), "finish",
     ()),
]  # fmt: skip


@pytest.mark.parametrize(
    ("state", "event", "transition", "messages", "action", "steps"),
    [row[1:] for row in SAGA_ROWS],
    ids=[row[0] for row in SAGA_ROWS],
)
def test_grouped_saga_moves(
    state: m.SagaState,
    event: m.Event,
    transition: Any,
    messages: tuple[Any, ...],
    action: str,
    steps: tuple[int, ...],
) -> None:
    """Each event about a stored saga with a group gives the move in the table."""
    move = m.decide(state, event)
    assert (move.transition, move.messages, move.action) == (transition, messages, action)
    assert move.steps == steps


# -- the store ---------------------------------------------------------------------------


def _stored(app: Celery, saga_id: str, plan: dict[str, Any]) -> SagaStore:
    store = get_store(app)
    now = utcnow()
    store.create_saga(
        {"id": saga_id, "name": "g", "status": SagaStatus.RUNNING, "plan": plan,
         "plan_hash": "0" * 64, "step_count": len(plan["steps"]), "created_at": now,
         "updated_at": now}
    )  # fmt: skip
    return store


def test_a_members_retry_after_its_saga_stopped_settles_it(app: Celery) -> None:
    """A member given back to be retried whose saga then stopped settles the saga when its
    retry comes (what waited for it to end goes on), instead of only dropping it."""
    do = app.tasks["g.do"]
    plan = build_plan(app, [group(do.si(1), do.si(2))], "g").as_json()
    store = _stored(app, "retried-member", plan)
    claim = store.claim_step("retried-member", 0, "k", [1], {}, 60, stage=0, task="g.do",
                             compensate="g.undo")  # fmt: skip
    assert claim.outcome is ClaimOutcome.CLAIMED
    store.release_step("retried-member", 0, "k", {"type": "E", "message": "again"})
    assert store.cancel_saga("retried-member", {"type": "x", "message": "sibling failed"})
    again = store.claim_step("retried-member", 0, "k2", [1], {}, 60, stage=0, task="g.do",
                             compensate="g.undo")  # fmt: skip
    assert again.outcome is ClaimOutcome.HALTED


def test_sagas_waiting_for_days_do_not_crowd_the_sweep(app: Celery) -> None:
    """A waiting saga is in the sweep's batch only once its wait is due."""
    store = get_store(app)
    plan = build_plan(app, [app.tasks["g.do"].si(1)], "g").as_json()
    for saga_id in ("waits-long", "waits-due"):
        _stored(app, saga_id, plan)
        due = utcnow() + timedelta(days=3 if saga_id == "waits-long" else -1)
        waiting = store.enter_wait(saga_id, 1, due=due.replace(tzinfo=UTC), args=[], stage=1,
                                   task="celery_saga.wait", final=True)  # fmt: skip
        assert waiting.outcome == "waiting"
    later = datetime.now(UTC) + timedelta(days=1)
    found = {s.id for s in store.unfinished_sagas(later, 100)}
    assert "waits-due" in found
    assert "waits-long" not in found
