"""The benchmark's Celery app: the same no-op body as a plain task and as a saga step."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, chord

import celery_saga
from celery_saga import saga_step

app = Celery(
    "bench",
    broker=os.environ.get("BENCH_BROKER", "redis://127.0.0.1:6379/5"),
    backend=os.environ.get("BENCH_BACKEND", "redis://127.0.0.1:6379/6"),
)
app.conf.update(
    saga_store_url=os.environ.get(
        "BENCH_STORE", "postgresql+psycopg://postgres@127.0.0.1:5432/celery_saga_bench"
    ),
    task_default_queue="bench",
    worker_prefetch_multiplier=4,
    result_expires=600,
)
celery_saga.install(app)


@app.task
def noop(*args: Any) -> int:
    """A plain Celery task that does nothing."""
    return 1


@app.task
def undo(result: Any, *args: Any) -> None:
    """The compensation of the saga step (runs on the failure path only)."""


@app.task
def boom(*args: Any) -> int:
    """A plain Celery task that fails (the failure path's last task)."""
    raise RuntimeError("boom")


@app.task
def undo_plain() -> int:
    """A plain compensation, sent by a hand-written ``link_error`` chain."""
    return 1


@app.task
def undo_group(request: Any, exc: Any, traceback: Any, *, members: list[str], last: str) -> None:
    """The hand-written undo of ``a -> group(b, c, d) -> e`` in plain Celery.

    A new-style errback on the chord's body: Celery calls it in the worker that returns
    the header's last member (the chord join), once every member has finished, when one
    of them failed. It reads the members' states from the result backend (one MGET),
    then sends the compensations of those that succeeded side by side and, after them,
    the compensation of ``a``: a chord whose body has the task id ``last`` (its result
    says the undoing is over).
    """
    backend: Any = app.backend
    metas = backend.mget([backend.get_key_for_task(member) for member in members])
    succeeded = [
        meta is not None and backend.decode_result(meta)["status"] == "SUCCESS" for meta in metas
    ]
    undo_a = undo_plain.si().set(task_id=last)
    undo_members = [undo_plain.si() for ok in succeeded if ok]
    if undo_members:
        chord(undo_members, undo_a).apply_async()
    else:
        undo_a.apply_async()


@saga_step(compensate=undo)
@app.task
def step(*args: Any) -> int:
    """The same no-op, as a saga step."""
    return 1


@saga_step(compensate=undo)
@app.task
def failing(*args: Any) -> int:
    """A saga step that fails: the steps before it are compensated."""
    raise RuntimeError("boom")
