"""@saga_step keeps the task what it was, and binds it however the task was made."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery, Task, shared_task
from celery.contrib.testing.worker import start_worker

import celery_saga
from celery_saga import SagaStatus, saga, saga_step
from celery_saga.step import step_definition


# Celery 5.7 deprecates the queue task attribute (for task_routes); it still works.
@pytest.mark.filterwarnings("ignore::celery.exceptions.CDeprecationWarning")
def test_decorator_keeps_task_options(app: Celery) -> None:
    """The decorated task keeps its name, queue, rate limit and retry options."""

    @saga_step(compensate="shop.undo")
    @app.task(name="shop.kept", shared=False, queue="payments", rate_limit="10/s", max_retries=7)
    def kept(x: int) -> int:
        return x * 2

    assert kept.name == "shop.kept"
    assert kept.queue == "payments"
    assert kept.rate_limit == "10/s"
    assert kept.max_retries == 7
    assert kept(21) == 42  # called directly: the plain function
    assert kept.apply(args=(4,)).get() == 8
    definition = step_definition(app.tasks["shop.kept"])
    assert definition is not None
    assert definition.compensation_name == "shop.undo"


def test_decorator_on_an_evaluated_task(app: Celery) -> None:
    """A task made after the app is finalized is bound at once."""
    app.finalize()

    @app.task(name="shop.late", shared=False)
    def late() -> str:
        return "late"

    assert saga_step(compensate=app.tasks["shop.undo"])(late) is late
    assert step_definition(app.tasks["shop.late"]) is not None


def test_decorator_on_a_class_based_task(app: Celery) -> None:
    """A class-based task registered on the app can be made a saga step."""

    class Ship(Task):  # type: ignore[type-arg]
        name = "shop.ship"

        def run(self, order: str) -> str:
            return f"shipped {order}"

    app.register_task(Ship())
    task = saga_step(compensate="shop.undo")(app.tasks["shop.ship"])
    assert step_definition(task) is not None
    assert task("o-1") == "shipped o-1"


def test_decorator_refuses_a_plain_function() -> None:
    """@saga_step below @app.task (or on a function) fails at decoration with a hint."""
    with pytest.raises(TypeError, match="on top of a Celery task"):

        @saga_step(compensate="x")
        def not_a_task() -> None: ...


def test_decorator_refuses_a_bad_compensation() -> None:
    """compensate= must be a task or a task name."""
    with pytest.raises(TypeError, match="compensate= takes a Celery task"):
        saga_step(compensate=42)


_shared_calls: list[Any] = []


@shared_task(name="shared.reserve")
def _shared_undo(result: Any, *args: Any) -> None:
    _shared_calls.append(("undo", result))


@saga_step(compensate=_shared_undo)
@shared_task(name="shared.charge")
def _shared_charge(amount: int) -> dict[str, int]:
    return {"charged": amount}


@saga_step
@shared_task(name="shared.explode")
def _shared_explode(*args: Any) -> None:
    raise RuntimeError("explode")


def test_shared_task_steps_run_on_an_installed_app(store_url: str) -> None:
    """@saga_step over @shared_task is bound when an installed app is finalized."""
    import celery.contrib.testing.tasks  # noqa: F401

    app = Celery("sharing", broker="memory://", set_as_current=False)
    app.conf.update(saga_store_url=store_url, broker_transport_options={"polling_interval": 0.01})
    celery_saga.install(app)
    with start_worker(app, pool="solo", perform_ping_check=False, loglevel="WARNING"):
        charge = app.signature("shared.charge", args=(5,))
        explode = app.signature("shared.explode")
        result = saga(charge, explode, app=app).apply_async()
        result.get(timeout=20, propagate=False)
    assert result.status is SagaStatus.COMPENSATED
    assert ("undo", {"charged": 5}) in _shared_calls


def test_timeout_becomes_the_message_time_limits(app: Celery) -> None:
    """timeout= is the step message's soft time limit; the hard one follows a little later."""
    plan = saga(app.signature("shop.slow", kwargs={"tag": "s"}), name="t", app=app).plan()
    (step,) = plan.steps
    assert step["options"]["soft_time_limit"] == 1.0
    assert step["options"]["time_limit"] == 3.0
    assert step["undo_timeout"] is True
    plain = saga(app.signature("shop.act", kwargs={"tag": "a"}), name="t", app=app).plan()
    assert "undo_timeout" not in plain.steps[0]
    assert "soft_time_limit" not in plain.steps[0]["options"]


def test_in_doubt_step_undoes_itself_first(app: Celery) -> None:
    """A compensate_on_timeout step's compensation chain starts with its own compensation."""
    from celery_saga.dispatch import (
        HEADER,
        compensation_chain,
        step_delivery,
        step_signatures,
        undo_list,
    )

    plan = saga(
        app.signature("shop.act", kwargs={"tag": "a"}),
        app.signature("shop.slow", kwargs={"tag": "s"}),
        name="t",
        app=app,
    ).plan()
    stored = plan.as_json()
    second = step_signatures(app, "s-1", stored)[1]
    assert step_delivery(second.options["headers"][HEADER]).undo[0] == 1
    errback = compensation_chain(app, "s-1", stored, undo_list(stored["steps"], 1))
    assert errback is not None
    assert [task.args for task in errback.tasks] == [("s-1", 1), ("s-1", 0)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"timeout": 0}, "timeout= takes a number of seconds > 0"),
        ({"timeout": "1m"}, "timeout= takes a number of seconds > 0"),
        ({"compensate_on_timeout": True}, "needs compensate="),
    ],
)
def test_bad_timeouts_are_refused(kwargs: dict[str, Any], message: str) -> None:
    """A bad timeout= or compensate_on_timeout without a compensation fails at decoration."""
    with pytest.raises(TypeError, match=message):
        saga_step(**kwargs)
