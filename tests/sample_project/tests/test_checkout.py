"""The checkout saga: it completes, or is undone, even when a worker dies."""

from celery_saga import SagaCompensated, SagaFailed, SagaStatus, StepStatus

from shop.services import gateway, warehouse
from shop.tasks import CarrierUnavailable, charge_card, checkout, ship_order


def test_checkout_completes(saga_worker):
    """A checkout reserves the book, charges 30 and ships."""
    result = checkout("o-1", "book", 30).apply_async()

    assert result.get(timeout=10) == {"tracking": "T-o-1"}
    assert gateway.balance("o-1") == 30
    assert warehouse.reserved == {"book": 1}


# --8<-- [start:retry]
def test_carrier_hiccups_are_retried(saga_worker, saga_faults):
    """Two failed calls to the carrier are retried and the checkout still completes."""
    hiccup = saga_faults.fail(ship_order, times=2, error=CarrierUnavailable)

    result = checkout("o-2", "book", 30).apply_async()

    assert result.get(timeout=10) == {"tracking": "T-o-2"}
    assert hiccup.fired == 2
    assert result.steps[2].attempts == 3


# --8<-- [end:retry]


# --8<-- [start:compensated]
def test_failed_shipment_refunds_and_releases(saga_worker, saga_faults, saga_events):
    """When shipping fails for good, the card is refunded and the stock released, in that order."""
    saga_faults.fail(ship_order, error=ValueError("no such address"))

    result = checkout("o-3", "book", 30).apply_async()
    outcome = result.get(timeout=10, propagate=False)

    assert isinstance(outcome, SagaCompensated)
    assert outcome.error["message"] == "no such address"
    assert gateway.balance("o-3") == 0
    assert warehouse.reserved == {}
    assert [step.status for step in result.steps] == [
        StepStatus.COMPENSATED,
        StepStatus.COMPENSATED,
        StepStatus.FAILED,
    ]
    saga_events.wait_for("saga_compensated", saga_id=result.id)
    undone = [event.step_name for event in saga_events.of("compensation_succeeded", result.id)]
    assert undone == ["shop.tasks.charge_card", "shop.tasks.reserve_stock"]


# --8<-- [end:compensated]


def test_a_refund_that_fails_is_retried(saga_worker, saga_faults):
    """A refund that fails twice is retried until it goes through."""
    saga_faults.fail(ship_order, error=ValueError("no such address"))
    refund_trouble = saga_faults.fail_compensation(charge_card, times=2)

    result = checkout("o-4", "book", 30).apply_async()

    assert isinstance(result.get(timeout=10, propagate=False), SagaCompensated)
    assert refund_trouble.fired == 2
    assert result.steps[1].compensation_attempts == 3
    assert gateway.balance("o-4") == 0


# --8<-- [start:failed]
def test_a_refund_that_never_works_needs_a_person(saga_worker, saga_faults):
    """A refund that keeps failing leaves the saga FAILED; once fixed, retrying it refunds."""
    saga_faults.fail(ship_order, error=ValueError("no such address"))
    saga_faults.fail_compensation(charge_card, times=None)

    result = checkout("o-5", "book", 30).apply_async()

    assert isinstance(result.get(timeout=10, propagate=False), SagaFailed)
    assert gateway.balance("o-5") == 30
    saga_faults.clear()  # the gateway is back
    assert result.retry_compensation() == [1]
    assert isinstance(result.get(timeout=10, propagate=False), SagaCompensated)
    assert gateway.balance("o-5") == 0


# --8<-- [end:failed]


# --8<-- [start:crash]
def test_worker_lost_after_charging_does_not_charge_twice(saga_worker, saga_faults):
    """A worker lost after charging stalls the saga; recovery charges again under the same key."""
    crash = saga_faults.crash(charge_card, at="after")

    result = checkout("o-6", "book", 30).apply_async()
    crash.wait()
    assert result.status is SagaStatus.RUNNING
    assert result.steps[1].status is StepStatus.RUNNING

    saga_faults.recover(result.id)

    assert result.get(timeout=10) == {"tracking": "T-o-6"}
    assert gateway.calls == ["charge o-6", "charge o-6"]
    assert gateway.balance("o-6") == 30


# --8<-- [end:crash]


def test_worker_lost_while_refunding(saga_worker, saga_faults):
    """A worker lost before refunding leaves the saga compensating; recovery finishes it."""
    saga_faults.fail(ship_order, error=ValueError("no such address"))
    crash = saga_faults.crash(charge_card, compensation=True)

    result = checkout("o-7", "book", 30).apply_async()
    crash.wait()
    assert result.status is SagaStatus.COMPENSATING

    saga_faults.recover(result.id)

    assert isinstance(result.get(timeout=10, propagate=False), SagaCompensated)
    assert gateway.balance("o-7") == 0
    assert warehouse.reserved == {}


# --8<-- [start:events]
def test_events_of_a_checkout(saga_worker, saga_events):
    """A completed checkout sends the saga's start, each step's start and success, its end."""
    result = checkout("o-8", "book", 30).apply_async()

    saga_events.wait_for("saga_completed", saga_id=result.id)
    assert saga_events.names(result.id) == [
        "saga_started",
        "step_started", "step_succeeded",
        "step_started", "step_succeeded",
        "step_started", "step_succeeded",
        "saga_completed",
    ]  # fmt: skip
    charged = saga_events.of("step_succeeded", result.id)[1]
    assert charged.step_name == "shop.tasks.charge_card"
    assert charged.attempt == 1


# --8<-- [end:events]
