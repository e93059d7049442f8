"""The saga behaviour suite, run in every environment (store x broker x worker kind).

Subclasses provide a class-scoped ``env`` fixture (a :class:`tests.support.envs.SagaEnv`).
"""

from __future__ import annotations

import time
import uuid

import pytest
from celery import chain, group

from celery_saga import (
    SagaCompensated,
    SagaConflictError,
    SagaFailed,
    SagaResult,
    SagaStateError,
    sleep,
    wait_for,
)
from celery_saga.dispatch import build_chain, publish, publish_stage
from celery_saga.status import SagaStatus, StepStatus
from tests.support.envs import SagaEnv

TIMEOUT = 30


def new_id() -> str:
    return f"t-{uuid.uuid4().hex}"


class SagaScenarios:
    """Semantics 1-3 and 6 of the design, against a real worker."""

    def test_steps_run_in_order_feeding_results(self, env: SagaEnv) -> None:
        """Forward steps run in order and each .s() step receives the previous result."""
        result = env.saga(
            env.sig("act", "o-1", tag="a"), env.sig("act", tag="b"), env.sig("act", tag="c")
        ).apply_async(saga_id=new_id())
        value = result.get(timeout=TIMEOUT)
        assert value["tag"] == "c"
        assert value["args"][0]["tag"] == "b"
        assert value["args"][0]["args"][0] == {"tag": "a", "args": ["o-1"]}
        assert result.status is SagaStatus.COMPLETED
        assert [e.tag for e in env.ledger.entries(result.id, "do")] == ["a", "b", "c"]
        steps = result.steps
        assert [s.status for s in steps] == [StepStatus.SUCCEEDED] * 3
        assert [s.attempts for s in steps] == [1, 1, 1]
        assert steps[1].args == [{"tag": "a", "args": ["o-1"]}]
        assert all(s.duration is not None and s.duration >= 0 for s in steps)

    def test_immutable_step_ignores_previous_result(self, env: SagaEnv) -> None:
        """An .si() step runs with its own arguments only."""
        result = env.saga(
            env.sig("act", 1, tag="a"), env.sig("act", 2, tag="b", immutable=True)
        ).apply_async(saga_id=new_id())
        assert result.get(timeout=TIMEOUT) == {"tag": "b", "args": [2]}

    def test_failure_compensates_succeeded_steps_in_reverse_once(self, env: SagaEnv) -> None:
        """A failing third step gets steps 2 then 1 undone, once each, with their results."""
        result = env.saga(
            env.sig("act", "x", tag="a"),
            env.sig("act", tag="b"),
            env.sig("act", tag="c", fail=True),
        ).apply_async(saga_id=new_id())
        with pytest.raises(SagaCompensated) as raised:
            result.get(timeout=TIMEOUT)
        assert raised.value.step_index == 2
        assert raised.value.step_name == "shop.act"
        assert raised.value.error["type"] == "tests.support.app.StepFailure"
        assert "c failed" in str(raised.value)
        undone = env.ledger.entries(result.id, "undo")
        assert [e.tag for e in undone] == ["b", "a"]
        a_result = {"tag": "a", "args": ["x"]}
        assert undone[1].payload == {"result": a_result, "args": ["x"]}
        assert undone[0].payload == {"result": {"tag": "b", "args": [a_result]}, "args": [a_result]}
        assert result.status is SagaStatus.COMPENSATED
        statuses = [s.status for s in result.steps]
        assert statuses == [StepStatus.COMPENSATED, StepStatus.COMPENSATED, StepStatus.FAILED]
        returned = result.get(timeout=TIMEOUT, propagate=False)
        assert isinstance(returned, SagaCompensated)

    def test_first_step_failure_ends_compensated(self, env: SagaEnv) -> None:
        """A saga whose first step fails ends COMPENSATED with nothing to undo."""
        result = env.saga(env.sig("act", tag="a", fail=True), env.sig("act", tag="b")).apply_async(
            saga_id=new_id()
        )
        with pytest.raises(SagaCompensated):
            result.get(timeout=TIMEOUT)
        assert env.ledger.entries(result.id, "undo") == []
        assert [s.status for s in result.steps] == [StepStatus.FAILED, StepStatus.PENDING]

    def test_step_without_compensation_is_left_alone(self, env: SagaEnv) -> None:
        """Steps without a compensation are passed over; the others are still undone."""
        result = env.saga(
            env.sig("act", tag="a"), env.sig("note", tag="n"), env.sig("act", tag="c", fail=True)
        ).apply_async(saga_id=new_id())
        with pytest.raises(SagaCompensated):
            result.get(timeout=TIMEOUT)
        assert [e.tag for e in env.ledger.entries(result.id, "undo")] == ["a"]
        assert [s.status for s in result.steps] == [
            StepStatus.COMPENSATED, StepStatus.SUCCEEDED, StepStatus.FAILED,
        ]  # fmt: skip

    def test_compensation_retried_until_it_succeeds(self, env: SagaEnv) -> None:
        """A compensation that fails once is retried and the saga ends COMPENSATED."""
        result = env.saga(
            env.sig("act", tag="a", fail_undo=1), env.sig("act", tag="b", fail=True)
        ).apply_async(saga_id=new_id())
        with pytest.raises(SagaCompensated):
            result.get(timeout=TIMEOUT)
        assert env.ledger.count("undo-attempt", "a", result.id) == 2
        assert env.ledger.count("undo", "a", result.id) == 1
        assert result.steps[0].compensation_attempts == 2

    def test_exhausted_compensation_fails_saga_but_others_run(self, env: SagaEnv) -> None:
        """A compensation that never succeeds makes the saga FAILED; earlier ones still run."""
        result = env.saga(
            env.sig("act", tag="a"),
            env.sig("act", tag="b", fail_undo=-1),
            env.sig("act", tag="c", fail=True),
        ).apply_async(saga_id=new_id())
        with pytest.raises(SagaFailed) as raised:
            result.get(timeout=TIMEOUT)
        assert env.ledger.count("undo-attempt", "b", result.id) == 3  # 1 + 2 retries
        assert env.ledger.count("undo", "a", result.id) == 1
        assert [e["step_index"] for e in raised.value.compensation_errors] == [1]
        assert "undo of b failed" in raised.value.compensation_errors[0]["error"]["message"]
        assert result.status is SagaStatus.FAILED
        assert result.steps[1].status is StepStatus.COMPENSATION_FAILED

    def test_duplicate_delivery_runs_each_body_once(self, env: SagaEnv) -> None:
        """Publishing a saga's messages again, during and after the run, runs no body twice."""
        result = env.saga(
            env.sig("act", tag="a", sleep=0.5), env.sig("act", tag="b"), env.sig("act", tag="c")
        ).apply_async(saga_id=new_id())
        plan = result.record.plan  # type: ignore[union-attr]
        publish(env.app, result.id, plan)  # while step a runs
        assert result.get(timeout=TIMEOUT)["tag"] == "c"
        build_chain(env.app, result.id, plan).apply_async()  # after the saga completed
        build_chain(env.app, result.id, plan, start=1).apply_async()
        time.sleep(1.5)
        for tag in "abc":
            assert env.ledger.count("do", tag, result.id) == 1, tag
        assert result.status is SagaStatus.COMPLETED
        assert [s.attempts for s in result.steps] == [1, 1, 1]

    def test_saga_id_is_idempotent(self, env: SagaEnv) -> None:
        """Starting the same saga_id and plan again returns the saga without running it again."""
        saga_id = new_id()
        steps = (env.sig("act", 1, tag="a"), env.sig("act", tag="b"))
        first = env.saga(*steps).apply_async(saga_id=saga_id)
        first.get(timeout=TIMEOUT)
        again = env.saga(*steps).apply_async(saga_id=saga_id)
        assert again == first
        assert again.get(timeout=TIMEOUT) == first.get(timeout=TIMEOUT)
        assert env.ledger.count("do", "a", saga_id) == 1

    def test_saga_id_with_other_plan_conflicts(self, env: SagaEnv) -> None:
        """Reusing a saga_id with a different plan raises SagaConflictError."""
        saga_id = new_id()
        env.saga(env.sig("act", 1, tag="a")).apply_async(saga_id=saga_id).get(timeout=TIMEOUT)
        with pytest.raises(SagaConflictError, match="different plan"):
            env.saga(env.sig("act", 2, tag="a")).apply_async(saga_id=saga_id)

    def test_result_reattaches_by_id(self, env: SagaEnv) -> None:
        """A SagaResult made from the id alone reads the same saga."""
        started = env.saga(env.sig("act", 1, tag="a")).apply_async(saga_id=new_id())
        again = SagaResult(started.id, app=env.app)
        assert again.get(timeout=TIMEOUT) == {"tag": "a", "args": [1]}
        assert again.successful()
        assert again.ready()
        assert again.record is not None
        assert again.record.name == "test"

    def test_celery_retry_inside_a_step(self, env: SagaEnv) -> None:
        """A step retried by Celery's autoretry counts attempts and keeps its idempotency key."""
        result = env.saga(env.sig("flaky", tag="f", fail_times=2)).apply_async(saga_id=new_id())
        assert result.get(timeout=TIMEOUT) == "f"
        step = result.steps[0]
        assert step.attempts == 3
        tries = env.ledger.entries(result.id, "do")
        assert [e.payload["attempt"] for e in tries] == [1, 2, 3]
        assert len({e.key for e in tries}) == 1

    def test_plain_delay_outside_a_saga_runs_unchanged(self, env: SagaEnv) -> None:
        """A saga step sent with .delay() runs as a plain task: no claim, no saga context."""
        tag = f"plain-{uuid.uuid4().hex[:8]}"
        env.sig("act", 5, tag=tag).delay()
        deadline = time.monotonic() + TIMEOUT
        while not (entries := [e for e in env.ledger.entries(action="do") if e.tag == tag]):
            assert time.monotonic() < deadline, "the plain task never ran"
            time.sleep(0.05)
        assert entries[0].saga_id is None
        assert entries[0].key is None
        assert entries[0].payload == {"args": [5]}

    def test_unstorable_result_fails_the_step(self, env: SagaEnv) -> None:
        """A step returning a non-JSON value fails with a clear error and is compensated for."""
        result = env.saga(env.sig("act", tag="a"), env.sig("opaque", tag="o")).apply_async(
            saga_id=new_id()
        )
        with pytest.raises(SagaCompensated, match="not JSON-serialisable"):
            result.get(timeout=TIMEOUT)
        assert env.ledger.count("undo", "a", result.id) == 1
        assert env.ledger.count("undo", "o", result.id) == 0

    def test_retry_policy_retries_then_succeeds(self, env: SagaEnv) -> None:
        """A step with RetryPolicy(attempts=3) that fails twice succeeds on its third attempt."""
        result = env.saga(env.sig("insist", tag="r", fail_times=2)).apply_async(saga_id=new_id())
        assert result.get(timeout=TIMEOUT) == "r"
        (step,) = result.steps
        assert step.attempts == 3
        assert [e.payload["attempt"] for e in env.ledger.entries(result.id, "do")] == [1, 2, 3]

    def test_retry_policy_exhausted_compensates(self, env: SagaEnv) -> None:
        """A step failing all its attempts fails for good; its error says which attempt it was."""
        result = env.saga(
            env.sig("act", tag="a"), env.sig("insist", tag="r", fail_times=9)
        ).apply_async(saga_id=new_id())
        with pytest.raises(SagaCompensated):
            result.get(timeout=TIMEOUT)
        step = result.steps[1]
        assert step.status is StepStatus.FAILED
        assert step.attempts == 3
        assert step.error is not None
        assert (step.error["attempt"], step.error["retryable"]) == (3, True)
        assert [(e["phase"], e["attempt"], e["retryable"]) for e in step.attempt_errors] == [
            ("step", 1, True), ("step", 2, True), ("step", 3, True)
        ]  # fmt: skip
        assert env.ledger.count("do", "r", result.id) == 3
        assert env.ledger.count("undo", "a", result.id) == 1

    def test_error_the_policy_does_not_retry_fails_at_once(self, env: SagaEnv) -> None:
        """An error outside retry_on fails the step on its first attempt, marked not retryable."""
        result = env.saga(
            env.sig("act", tag="a"), env.sig("insist", tag="r", fatal=True)
        ).apply_async(saga_id=new_id())
        with pytest.raises(SagaCompensated, match="bad input"):
            result.get(timeout=TIMEOUT)
        step = result.steps[1]
        assert step.attempts == 1
        assert step.error is not None
        assert (step.error["type"], step.error["retryable"]) == ("ValueError", False)
        assert env.ledger.count("undo", "a", result.id) == 1

    def _wait_for_do(self, env: SagaEnv, saga_id: str, tag: str) -> None:
        deadline = time.monotonic() + TIMEOUT
        while env.ledger.count("do", tag, saga_id) == 0:
            assert time.monotonic() < deadline, f"step {tag} never started"
            time.sleep(0.02)

    def test_cancel_while_a_step_runs_undoes_it_too(self, env: SagaEnv) -> None:
        """cancel() during step 2 of 3: step 3 never starts, steps 2 then 1 are undone."""
        result = env.saga(
            env.sig("act", tag="a"), env.sig("act", tag="b", sleep=1.0), env.sig("act", tag="c")
        ).apply_async(saga_id=new_id())
        self._wait_for_do(env, result.id, "b")
        assert result.cancel("customer changed their mind")
        with pytest.raises(SagaCompensated, match=r"cancelled: .*customer changed their mind"):
            result.get(timeout=TIMEOUT)
        assert env.ledger.count("do", "c", result.id) == 0
        assert [e.tag for e in env.ledger.entries(result.id, "undo")] == ["b", "a"]
        assert [s.status for s in result.steps] == [
            StepStatus.COMPENSATED, StepStatus.COMPENSATED, StepStatus.PENDING
        ]  # fmt: skip
        assert not result.cancel("again")  # not running any more: nothing to do

    def test_cancel_during_the_last_step(self, env: SagaEnv) -> None:
        """A saga cancelled while its last step runs does not complete: both steps are undone."""
        result = env.saga(env.sig("act", tag="a"), env.sig("act", tag="b", sleep=1.0)).apply_async(
            saga_id=new_id()
        )
        self._wait_for_do(env, result.id, "b")
        assert result.cancel("stop")
        with pytest.raises(SagaCompensated):
            result.get(timeout=TIMEOUT)
        assert result.status is SagaStatus.COMPENSATED
        assert [e.tag for e in env.ledger.entries(result.id, "undo")] == ["b", "a"]

    def test_cancel_then_the_running_step_fails(self, env: SagaEnv) -> None:
        """If the step running at cancel time fails, the steps before it are undone once."""
        result = env.saga(
            env.sig("act", tag="a"), env.sig("act", tag="b", sleep=1.0, fail=True)
        ).apply_async(saga_id=new_id())
        self._wait_for_do(env, result.id, "b")
        assert result.cancel("stop")
        with pytest.raises(SagaCompensated, match="cancelled"):
            result.get(timeout=TIMEOUT)
        assert [e.tag for e in env.ledger.entries(result.id, "undo")] == ["a"]

    def test_cancel_of_an_ended_saga_does_nothing(self, env: SagaEnv) -> None:
        """cancel() of a completed saga returns False and changes nothing."""
        result = env.saga(env.sig("act", tag="a")).apply_async(saga_id=new_id())
        result.get(timeout=TIMEOUT)
        assert not result.cancel("too late")
        assert result.status is SagaStatus.COMPLETED
        assert env.ledger.count("undo", "a", result.id) == 0

    def test_deadline_passed_during_a_step_stops_the_next(self, env: SagaEnv) -> None:
        """A saga past its deadline= starts no new step: the steps that ran are undone."""
        result = env.saga(
            env.sig("act", tag="a"), env.sig("act", tag="b", sleep=1.5), env.sig("act", tag="c"),
            deadline=1.0,
        ).apply_async(saga_id=new_id())  # fmt: skip
        with pytest.raises(SagaCompensated, match=r"ran out of time: .*deadline of 1 s"):
            result.get(timeout=TIMEOUT)
        assert env.ledger.count("do", "c", result.id) == 0
        assert [e.tag for e in env.ledger.entries(result.id, "undo")] == ["b", "a"]
        assert result.steps[2].status is StepStatus.PENDING

    def test_saga_within_its_deadline_completes(self, env: SagaEnv) -> None:
        """A deadline= that is not reached changes nothing."""
        result = env.saga(env.sig("act", tag="a"), env.sig("act", tag="b"), deadline=60)
        assert result.apply_async(saga_id=new_id()).get(timeout=TIMEOUT)["tag"] == "b"

    def test_retry_compensation_after_a_fix(self, env: SagaEnv) -> None:
        """retry_compensation() reruns a FAILED saga's given-up undo; the saga ends COMPENSATED."""
        result = env.saga(
            env.sig("act", tag="a", fail_undo=3), env.sig("act", tag="b", fail=True)
        ).apply_async(saga_id=new_id())
        with pytest.raises(SagaFailed):
            result.get(timeout=TIMEOUT)
        first = result.steps[0]
        assert first.status is StepStatus.COMPENSATION_FAILED
        assert [e["phase"] for e in first.attempt_errors] == ["compensation"] * 3
        assert [e["attempt"] for e in first.attempt_errors] == [1, 2, 3]
        assert result.retry_compensation() == [0]
        with pytest.raises(SagaCompensated):
            result.get(timeout=TIMEOUT)
        assert env.ledger.count("undo", "a", result.id) == 1
        assert env.ledger.count("undo-attempt", "a", result.id) == 4
        assert result.steps[0].status is StepStatus.COMPENSATED
        assert result.retry_compensation() == []  # not FAILED any more

    # -- parallel groups (semantics 12) ------------------------------------------------

    def _undone(self, env: SagaEnv, saga_id: str) -> list[str]:
        return [e.tag for e in env.ledger.entries(saga_id, "undo")]

    def test_group_joins_and_passes_results_in_member_order(self, env: SagaEnv) -> None:
        """The stage after a group gets the list of its members' results, in member order."""
        result = env.saga(
            env.sig("act", "o-1", tag="a"),
            group(
                env.sig("act", tag="b", sleep=0.3), env.sig("act", tag="c"), env.sig("act", tag="d")
            ),
            env.sig("act", tag="e"),
        ).apply_async(saga_id=new_id())
        value = result.get(timeout=TIMEOUT)
        a = {"tag": "a", "args": ["o-1"]}
        assert value == {
            "tag": "e",
            "args": [[{"tag": t, "args": [a]} for t in "bcd"]],
        }
        steps = result.steps
        assert [s.stage for s in steps] == [0, 1, 1, 1, 2]
        assert [s.status for s in steps] == [StepStatus.SUCCEEDED] * 5
        assert [s.attempts for s in steps] == [1] * 5
        for tag in "abcde":
            assert env.ledger.count("do", tag, result.id) == 1, tag

    def test_saga_may_start_and_end_with_a_group(self, env: SagaEnv) -> None:
        """A saga that is only a group completes with the list of its members' results."""
        result = env.saga(
            group(env.sig("act", 1, tag="a"), env.sig("act", 2, tag="b", immutable=True))
        ).apply_async(saga_id=new_id())
        assert result.get(timeout=TIMEOUT) == [
            {"tag": "a", "args": [1]}, {"tag": "b", "args": [2]}
        ]  # fmt: skip

    def test_branch_member_runs_its_chain_in_order(self, env: SagaEnv) -> None:
        """A chain inside a group runs step by step; the next stage gets the branch's end."""
        result = env.saga(
            group(
                chain(env.sig("act", "x", tag="b1"), env.sig("act", tag="b2")),
                env.sig("act", "y", tag="c"),
            ),
            env.sig("act", tag="e"),
        ).apply_async(saga_id=new_id())
        value = result.get(timeout=TIMEOUT)
        b1 = {"tag": "b1", "args": ["x"]}
        assert value["args"] == [[{"tag": "b2", "args": [b1]}, {"tag": "c", "args": ["y"]}]]
        assert [(s.index, s.stage) for s in result.steps] == [(0, 0), (1, 0), (2, 0), (3, 1)]

    def test_member_failing_lets_siblings_finish_then_undoes_all(self, env: SagaEnv) -> None:
        """A member failing for good: its sibling in flight finishes, then it and the earlier
        step are undone once each, the group before the stage before it; nothing after runs."""
        result = env.saga(
            env.sig("act", tag="a"),
            group(
                env.sig("act", tag="b", sleep=1.0), env.sig("act", tag="c", sleep=0.2, fail=True)
            ),
            env.sig("act", tag="e"),
        ).apply_async(saga_id=new_id())
        with pytest.raises(SagaCompensated, match="c failed") as raised:
            result.get(timeout=TIMEOUT)
        assert raised.value.step_index == 2
        assert self._undone(env, result.id) == ["b", "a"]
        assert env.ledger.count("do", "e", result.id) == 0
        assert [s.status for s in result.steps] == [
            StepStatus.COMPENSATED, StepStatus.COMPENSATED, StepStatus.FAILED, StepStatus.PENDING
        ]  # fmt: skip
        b = result.steps[1]
        assert b.finished_at is not None
        assert b.compensation_started_at is not None
        assert b.compensation_started_at >= b.finished_at  # it finished before any undo

    def test_succeeded_members_are_undone_side_by_side(self, env: SagaEnv) -> None:
        """When the step after a group fails, every member is undone, then the step before."""
        result = env.saga(
            env.sig("act", tag="a"),
            group(*(env.sig("act", tag=f"m{i}") for i in range(3))),
            env.sig("act", tag="e", fail=True),
        ).apply_async(saga_id=new_id())
        with pytest.raises(SagaCompensated):
            result.get(timeout=TIMEOUT)
        undone = self._undone(env, result.id)
        assert sorted(undone[:3]) == ["m0", "m1", "m2"]
        assert undone[3:] == ["a"]
        assert result.status is SagaStatus.COMPENSATED

    def test_member_retried_then_succeeding(self, env: SagaEnv) -> None:
        """A member with a retry policy that fails twice is retried and the group joins."""
        result = env.saga(
            group(env.sig("insist", tag="r", fail_times=2), env.sig("act", tag="b")),
            env.sig("act", tag="e"),
        ).apply_async(saga_id=new_id())
        assert result.get(timeout=TIMEOUT)["args"] == [["r", {"tag": "b", "args": []}]]
        assert result.steps[0].attempts == 3

    def test_duplicate_delivery_of_a_member_runs_it_once(self, env: SagaEnv) -> None:
        """A group's members published again, during and after the run, run no body twice."""
        result = env.saga(
            env.sig("act", tag="a"),
            group(env.sig("act", tag="b", sleep=0.5), env.sig("act", tag="c")),
            env.sig("act", tag="e"),
        ).apply_async(saga_id=new_id())
        self._wait_for_do(env, result.id, "b")
        plan = result.record.plan  # type: ignore[union-attr]
        publish_stage(env.app, result.id, plan, 1, previous=({"tag": "a", "args": []},))
        assert result.get(timeout=TIMEOUT)["tag"] == "e"
        publish_stage(env.app, result.id, plan, 1, previous=({"tag": "a", "args": []},))
        time.sleep(1.0)
        for tag in "abce":
            assert env.ledger.count("do", tag, result.id) == 1, tag
        assert [s.attempts for s in result.steps] == [1, 1, 1, 1]

    def test_cancel_during_a_group_undoes_its_members(self, env: SagaEnv) -> None:
        """cancel() while a group runs: nothing after it starts, its members and the step
        before are undone once each."""
        result = env.saga(
            env.sig("act", tag="a"),
            group(env.sig("act", tag="b", sleep=1.0), env.sig("act", tag="c", sleep=1.0)),
            env.sig("act", tag="e"),
        ).apply_async(saga_id=new_id())
        self._wait_for_do(env, result.id, "b")
        assert result.cancel("stop")
        with pytest.raises(SagaCompensated, match="cancelled"):
            result.get(timeout=TIMEOUT)
        undone = self._undone(env, result.id)
        assert env.ledger.count("do", "e", result.id) == 0
        ran = {t for t in "bc" if env.ledger.count("do", t, result.id)}
        assert sorted(undone[:-1]) == sorted(ran)
        assert undone[-1] == "a"

    def test_deadline_passed_during_a_group(self, env: SagaEnv) -> None:
        """A saga whose deadline passes while its group runs starts nothing after it."""
        result = env.saga(
            env.sig("act", tag="a"),
            group(env.sig("act", tag="b", sleep=1.5), env.sig("act", tag="c")),
            env.sig("act", tag="e"),
            deadline=1.0,
        ).apply_async(saga_id=new_id())
        with pytest.raises(SagaCompensated, match="deadline of 1 s"):
            result.get(timeout=TIMEOUT)
        assert env.ledger.count("do", "e", result.id) == 0
        undone = self._undone(env, result.id)
        assert sorted(undone[:2]) == ["b", "c"]
        assert undone[2:] == ["a"]

    def test_group_of_200_members_from_a_generator(self, env: SagaEnv) -> None:
        """A group built from a generator of 200 members joins with 200 results in order."""
        result = env.saga(
            group(env.sig("echo", tag=f"w{i}", value=i, immutable=True) for i in range(200)),
            env.sig("two_args", "total"),
        ).apply_async(saga_id=new_id())
        assert result.get(timeout=120) == [list(range(200)), "total"]
        assert len(result.steps) == 201

    def test_fail_fast_still_undoes_every_member_that_succeeded(self, env: SagaEnv) -> None:
        """With fail_fast, siblings still running are stopped if the worker can, and each
        member that succeeded anyway is undone once."""
        result = env.saga(
            env.sig("act", tag="a"),
            group(
                env.sig("act", tag="b", sleep=1.0), env.sig("act", tag="c", sleep=0.2, fail=True)
            ),
            fail_fast=True,
        ).apply_async(saga_id=new_id())
        with pytest.raises(SagaCompensated, match="c failed"):
            result.get(timeout=TIMEOUT)
        b = result.steps[1]
        assert b.status in (StepStatus.COMPENSATED, StepStatus.FAILED)
        assert self._undone(env, result.id) == (["b", "a"] if b.result is not None else ["a"])

    def test_group_saga_id_is_idempotent_and_conflicts_on_another_plan(self, env: SagaEnv) -> None:
        """Starting a group saga's id again returns it; with other members it conflicts."""
        saga_id = new_id()

        def steps(*tags: str) -> tuple[object, ...]:
            return (env.sig("act", tag="a"), group(*(env.sig("act", tag=t) for t in tags)))

        first = env.saga(*steps("b", "c")).apply_async(saga_id=saga_id)
        first.get(timeout=TIMEOUT)
        assert env.saga(*steps("b", "c")).apply_async(saga_id=saga_id) == first
        assert env.ledger.count("do", "b", saga_id) == 1
        with pytest.raises(SagaConflictError, match="different plan"):
            env.saga(*steps("c", "b")).apply_async(saga_id=saga_id)

    # -- waits and sleeps --------------------------------------------------------------

    def _wait_for_status(self, result: SagaResult, status: SagaStatus) -> None:
        deadline = time.monotonic() + TIMEOUT
        while result.status is not status:
            assert time.monotonic() < deadline, f"never {status} (is {result.status})"
            time.sleep(0.02)

    def test_approval_arrives_and_its_payload_is_passed_on(self, env: SagaEnv) -> None:
        """A saga waits at wait_for (WAITING, no worker held); the signal's payload goes on."""
        result = env.saga(
            env.sig("act", tag="a"), wait_for("approved", timeout=60), env.sig("act", tag="b")
        ).apply_async(saga_id=new_id())
        self._wait_for_status(result, SagaStatus.WAITING)
        assert result.steps[1].status is StepStatus.WAITING
        assert env.ledger.count("do", "b", result.id) == 0
        assert result.signal("approved", {"by": "alice"}) is True
        value = result.get(timeout=TIMEOUT)
        assert value == {"tag": "b", "args": [{"by": "alice"}]}
        assert result.steps[1].result == {"by": "alice"}
        with pytest.raises(SagaStateError, match="COMPLETED"):
            result.signal("approved")

    def test_approval_never_arrives_compensates_at_the_timeout(self, env: SagaEnv) -> None:
        """A wait whose timeout passes undoes the saga with a WaitTimedOut error."""
        started = time.monotonic()
        result = env.saga(
            env.sig("act", tag="a"), wait_for("approved", timeout=1.0), env.sig("act", tag="b")
        ).apply_async(saga_id=new_id())
        with pytest.raises(SagaCompensated, match="no signal 'approved' within") as raised:
            result.get(timeout=TIMEOUT)
        assert time.monotonic() - started >= 1.0
        assert raised.value.error["type"] == "celery_saga.WaitTimedOut"
        assert self._undone(env, result.id) == ["a"]
        assert env.ledger.count("do", "b", result.id) == 0
        assert result.steps[1].status is StepStatus.FAILED

    def test_signal_before_the_wait_is_kept(self, env: SagaEnv) -> None:
        """A signal sent while the saga is still at an earlier step ends the wait on arrival."""
        result = env.saga(
            env.sig("act", tag="a", sleep=0.5), wait_for("approved"), env.sig("act", tag="b")
        ).apply_async(saga_id=new_id())
        self._wait_for_do(env, result.id, "a")
        assert result.signal("approved", 7) is False  # kept: not there yet
        with pytest.raises(SagaStateError, match="again"):
            result.signal("approved", 8)
        assert result.get(timeout=TIMEOUT) == {"tag": "b", "args": [7]}

    def test_cancel_while_waiting_undoes_the_saga(self, env: SagaEnv) -> None:
        """cancel() of a WAITING saga undoes what ran; the wait never ends."""
        result = env.saga(
            env.sig("act", tag="a"), wait_for("approved"), env.sig("act", tag="b")
        ).apply_async(saga_id=new_id())
        self._wait_for_status(result, SagaStatus.WAITING)
        assert result.cancel("no approval needed")
        with pytest.raises(SagaCompensated, match="cancelled"):
            result.get(timeout=TIMEOUT)
        assert self._undone(env, result.id) == ["a"]
        assert result.steps[1].status is StepStatus.PENDING
        with pytest.raises(SagaStateError):
            result.signal("approved")

    def test_sleep_passes_the_result_on_after_its_time(self, env: SagaEnv) -> None:
        """sleep(1) holds the saga a second (no worker held), then the next step gets the
        result of the step before it."""
        started = time.monotonic()
        result = env.saga(env.sig("act", tag="a"), sleep(1.0), env.sig("act", tag="b")).apply_async(
            saga_id=new_id()
        )
        value = result.get(timeout=TIMEOUT)
        assert time.monotonic() - started >= 1.0
        assert value == {"tag": "b", "args": [{"tag": "a", "args": []}]}

    def test_wait_timing_out_can_go_on_or_fail(self, env: SagaEnv) -> None:
        """on_timeout="continue" goes on with None; "fail" ends the saga FAILED, undoing nothing."""
        going = env.saga(
            env.sig("act", tag="a"), wait_for("x", timeout=0.2, on_timeout="continue"),
            env.sig("act", tag="b"),
        ).apply_async(saga_id=new_id())  # fmt: skip
        failing = env.saga(
            env.sig("act", tag="a"), wait_for("x", timeout=0.2, on_timeout="fail")
        ).apply_async(saga_id=new_id())
        assert going.get(timeout=TIMEOUT) == {"tag": "b", "args": [None]}
        with pytest.raises(SagaFailed, match="no signal 'x'"):
            failing.get(timeout=TIMEOUT)
        assert self._undone(env, failing.id) == []
        assert failing.retry_compensation() == [0]  # a person decided: undo it after all
        with pytest.raises(SagaCompensated, match="no signal 'x'"):
            failing.get(timeout=TIMEOUT)
        assert self._undone(env, failing.id) == ["a"]

    # -- child sagas -------------------------------------------------------------------

    def _undo_order(self, env: SagaEnv, *saga_ids: str) -> list[str]:
        """The tags undone in these sagas, in the order the undos happened."""
        wanted = set(saga_ids)
        return [e.tag for e in env.ledger.entries(action="undo") if e.saga_id in wanted]

    def test_child_saga_completes_and_its_result_goes_on(self, env: SagaEnv) -> None:
        """A saga given as a stage runs as a child saga with its own id and rows; its first
        step gets the result before it, and the stage after it gets the child's result."""
        child = env.saga(env.sig("act", tag="b"), env.sig("act", tag="c"), name="stay")
        result = env.saga(
            env.sig("act", "o-1", tag="a"), child, env.sig("act", tag="d"), name="trip"
        ).apply_async(saga_id=new_id())
        value = result.get(timeout=TIMEOUT)
        child_id = f"{result.id}.1"
        c = {"tag": "c", "args": [{"tag": "b", "args": [{"tag": "a", "args": ["o-1"]}]}]}
        assert value == {"tag": "d", "args": [c]}
        assert result.steps[1].status is StepStatus.SUCCEEDED
        assert result.steps[1].result == c
        record = SagaResult(child_id, app=env.app).record
        assert record is not None
        assert (record.name, record.status) == ("stay", SagaStatus.COMPLETED)
        assert (record.parent_id, record.parent_step) == (result.id, 1)
        assert [e.tag for e in env.ledger.entries(child_id, "do")] == ["b", "c"]
        assert [e.tag for e in env.ledger.entries(result.id, "do")] == ["a", "d"]

    def test_child_saga_that_fails_undoes_itself_then_its_parent(self, env: SagaEnv) -> None:
        """A child whose step fails compensates itself first; then the parent's stage fails
        and the parent compensates what came before, with the child's error."""
        child = env.saga(env.sig("act", tag="b"), env.sig("act", tag="c", fail=True))
        result = env.saga(env.sig("act", tag="a"), child, env.sig("act", tag="d")).apply_async(
            saga_id=new_id()
        )
        with pytest.raises(SagaCompensated, match="c failed") as raised:
            result.get(timeout=TIMEOUT)
        child_id = f"{result.id}.1"
        assert raised.value.error["child"] == child_id
        assert self._undo_order(env, result.id, child_id) == ["b", "a"]
        assert SagaResult(child_id, app=env.app).status is SagaStatus.COMPENSATED
        assert result.steps[1].status is StepStatus.FAILED
        assert env.ledger.count("do", "d", result.id) == 0

    def test_completed_child_is_undone_as_a_unit_in_reverse(self, env: SagaEnv) -> None:
        """A step failing after a completed child undoes the child's steps (newest first),
        then the steps before the child."""
        child = env.saga(env.sig("act", tag="b"), env.sig("act", tag="c"), name="stay")
        result = env.saga(
            env.sig("act", tag="a"), child, env.sig("act", tag="d", fail=True)
        ).apply_async(saga_id=new_id())
        with pytest.raises(SagaCompensated, match="d failed"):
            result.get(timeout=TIMEOUT)
        child_id = f"{result.id}.1"
        assert self._undo_order(env, result.id, child_id) == ["c", "b", "a"]
        assert SagaResult(child_id, app=env.app).status is SagaStatus.COMPENSATED
        assert result.steps[1].status is StepStatus.COMPENSATED

    def test_child_may_hold_groups_waits_and_children(self, env: SagaEnv) -> None:
        """A child with a group, a wait and a child of its own completes when signalled, and
        is undone as a whole when its parent compensates later."""
        inner = env.saga(env.sig("act", tag="d"), name="inner")
        child = env.saga(
            group(env.sig("act", tag="b"), env.sig("act", tag="c")),
            wait_for("go", timeout=60),
            inner,
            name="mid",
        )
        result = env.saga(
            env.sig("act", tag="a"), child, env.sig("act", tag="e", fail=True)
        ).apply_async(saga_id=new_id())
        child_id, inner_id = f"{result.id}.1", f"{result.id}.1.3"
        middle = SagaResult(child_id, app=env.app)
        self._wait_for_status_of(env, child_id, SagaStatus.WAITING)
        assert result.status is SagaStatus.WAITING
        assert middle.signal("go", "ok") is True
        with pytest.raises(SagaCompensated, match="e failed"):
            result.get(timeout=TIMEOUT)
        assert env.ledger.entries(inner_id, "do")[0].payload == {"args": ["ok"]}
        undone = self._undo_order(env, result.id, child_id, inner_id)
        assert undone[0] == "d"
        assert sorted(undone[1:3]) == ["b", "c"]
        assert undone[3:] == ["a"]
        statuses = [SagaResult(i, app=env.app).status for i in (child_id, inner_id)]
        assert statuses == [SagaStatus.COMPENSATED, SagaStatus.COMPENSATED]

    def test_cancel_of_the_parent_cancels_its_running_child(self, env: SagaEnv) -> None:
        """cancel() of a parent waiting at its child cancels the child, which undoes itself
        first; then the parent undoes what came before."""
        child = env.saga(env.sig("act", tag="b"), wait_for("never"), env.sig("act", tag="c"))
        result = env.saga(env.sig("act", tag="a"), child).apply_async(saga_id=new_id())
        child_id = f"{result.id}.1"
        self._wait_for_status_of(env, child_id, SagaStatus.WAITING)
        assert result.cancel("changed my mind")
        with pytest.raises(SagaCompensated, match="changed my mind"):
            result.get(timeout=TIMEOUT)
        assert self._undo_order(env, result.id, child_id) == ["b", "a"]
        record = SagaResult(child_id, app=env.app).record
        assert record is not None
        assert record.status is SagaStatus.COMPENSATED
        assert "its parent saga" in (record.error or {})["message"]
        assert result.steps[1].status is StepStatus.COMPENSATED

    def _wait_for_status_of(self, env: SagaEnv, saga_id: str, status: SagaStatus) -> None:
        deadline = time.monotonic() + TIMEOUT
        result = SagaResult(saga_id, app=env.app)
        while result.record is None or result.status is not status:
            assert time.monotonic() < deadline, f"{saga_id} never {status}"
            time.sleep(0.02)

    def test_child_that_cannot_undo_itself_fails_its_parent_until_retried(
        self, env: SagaEnv
    ) -> None:
        """A child whose compensation gives up ends FAILED, and so does its parent after
        undoing the rest; retry_compensation() of the parent retries the child's."""
        child = env.saga(env.sig("act", tag="b", fail_undo=3), env.sig("act", tag="c", fail=True))
        result = env.saga(env.sig("act", tag="a"), child).apply_async(saga_id=new_id())
        child_id = f"{result.id}.1"
        with pytest.raises(SagaFailed):
            result.get(timeout=TIMEOUT)
        assert SagaResult(child_id, app=env.app).status is SagaStatus.FAILED
        assert result.steps[1].status is StepStatus.COMPENSATION_FAILED
        assert self._undo_order(env, result.id, child_id) == ["a"]
        assert result.retry_compensation() == [1]
        with pytest.raises(SagaCompensated, match="c failed"):
            result.get(timeout=TIMEOUT)
        assert self._undo_order(env, result.id, child_id) == ["a", "b"]
        assert SagaResult(child_id, app=env.app).status is SagaStatus.COMPENSATED
        assert result.steps[1].status is StepStatus.COMPENSATED

    def test_child_after_a_group_is_undone_before_the_group(self, env: SagaEnv) -> None:
        """In a parent with a group before its child, a later failure undoes the child as a
        unit first, then the group's members."""
        child = env.saga(env.sig("act", tag="c"), env.sig("act", tag="d"))
        result = env.saga(
            group(env.sig("act", tag="a1"), env.sig("act", tag="a2")),
            env.sig("act", tag="b", immutable=True),
            child,
            env.sig("act", tag="e", fail=True),
        ).apply_async(saga_id=new_id())
        with pytest.raises(SagaCompensated, match="e failed"):
            result.get(timeout=TIMEOUT)
        child_id = f"{result.id}.3"
        undone = self._undo_order(env, result.id, child_id)
        assert undone[:3] == ["d", "c", "b"]
        assert sorted(undone[3:]) == ["a1", "a2"]
        assert env.ledger.entries(child_id, "do")[0].payload == {"args": [{"tag": "b", "args": []}]}

    def test_child_of_a_parent_with_a_deadline_runs(self, env: SagaEnv) -> None:
        """A parent's deadline= does not keep its child from starting (its wake-up is due
        at the deadline, but the child's first stage goes out first)."""
        child = env.saga(env.sig("act", tag="b"), name="stay")
        result = env.saga(
            env.sig("act", tag="a"), child, env.sig("act", tag="c"), deadline=20
        ).apply_async(saga_id=new_id())
        assert result.get(timeout=TIMEOUT)["tag"] == "c"
        assert env.ledger.count("do", "b", f"{result.id}.1") == 1

    def test_child_whose_id_is_taken_fails_its_parent(self, env: SagaEnv) -> None:
        """A child saga whose id another saga has already is never started: its parent is
        compensated with a SagaConflictError, and the other saga is left alone."""
        parent_id = new_id()
        other = env.saga(env.sig("act", tag="x")).apply_async(saga_id=f"{parent_id}.1")
        other.get(timeout=TIMEOUT)
        result = env.saga(env.sig("act", tag="a"), env.saga(env.sig("act", tag="b"))).apply_async(
            saga_id=parent_id
        )
        with pytest.raises(SagaCompensated, match="is another saga's") as raised:
            result.get(timeout=TIMEOUT)
        assert raised.value.error["type"] == "celery_saga.SagaConflictError"
        assert self._undone(env, result.id) == ["a"]
        assert [e.tag for e in env.ledger.entries(other.id, "do")] == ["x"]  # b never ran
        record = other.record
        assert record is not None
        assert (record.status, record.parent_id) == (SagaStatus.COMPLETED, None)
