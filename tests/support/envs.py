"""Saga test environments: an app, a running worker (thread or processes), a ledger."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery import Celery, Signature

import celery_saga
from celery_saga import Saga
from celery_saga.testing import worker

from .app import Ledger, make_app

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class SagaEnv:
    """One place to run sagas: the app to start them with and what the steps recorded."""

    name: str
    app: Celery
    ledger: Ledger

    def sig(self, task: str, *args: Any, immutable: bool = False, **kwargs: Any) -> Signature[Any]:
        return self.app.signature(f"shop.{task}", args=args, kwargs=kwargs, immutable=immutable)

    def saga(
        self,
        *steps: Any,
        name: str = "test",
        deadline: float | None = None,
        fail_fast: bool = False,
    ) -> Saga:
        return celery_saga.saga(
            *steps, name=name, app=self.app, deadline=deadline, fail_fast=fail_fast
        )


@contextmanager
def thread_env(name: str, store_url: str, ledger_url: str, **conf: Any) -> Iterator[SagaEnv]:
    """``memory://`` broker and a real Celery worker in a thread (threads pool, 4 wide)."""
    app = make_app("memory://", store_url, ledger_url, **conf)
    with worker(app):
        yield SagaEnv(name, app, app.ledger)  # type: ignore[attr-defined]


@contextmanager
def sqlite_thread_env(folder: Path, name: str, **conf: Any) -> Iterator[SagaEnv]:
    """:func:`thread_env` with a SQLite store (and ledger) in ``folder``."""
    url = f"sqlite:///{folder / 'store.sqlite3'}"
    with thread_env(name, url, url, **conf) as env:
        yield env


def wait_ready(log: Path, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Wait until the worker writing ``log`` says it is ready (or fail with its log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"worker exited with {process.returncode}:\n{log.read_text()}")
        if " ready." in log.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise RuntimeError(f"worker not ready after {timeout} s:\n{log.read_text()}")


@contextmanager
def worker_process(
    broker: str,
    store_url: str,
    ledger_url: str,
    queue: str,
    log: Path,
    concurrency: int = 2,
    extra_env: Mapping[str, str] | None = None,
    launcher: Sequence[str] = (),
) -> Iterator[subprocess.Popen[bytes]]:
    """``celery worker`` in a process of its own (prefork), on the given broker.

    ``launcher`` goes before the command (``opentelemetry-instrument``, say).
    """
    env = {
        **os.environ,
        **(extra_env or {}),
        "SAGA_TEST_BROKER": broker,
        "SAGA_TEST_STORE": store_url,
        "SAGA_TEST_LEDGER": ledger_url,
        "SAGA_TEST_QUEUE": queue,
        "PYTHONPATH": str(ROOT),
    }
    command = [
        *launcher, sys.executable, "-m", "celery", "-A", "tests.support.worker_app", "worker",
        "-P", "prefork", "-c", str(concurrency), "-Q", queue, "-l", "INFO",
        "-n", f"{queue}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(  # its own process group: a crash test kills all of it
            command, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        wait_ready(log, process)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextmanager
def broker_env(
    name: str, broker: str, store_url: str, ledger_url: str, queue: str, **conf: Any
) -> Iterator[SagaEnv]:
    """The test app on a real broker, sending to ``queue``; the queue is deleted after."""
    app = make_app(broker, store_url, ledger_url, queue=queue, **conf)
    try:
        yield SagaEnv(name, app, app.ledger)  # type: ignore[attr-defined]
    finally:
        try:
            with app.connection_for_write() as connection:
                connection.default_channel.queue_delete(queue)
        except Exception:  # best effort: the queue may be gone already
            pass
        app.close()


@contextmanager
def process_env(
    name: str, broker: str, store_url: str, ledger_url: str, log_dir: Path
) -> Iterator[SagaEnv]:
    """A real broker and a prefork worker process; the test process only produces."""
    queue = f"saga-test-{uuid.uuid4().hex[:8]}"
    with (
        worker_process(broker, store_url, ledger_url, queue, log_dir / f"{name}.log"),
        broker_env(name, broker, store_url, ledger_url, queue) as env,
    ):
        yield env
