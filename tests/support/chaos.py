"""What the chaos test needs besides the test app: a step with a retry policy, a worker it
can kill and start again, and a Redis server of its own that it can restart."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from celery_saga import RetryPolicy, current_step, saga_step

from .app import Ledger, StepFailure, app_from_env
from .envs import ROOT, wait_ready
from .services import in_ci

__all__ = [
    "GROUP_RETRY_STEP",
    "GROUP_STEP",
    "RETRY",
    "Flake",
    "RedisServer",
    "WorkerProcess",
    "chaos_app_from_env",
    "register_chaos_tasks",
    "require_binary",
]


class Flake(Exception):
    """A transient error: the retry step raises it in its first attempts."""


#: The retry policy of ``chaos.retry_step``: up to 4 attempts, 50 ms, 100 ms, 200 ms apart.
RETRY = RetryPolicy(
    attempts=4, backoff=0.05, max_backoff=0.2, jitter=True, retry_on=(Flake, StepFailure)
)


#: The steps of the sagas with groups or child sagas: they leave the test evidence of
#: each attempt.
GROUP_STEP, GROUP_RETRY_STEP = "chaos.group_step", "chaos.group_retry_step"


def register_chaos_tasks(app: Celery) -> None:
    """Add the chaos test's own tasks to an app made by :func:`tests.support.app.make_app`:
    ``chaos.retry_step`` and the steps of the sagas with groups or child sagas."""
    ledger: Ledger = app.ledger  # type: ignore[attr-defined]

    @saga_step(compensate="chaos.undo", retry=RETRY)
    @app.task(name="chaos.retry_step", shared=False)
    def retry_step(*args: Any, index: int, fail: bool, flakes: int, pause: float, **kw: Any) -> int:
        """A step with a retry policy: fails its first ``flakes`` attempts with a transient
        error (then applies its effect once), or, with ``fail``, every attempt."""
        context = current_step()
        assert context is not None
        ledger.add("attempt", str(index))
        time.sleep(pause)  # a window to be killed in
        if fail:  # the same error every attempt: the one the saga must report
            raise StepFailure(f"step {index} failed")
        if context.attempt <= flakes:
            raise Flake(f"step {index} flaked (attempt {context.attempt})")
        ledger.add_once("do", str(index))
        return index

    @app.task(name="chaos.group_undo", shared=False)
    def group_undo(result: Any, *args: Any, index: int, undo_fails: int = 0, **kw: Any) -> None:
        """Compensation of a step of a saga with groups: fails its first ``undo_fails``
        attempts, then undoes the step's effect once if it was applied (a member killed
        while its saga compensated is undone in doubt: it may not have applied it)."""
        context = current_step()
        assert context is not None
        ledger.add("undo-attempt", str(index))
        if context.attempt <= undo_fails:
            raise StepFailure(f"undo of step {index} failed (attempt {context.attempt})")
        time.sleep(kw.get("pause", 0.0))
        if not ledger.count("do", str(index), context.saga_id):
            ledger.add("undo-nothing", str(index))  # in doubt, and it had not taken effect
            return
        ledger.add_once("undo", str(index))

    def attempt(
        index: int, fail: bool, flakes: int, pause: float, member: bool, child: bool
    ) -> int:
        """One attempt, between an ``attempt`` and an ``end`` row of the same token: a token
        without its ``end`` is an attempt whose process was killed in it. The ``attempt``
        row says which process runs it and until when at least (``at`` + ``pause``), and
        whether it is a group member's, or a child saga's step."""
        context = current_step()
        assert context is not None
        token = uuid.uuid4().hex
        at = time.time()
        evidence = {
            "pid": os.getpid(), "token": token, "member": member, "child": child, "at": at,
            "pause": pause,
        }  # fmt: skip
        ledger.add("attempt", str(index), evidence)
        try:
            time.sleep(pause)  # a window to be killed in
            if fail:  # the same error every attempt: the one the saga must report
                raise StepFailure(f"step {index} failed")
            if context.attempt <= flakes:
                raise Flake(f"step {index} flaked (attempt {context.attempt})")
            ledger.add_once("do", str(index))
            return index
        finally:
            ledger.add("end", str(index), {"token": token})

    @saga_step(compensate=group_undo)
    @app.task(name=GROUP_STEP, shared=False)
    def group_step(
        *args: Any,
        index: int,
        fail: bool,
        pause: float,
        member: bool = False,
        child: bool = False,
        **kw: Any,
    ) -> int:
        """A step of a saga with groups or child sagas: fails before its effect, or applies
        it once."""
        return attempt(index, fail, 0, pause, member, child)

    @saga_step(compensate=group_undo, retry=RETRY)
    @app.task(name=GROUP_RETRY_STEP, shared=False)
    def group_retry_step(
        *args: Any,
        index: int,
        fail: bool,
        flakes: int,
        pause: float,
        member: bool = False,
        child: bool = False,
        **kw: Any,
    ) -> int:
        """``chaos.group_step`` with the retry policy: fails its first ``flakes`` attempts
        with a transient error (then applies its effect once), or, with ``fail``, every one."""
        return attempt(index, fail, flakes, pause, member, child)


def chaos_app_from_env() -> Celery:
    """The worker's app: the test app from the environment, with the chaos tasks."""
    app = app_from_env()
    register_chaos_tasks(app)
    return app


def require_binary(name: str) -> str:
    """The path of the program ``name``; skip (locally) or fail (with CI=true) without it."""
    path = shutil.which(name)
    if path is not None:
        return path
    message = f"{name} is not installed (not found on PATH)"
    if in_ci():
        pytest.fail(f"{message}; CI=true requires it", pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class RedisServer:
    """A ``redis-server`` of the test's own, with nothing persisted, that it can restart."""

    def __init__(self, binary: str, log: Path) -> None:
        self.binary = binary
        self.log = log
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it answers PING."""
        command = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--daemonize", "no",
        ]  # fmt: skip
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start:\n{self.log.read_text()}")
            time.sleep(0.05)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as connection:
                connection.sendall(b"PING\r\n")
                return connection.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the server (what it held is gone: nothing is saved)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self, down: float) -> None:
        """Stop the server, leave it down ``down`` seconds, start it again (empty)."""
        self.stop()
        time.sleep(down)
        self.start()


def _children(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after its ")"
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            children.append(int(entry.name))
    return children


class WorkerProcess:
    """A prefork ``celery worker`` of the chaos app, that the test kills and starts again.

    Each start writes a log of its own, ``<logs>/<name>-<n>.log``.
    """

    def __init__(
        self,
        broker: str,
        store_url: str,
        ledger_url: str,
        queue: str,
        logs: Path,
        name: str,
        concurrency: int = 2,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.env = {
            **os.environ,
            **(extra_env or {}),
            "SAGA_TEST_BROKER": broker,
            "SAGA_TEST_STORE": store_url,
            "SAGA_TEST_LEDGER": ledger_url,
            "SAGA_TEST_QUEUE": queue,
            "PYTHONPATH": str(ROOT),
        }
        self.command = [
            sys.executable, "-m", "celery", "-A", "tests.support.chaos_worker", "worker",
            "-P", "prefork", "-c", str(concurrency), "-Q", queue, "-l", "INFO",
            "-n", f"{queue}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        self.logs = logs
        self.name = name
        self.starts = 0
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start a worker and wait until it is ready."""
        log = self.logs / f"{self.name}-{self.starts}.log"
        self.starts += 1
        with log.open("wb") as out:
            self.process = subprocess.Popen(  # its own process group: kill() kills all of it
                self.command, env=self.env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        wait_ready(log, self.process)

    def alive(self) -> bool:
        """Whether the worker runs (it may have died on its own: a worker whose consumer
        hits an unrecoverable error as the Redis broker restarts exits)."""
        return self.process is not None and self.process.poll() is None

    def children(self) -> list[int]:
        """The pids of the worker's pool processes."""
        assert self.process is not None
        return _children(self.process.pid)

    def kill(self) -> list[int]:
        """``kill -9`` the worker's process group: the worker and its pool processes.

        Returns their pids, the worker's first.
        """
        assert self.process is not None
        pids = [self.process.pid, *self.children()]
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.process = None
        return pids

    def kill_child(self, child: int | None = None) -> int:
        """``kill -9`` one of the worker's pool processes, ``child`` or one at random (the
        worker starts another)."""
        assert self.process is not None
        if child is None:
            children = self.children()
            assert children, "the worker has no pool process"
            child = random.choice(children)
        os.kill(child, signal.SIGKILL)
        return child

    def stop(self) -> None:
        """Stop the worker (warm shutdown), or kill it if it does not stop in 20 s."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
