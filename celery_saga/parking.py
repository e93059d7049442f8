"""A worker that lacks a task a saga's stored plan names: park the saga, keep the message.

An older or newer deploy may not have every task a stored plan names. Celery drops a
message for a task its worker does not know (``task_unknown``). For a saga's message
that would stop the saga until the recovery sweep's stall; instead the saga is
*parked*: the store notes which task, which saga version and which worker
(``celery saga list --parked``, ``show``), the ``saga_parked`` signal and an ERROR log
say so, and the very message is sent again (same body and headers) in
``saga_park_retry`` seconds, until a worker that has the task takes it. That worker
clears the note.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from celery import Celery, signals
from celery.utils.log import get_task_logger

from . import _drive
from ._runtime import get_store
from .config import get_config
from .dispatch import COMPENSATE_TASK, HEADER
from .status import SagaStatus

__all__ = ["connect_parking"]

logger = get_task_logger(__name__)


def _send_again(app: Celery, message: Any, header: dict[str, Any], delay: float) -> None:
    """Publish ``message`` again as it was, due in ``delay`` s, marked as parked."""
    headers = dict(message.headers or {})
    headers[HEADER] = {**header, "k": 1}
    headers["eta"] = (datetime.now(UTC) + timedelta(seconds=delay)).isoformat()
    info = message.delivery_info or {}
    with app.producer_or_acquire() as producer:
        producer.publish(
            message.body,
            exchange=info.get("exchange") or "",
            routing_key=info.get("routing_key"),
            headers=headers,
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            retry=True,
            **{k: v for k, v in (message.properties or {}).items() if k in ("priority",)},
        )


def _on_unknown_task(sender: Any, message: Any, name: str, **_: Any) -> None:
    """Celery's ``task_unknown``: park the saga the message belongs to and send it again."""
    app: Celery = sender.app
    header = (message.headers or {}).get(HEADER)
    if not isinstance(header, dict) or "id" not in header or COMPENSATE_TASK not in app.tasks:
        return  # not a saga's message, or not an app with sagas
    saga_id = header["id"]
    worker = getattr(sender, "hostname", None) or "this worker"
    delay = get_config(app).park_retry
    try:
        store = get_store(app)
        record = store.get_saga(saga_id)
        if record is None or record.status not in (SagaStatus.RUNNING, SagaStatus.WAITING):
            logger.warning(
                "saga %s: a message of task %r this worker does not have, for a saga that "
                "is %s: dropped",
                saga_id,
                name,
                "unknown" if record is None else record.status.value,
            )
            return
        _drive.park(app, record, header.get("i", 0), name, worker)
    except Exception:  # the message is sent again below even if the store is down
        logger.exception("saga %s: could not park the saga", saga_id)
    try:
        _send_again(app, message, header, delay)
    except Exception:
        logger.exception(
            "saga %s: could not send the message of task %r again; the recovery sweep does",
            saga_id,
            name,
        )


def connect_parking() -> None:
    """Receive Celery's ``task_unknown`` (once per process; it serves every app)."""
    signals.task_unknown.connect(_on_unknown_task, weak=False, dispatch_uid="celery_saga.park")
