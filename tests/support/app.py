"""The Celery app the saga tests run: built by a factory so each environment gets its own.

The steps write to a ledger table of their own (not the library's tables), so the tests
check what really ran against an independent record.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import JSON, Column, Integer, MetaData, String, Table, insert, select

import celery_saga
from celery_saga import RetryPolicy, current_step, saga_step
from celery_saga.store import make_engine

ledger_metadata = MetaData()
ledger_table = Table(
    "saga_test_ledger",
    ledger_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("saga_id", String(255), nullable=True),
    Column("action", String(32), nullable=False),
    Column("tag", String(64), nullable=False),
    Column("payload", JSON, nullable=True),
    Column("key", String(64), nullable=True),
)


class StepFailure(Exception):
    """The error the test steps raise on purpose."""


class Ledger:
    """What the test steps and compensations really did, in a table of their own."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        ledger_metadata.create_all(self.engine, checkfirst=True)
        # a prefork child must not use the connections it inherited from the parent
        os.register_at_fork(after_in_child=lambda: self.engine.dispose(close=False))

    def add(self, action: str, tag: str, payload: Any = None) -> None:
        context = current_step()
        with self.engine.begin() as connection:
            connection.execute(
                insert(ledger_table).values(
                    saga_id=context.saga_id if context else None,
                    action=action,
                    tag=tag,
                    payload=payload,
                    key=context.idempotency_key if context else None,
                )
            )

    def entries(self, saga_id: str | None = None, action: str | None = None) -> list[Any]:
        query = select(ledger_table).order_by(ledger_table.c.id)
        if saga_id is not None:
            query = query.where(ledger_table.c.saga_id == saga_id)
        if action is not None:
            query = query.where(ledger_table.c.action == action)
        with self.engine.connect() as connection:
            return list(connection.execute(query).all())

    def add_once(self, action: str, tag: str) -> bool:
        """Record an effect once per idempotency key, as an idempotent step would."""
        context = current_step()
        assert context is not None
        with self.engine.begin() as connection:
            done = connection.execute(
                select(ledger_table.c.id).where(
                    ledger_table.c.key == context.idempotency_key,
                    ledger_table.c.action == action,
                )
            ).first()
        if done is None:
            self.add(action, tag)
        return done is None

    def count(self, action: str, tag: str, saga_id: str | None = None) -> int:
        return sum(1 for e in self.entries(saga_id, action) if e.tag == tag)


def make_app(
    broker: str, store_url: str, ledger_url: str, queue: str = "celery", **conf: Any
) -> Celery:
    """A saga-ready app with the test steps registered under ``shop.*``; ``conf`` adds settings."""
    app = Celery("shop", broker=broker, set_as_current=False)
    app.conf.update(
        {
            "saga_store_url": store_url,
            "saga_compensation_max_retries": 2,
            "saga_compensation_retry_delay": 0.05,
            "task_default_queue": queue,
            "broker_connection_retry_on_startup": True,
            "worker_hijack_root_logger": False,
            "worker_prefetch_multiplier": 1,
            **conf,
        }
    )
    if broker.startswith(("memory://", "filesystem://")):
        app.conf.broker_transport_options = {"polling_interval": 0.01}
    celery_saga.install(app)
    ledger = Ledger(ledger_url)
    app.ledger = ledger  # type: ignore[attr-defined]

    @app.task(name="shop.undo", shared=False)
    def undo(result: Any, *args: Any, tag: str, fail_undo: int = 0, **kwargs: Any) -> None:
        """Compensation: fails its first ``fail_undo`` attempts (-1: always)."""
        ledger.add("undo-attempt", tag, {"result": result, "args": list(args)})
        attempts = ledger.count("undo-attempt", tag, current_step().saga_id)  # type: ignore[union-attr]
        if fail_undo < 0 or attempts <= fail_undo:
            raise StepFailure(f"undo of {tag} failed (attempt {attempts})")
        ledger.add("undo", tag, {"result": result, "args": list(args)})

    @saga_step(compensate=undo)
    @app.task(name="shop.act", shared=False)
    def act(
        *args: Any,
        tag: str,
        fail: bool = False,
        sleep: float = 0.0,
        soft_timeout: bool = False,
        hang_first: float = 0.0,
        **kwargs: Any,
    ) -> Any:
        """A step: records itself, optionally sleeps and fails, returns its tag and args.

        ``hang_first``: sleep this long in the first attempt only (to be killed in).
        """
        ledger.add("do", tag, {"args": list(args)})
        if sleep:
            time.sleep(sleep)
        if hang_first and current_step().attempt == 1:  # type: ignore[union-attr]
            time.sleep(hang_first)
        if soft_timeout:  # what Celery raises inside a task at its soft time limit
            raise SoftTimeLimitExceeded()
        if fail:
            raise StepFailure(f"{tag} failed")
        return {"tag": tag, "args": list(args)}

    @saga_step
    @app.task(name="shop.note", shared=False)
    def note(*args: Any, tag: str, **kwargs: Any) -> str:
        """A step with no compensation."""
        ledger.add("do", tag, {"args": list(args)})
        return tag

    @saga_step(compensate=undo)
    @app.task(
        name="shop.flaky",
        shared=False,
        autoretry_for=(StepFailure,),
        retry_kwargs={"max_retries": 3, "countdown": 0.05},
    )
    def flaky(*args: Any, tag: str, fail_times: int = 1, **kwargs: Any) -> str:
        """A step that fails its first ``fail_times`` attempts, retried by Celery."""
        ledger.add("do", tag, {"attempt": current_step().attempt})  # type: ignore[union-attr]
        if ledger.count("do", tag, current_step().saga_id) <= fail_times:  # type: ignore[union-attr]
            raise StepFailure(f"{tag} flaked")
        return tag

    @saga_step(
        compensate=undo,
        retry=RetryPolicy(attempts=3, backoff=0.02, max_backoff=0.05, retry_on=(StepFailure,)),
    )
    @app.task(name="shop.insist", shared=False)
    def insist(*args: Any, tag: str, fail_times: int = 0, fatal: bool = False, **kw: Any) -> str:
        """A step with a retry policy: fails its first ``fail_times`` attempts; ``fatal``
        raises an error the policy does not retry."""
        context = current_step()
        assert context is not None
        ledger.add("do", tag, {"attempt": context.attempt})
        if fatal:
            raise ValueError(f"{tag}: bad input")
        if context.attempt <= fail_times:
            raise StepFailure(f"{tag} failed (attempt {context.attempt})")
        return tag

    @saga_step(compensate=undo, timeout=1.0, compensate_on_timeout=True)
    @app.task(name="shop.slow", shared=False)
    def slow(*args: Any, tag: str, sleep: float = 0.0, **kwargs: Any) -> str:
        """A step with a 1 s timeout, in doubt when it times out."""
        ledger.add("do", tag)
        time.sleep(sleep)
        return tag

    @app.task(name="chaos.undo", shared=False)
    def chaos_undo(result: Any, *args: Any, index: int, undo_fails: int = 0, **kw: Any) -> None:
        """Chaos compensation: fails its first ``undo_fails`` attempts, then undoes once."""
        context = current_step()
        assert context is not None
        ledger.add("undo-attempt", str(index))
        if context.attempt <= undo_fails:
            raise StepFailure(f"undo of step {index} failed (attempt {context.attempt})")
        time.sleep(kw.get("pause", 0.0))
        ledger.add_once("undo", str(index))

    @saga_step(compensate=chaos_undo)
    @app.task(name="chaos.step", shared=False)
    def chaos_step(*args: Any, index: int, fail: bool, pause: float, **kw: Any) -> int:
        """Chaos step: every run is an "attempt"; fails before its effect, or applies it once."""
        ledger.add("attempt", str(index))
        time.sleep(pause)  # a window to be killed in
        if fail:
            raise StepFailure(f"step {index} failed")
        ledger.add_once("do", str(index))
        return index

    @saga_step(compensate=undo)
    @app.task(name="shop.opaque", shared=False)
    def opaque(*args: Any, tag: str, **kwargs: Any) -> Any:
        """A step whose result cannot be stored as JSON."""
        ledger.add("do", tag)
        return object()

    @saga_step
    @app.task(name="shop.two_args", shared=False)
    def two_args(a: Any, b: Any) -> Any:
        """A step of two positional arguments (no keywords)."""
        return [a, b]

    @saga_step(compensate=undo)
    @app.task(name="shop.echo", shared=False)
    def echo(*args: Any, tag: str, value: Any = None, poison: str = "", **kwargs: Any) -> Any:
        """A step that returns ``value`` as it is; ``poison``: text no store keeps instead."""
        ledger.add("do", tag)
        if poison == "nul":
            return {"text": "a\x00b"}
        if poison == "surrogate":
            return ["\udc80"]
        return value

    return app


def app_from_env() -> Celery:
    """The app of a worker process, from the SAGA_TEST_* environment variables.

    ``SAGA_TEST_WITHOUT``: task names (comma-separated) this worker does not have, as an
    older or newer deploy would not.
    """
    app = make_app(
        broker=os.environ["SAGA_TEST_BROKER"],
        store_url=os.environ["SAGA_TEST_STORE"],
        ledger_url=os.environ["SAGA_TEST_LEDGER"],
        queue=os.environ.get("SAGA_TEST_QUEUE", "celery"),
        **json.loads(os.environ.get("SAGA_TEST_CONF", "{}")),
    )
    for name in filter(None, os.environ.get("SAGA_TEST_WITHOUT", "").split(",")):
        app.tasks.unregister(name)
    return app
