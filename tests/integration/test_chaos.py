"""Chaos: 1,000 sagas over Redis and RabbitMQ with the faults we know of, all at once.

Of each broker's 500 sagas, 180 have parallel groups (a member may be a chain of steps;
some sagas start or end with a group), the rest are straight lines of steps; mixed in
with both, 127 wait for a signal (``wait_for``, a timeout of 2-4 s, every on_timeout)
and 73 sleep 1-4 s. The test sends the signals from a thread of its own: some before
the saga gets to its wait (kept), some while it waits, some as the timeout passes, some
never; and a second time now and then (refused). Steps fail
for good or transiently (retried by their ``RetryPolicy``), compensations fail once, the
worker and its pool processes are ``kill -9``ed (most of the kills aimed at a moment a
group member's body is running), the PostgreSQL store is cut off for 10 s (a TCP proxy
the test controls), and on Redis the broker, a ``redis-server`` of the test's own, is
restarted empty. Afterwards every saga must have ended as its plan says, checked against
the ledger the steps write themselves (not only the saga tables): a fault delays a saga,
it never changes how it ends. How a wait ended (its signal, or its timeout: a signal
racing the timeout may lose) is read from the store, and must agree with what signal()
answered; all else follows from it exactly.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import json
import random
import resource
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis.exceptions
from celery import chain, group
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy import create_engine, func, make_url, select

from celery_saga import (
    SagaRecord,
    SagaResult,
    SagaStateError,
    SagaStatus,
    SagaStoreError,
    StepRecord,
    StepStatus,
    recover,
    wait_for,
)
from celery_saga import sleep as saga_sleep
from celery_saga.store.schema import saga_steps
from celery_saga.waits import ON_TIMEOUT, WAIT_TASK
from tests.scenarios import new_id
from tests.support.app import Ledger, StepFailure, ledger_table
from tests.support.chaos import (
    GROUP_RETRY_STEP,
    GROUP_STEP,
    RETRY,
    RedisServer,
    WorkerProcess,
    register_chaos_tasks,
    require_binary,
)
from tests.support.envs import SagaEnv, broker_env
from tests.support.proxy import TcpProxy
from tests.support.services import RABBITMQ_URL, require

pytestmark = pytest.mark.postgres

SAGAS = 500  # per broker: 1,000 over the two
GROUPED = 180  # of them with parallel groups: 360 over the two, mixed in with the rest
RATE = 15.0  # sagas started per second (while the store and the broker let us): the worker
# keeps up with it, so that what the faults cost shows, not an overload
CONCURRENCY = 3  # pool processes of the worker, on 2 cores. They wait on the store and the
# ledger more than they compute: 2 kept up with linear sagas only, but with the groups
# they fell behind from the first second (the queue grew ~8 messages/s at ~0.4 CPU)
LEASE = 3.0  # saga_step_lease
# saga_recovery_stall: longer than the store retries a 10 s cut makes (a message whose
# first try fails as the cut begins comes back 1, 2, 4, 8 s later: 15 s after it), as in
# production (300 s against at most 30 s); shorter, and the sweep re-sends every saga the
# cut caught before its own retry comes back, and the store-retry path goes untested
STALL = 20.0
SWEEP_EVERY = 1.0  # seconds between two recover(app) calls of the test's sweep thread
VISIBILITY = 10.0  # Redis visibility_timeout: a kill -9'd unacked message comes back
RESTORE = {"unacked_restore_interval": 1, "unacked_restore_throttle": 2}  # ...within 2 s more
STORE_CUT = 10.0  # seconds the proxy refuses and drops every store connection
BROKER_DOWN = 2.0  # seconds the test's redis-server is down when it restarts it
WAIT = 120.0  # seconds, after the last start and the last fault, for every saga to end
PLAIN, RETRYING = "chaos.step", "chaos.retry_step"
MID_GROUP = 3  # at least this many of a run's kill -9s land while a group member runs
AIM_WAIT = 3.0  # seconds an aimed kill waits for a member in flight (then kills anyway: the
# worker may run nothing, e.g. its consumer died in kombu when the Redis broker restarted)
AIM_MARGIN = 0.008  # ...with at least this long left in its pause (to be killed in)
STEP_FAILURE = f"{StepFailure.__module__}.{StepFailure.__qualname__}"
WAIT_TIMED_OUT = "celery_saga.WaitTimedOut"  # the error type of a wait whose timeout passed
SIGNAL = "approved"  # the signal every wait_for stage waits for
WAITS = 0.27  # of the sagas with 2+ stages of steps, those with a wait_for stage between two
SLEEPS = 0.15  # ...with a sleep stage (in another gap than the wait's, if there is one)
TIMEOUT = (2.0, 4.0)  # a wait_for's timeout, seconds (one decimal)
SLEEP = (1.0, 4.0)  # a sleep's seconds (one decimal)
#: When the test sends a wait's signal: "early" 0-0.3 s after the start (before the saga
#: gets to its wait, mostly: kept), "waiting" at 10-60 % of its timeout after the wait
#: began (as the store says), "race" from 0.2 s before its timeout to 0.6 s after (either
#: may win: the timeout's wake-up is a message too), "never"
WHEN = ("early", "early", "waiting", "waiting", "waiting", "race", "race", "never", "never")
EARLY = 0.3
DUPLICATE = 0.3  # of the signals accepted, those sent a second time (to be refused)
POLL = 0.25  # seconds between two looks of the signaller at the store for waits begun

#: (seconds after the first start, fault); each broker gets all that apply to it. The
#: starts take about SAGAS / RATE + STORE_CUT = 43 s: the last fault comes near their end.
#: A kill "mid-group" waits (up to AIM_WAIT s) until a group member's body is running in
#: a pool process, and kills then (the pool process: that one).
SCHEDULE: list[tuple[float, str]] = [
    (3.0, "kill worker mid-group"),
    (8.0, "kill pool process mid-group"),
    (11.0, "cut store"),
    (15.0, "kill pool process"),  # while the store is cut off: no step body runs then
    (11.0 + STORE_CUT, "restore store"),
    (25.0, "kill pool process mid-group"),
    (28.0, "restart broker"),  # Redis: the test's own redis-server
    (38.0, "kill worker mid-group"),
]
#: The stages of a saga with groups: s a step, G a group of 2-3 members.
SHAPES = ("sGs", "sGs", "sGs", "Gs", "Gs", "sG", "sG", "G", "ssG", "GsG")


@dataclass(frozen=True)
class PlannedStep:
    index: int  # in plan order: stage by stage, a group's members in order, then in them
    task: str  # PLAIN or RETRYING; in a saga with groups GROUP_STEP or GROUP_RETRY_STEP
    fail: bool  # fails for good (a retry step: on every attempt)
    flakes: int = 0  # a retry step: its first attempts that fail transiently
    stage: int = 0
    branch: int | None = None  # a group member's position in its group
    position: int = 0  # the step's position in its member (a member may be a chain)

    @property
    def retrying(self) -> bool:
        return self.task in (RETRYING, GROUP_RETRY_STEP)

    @property
    def runs(self) -> int:
        """How often its body runs when nothing else goes wrong."""
        if not self.retrying:
            return 1
        return RETRY.attempts if self.fail else self.flakes + 1


Branches = tuple[tuple[int, ...], ...]  # a stage: its members, each its steps' indices


@dataclass(frozen=True)
class WaitPlan:
    """A ``wait_for`` or ``sleep`` stage of a saga (a step row of task WAIT_TASK), and
    when the test sends a wait's signal."""

    index: int
    stage: int
    seconds: float  # the wait's timeout, or how long the sleep sleeps
    on_timeout: str | None  # a wait_for's; None: a sleep
    when: str = ""  # a wait_for: one of WHEN
    payload: str = ""  # the signal's payload
    delay: float = 0.0  # 0-1: where in its window (see WHEN) the signal is sent
    duplicate: bool = False  # sent again once accepted

    @property
    def sleep(self) -> bool:
        return self.on_timeout is None

    def signature(self) -> Any:
        if self.sleep:
            return saga_sleep(self.seconds)
        assert self.on_timeout is not None
        return wait_for(SIGNAL, timeout=self.seconds, on_timeout=self.on_timeout)

    @property
    def error(self) -> tuple[str, str]:
        """The saga's error when the wait timed out (and does not go on)."""
        return WAIT_TIMED_OUT, f"no signal {SIGNAL!r} within its timeout of {self.seconds:g} s"


@dataclass
class Planned:
    """A saga's plan, and what it must end with, whatever the faults.

    What a wait_for ends with is read from the store (``outcome``: a signal's race with
    the timeout is allowed to go either way); everything else follows from that."""

    saga_id: str
    steps: list[PlannedStep]
    stages: list[Branches]  # one member of one step per stage, but in a group
    groups: frozenset[int] = frozenset()  # which stages are groups
    waits: dict[int, WaitPlan] = field(default_factory=dict)  # by step index
    # a wait_for, as the store says it ended: "signal" (its payload) or "timeout"
    outcome: dict[int, str] = field(default_factory=dict)

    @property
    def grouped(self) -> bool:
        return bool(self.groups)

    @property
    def shape(self) -> str:
        """``s-G(3)-s``: its stages; a group's member count, ``c`` for a chain member;
        ``W`` a wait_for, ``Z`` a sleep."""
        if not self.grouped and not self.waits:
            return "linear"

        def stage(n: int, b: Branches) -> str:
            if n in self.groups:
                return "G({}{})".format(len(b), "c" * any(len(m) > 1 for m in b))
            wait = self.waits.get(b[0][0])
            return "s" if wait is None else "Z" if wait.sleep else "W"

        shape = "-".join(stage(n, b) for n, b in enumerate(self.stages))
        return shape if self.grouped else f"linear {shape}"

    def fails(self, index: int) -> bool:
        """Whether step ``index`` fails for good: as planned, or a wait that timed out
        and does not go on."""
        wait = self.waits.get(index)
        if wait is None:
            return self.steps[index].fail
        return wait.on_timeout in ("compensate", "fail") and self.outcome.get(index) == "timeout"

    @functools.cached_property
    def failing_stage(self) -> int | None:
        """The stage that fails (the saga is then compensated): the first with a step that
        fails for good (a step before it in its member succeeds, or fails first)."""
        return next(
            (n for n, b in enumerate(self.stages) if any(self.fails(i) for m in b for i in m)),
            None,
        )

    @functools.cached_property
    def failing_wait(self) -> WaitPlan | None:
        """The wait_for that timed out and failed the saga."""
        stage = self.failing_stage
        return None if stage is None else self.waits.get(self.stages[stage][0][0])

    @property
    def ending(self) -> SagaStatus:
        if self.failing_stage is None:
            return SagaStatus.COMPLETED
        wait = self.failing_wait
        return SagaStatus.FAILED if wait and wait.on_timeout == "fail" else SagaStatus.COMPENSATED

    @functools.cached_property
    def candidates(self) -> frozenset[int]:
        """The steps the saga may report as its failing one: in the failing stage, the first
        failing step of each member (two failing members race)."""
        if self.failing_stage is None:
            return frozenset()
        firsts = (
            next((i for i in m if self.fails(i)), None) for m in self.stages[self.failing_stage]
        )
        return frozenset(i for i in firsts if i is not None)

    @functools.cached_property
    def applied(self) -> frozenset[int]:
        """The steps that must apply their effect: all, or every one before the failing stage."""
        stop = len(self.stages) if self.failing_stage is None else self.failing_stage
        return frozenset(i for b in self.stages[:stop] for m in b for i in m if i not in self.waits)

    @functools.cached_property
    def maybe(self) -> frozenset[int]:
        """The steps that may apply theirs, or not: in the failing stage, those before its
        members' failing steps (a member in flight when the stage fails finishes, one not
        started never starts, one killed then is undone in doubt)."""
        if self.failing_stage is None:
            return frozenset()
        ahead = set()
        for member in self.stages[self.failing_stage]:
            for i in member:
                if self.fails(i):
                    break
                ahead.add(i)
        return frozenset(ahead)

    @functools.cached_property
    def never(self) -> frozenset[int]:
        """The steps whose body must never run: after the failing stage, or after a failing
        step in its member."""
        may_run = self.applied | self.maybe | self.candidates
        return frozenset(s.index for s in self.steps if s.index not in self.waits) - may_run

    def before(self, a: int, b: int) -> bool:
        """Whether step ``a``'s undo must come before step ``b``'s: stages are undone in
        reverse, a member's steps too."""
        sa, sb = self.steps[a], self.steps[b]
        if sa.stage != sb.stage:
            return sa.stage > sb.stage
        return sa.branch == sb.branch and sa.position > sb.position

    def result(self, stage: int) -> Any:
        """What stage ``stage`` returns: a step its index, a group its members' results in
        member order, a sleep what the stage before it returned, a wait_for the signal's
        payload (None when it timed out and went on)."""
        branches = self.stages[stage]
        if stage in self.groups:
            return [m[-1] for m in branches]
        index = branches[0][-1]
        wait = self.waits.get(index)
        if wait is None:
            return index
        if wait.sleep:
            return self.result(stage - 1) if stage else None
        return wait.payload if self.outcome.get(index) == "signal" else None

    def is_wait(self, stage: int) -> bool:
        return self.stages[stage][0][0] in self.waits

    def feed(self, index: int) -> list[Any]:
        """The arguments step ``index`` must be given: the result of the stage before it
        (see :meth:`result`), the step before it in its member (its index), or none (in a
        saga without groups, the steps are immutable signatures; but a sleep, and the
        step after a wait or sleep; a wait_for is immutable: its result is the signal's)."""
        step = self.steps[index]
        if step.position:
            return [index - 1]  # a chain member's steps are numbered one after the other
        wait = self.waits.get(index)
        if step.stage == 0 or (wait is not None and not wait.sleep):
            return []
        mutable = self.grouped or wait is not None or self.is_wait(step.stage - 1)
        return [self.result(step.stage - 1)] if mutable else []

    @property
    def output(self) -> Any:
        """The saga's result when it completes."""
        return self.result(len(self.stages) - 1)

    @property
    def signalled(self) -> WaitPlan | None:
        """Its wait_for stage (one at most)."""
        return next((w for w in self.waits.values() if not w.sleep), None)

    @property
    def kind(self) -> str:
        retrying = any(s.retrying and s.flakes for s in self.steps if s.index not in self.never)
        flaky = " with a transiently failing retry step" if retrying else ""
        waits = "".join(
            " with a sleep"
            if w.sleep
            else f" with a wait (on_timeout={w.on_timeout}, signal {w.when}, "
            f"{self.outcome.get(w.index, 'not reached')})"
            for w in self.waits.values()
        )
        stage = self.failing_stage
        if stage is None:
            return f"{self.shape}: completes{flaky}{waits}"
        if stage in self.groups:
            how = f"a member of stage {stage} fails"
        elif self.failing_wait is not None:
            how = f"the wait timed out, on_timeout={self.failing_wait.on_timeout}"
        else:
            (index,) = self.candidates
            how = f"{'retry step' if self.steps[index].retrying else 'step'} {index} fails"
        return f"{self.shape}: {self.ending.value.lower()} ({how}){flaky}{waits}"


def _kwargs(rng: random.Random, step: PlannedStep) -> dict[str, Any]:
    kwargs = {
        "index": step.index,
        "fail": step.fail,
        "pause": rng.uniform(0.0, 0.03),  # a window to be killed in
        "undo_fails": rng.choice((0, 0, 1)),  # a third of the undos fail once
    }
    if step.retrying:
        kwargs["flakes"] = step.flakes
    if step.branch is not None:
        kwargs["member"] = True  # its attempts are what an aimed kill waits for
    return kwargs


def _gaps(rng: random.Random, stages: int) -> dict[int, str]:
    """Where a saga of ``stages`` stages of steps gets a wait_for and a sleep: before
    which of its stages (never the first: a step comes before either, and one after)."""
    gaps = list(range(1, stages))
    rng.shuffle(gaps)
    chosen = {}
    if gaps and rng.random() < WAITS:
        chosen[gaps.pop()] = "wait"
    if gaps and rng.random() < SLEEPS:
        chosen[gaps.pop()] = "sleep"
    return chosen


def _wait_plan(rng: random.Random, kind: str, index: int, stage: int, saga_id: str) -> WaitPlan:
    if kind == "sleep":
        return WaitPlan(index, stage, round(rng.uniform(*SLEEP), 1), None)
    return WaitPlan(
        index,
        stage,
        round(rng.uniform(*TIMEOUT), 1),
        rng.choice(ON_TIMEOUT),
        when=rng.choice(WHEN),
        payload=f"{SIGNAL} {saga_id}",
        delay=rng.random(),
        duplicate=rng.random() < DUPLICATE,
    )


class _Stages:
    """A saga's stages as they are planned: steps, groups, and waits between them."""

    def __init__(self, rng: random.Random, saga_id: str) -> None:
        self.rng, self.saga_id = rng, saga_id
        self.steps: list[PlannedStep] = []
        self.stages: list[Branches] = []
        self.signatures: list[Any] = []
        self.waits: dict[int, WaitPlan] = {}

    def wait(self, kind: str) -> None:
        index, stage = len(self.steps), len(self.stages)
        wait = _wait_plan(self.rng, kind, index, stage, self.saga_id)
        self.steps.append(PlannedStep(index, WAIT_TASK, False, stage=stage))
        self.stages.append(((index,),))
        self.signatures.append(wait.signature())
        self.waits[index] = wait

    def after_wait(self) -> bool:
        return bool(self.stages) and self.stages[-1][0][0] in self.waits


def _plan(env: SagaEnv, rng: random.Random) -> tuple[Any, Planned]:
    """3-5 steps; 3 in 10 with a retry policy, most of those failing once or twice first;
    a plain step fails with probability 1/4, a retry step for good with 1/10. Between two
    steps perhaps a wait_for (whose next step is a ``.s()``: it gets the payload) and a
    sleep (likewise: it gets the result of the step before the sleep)."""
    count = rng.randint(3, 5)
    plan = _Stages(rng, new_id())
    gaps = _gaps(rng, count)
    for body in range(count):
        if body in gaps:
            plan.wait(gaps[body])
        index, stage = len(plan.steps), len(plan.stages)
        immutable = not plan.after_wait()  # the step after a wait or sleep gets its result
        if rng.random() < 0.3:
            step = PlannedStep(index, RETRYING, rng.random() < 0.1, rng.choice((1, 2)), stage)
        else:
            step = PlannedStep(index, PLAIN, rng.random() < 0.25, stage=stage)
        plan.steps.append(step)
        plan.stages.append(((index,),))
        kwargs = _kwargs(rng, step)
        plan.signatures.append(env.app.signature(step.task, kwargs=kwargs, immutable=immutable))
    saga = env.saga(*plan.signatures, name=env.name)
    return saga, Planned(plan.saga_id, plan.steps, plan.stages, waits=plan.waits)


def _plan_grouped(env: SagaEnv, rng: random.Random) -> tuple[Any, Planned]:
    """A saga of one of SHAPES: a group has 2-3 members, 3 in 10 of them a chain of 2
    steps. Every step is a ``.s()``: it gets what the stage before it returned. 3 in 10
    steps have a retry policy (as in :func:`_plan`); a plain step fails with probability
    1/10, a retry step for good with 1/10. Between two stages perhaps a wait_for and a
    sleep (as in :func:`_plan`)."""
    plan = _Stages(rng, new_id())
    steps, stages, signatures = plan.steps, plan.stages, plan.signatures
    groups: set[int] = set()

    def step(stage: int, branch: int | None = None, position: int = 0) -> Any:
        index = len(steps)
        if rng.random() < 0.3:
            flakes = rng.choice((1, 2))
            planned = PlannedStep(
                index, GROUP_RETRY_STEP, rng.random() < 0.1, flakes, stage, branch, position
            )
        else:
            planned = PlannedStep(index, GROUP_STEP, rng.random() < 0.1, 0, stage, branch, position)
        steps.append(planned)
        return env.app.signature(planned.task, kwargs=_kwargs(rng, planned))

    shape = rng.choice(SHAPES)
    gaps = _gaps(rng, len(shape))
    for body, kind in enumerate(shape):
        if body in gaps:
            plan.wait(gaps[body])
        number = len(stages)
        if kind == "s":
            signatures.append(step(number))
            stages.append(((len(steps) - 1,),))
            continue
        members, branches = [], []
        for branch in range(rng.randint(2, 3)):
            first = len(steps)
            chained = [step(number, branch, p) for p in range(2 if rng.random() < 0.3 else 1)]
            members.append(chained[0] if len(chained) == 1 else chain(*chained))
            branches.append(tuple(range(first, len(steps))))
        signatures.append(group(*members))
        stages.append(tuple(branches))
        groups.add(number)
    saga = env.saga(*signatures, name=env.name)
    return saga, Planned(plan.saga_id, steps, stages, frozenset(groups), plan.waits)


def _start(saga: Any, planned: Planned, refused: Counter[str]) -> None:
    """What a caller does when the store or the broker is away: try again, same saga id."""
    deadline = time.monotonic() + 60
    while True:
        try:
            saga.apply_async(saga_id=planned.saga_id)
            return
        except SagaStoreError:
            refused["starts refused: store unreachable"] += 1
        except (BrokerError, redis.exceptions.ConnectionError):
            refused["starts refused: broker unreachable"] += 1
        assert time.monotonic() < deadline, f"saga {planned.saga_id} not started in 60 s"
        time.sleep(0.5)


@contextmanager
def _sweeper(env: SagaEnv) -> Iterator[Counter[str]]:
    """recover(app) every SWEEP_EVERY seconds, as the beat task would; counts what it did."""
    counts: Counter[str] = Counter()
    stop = threading.Event()

    def sweep() -> None:
        while not stop.wait(SWEEP_EVERY):
            try:
                for r in recover(env.app):
                    if r.action == "error":  # one saga's move failed: say how (its type)
                        counts[f"error ({(r.error or '').split(':')[0]})"] += 1
                    elif r.action != "none":
                        counts[r.action] += 1
            except Exception:  # the store or the broker is away: the next sweep tries again
                counts["sweeps failed"] += 1

    thread = threading.Thread(target=sweep, daemon=True)
    thread.start()
    try:
        yield counts
    finally:
        stop.set()
        thread.join()


@contextmanager
def _queue_depths(env: SagaEnv, queue: str, began: float) -> Iterator[list[tuple[float, int]]]:
    """The messages waiting in the queue, every second: (seconds after the first start, count).

    Whether the worker keeps up. 0 when the broker does not say (Redis has no key for an
    empty queue; a broker restarting).
    """
    depths: list[tuple[float, int]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(1.0):
            try:
                with env.app.connection_for_write() as connection:
                    channel: Any = connection.default_channel  # a kombu virtual or AMQP channel
                    declared = channel.queue_declare(queue, passive=True)
                count = int(declared.message_count)
            except Exception:
                count = 0
            depths.append((time.monotonic() - began, count))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield depths
    finally:
        stop.set()
        thread.join()


@dataclass
class SignalLog:
    """What the test did with one saga's wait_for signal, and what signal() said."""

    first: str | None = None  # delivered (True), kept (False), refused (SagaStateError),
    # "in doubt": refused after a try the store or the broker failed (it may have landed)
    at: float | None = None  # when the answer came, seconds after the first start
    tries: int = 0  # tries that failed with the store or the broker away
    duplicates: list[str] = field(default_factory=list)  # what the second signals got


class Signaller:
    """Sends the sagas' signals from a thread of its own, as WaitPlan.when says: "early"
    ones after the start, "waiting" and "race" ones once the store shows the wait begun
    (the test looks every POLL s, past the store's proxy: a cut must not blind it);
    a duplicate of an accepted signal a moment later."""

    def __init__(self, env: SagaEnv, observer_url: str, began: float) -> None:
        self.env, self.began = env, began
        self.observer = create_engine(observer_url, pool_size=1, max_overflow=0)
        self.logs: dict[str, SignalLog] = {}
        self.waits: dict[str, WaitPlan] = {}
        self.watched: dict[str, WaitPlan] = {}  # "waiting" and "race": not yet seen begun
        self.due: list[tuple[float, int, str, str]] = []  # (monotonic, n, saga id, "first"...)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.count = 0

    def push(self, at: float, saga_id: str, what: str) -> None:
        with self.lock:
            self.count += 1
            heapq.heappush(self.due, (at, self.count, saga_id, what))

    def add(self, planned: Planned) -> None:
        """A saga just started."""
        wait = planned.signalled
        if wait is None:
            return
        self.logs[planned.saga_id] = SignalLog()
        self.waits[planned.saga_id] = wait
        if wait.when == "early":
            self.push(time.monotonic() + wait.delay * EARLY, planned.saga_id, "first")
        elif wait.when in ("waiting", "race"):
            with self.lock:
                self.watched[planned.saga_id] = wait

    def look(self) -> None:
        """The watched waits the store shows begun: schedule their signals."""
        with self.lock:
            watched = dict(self.watched)
        if not watched:
            return
        c = saga_steps.c
        query = select(c.saga_id, c.idx, c.lease_expires_at).where(
            c.task == WAIT_TASK, c.status == StepStatus.WAITING, c.saga_id.in_(list(watched))
        )
        with self.observer.connect() as connection:
            rows = connection.execute(query).all()
        for row in rows:
            wait = watched[row.saga_id]
            if row.idx != wait.index or row.lease_expires_at is None:
                continue  # its sleep
            due = row.lease_expires_at.replace(tzinfo=UTC).timestamp()
            if wait.when == "waiting":  # 10-60 % of the timeout after it began
                at = due - wait.seconds * (1.0 - (0.1 + 0.5 * wait.delay))
            else:  # 0.2 s before its timeout to 0.6 s after (the timeout's wake-up comes late)
                at = due - 0.2 + 0.8 * wait.delay
            with self.lock:
                del self.watched[row.saga_id]
            self.push(time.monotonic() + (at - time.time()), row.saga_id, "first")

    def send(self, saga_id: str, what: str) -> None:
        wait, log = self.waits[saga_id], self.logs[saga_id]
        payload = wait.payload if what == "first" else f"again {saga_id}"
        try:
            kept = not SagaResult(saga_id, app=self.env.app).signal(SIGNAL, payload)
            answer = "kept" if kept else "delivered"
        except SagaStateError:
            answer = "in doubt" if what == "first" and log.tries else "refused"
        except (SagaStoreError, BrokerError, redis.exceptions.ConnectionError):
            log.tries += 1  # the store or the broker is away: try again, as a caller would
            self.push(time.monotonic() + 0.5, saga_id, what)
            return
        if what == "duplicate":
            log.duplicates.append(answer)
            return
        log.first, log.at = answer, time.monotonic() - self.began
        if wait.duplicate and answer in ("delivered", "kept"):
            self.push(time.monotonic() + random.uniform(0.05, 1.5), saga_id, "duplicate")

    def run(self) -> None:
        looked = 0.0
        try:
            while not self.stop.wait(0.01):
                if time.monotonic() - looked > POLL:
                    looked = time.monotonic()
                    with contextlib.suppress(Exception):  # the database is busy: look again
                        self.look()
                while True:
                    with self.lock:
                        if not self.due or self.due[0][0] > time.monotonic():
                            break
                        _, _, saga_id, what = heapq.heappop(self.due)
                    self.send(saga_id, what)
        except BaseException as exc:  # re-raised by the test
            self.error = exc

    def drain(self, timeout: float) -> None:
        """Wait (up to ``timeout`` s) for the signals and duplicates due to be sent."""
        deadline = time.monotonic() + timeout
        while self.due and time.monotonic() < deadline and self.error is None:
            time.sleep(0.1)

    @contextmanager
    def running(self) -> Iterator[Signaller]:
        thread = threading.Thread(target=self.run, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.stop.set()
            thread.join()
            self.observer.dispose()


@dataclass
class Fault:
    what: str
    at: float  # seconds after the first start
    over: float  # when it was over: the kill itself, the store back, the broker answering
    pids: tuple[int, ...] = ()  # a kill: the processes it killed
    top: int = 0  # a kill: the ledger's last id right after it
    aimed: str = ""  # an aimed kill: the member attempt it waited for


@dataclass
class Chaos:
    """Runs the schedule in a thread of its own, while the test starts sagas."""

    schedule: list[tuple[float, str]]
    began: float  # time.monotonic() of the first start
    worker: WorkerProcess
    proxy: TcpProxy
    broker: RedisServer | None
    ledger: Ledger
    faults: list[Fault] = field(default_factory=list)
    worker_back: list[float] = field(default_factory=list)  # a new worker ready, after a kill
    error: BaseException | None = None
    stopped: threading.Event = field(default_factory=threading.Event)
    seen: int = 0  # the last ledger id an aimed kill has looked at
    # the member attempts it saw: (saga id, step, pid, time.time() its pause ends at)
    pausing: list[tuple[str, str, int, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.seen = self.ledger_top()

    def now(self) -> float:
        return time.monotonic() - self.began

    def run(self) -> None:
        try:
            for at, what in self.schedule:
                if self.stopped.wait(max(0.0, at - self.now())):
                    return  # the test is over (it failed)
                self.do(what)
        except BaseException as exc:  # re-raised by the test
            self.error = exc

    @contextmanager
    def running(self) -> Iterator[Chaos]:
        thread = threading.Thread(target=self.run, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.stopped.set()
            thread.join()

    def ledger_top(self) -> int:
        with self.ledger.engine.connect() as connection:
            return int(connection.execute(select(func.max(ledger_table.c.id))).scalar() or 0)

    def aim(self) -> tuple[int | None, str]:
        """Wait until a group member's body is in its pause in one of the worker's pool
        processes, with AIM_MARGIN s of it left at least: that process, and which attempt
        (None after AIM_WAIT s without one)."""
        c = ledger_table.c
        query = select(c.id, c.saga_id, c.tag, c.payload).where(c.action == "attempt")
        deadline = time.monotonic() + AIM_WAIT
        children: set[int] = set()
        looked = 0.0
        while time.monotonic() < deadline and not self.stopped.is_set():
            if time.monotonic() - looked > 0.2:  # /proc, not on every poll
                children, looked = set(self.worker.children()), time.monotonic()
            with self.ledger.engine.connect() as connection:
                rows = connection.execute(query.where(c.id > self.seen)).all()
            for row in rows:
                self.seen = max(self.seen, row.id)
                payload = row.payload if isinstance(row.payload, dict) else {}
                if payload.get("member"):
                    until = payload["at"] + payload["pause"]
                    self.pausing.append((row.saga_id, row.tag, payload["pid"], until))
            now = time.time()
            self.pausing = [p for p in self.pausing if p[3] - now > AIM_MARGIN]
            for saga_id, tag, pid, until in self.pausing:
                if pid in children:
                    return pid, f"saga {saga_id} step {tag} in pid {pid}, {until - now:.3f} s left"
            time.sleep(0.004)
        return None, ""

    def do(self, what: str) -> None:
        at = self.now()
        aimed = what.endswith(" mid-group")
        if what.startswith("kill worker"):
            _, seen = self.aim() if aimed else (None, "")
            at = self.now()
            pids = self.worker.kill()
            self.faults.append(Fault(what, at, at, tuple(pids), self.ledger_top(), seen))
            self.worker.start()
            self.worker_back.append(self.now())
        elif what.startswith("kill pool process"):
            target, seen = self.aim() if aimed else (None, "")
            at = self.now()
            child = self.worker.kill_child(target)
            self.faults.append(Fault(f"{what} {child}", at, at, (child,), self.ledger_top(), seen))
        elif what == "cut store":
            self.proxy.cut()
            self.faults.append(Fault(what, at, at))  # over: when "restore store" runs
        elif what == "restore store":
            self.proxy.restore()
            cut = next(f for f in reversed(self.faults) if f.what == "cut store")
            cut.over = at
        elif what == "restart broker":
            assert self.broker is not None
            self.broker.restart(BROKER_DOWN)
            self.faults.append(Fault(what, at, self.now()))
        else:
            raise AssertionError(f"unknown fault {what!r}")

    @property
    def kills(self) -> list[Fault]:
        return [f for f in self.faults if f.what.startswith("kill")]


def _caught_mid_group(kills: list[Fault], entries: list[Any]) -> list[list[Any]]:
    """For each kill, from the ledger: the group members' attempts it cut short.

    An attempt whose ``end`` never came, by a process the kill killed, begun since the
    kill before (its ``attempt`` row between that kill's ledger top and this one's).
    """
    ended = {e.payload["token"] for e in entries if e.action == "end"}
    cut_short = [
        e
        for e in entries
        if e.action == "attempt"
        and isinstance(e.payload, dict)
        and e.payload.get("member")
        and e.payload["token"] not in ended
    ]
    caught, after = [], 0
    for kill in kills:
        caught.append(
            [e for e in cut_short if after < e.id <= kill.top and e.payload["pid"] in kill.pids]
        )
        after = kill.top
    return caught


def _wait_until_all_end(env: SagaEnv, planned: list[Planned], timeout: float) -> list[str]:
    """Wait for every saga to be terminal; the ids of those that are not after ``timeout``."""
    deadline = time.monotonic() + timeout
    running = [p.saga_id for p in planned]
    while running and time.monotonic() < deadline:
        with contextlib.suppress(SagaStoreError):
            running = [i for i in running if not SagaResult(i, app=env.app).status.is_terminal]
        time.sleep(0.5)
    return running


@dataclass
class Seen:
    """One saga as the store and the ledger hold it after the run."""

    planned: Planned
    record: SagaRecord | None
    steps: list[StepRecord]
    rows: list[tuple[int, str, str]]  # its ledger rows: (id, action, step)
    output: Any = None  # what SagaResult.get() returns, for a completed saga
    signals: SignalLog | None = None  # a saga with a wait_for: what the test sent

    @functools.cached_property
    def ledger(self) -> Counter[tuple[str, str]]:
        return Counter((action, tag) for _, action, tag in self.rows)

    def ids(self, *actions: str) -> dict[int, list[int]]:
        """The ledger ids of these actions, by step."""
        found: dict[int, list[int]] = {}
        for row_id, action, tag in self.rows:
            if action in actions:
                found.setdefault(int(tag), []).append(row_id)
        return found

    @property
    def status(self) -> SagaStatus | None:
        return None if self.record is None else self.record.status

    def describe(self) -> str:
        record = self.record
        plan = [
            (s.index, s.stage, s.branch, s.task,
             "fails" if s.fail else f"flakes {s.flakes}" if s.flakes else "ok")
            for s in self.planned.steps
        ]  # fmt: skip
        steps = [
            (s.index, s.status.value, s.attempts, s.compensation_attempts,
             s.error and f"{s.error['type']}: {s.error['message']}", s.args, s.result)
            for s in self.steps
        ]  # fmt: skip
        created = record.created_at if record else None

        def since(moment: datetime | None) -> str:
            return (
                "-"
                if moment is None or created is None
                else f"{(moment - created).total_seconds():.3f}"
            )

        times = [
            (s.index, since(s.started_at), since(s.finished_at),
             since(s.compensation_started_at), since(s.compensation_finished_at))
            for s in self.steps
        ]  # fmt: skip
        error = record and record.error and f"{record.error['type']}: {record.error['message']}"
        return (
            f"saga {self.planned.saga_id} ({self.planned.shape}): plan (index, stage, "
            f"member, task, what it does) {plan}\n"
            f"    stored: {record.status if record else None}, error {error}, "
            f"failed_step {record.failed_step if record else None}, "
            f"finished {since(record.finished_at if record else None)} s after it was stored\n"
            f"    steps (index, status, attempts, compensation attempts, error, args, result): "
            f"{steps}\n"
            f"    seconds after the saga was stored (index, started, finished, compensation "
            f"started, compensation finished): {times}\n"
            f"    waits: {list(self.planned.waits.values())}, outcome {self.planned.outcome}, "
            f"signals {self.signals}\n"
            f"    ledger (id, action, step): {self.rows}"
        )


_UNDONE = ("undo", "undo-nothing")  # a compensation that ran to its end


def _outcome(wait: WaitPlan, row: StepRecord | None) -> str | None:
    """How a wait_for ended, as its step row says: "signal", "timeout", or None (not
    reached, or not ended)."""
    if row is None:
        return None
    if row.status in (StepStatus.SUCCEEDED, StepStatus.COMPENSATED) and row.finished_at:
        if row.result == wait.payload:
            return "signal"
        return "timeout" if row.result is None else "other"
    if row.status is StepStatus.FAILED and (row.error or {}).get("type") == WAIT_TIMED_OUT:
        return "timeout"
    return None


def _wait_violations(seen: Seen) -> list[str]:
    """What is wrong with a saga's waits and sleeps: the signals against what the store
    says the wait ended with, and the time a sleep or a timeout took."""
    planned, wrong = seen.planned, []
    rows = {s.index: s for s in seen.steps}
    stop = len(planned.stages) if planned.failing_stage is None else planned.failing_stage
    for wait in planned.waits.values():
        row = rows.get(wait.index)
        if wait.stage < stop and (row is None or row.status is not StepStatus.SUCCEEDED):
            wrong.append("a wait or sleep the saga went past is not SUCCEEDED")
        outcome = planned.outcome.get(wait.index)
        if not wait.sleep:
            log = seen.signals or SignalLog()
            if outcome == "other":
                wrong.append("a wait ended with a payload the test did not send first")
            if log.first in ("delivered", "kept") and outcome not in ("signal", None):
                wrong.append("a signal accepted, but its wait timed out")
            if log.first == "delivered" and outcome is None:
                wrong.append("a signal delivered, but the wait did not end")
            if log.first in (None, "refused") and outcome == "signal":
                wrong.append("a wait ended with a signal that was never accepted")
            if any(answer != "refused" for answer in log.duplicates):
                wrong.append("a second signal of the name was not refused")
        # the moment the wait began: after the stage before it ended (its last end)
        ends = [rows[m[-1]].finished_at for m in planned.stages[wait.stage - 1] if m[-1] in rows]
        if len(ends) < len(planned.stages[wait.stage - 1]) or None in ends:
            continue
        earliest = max(e for e in ends if e is not None) + timedelta(seconds=wait.seconds)
        if wait.sleep:
            starts = [
                rows[m[0]].started_at
                for m in planned.stages[wait.stage + 1]
                if m[0] in rows and rows[m[0]].started_at is not None
            ]
            if any(start is not None and start < earliest for start in starts):
                wrong.append("a step after a sleep started before the sleep's seconds passed")
        elif outcome == "timeout" and row and row.finished_at and row.finished_at < earliest:
            wrong.append("a wait timed out before its timeout passed")
    return wrong


def _violations(seen: Seen) -> list[str]:
    """What is wrong with one saga, against its plan (nothing: an empty list)."""
    planned, record = seen.planned, seen.record
    if record is None or not record.status.is_terminal:
        return ["not terminal"]
    wrong = []
    failing = planned.failing_stage
    expected = planned.ending
    if record.status is not expected:
        wrong.append(f"planned {expected.value}, ended {record.status.value}")
    if failing is not None:
        error = record.error or {}
        own = (
            planned.failing_wait.error
            if planned.failing_wait is not None
            else (STEP_FAILURE, f"step {record.failed_step} failed")
        )
        if record.failed_step not in planned.candidates:
            wrong.append("failed_step is not the failing step")
        elif (error.get("type"), error.get("message")) != own:
            wrong.append("error is not the failing step's own")
    effects = {key: n for key, n in seen.ledger.items() if key[0] in ("do", "undo")}
    if any(n != 1 for n in effects.values()):
        wrong.append("an effect applied or undone more than once")
    done = {int(tag) for (action, tag) in effects if action == "do"}
    undone = {int(tag) for (action, tag) in effects if action == "undo"}
    if not planned.applied <= done or done - planned.applied - planned.maybe:
        wrong.append("effects applied not as planned")
    if undone != (done if expected is SagaStatus.COMPENSATED else set()):
        wrong.append("effects undone not as planned")
    if expected is SagaStatus.FAILED and seen.ids("undo-attempt"):
        wrong.append("a compensation ran in a saga that is to fail undoing nothing")
    ran = seen.ids("attempt")
    if planned.never.intersection(ran):
        wrong.append("a step ran after the failing stage, or after a failing step")
    in_doubt = set(seen.ids("undo-nothing"))
    if in_doubt - planned.maybe - planned.candidates:
        wrong.append("a step undone in doubt outside the failing stage")
    if failing is not None:
        begun = [i for ids in seen.ids("undo-attempt").values() for i in ids]
        attempts = [i for ids in ran.values() for i in ids]
        if begun and attempts and max(attempts) > min(begun):
            wrong.append("a step ran after a compensation began")
        undos = seen.ids(*_UNDONE)
        if any(max(undos[a]) > min(undos[b]) for a in undos for b in undos if planned.before(a, b)):
            wrong.append("undone out of order (stages not in reverse, or a member's steps)")
    busy = (StepStatus.RUNNING, StepStatus.COMPENSATING, StepStatus.WAITING)
    if any(s.status in busy for s in seen.steps):
        wrong.append("a step RUNNING, COMPENSATING or WAITING in a finished saga")
    if any(
        (s.kwargs or {}).get("index", s.index) != s.index or s.stage != planned.steps[s.index].stage
        for s in seen.steps
    ):
        wrong.append("step rows not numbered as planned")
    if any(s.args is not None and list(s.args) != planned.feed(s.index) for s in seen.steps):
        wrong.append("a step got other arguments than the results before it")

    def own(s: StepRecord) -> list[Any]:
        wait = planned.waits.get(s.index)
        if wait is None:
            return [None, s.index]
        return [None, planned.result(s.stage), *([] if wait.sleep else [wait.payload])]

    if any(s.result not in own(s) for s in seen.steps):
        wrong.append("a step's stored result is not its own")
    if record.status is SagaStatus.COMPLETED and seen.output != planned.output:
        wrong.append("the saga's result is not its last stage's")
    return wrong + _wait_violations(seen)


def _collect(
    env: SagaEnv, planned: list[Planned], entries: list[Any], logs: dict[str, SignalLog]
) -> list[Seen]:
    """The sagas as the store and the ledger hold them; each plan with its waits' outcome
    (as the store says) filled in."""
    rows: dict[str, list[tuple[int, str, str]]] = {p.saga_id: [] for p in planned}
    for entry in entries:
        rows[entry.saga_id].append((entry.id, entry.action, entry.tag))
    seen = []
    for p in planned:
        result = SagaResult(p.saga_id, app=env.app)
        record = result.record
        steps = result.steps
        by_index = {s.index: s for s in steps}
        outcome = {
            i: o
            for i, w in p.waits.items()
            if not w.sleep and (o := _outcome(w, by_index.get(i))) is not None
        }
        p = replace(p, outcome=outcome)
        output = None
        if record is not None and record.status is SagaStatus.COMPLETED:
            output = result.get(timeout=10)
        seen.append(Seen(p, record, steps, rows[p.saga_id], output, logs.get(p.saga_id)))
    return seen


def _figures(seen: list[Seen]) -> Counter[str]:
    figures: Counter[str] = Counter(str(s.status.value if s.status else None).lower() for s in seen)
    for s in seen:
        planned = s.planned
        for step in planned.steps:
            runs = s.ledger[("attempt", str(step.index))]
            figures["step bodies run"] += runs
            if runs:
                figures["of them more than planned"] += max(0, runs - step.runs)
            if step.retrying and not step.fail:
                figures["transient failures retried"] += min(max(runs - 1, 0), step.flakes)
        undone = sum(n for (action, _), n in s.ledger.items() if action in _UNDONE)
        tries = sum(n for (action, _), n in s.ledger.items() if action == "undo-attempt")
        figures["compensation attempts failed and retried"] += tries - undone
        if not planned.grouped:
            continue
        figures["with groups"] += 1
        figures[f"with groups, {str(s.status.value if s.status else None).lower()}"] += 1
        if planned.failing_stage in planned.groups:
            figures["with groups, compensated as a member failed"] += 1
        for index in planned.maybe:
            if s.ledger[("undo", str(index))]:
                figures["members in flight as their group failed, undone"] += 1
        figures["members undone in doubt, nothing applied"] += len(s.ids("undo-nothing"))
    return figures


def _wait_figures(seen: list[Seen]) -> Counter[str]:
    """What became of the waits and sleeps, and of the signals the test sent."""
    figures: Counter[str] = Counter()
    for s in seen:
        rows = {st.index: st for st in s.steps}
        for wait in s.planned.waits.values():
            row = rows.get(wait.index)
            if wait.sleep:
                figures["sleeps"] += 1
                figures["sleeps slept"] += bool(row and row.status is StepStatus.SUCCEEDED)
                continue
            outcome = s.planned.outcome.get(wait.index, "not reached")
            figures["waits"] += 1
            figures[f"waits on_timeout={wait.on_timeout}: {outcome}"] += 1
            log = s.signals or SignalLog()
            figures[f"signals {wait.when}: {log.first or 'not sent'}"] += 1
            figures["signals sent again (duplicates)"] += len(log.duplicates)
            figures["duplicates refused"] += log.duplicates.count("refused")
            figures["signals retried (store or broker away)"] += log.tries
            if log.first == "refused" and wait.when == "race":
                figures["signals that lost the race to the timeout"] += 1
    return figures


def _report(seen: list[Seen]) -> str:
    """Every violation: how many sagas of which kind, and examples with their step rows."""
    by_violation: dict[str, list[Seen]] = {}
    for s in seen:
        for violation in _violations(s):
            by_violation.setdefault(violation, []).append(s)
    lines: list[str] = []
    examples: dict[str, Seen] = {}
    for violation, sagas in sorted(by_violation.items(), key=lambda item: -len(item[1])):
        kinds = dict(Counter(s.planned.kind for s in sagas))
        named = ", ".join(s.planned.saga_id for s in sagas[:3])
        lines.append(f"- {violation}: {len(sagas)} sagas {kinds}; for example {named}")
        examples.update((s.planned.saga_id, s) for s in sagas[:3])
    if examples:
        wrong = sum(1 for s in seen if _violations(s))
        lines.insert(0, f"{wrong} of {len(seen)} sagas not as planned:")
        lines += ["the sagas named above:", *(s.describe() for s in examples.values())]
    return "\n".join(lines)


def _settings(broker: str) -> str:
    redis = f", visibility_timeout {VISIBILITY:g} s, {RESTORE}" if broker == "redis" else ""
    return (
        f"saga_step_lease {LEASE:g} s, saga_recovery_stall {STALL:g} s, "
        f"recover(app) every {SWEEP_EVERY:g} s{redis}; "
        f"one prefork worker of {CONCURRENCY} processes"
    )


def _mix(planned: list[Planned]) -> Counter[str]:
    """How many sagas with groups have each of the shapes the test means to have."""
    mix: Counter[str] = Counter()
    for p in planned:
        wait = p.signalled
        if wait is not None:
            mix["with a wait_for"] += 1
            mix[f"with a wait_for, on_timeout={wait.on_timeout}"] += 1
            mix["with groups and a wait_for"] += p.grouped
        mix["with a sleep"] += any(w.sleep for w in p.waits.values())
        if not p.grouped:
            continue
        mix["with groups"] += 1
        mix["with a chain member"] += any(len(m) > 1 for n in p.groups for m in p.stages[n])
        mix["starting with a group"] += 0 in p.groups
        mix["ending with a group"] += len(p.stages) - 1 in p.groups
        mix["with two groups"] += len(p.groups) > 1
        mix["with a member failing for good"] += p.failing_stage in p.groups
        mix["with a step after a group failing for good"] += bool(
            p.failing_stage is not None and p.failing_stage not in p.groups and p.failing_stage
        )
    return mix


@pytest.mark.parametrize(
    "broker",
    [
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
    ],
)
def test_chaos(broker: str, postgres_url: str, worker_logs: Path) -> None:
    """Through transient step failures, kill -9s (at least 3 while group members run), a
    10 s store cut and a broker restart, every saga, linear or with groups, waiting for
    signals or sleeping, ends as planned, each effect applied once and undone once,
    stage by stage in reverse."""
    if broker == "redis":  # a redis-server of the test's own, to restart
        server: RedisServer | None = RedisServer(
            require_binary("redis-server"), worker_logs / "chaos-redis-server.log"
        )
    else:
        require("rabbitmq")
        server = None
    queue = f"chaos-{uuid.uuid4().hex[:8]}"
    rng = random.Random(20261121)
    grouped = [True] * GROUPED + [False] * (SAGAS - GROUPED)
    rng.shuffle(grouped)
    conf: dict[str, Any] = {"saga_step_lease": LEASE, "saga_recovery_stall": STALL}
    if server is not None:
        conf["broker_transport_options"] = {"visibility_timeout": VISIBILITY, **RESTORE}
    target = make_url(postgres_url)
    proxy = TcpProxy((target.host or "127.0.0.1", target.port or 5432))
    store_url = target.set(host="127.0.0.1", port=proxy.port).render_as_string(False)
    schedule = [(at, what) for at, what in SCHEDULE if server or what != "restart broker"]
    planned: list[Planned] = []
    refused: Counter[str] = Counter()
    cpu = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
    with ExitStack() as stack:
        if server is not None:
            server.start()
            stack.callback(server.stop)
        url = server.url if server is not None else RABBITMQ_URL
        stack.enter_context(proxy.running())
        # the saga store goes through the proxy; the steps' own ledger does not
        env = stack.enter_context(
            broker_env(f"chaos-{broker}", url, store_url, postgres_url, queue, **conf)
        )
        register_chaos_tasks(env.app)
        worker = WorkerProcess(
            url, store_url, postgres_url, queue, worker_logs, f"chaos-{broker}", CONCURRENCY,
            extra_env={"SAGA_TEST_CONF": json.dumps(conf)},
        )  # fmt: skip
        worker.start()
        stack.callback(worker.stop)
        swept = stack.enter_context(_sweeper(env))
        began = time.monotonic()
        depths = stack.enter_context(_queue_depths(env, queue, began))
        signaller = stack.enter_context(Signaller(env, postgres_url, began).running())
        with Chaos(schedule, began, worker, proxy, server, env.ledger).running() as chaos:
            for with_groups in grouped:  # at RATE, or slower while starts are refused
                saga, plan = (_plan_grouped if with_groups else _plan)(env, rng)
                _start(saga, plan, refused)
                signaller.add(plan)
                planned.append(plan)
                time.sleep(1.0 / RATE)
            started = time.monotonic() - began
            while chaos.schedule[-1][0] > chaos.now() and chaos.error is None:
                time.sleep(0.1)  # the rest of the schedule
        if chaos.error is not None:
            raise chaos.error
        running = _wait_until_all_end(env, planned, WAIT)
        waited = time.monotonic() - began
        signaller.drain(10.0)  # duplicates still to send
        if signaller.error is not None:
            raise signaller.error
        ids = {p.saga_id for p in planned}
        entries = [e for e in env.ledger.entries() if e.saga_id in ids]
        seen = _collect(env, planned, entries, signaller.logs)
    figures = _figures(seen)
    waits = _wait_figures(seen)
    caught = _caught_mid_group(chaos.kills, entries)
    mid_group = sum(1 for attempts in caught if attempts)
    ends = [s.record.finished_at for s in seen if s.record and s.record.finished_at]
    last = max(chaos.faults, key=lambda f: f.over)
    wall = time.time() - (time.monotonic() - began)  # time.time() at the first start
    if running:
        ended = f"{len(running)} sagas not terminal {waited - last.over:.1f} s after it"
    else:
        at = max(ends, default=datetime.now(UTC)).timestamp() - wall
        ended = f"all terminal at {at:.1f} s, {at - last.over:.1f} s after it"
    faults = ", ".join(f"{f.what} at {f.at:.1f}-{f.over:.1f} s" for f in chaos.faults)
    cut = next(f.at for f in chaos.faults if f.what == "cut store")
    deepest = (
        max((n for t, n in depths if t < cut), default=0),
        max((n for _, n in depths), default=0),
    )
    kills = "\n".join(
        f"  {kill.what} at {kill.at:.1f} s: "
        + (
            f"cut short {len(attempts)} member attempts ("
            + ", ".join(f"saga {e.saga_id} step {e.tag}" for e in attempts)
            + ")"
            if attempts
            else "no member attempt cut short"
        )
        + (f"; aimed at {kill.aimed}" if kill.aimed else "")
        for kill, attempts in zip(chaos.kills, caught, strict=True)
    )
    print(
        f"\nchaos on {broker}: {SAGAS} sagas ({dict(_mix(planned))}) started in "
        f"{started:.1f} s; {_settings(broker)}\n"
        f"faults: {faults}; a new worker ready at "
        f"{', '.join(f'{t:.1f}' for t in chaos.worker_back)} s\n"
        f"queue depth at most {deepest[0]} before the store cut, {deepest[1]} in all\n"
        f"kills mid-group (from the ledger): {mid_group} of {len(chaos.kills)}\n{kills}\n"
        f"last fault over at {last.over:.1f} s ({last.what}); {ended}\n"
        f"{dict(figures)}\nwaits and signals: {dict(sorted(waits.items()))}\n"
        f"{dict(refused)}, sweep: {dict(swept)}; "
        f"test process CPU {sum(resource.getrusage(resource.RUSAGE_SELF)[:2]) - cpu:.1f} s"
    )
    assert len(chaos.kills) == sum(what.startswith("kill") for _, what in schedule)
    assert refused["starts refused: store unreachable"] > 0  # the cut did reach the producer
    mix = _mix(planned)
    assert mix["with groups"] == GROUPED
    assert all(mix[shape] > 0 for shape in (
        "with a chain member", "starting with a group", "ending with a group",
        "with a member failing for good", "with a step after a group failing for good",
    )), mix  # fmt: skip
    assert mix["with a wait_for"] >= 100, mix
    assert mix["with a sleep"] >= 30, mix
    assert mix["with groups and a wait_for"] > 0, mix
    report = _report(seen)
    assert not report, f"chaos on {broker}: sagas not as planned\n{report}"
    # every way a wait can end happened (the signals sent early mostly kept, those sent
    # while it waits delivered, none sent: the timeout decides), and duplicates refused
    for kind in ON_TIMEOUT:
        assert waits[f"waits on_timeout={kind}: timeout"] > 0, waits
        assert waits[f"waits on_timeout={kind}: signal"] > 0, waits
    for what in ("signals early: kept", "signals waiting: delivered", "duplicates refused"):
        assert waits[what] > 0, waits
    assert waits["sleeps slept"] > 0, waits
    assert mid_group >= MID_GROUP, f"only {mid_group} kills landed mid-group:\n{kills}"
