"""The checkout saga's steps, each with what undoes it."""

from celery_saga import RetryPolicy, Saga, current_step, saga, saga_step

from .celery import app
from .services import gateway, warehouse


class CarrierUnavailable(Exception):
    """The carrier's API did not answer."""


@app.task
def release_stock(result: None, order_id: str, sku: str) -> None:
    warehouse.release(sku)


@saga_step(compensate=release_stock)
@app.task
def reserve_stock(order_id: str, sku: str) -> None:
    warehouse.reserve(sku)


@app.task
def refund_card(result: dict[str, str], order_id: str, amount: int) -> None:
    gateway.refund(result["charge_id"])


@saga_step(compensate=refund_card)
@app.task
def charge_card(order_id: str, amount: int) -> dict[str, str]:
    step = current_step()
    key = step.idempotency_key if step else f"charge-{order_id}"
    return {"charge_id": gateway.charge(key, order_id, amount)}


@saga_step(retry=RetryPolicy(attempts=3, backoff=0.01, retry_on=(CarrierUnavailable,)))
@app.task
def ship_order(order_id: str) -> dict[str, str]:
    return {"tracking": f"T-{order_id}"}


def checkout(order_id: str, sku: str, amount: int) -> Saga:
    return saga(
        reserve_stock.si(order_id, sku),
        charge_card.si(order_id, amount),
        ship_order.si(order_id),
        name="checkout",
    )
