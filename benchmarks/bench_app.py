"""The benchmark's Celery app: the same no-op body as a plain task and as a saga step."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

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
