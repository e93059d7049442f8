"""A small shop: checkout as a saga of four Celery tasks, two of them at the same time.

Run a worker with ``celery -A shop worker`` from this folder. With no settings it uses
the embedded defaults: the ``filesystem://`` broker in ``./.shop-broker`` (no server)
and the saga store ``celery_saga.sqlite3`` in the working directory. Set
``SHOP_BROKER`` (e.g. ``redis://127.0.0.1:6379/0``) and ``SHOP_SAGA_STORE``
(e.g. ``postgresql+psycopg://127.0.0.1/shop``) to use servers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from celery import Celery, group

import celery_saga
from celery_saga import saga_step

BROKER = os.environ.get("SHOP_BROKER", "filesystem://")

app = Celery("shop", broker=BROKER)
if BROKER.startswith("filesystem://"):
    folder = Path(os.environ.get("SHOP_BROKER_FOLDER", ".shop-broker")).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    app.conf.broker_transport_options = {
        "data_folder_in": str(folder),
        "data_folder_out": str(folder),
        # (kombu's default is ./control, in the working directory)
        "control_folder": str(folder / "control"),
        "polling_interval": 0.1,
    }
if "SHOP_SAGA_STORE" in os.environ:
    app.conf.saga_store_url = os.environ["SHOP_SAGA_STORE"]
celery_saga.install(app)


class OutOfStock(Exception):
    """Raised when an order asks for more than the warehouse has."""


@app.task
def refund_payment(payment: dict[str, Any], order_id: str, amount: int) -> None:
    """Compensation of charge_payment: gets its result and its arguments."""
    print(f"refunded {payment['payment_id']} ({amount}) for {order_id}")


@saga_step(compensate=refund_payment)
@app.task
def charge_payment(order_id: str, amount: int) -> dict[str, Any]:
    """Charge the customer; the idempotency key is the same on every retry."""
    step = celery_saga.current_step()
    key = step.idempotency_key if step else "no-saga"
    print(f"charged {amount} for {order_id} (idempotency key {key})")
    return {"payment_id": f"pay-{order_id}", "amount": amount}


@app.task
def release_inventory(reservation: dict[str, Any], skus: list[str]) -> None:
    """Compensation of reserve_inventory."""
    print(f"released {reservation['reservation_id']}")


@saga_step(compensate=release_inventory)
@app.task
def reserve_inventory(skus: list[str]) -> dict[str, Any]:
    """Reserve the items (an immutable step: it does not take the payment)."""
    print(f"reserved {', '.join(skus)}")
    return {"reservation_id": f"res-{'-'.join(skus)}", "skus": skus}


@app.task
def cancel_courier(booking: dict[str, Any], order_id: str) -> None:
    """Compensation of book_courier."""
    print(f"cancelled courier {booking['booking_id']}")


@saga_step(compensate=cancel_courier)
@app.task
def book_courier(order_id: str) -> dict[str, Any]:
    """Book a courier (runs at the same time as reserve_inventory)."""
    print(f"booked a courier for {order_id}")
    return {"booking_id": f"courier-{order_id}"}


@saga_step
@app.task
def create_order(prepared: list[dict[str, Any]], order_id: str) -> dict[str, Any]:
    """The last step: gets the group's results in order; fails when an item is out of stock."""
    reservation, booking = prepared
    if "sku-out-of-stock" in reservation["skus"]:
        raise OutOfStock(f"sku-out-of-stock is not available for {order_id}")
    return {"order_id": order_id, "status": "created", "courier": booking["booking_id"]}


def checkout(order_id: str, amount: int, skus: list[str]) -> celery_saga.Saga:
    """The checkout saga: charge; reserve and book a courier at once; create the order."""
    return celery_saga.saga(
        charge_payment.s(order_id, amount),
        group(reserve_inventory.si(skus), book_courier.si(order_id)),
        create_order.s(order_id),
        name="checkout",
    )


@saga_step
@app.task
def release_order(approval: dict[str, Any], order_id: str) -> dict[str, Any]:
    """After a person approved a large order: gets the approval signal's payload."""
    print(f"released {order_id}, approved by {approval['by']}")
    return {"order_id": order_id, "approved_by": approval["by"]}


def big_order(order_id: str, amount: int, approval_timeout: float) -> celery_saga.Saga:
    """A large order waits for a person's approval; without one in time it is refunded."""
    return celery_saga.saga(
        charge_payment.s(order_id, amount),
        celery_saga.wait_for("approved", timeout=approval_timeout, on_timeout="compensate"),
        release_order.s(order_id),
        name="big-order",
    )


def approved_checkout(
    order_id: str, amount: int, skus: list[str], approval_timeout: float
) -> celery_saga.Saga:
    """A checkout, run as a child saga, then a person's approval.

    Without an approval in time, the whole checkout is undone as a unit: its courier
    booking and stock reservation, then its charge.
    """
    return celery_saga.saga(
        checkout(order_id, amount, skus),
        celery_saga.wait_for("approved", timeout=approval_timeout, on_timeout="compensate"),
        release_order.s(order_id),
        name="approved-checkout",
    )
