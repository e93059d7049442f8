"""Chaos: 1,000 sagas over Redis and RabbitMQ with the faults we know of, all at once.

Of each broker's 500 sagas, 180 have parallel groups (a member may be a chain of steps;
some sagas start or end with a group), 120 have child sagas (a ``saga(...)`` as a stage:
children that complete, whose own step fails, that complete and are then undone as a
unit because a step after them fails, that hold a group, a wait_for or a sleep, a child
inside a child, a child waiting while the test cancels its top saga), the rest are
straight lines of steps; mixed in with all of them, 113 wait for a signal (``wait_for``,
a timeout of 2-4 s, every on_timeout but "fail" in a child saga) and 53 sleep 1-4 s.
The test sends the signals from a thread of its own: some before the saga gets to its
wait (kept; a child saga not there yet is told again), some while it waits, some as
the timeout passes, some never; and a second time now and then (refused). Steps fail
for good or transiently (retried by their ``RetryPolicy``), compensations fail once, the
worker and its pool processes are ``kill -9``ed (most of the kills aimed at a moment a
group member's body is running, three at a child saga's step), the PostgreSQL store is
cut off for 10 s (a TCP proxy the test controls), and on Redis the broker, a
``redis-server`` of the test's own, is restarted empty. Afterwards every saga and every
child saga must have ended as its plan says, checked against the ledger the steps write
themselves (not only the saga tables): a fault delays a saga, it never changes how it
ends. A saga and its child sagas are checked as one line of stages (a child's own
stages standing where its stage stands in its parent): each effect applied at most
once, and when the saga compensates, everything applied undone exactly once, newest
first across the parent/child boundary. How a wait ended (its signal, its timeout, or
the cancel: a signal racing the timeout may lose) is read from the store, and must
agree with what signal() or cancel() answered; all else follows from it exactly.
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
    SagaNotFound,
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
from celery_saga.dispatch import child_saga_id
from celery_saga.operator import CANCELLED
from celery_saga.plan import CHILD_TASK
from celery_saga.store.schema import saga_steps
from celery_saga.store.schema import sagas as saga_table
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
FAMILIES = 120  # ...with child sagas: 240 over the two (in place of straight lines)
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
MID_CHILD = 2  # ...and this many while a child saga's step runs (of the 3 aimed so)
AIM_WAIT = 3.0  # seconds an aimed kill waits for a member in flight (then kills anyway: the
# worker may run nothing, e.g. its consumer died in kombu when the Redis broker restarted)
AIM_WAIT_CHILD = 6.0  # ...for a child saga's step (fewer run), if the next fault can wait
AIM_MARGIN = 0.008  # ...with at least this long left in its pause (to be killed in)
STEP_FAILURE = f"{StepFailure.__module__}.{StepFailure.__qualname__}"
WAIT_TIMED_OUT = "celery_saga.WaitTimedOut"  # the error type of a wait whose timeout passed
SIGNAL = "approved"  # the signal every wait_for stage waits for
WAITS = 0.27  # of the sagas with 2+ stages of steps, those with a wait_for stage between two
SLEEPS = 0.15  # ...with a sleep stage (in another gap than the wait's, if there is one)
TIMEOUT = (2.0, 4.0)  # a wait_for's timeout, seconds (one decimal)
SLEEP = (1.0, 4.0)  # a sleep's seconds (one decimal)
#: When the test sends a wait's signal: "early" 0-0.3 s after the start (before the saga
#: gets to its wait, mostly: kept; a child saga's is sent again every NOT_YET s until
#: the child is there, or its top saga ended without it), "waiting" at 10-60 % of its
#: timeout after the wait began (as the store says), "race" from 0.2 s before its
#: timeout to 0.6 s after (either may win: the timeout's wake-up is a message too), "never"
WHEN = ("early", "early", "waiting", "waiting", "waiting", "race", "race", "never", "never")
EARLY = 0.3
NOT_YET = 0.2
DUPLICATE = 0.3  # of the signals accepted, those sent a second time (to be refused)
POLL = 0.25  # seconds between two looks of the signaller at the store for waits begun
#: A child saga's wait_for that no signal ends (X in FAMILY_SHAPES): the test cancels the
#: top saga CANCEL s after the wait began; its timeout is long enough that a cancel held
#: up by the store cut still comes first
CANCEL = (0.2, 1.0)
CANCEL_TIMEOUT = 20.0
CANCEL_REASON = "chaos: cancelled while its child saga waits"
CHILD_ON_TIMEOUT = ("compensate", "continue")  # a child's wait_for: "fail" is not planned
# (a FAILED child leaves its parent FAILED after undoing its other steps: not modelled)

#: (seconds after the first start, fault); each broker gets all that apply to it. The
#: starts take about SAGAS / RATE + STORE_CUT = 43 s: the last fault comes near their end.
#: A kill "mid-group" waits (up to AIM_WAIT s) until a group member's body is running in
#: a pool process, and kills then (the pool process: that one); "mid-child" likewise for
#: a step of a child saga (up to AIM_WAIT_CHILD s, as long as the next fault is not due),
#: each aimed kill at a step no kill was aimed at before.
SCHEDULE: list[tuple[float, str]] = [
    (3.0, "kill worker mid-group"),
    (8.0, "kill pool process mid-group"),
    (11.0, "cut store"),
    (15.0, "kill pool process"),  # while the store is cut off: no step body runs then
    (11.0 + STORE_CUT, "restore store"),
    (22.0, "kill pool process mid-child"),  # as the steps the cut held up run
    (25.0, "kill pool process mid-group"),
    (28.0, "restart broker"),  # Redis: the test's own redis-server
    (33.0, "kill pool process mid-child"),
    (38.0, "kill worker mid-group"),
    (42.0, "kill worker mid-child"),
]
#: The stages of a saga with groups: s a step, G a group of 2-3 members.
SHAPES = ("sGs", "sGs", "sGs", "Gs", "Gs", "sG", "sG", "G", "ssG", "GsG")
#: The sagas with child sagas: their stages (s a step, G a group, W a wait_for, Z a sleep,
#: X a wait_for that only the test's cancel of the top saga ends, ``(...)`` a child saga
#: and its own stages), and which steps fail for good: "none"; "child" one of the first
#: child's own steps (it undoes itself, then its parent undoes what came before);
#: "grandchild" likewise one of the first child's first child's own steps;
#: "after" one of the saga's own steps after its first child (the child is undone as a
#: unit, its steps newest first, before the saga's earlier steps); "any" each step with
#: probability 1/10. Retry steps fail transiently as everywhere.
FAMILY_SHAPES = (
    ("s(ss)s", "none"), ("(ss)s", "none"), ("s(sss)", "none"),
    ("s(ss)s", "child"), ("s(sss)s", "child"), ("(ss)s", "child"),
    ("s(ss)s", "after"), ("s(sss)ss", "after"), ("(ss)s", "after"),
    ("s(sGs)s", "any"), ("s(Gs)s", "any"), ("s(sG)s", "after"),
    ("s(sWs)s", "any"), ("(sWs)s", "any"), ("s(sWs)s", "none"), ("s(sZs)s", "any"),
    ("s(s(ss)s)s", "any"), ("s((ss)s)s", "any"), ("s(s(ss))s", "after"),
    ("s(s(ss)s)s", "child"), ("s(s(ss)s)s", "grandchild"), ("s(s(sWs))s", "any"),
    ("s(sXs)s", "none"), ("s(sX)s", "none"), ("s(s(sXs)s)s", "none"),
)  # fmt: skip


@dataclass(frozen=True)
class PlannedStep:
    index: int  # in plan order: stage by stage, a group's members in order, then in them
    task: str  # PLAIN or RETRYING; in a saga with groups or children GROUP_STEP or
    # GROUP_RETRY_STEP; WAIT_TASK a wait or sleep, CHILD_TASK a child saga's stage
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
Key = tuple[str, int]  # a step of a saga or of a child saga: (saga id, step index)


@dataclass(frozen=True)
class WaitPlan:
    """A ``wait_for`` or ``sleep`` stage of a saga (a step row of task WAIT_TASK), and
    when the test sends a wait's signal (or cancels the top saga: ``when`` "cancel")."""

    index: int
    stage: int
    seconds: float  # the wait's timeout, or how long the sleep sleeps
    on_timeout: str | None  # a wait_for's; None: a sleep
    when: str = ""  # a wait_for: one of WHEN, or "cancel"
    payload: str = ""  # the signal's payload
    delay: float = 0.0  # 0-1: where in its window (see WHEN) the signal is sent
    duplicate: bool = False  # sent again once accepted
    cancels: str = ""  # "cancel": the saga the test cancels (the top one)

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
    """A saga's plan (a child saga's too: one of ``children``).

    What a wait_for ends with is read from the store (``outcome``: a signal's race with
    the timeout is allowed to go either way), and so what a child saga after a wait is
    given (``input``); everything else follows from that (see :class:`Family`)."""

    saga_id: str
    steps: list[PlannedStep]
    stages: list[Branches]  # one member of one step per stage, but in a group
    groups: frozenset[int] = frozenset()  # which stages are groups
    waits: dict[int, WaitPlan] = field(default_factory=dict)  # by step index
    # a wait_for, as the store says it ended: "signal" (its payload), "timeout", or
    # "cancelled" (a cancel of the top saga stopped its child there)
    outcome: dict[int, str] = field(default_factory=dict)
    children: dict[int, Planned] = field(default_factory=dict)  # by their stage's step index
    mutable: bool = False  # its steps are .s(): each gets the result of the stage before
    fed: bool = False  # a child saga after a stage of its parent: its first steps get...
    input: Any = None  # ...that stage's result (filled in from the store after the run)
    name: str = ""

    @property
    def grouped(self) -> bool:
        return bool(self.groups)

    def tree(self) -> Iterator[Planned]:
        """This saga and its child sagas (and theirs), parents first, in plan order."""
        yield self
        for _, child in sorted(self.children.items()):
            yield from child.tree()

    @property
    def depth(self) -> int:
        """0 a top saga, 1 its child, 2 a child's child."""
        return self.saga_id.count(".")

    def _shape(self) -> str:
        def stage(n: int, b: Branches) -> str:
            if n in self.groups:
                return "G({}{})".format(len(b), "c" * any(len(m) > 1 for m in b))
            child = self.children.get(b[0][0])
            if child is not None:
                return f"C({child._shape()})"
            wait = self.waits.get(b[0][0])
            if wait is None:
                return "s"
            return "Z" if wait.sleep else "X" if wait.when == "cancel" else "W"

        return "-".join(stage(n, b) for n, b in enumerate(self.stages))

    @property
    def shape(self) -> str:
        """``s-G(3)-s``: its stages; a group's member count, ``c`` for a chain member;
        ``W`` a wait_for, ``Z`` a sleep, ``C(...)`` a child saga, ``X`` a wait for a
        cancel."""
        if self.children:
            return f"family {self._shape()}"
        if not self.grouped and not self.waits:
            return "linear"
        return self._shape() if self.grouped else f"linear {self._shape()}"

    def result(self, stage: int) -> Any:
        """What stage ``stage`` returns: a step its index, a group its members' results in
        member order, a child saga its last stage's, a sleep what the stage before it
        returned, a wait_for the signal's payload (None when it timed out and went on).
        Stage -1: what the saga is given (a child saga after a stage of its parent)."""
        if stage < 0:
            return self.input if self.fed else None
        branches = self.stages[stage]
        if stage in self.groups:
            return [m[-1] for m in branches]
        index = branches[0][-1]
        child = self.children.get(index)
        if child is not None:
            return child.output
        wait = self.waits.get(index)
        if wait is None:
            return index
        if wait.sleep:
            return self.result(stage - 1)
        return wait.payload if self.outcome.get(index) == "signal" else None

    def is_wait(self, stage: int) -> bool:
        return self.stages[stage][0][0] in self.waits

    def feed(self, index: int) -> list[Any]:
        """The arguments step ``index`` must be given: the result of the stage before it
        (see :meth:`result`), the step before it in its member (its index), or none (in a
        saga without groups or children, the steps are immutable signatures; but a sleep,
        and the step after a wait or sleep; a wait_for is immutable: its result is the
        signal's). A child saga's stage is given the result before it, as is its first
        stage's steps."""
        step = self.steps[index]
        if step.position:
            return [index - 1]  # a chain member's steps are numbered one after the other
        wait = self.waits.get(index)
        if wait is not None and not wait.sleep:
            return []
        if step.stage == 0 and not self.fed:
            return []
        passed = (
            self.mutable
            or index in self.children
            or wait is not None
            or (step.stage > 0 and self.is_wait(step.stage - 1))
        )
        return [self.result(step.stage - 1)] if passed else []

    @property
    def output(self) -> Any:
        """The saga's result when it completes."""
        return self.result(len(self.stages) - 1)

    @property
    def signalled(self) -> WaitPlan | None:
        """Its wait_for stage (one at most)."""
        return next((w for w in self.waits.values() if not w.sleep), None)


class Family:
    """A saga and its child sagas (and theirs) as one line of stages: a child's own stages
    stand where its stage stands in its parent. A saga without children is a family of
    one.

    Whatever the faults, the first stage of that line with a step failing for good (or a
    wait whose timeout failed it, or a wait the cancel stopped) stops the lot: no stage
    after it runs, and everything applied before it is undone, newest first: a stage's
    steps before the stages before it (a child's steps before its parent's earlier ones,
    a child after a failing stage of its parent undone as a unit, in reverse). Every saga
    of the family that started ends as the top saga does: COMPLETED, or COMPENSATED (one
    after the failing stage never started)."""

    def __init__(self, top: Planned) -> None:
        self.top = top
        self.sagas: dict[str, Planned] = {}
        self.parent: dict[str, tuple[Planned, int]] = {}  # a child: its parent, its step
        self.stages: list[tuple[tuple[Key, ...], ...]] = []
        self.first: dict[str, int] = {}  # a saga's first stage in the line
        self._walk(top)
        self.at = {key: n for n, b in enumerate(self.stages) for m in b for key in m}

    def _walk(self, saga: Planned) -> None:
        self.sagas[saga.saga_id] = saga
        self.first[saga.saga_id] = len(self.stages)
        for branches in saga.stages:
            child = saga.children.get(branches[0][0])
            if child is None:
                self.stages.append(tuple(tuple((saga.saga_id, i) for i in m) for m in branches))
                continue
            self.parent[child.saga_id] = (saga, branches[0][0])
            self._walk(child)

    def step(self, key: Key) -> PlannedStep:
        return self.sagas[key[0]].steps[key[1]]

    def wait(self, key: Key) -> WaitPlan | None:
        return self.sagas[key[0]].waits.get(key[1])

    @functools.cached_property
    def effects(self) -> tuple[Key, ...]:
        """The steps with a body (not waits, sleeps), in line order."""
        return tuple(k for b in self.stages for m in b for k in m if self.wait(k) is None)

    def fails(self, key: Key) -> bool:
        """Whether step ``key`` fails for good: as planned, or a wait that timed out and
        does not go on, or the wait the cancel stopped."""
        wait = self.wait(key)
        if wait is None:
            return self.step(key).fail
        outcome = self.sagas[key[0]].outcome.get(key[1])
        timed_out = wait.on_timeout in ("compensate", "fail") and outcome == "timeout"
        return timed_out or outcome == "cancelled"

    @functools.cached_property
    def failing_stage(self) -> int | None:
        """The stage of the line that fails: the first with a step that fails for good (a
        step before it in its member succeeds, or fails first)."""
        return next(
            (n for n, b in enumerate(self.stages) if any(self.fails(k) for m in b for k in m)),
            None,
        )

    @functools.cached_property
    def failing_saga(self) -> Planned | None:
        stage = self.failing_stage
        return None if stage is None else self.sagas[self.stages[stage][0][0][0]]

    @functools.cached_property
    def failing_wait(self) -> WaitPlan | None:
        """The wait_for that timed out (or was stopped by the cancel) and failed the lot."""
        stage = self.failing_stage
        return None if stage is None else self.wait(self.stages[stage][0][0])

    @property
    def cancelled(self) -> bool:
        """Whether the cancel of the top saga stopped the lot (at a child's wait)."""
        wait, saga = self.failing_wait, self.failing_saga
        return wait is not None and saga is not None and saga.outcome.get(wait.index) == "cancelled"

    @functools.cached_property
    def path(self) -> list[Planned]:
        """The top saga, its child that holds the failing stage, ... down to the saga that
        does (the failure goes up it: each ends with its child's error; a cancel down)."""
        saga = self.failing_saga
        path = []
        while saga is not None:
            path.append(saga)
            saga = self.parent[saga.saga_id][0] if saga.saga_id in self.parent else None
        return path[::-1]

    @property
    def ending(self) -> SagaStatus:
        if self.failing_stage is None:
            return SagaStatus.COMPLETED
        wait = self.failing_wait
        return SagaStatus.FAILED if wait and wait.on_timeout == "fail" else SagaStatus.COMPENSATED

    def started(self, saga_id: str) -> bool:
        """Whether the saga's parent got to its stage (a top saga: always)."""
        return self.failing_stage is None or self.failing_stage >= self.first[saga_id]

    def on_path(self, saga: Planned) -> bool:
        return any(s is saga for s in self.path)

    def stop(self, saga: Planned) -> int:
        """The stage of ``saga`` it fails at (its own, or the one of its child that does),
        or its stage count (it went through every one)."""
        if not self.on_path(saga):
            return len(saga.stages)
        position = [s.saga_id for s in self.path].index(saga.saga_id)
        if position + 1 < len(self.path):
            return saga.steps[self.parent[self.path[position + 1].saga_id][1]].stage
        assert self.failing_stage is not None
        return self.step(self.stages[self.failing_stage][0][0]).stage

    @functools.cached_property
    def candidates(self) -> frozenset[Key]:
        """The steps the failing saga may report as its failing one: in the failing stage,
        the first failing step of each member (two failing members race)."""
        if self.failing_stage is None:
            return frozenset()
        members = self.stages[self.failing_stage]
        firsts = (next((k for k in m if self.fails(k)), None) for m in members)
        return frozenset(k for k in firsts if k is not None)

    @functools.cached_property
    def applied(self) -> frozenset[Key]:
        """The steps that must apply their effect: all, or every one before the failing
        stage."""
        stop = len(self.stages) if self.failing_stage is None else self.failing_stage
        return frozenset(k for k in self.effects if self.at[k] < stop)

    @functools.cached_property
    def maybe(self) -> frozenset[Key]:
        """The steps that may apply theirs, or not: in the failing stage, those before its
        members' failing steps (a member in flight when the stage fails finishes, one not
        started never starts, one killed then is undone in doubt)."""
        if self.failing_stage is None:
            return frozenset()
        ahead = set()
        for member in self.stages[self.failing_stage]:
            for k in member:
                if self.fails(k):
                    break
                ahead.add(k)
        return frozenset(ahead)

    @functools.cached_property
    def never(self) -> frozenset[Key]:
        """The steps whose body must never run: after the failing stage, or after a failing
        step in its member."""
        return frozenset(self.effects) - self.applied - self.maybe - self.candidates

    def before(self, a: Key, b: Key) -> bool:
        """Whether step ``a``'s undo must come before step ``b``'s: the line's stages are
        undone in reverse (a child's steps before the earlier ones of its parent), a
        member's steps too."""
        if self.at[a] != self.at[b]:
            return self.at[a] > self.at[b]
        sa, sb = self.step(a), self.step(b)
        return sa.branch == sb.branch and sa.position > sb.position

    def stopped(self, saga: Planned) -> tuple[str, str]:
        """The error of a saga on the path when the cancel of the top saga stopped it."""
        if saga is self.top:
            return CANCELLED, CANCEL_REASON
        parent = self.parent[saga.saga_id][0]
        return CANCELLED, f"its parent saga {parent.saga_id!r} stopped: {self.stopped(parent)[1]}"

    @property
    def kind(self) -> str:
        top = self.top
        sagas = self.sagas.values()
        steps = [self.step(k) for k in self.effects if k not in self.never]
        retrying = any(s.retrying and s.flakes for s in steps)
        flaky = " with a transiently failing retry step" if retrying else ""
        waits = "".join(
            " with a sleep"
            if w.sleep
            else f" with a wait (on_timeout={w.on_timeout}, signal {w.when}, "
            f"{s.outcome.get(w.index, 'not reached')})"
            for s in sagas
            for w in s.waits.values()
        )
        stage = self.failing_stage
        if stage is None:
            return f"{top.shape}: completes{flaky}{waits}"
        saga = self.failing_saga
        assert saga is not None
        where = "" if saga is top else f" of child saga {saga.saga_id[len(top.saga_id) :]}"
        first = self.stages[stage][0][0]
        wait = self.failing_wait
        if self.step(first).stage in saga.groups:
            how = f"a member of stage {self.step(first).stage}{where} fails"
        elif wait is not None and self.cancelled:
            how = f"cancelled while child saga {saga.saga_id[len(top.saga_id) :]} waits"
        elif wait is not None:
            how = f"the wait{where} timed out, on_timeout={wait.on_timeout}"
        else:
            (key,) = self.candidates
            how = f"{'retry step' if self.step(key).retrying else 'step'} {key[1]}{where} fails"
        return f"{top.shape}: {self.ending.value.lower()} ({how}){flaky}{waits}"


def _kwargs(rng: random.Random, step: PlannedStep, child: bool = False) -> dict[str, Any]:
    kwargs = {
        "index": step.index,
        "fail": step.fail,
        # a window to be killed in; a child saga's steps, fewer, a wider one (to be aimed at)
        "pause": rng.uniform(0.01, 0.04) if child else rng.uniform(0.0, 0.03),
        "undo_fails": rng.choice((0, 0, 1)),  # a third of the undos fail once
    }
    if step.retrying:
        kwargs["flakes"] = step.flakes
    if step.branch is not None:
        kwargs["member"] = True  # its attempts are what an aimed kill waits for
    if child:
        kwargs["child"] = True  # ...or these ("mid-child")
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


def _wait_plan(
    rng: random.Random,
    kind: str,
    index: int,
    stage: int,
    saga_id: str,
    on_timeout: tuple[str, ...] = ON_TIMEOUT,
) -> WaitPlan:
    if kind == "sleep":
        return WaitPlan(index, stage, round(rng.uniform(*SLEEP), 1), None)
    return WaitPlan(
        index,
        stage,
        round(rng.uniform(*TIMEOUT), 1),
        rng.choice(on_timeout),
        when=rng.choice(WHEN),
        payload=f"{SIGNAL} {saga_id}",
        delay=rng.random(),
        duplicate=rng.random() < DUPLICATE,
    )


class _Stages:
    """A saga's stages as they are planned: steps, groups, waits, and child sagas."""

    def __init__(self, env: SagaEnv, rng: random.Random, saga_id: str, child: bool = False):
        self.env, self.rng, self.saga_id, self.child = env, rng, saga_id, child
        self.steps: list[PlannedStep] = []
        self.stages: list[Branches] = []
        self.signatures: list[Any] = []
        self.waits: dict[int, WaitPlan] = {}
        self.groups: set[int] = set()
        self.children: dict[int, Planned] = {}

    def wait(self, kind: str, on_timeout: tuple[str, ...] = ON_TIMEOUT) -> None:
        index, stage = len(self.steps), len(self.stages)
        self.hold(_wait_plan(self.rng, kind, index, stage, self.saga_id, on_timeout))

    def hold(self, wait: WaitPlan) -> None:
        index, stage = len(self.steps), len(self.stages)
        assert (wait.index, wait.stage) == (index, stage)
        self.steps.append(PlannedStep(index, WAIT_TASK, False, stage=stage))
        self.stages.append(((index,),))
        self.signatures.append(wait.signature())
        self.waits[index] = wait

    def after_wait(self) -> bool:
        return bool(self.stages) and self.stages[-1][0][0] in self.waits

    def step(
        self, stage: int, branch: int | None = None, position: int = 0, fail: float = 0.1
    ) -> Any:
        """A ``.s()`` step (``chaos.group_step``, 3 in 10 ``chaos.group_retry_step``) that
        fails for good with probability ``fail``."""
        index, rng = len(self.steps), self.rng
        if rng.random() < 0.3:
            flakes = rng.choice((1, 2))
            planned = PlannedStep(
                index, GROUP_RETRY_STEP, rng.random() < fail, flakes, stage, branch, position
            )
        else:
            planned = PlannedStep(
                index, GROUP_STEP, rng.random() < fail, 0, stage, branch, position
            )
        self.steps.append(planned)
        kwargs = _kwargs(rng, planned, self.child)
        return self.env.app.signature(planned.task, kwargs=kwargs)

    def line(self, fail: float = 0.1) -> None:
        """A stage of one step."""
        number = len(self.stages)
        self.signatures.append(self.step(number, fail=fail))
        self.stages.append(((len(self.steps) - 1,),))

    def group(self, fail: float = 0.1) -> None:
        """A group of 2-3 members, 3 in 10 of them a chain of 2 steps."""
        number, rng = len(self.stages), self.rng
        members, branches = [], []
        for branch in range(rng.randint(2, 3)):
            first = len(self.steps)
            size = 2 if rng.random() < 0.3 else 1
            chained = [self.step(number, branch, p, fail) for p in range(size)]
            members.append(chained[0] if len(chained) == 1 else chain(*chained))
            branches.append(tuple(range(first, len(self.steps))))
        self.signatures.append(group(*members))
        self.stages.append(tuple(branches))
        self.groups.add(number)

    def planned(self, **options: Any) -> Planned:
        return Planned(
            self.saga_id, self.steps, self.stages, frozenset(self.groups), self.waits,
            children=self.children, **options,
        )  # fmt: skip


def _plan(env: SagaEnv, rng: random.Random) -> tuple[Any, Planned]:
    """3-5 steps; 3 in 10 with a retry policy, most of those failing once or twice first;
    a plain step fails with probability 1/4, a retry step for good with 1/10. Between two
    steps perhaps a wait_for (whose next step is a ``.s()``: it gets the payload) and a
    sleep (likewise: it gets the result of the step before the sleep)."""
    count = rng.randint(3, 5)
    plan = _Stages(env, rng, new_id())
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
    return saga, plan.planned(name=env.name)


def _plan_grouped(env: SagaEnv, rng: random.Random) -> tuple[Any, Planned]:
    """A saga of one of SHAPES: a group has 2-3 members, 3 in 10 of them a chain of 2
    steps. Every step is a ``.s()``: it gets what the stage before it returned. 3 in 10
    steps have a retry policy (as in :func:`_plan`); a plain step fails with probability
    1/10, a retry step for good with 1/10. Between two stages perhaps a wait_for and a
    sleep (as in :func:`_plan`)."""
    plan = _Stages(env, rng, new_id())
    shape = rng.choice(SHAPES)
    gaps = _gaps(rng, len(shape))
    for body, kind in enumerate(shape):
        if body in gaps:
            plan.wait(gaps[body])
        if kind == "s":
            plan.line()
        else:
            plan.group()
    saga = env.saga(*plan.signatures, name=env.name)
    return saga, plan.planned(mutable=True, name=env.name)


def _parse(spec: str) -> list[Any]:
    """``"s(sGs)s"`` -> ``["s", ["s", "G", "s"], "s"]``: a child saga is a list."""
    stack: list[list[Any]] = [[]]
    for c in spec:
        if c == "(":
            stack.append([])
        elif c == ")":
            child = stack.pop()
            stack[-1].append(child)
        else:
            stack[-1].append(c)
    (items,) = stack
    return items


def _plan_family(env: SagaEnv, rng: random.Random) -> tuple[Any, Planned]:
    """A saga with child sagas, of one of FAMILY_SHAPES: every step a ``.s()`` (3 in 10
    with a retry policy), failing for good as the shape says; a child's wait_for with
    on_timeout "compensate" or "continue"."""
    spec, mode = rng.choice(FAMILY_SHAPES)
    items = _parse(spec)
    first = next(n for n, item in enumerate(items) if isinstance(item, list))
    forced: tuple[tuple[int, ...], int] | None = None
    if mode in ("child", "grandchild"):
        path: tuple[int, ...] = (first,)
        inner = items[first]
        if mode == "grandchild":
            nested = next(n for n, item in enumerate(inner) if isinstance(item, list))
            path, inner = (first, nested), inner[nested]
        forced = (path, rng.choice([n for n, item in enumerate(inner) if item == "s"]))
    elif mode == "after":
        forced = ((), rng.choice([n for n, item in enumerate(items) if item == "s" and n > first]))
    top = new_id()

    def build(items: list[Any], path: tuple[int, ...], saga_id: str, fed: bool) -> Any:
        plan = _Stages(env, rng, saga_id, child=bool(path))
        for position, item in enumerate(items):
            number, index = len(plan.stages), len(plan.steps)
            fail = 0.1 if mode == "any" else float(forced == (path, position))
            if isinstance(item, list):
                child_id = child_saga_id(saga_id, index)
                signature, child = build(item, (*path, position), child_id, number > 0 or fed)
                plan.steps.append(PlannedStep(index, CHILD_TASK, False, stage=number))
                plan.stages.append(((index,),))
                plan.signatures.append(signature)
                plan.children[index] = child
            elif item == "s":
                plan.line(fail)
            elif item == "G":
                plan.group(fail)
            elif item == "W":
                plan.wait("wait", CHILD_ON_TIMEOUT)
            elif item == "Z":
                plan.wait("sleep")
            elif item == "X":
                plan.hold(
                    WaitPlan(index, number, CANCEL_TIMEOUT, "compensate", when="cancel",
                             delay=rng.random(), cancels=top)
                )  # fmt: skip
            else:
                raise AssertionError(f"unknown stage {item!r} in {spec!r}")
        name = f"{env.name}-child" if path else env.name
        planned = plan.planned(mutable=True, fed=fed, name=name)
        return env.saga(*plan.signatures, name=name), planned

    saga, planned = build(items, (), top, False)
    return saga, planned


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
    """What the test did with one saga's wait_for signal, and what signal() said (or
    with the cancel of its top saga, and what cancel() said)."""

    first: str | None = None  # delivered (True), kept (False), refused (SagaStateError),
    # "in doubt": refused after a try the store or the broker failed (it may have landed),
    # "not found": a child saga never started (SagaNotFound, and its top saga ended);
    # a cancel: "cancelled" (True), "not cancelled" (False), "in doubt" (False after a
    # try that failed)
    at: float | None = None  # when the answer came, seconds after the first start
    tries: int = 0  # tries that failed with the store or the broker away
    not_yet: int = 0  # tries that found no such saga (a child saga not started yet)
    duplicates: list[str] = field(default_factory=list)  # what the second signals got


class Signaller:
    """Sends the sagas' signals from a thread of its own, as WaitPlan.when says: "early"
    ones after the start, "waiting" and "race" ones once the store shows the wait begun
    (the test looks every POLL s, past the store's proxy: a cut must not blind it);
    a duplicate of an accepted signal a moment later. A child saga's wait "cancel": the
    top saga is cancelled CANCEL s after the wait began."""

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
        """A saga just started (the waits of its child sagas too)."""
        for saga in planned.tree():
            wait = saga.signalled
            if wait is None:
                continue
            self.logs[saga.saga_id] = SignalLog()
            self.waits[saga.saga_id] = wait
            if wait.when == "early":
                self.push(time.monotonic() + wait.delay * EARLY, saga.saga_id, "first")
            elif wait.when in ("waiting", "race", "cancel"):
                with self.lock:
                    self.watched[saga.saga_id] = wait

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
            what = "first"
            if wait.when == "waiting":  # 10-60 % of the timeout after it began
                at = due - wait.seconds * (1.0 - (0.1 + 0.5 * wait.delay))
            elif wait.when == "cancel":  # CANCEL s after it began
                at = due - wait.seconds + CANCEL[0] + (CANCEL[1] - CANCEL[0]) * wait.delay
                what = "cancel"
            else:  # 0.2 s before its timeout to 0.6 s after (the timeout's wake-up comes late)
                at = due - 0.2 + 0.8 * wait.delay
            with self.lock:
                del self.watched[row.saga_id]
            self.push(time.monotonic() + (at - time.time()), row.saga_id, what)

    def send(self, saga_id: str, what: str) -> None:
        wait, log = self.waits[saga_id], self.logs[saga_id]
        if what == "cancel":
            self.cancel(wait, log, saga_id)
            return
        payload = wait.payload if what == "first" else f"again {saga_id}"
        try:
            kept = not SagaResult(saga_id, app=self.env.app).signal(SIGNAL, payload)
            answer = "kept" if kept else "delivered"
        except SagaNotFound:  # a child saga not started yet: tell it again soon
            if what == "first" and not self.top_ended(saga_id):
                log.not_yet += 1
                self.push(time.monotonic() + NOT_YET, saga_id, what)
                return
            answer = "not found"
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

    def top_ended(self, saga_id: str) -> bool:
        """Whether the top saga of (child) saga ``saga_id`` has ended."""
        try:
            return SagaResult(saga_id.split(".")[0], app=self.env.app).status.is_terminal
        except SagaStoreError:
            return False

    def cancel(self, wait: WaitPlan, log: SignalLog, saga_id: str) -> None:
        """Cancel the top saga while its child waits at ``wait``."""
        try:
            cancelled = SagaResult(wait.cancels, app=self.env.app).cancel(CANCEL_REASON)
        except (SagaStoreError, BrokerError, redis.exceptions.ConnectionError):
            log.tries += 1  # the store or the broker is away: try again, as a caller would
            self.push(time.monotonic() + 0.5, saga_id, "cancel")
            return
        answer = "cancelled" if cancelled else "in doubt" if log.tries else "not cancelled"
        log.first, log.at = answer, time.monotonic() - self.began

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
    aimed: str = ""  # an aimed kill: the attempt it waited for


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
    revived: list[float] = field(default_factory=list)  # ...after it had died on its own
    error: BaseException | None = None
    stopped: threading.Event = field(default_factory=threading.Event)
    seen: int = 0  # the last ledger id an aimed kill has looked at
    # the attempts of group members and child sagas' steps it saw: (saga id, step, pid,
    # time.time() its pause ends at, "member" or "child" or both)
    pausing: list[tuple[str, str, int, float, frozenset[str]]] = field(default_factory=list)
    aimed: set[tuple[str, str]] = field(default_factory=set)  # the steps it killed (once each)

    def __post_init__(self) -> None:
        self.seen = self.ledger_top()

    def now(self) -> float:
        return time.monotonic() - self.began

    def run(self) -> None:
        try:
            for n, (at, what) in enumerate(self.schedule):
                if self.stopped.wait(max(0.0, at - self.now())):
                    return  # the test is over (it failed)
                self.do(what, next((t for t, _ in self.schedule[n + 1 :]), float("inf")))
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

    def aim(self, kind: str, until: float = float("inf")) -> tuple[int | None, str]:
        """Wait until a group member's body (``kind`` "member"), or a child saga's step's
        ("child"), of a step no kill was aimed at before, is in its pause in one of the
        worker's pool processes, with AIM_MARGIN s of it left at least: that process, and
        which attempt (None after AIM_WAIT s without one; a child saga's step: up to
        AIM_WAIT_CHILD s, if the next fault, at ``until``, is not due before)."""
        c = ledger_table.c
        query = select(c.id, c.saga_id, c.tag, c.payload).where(c.action == "attempt")
        wait = AIM_WAIT
        if kind == "child":
            wait = max(AIM_WAIT, min(AIM_WAIT_CHILD, until - self.now()))
        deadline = time.monotonic() + wait
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
                kinds = frozenset(k for k in ("member", "child") if payload.get(k))
                if kinds:
                    until = payload["at"] + payload["pause"]
                    self.pausing.append((row.saga_id, row.tag, payload["pid"], until, kinds))
            now = time.time()
            self.pausing = [p for p in self.pausing if p[3] - now > AIM_MARGIN]
            for saga_id, tag, pid, until, kinds in self.pausing:
                if kind in kinds and pid in children and (saga_id, tag) not in self.aimed:
                    self.aimed.add((saga_id, tag))  # the next aimed kill picks another step
                    return pid, f"saga {saga_id} step {tag} in pid {pid}, {until - now:.3f} s left"
            time.sleep(0.004)
        return None, ""

    def do(self, what: str, until: float) -> None:
        """Carry out fault ``what``; the next one is due at ``until``."""
        at = self.now()
        aimed = what.endswith((" mid-group", " mid-child"))
        kind = "child" if what.endswith(" mid-child") else "member"
        if what.startswith("kill worker"):
            _, seen = self.aim(kind, until) if aimed else (None, "")
            at = self.now()
            pids = self.worker.kill()
            self.faults.append(Fault(what, at, at, tuple(pids), self.ledger_top(), seen))
            self.worker.start()
            self.worker_back.append(self.now())
        elif what.startswith("kill pool process"):
            if not self.worker.alive():  # it died on its own: start another, as a supervisor
                self.worker.start()  # (systemd, Kubernetes) would, then kill in that one
                self.revived.append(self.now())
            target, seen = self.aim(kind, until) if aimed else (None, "")
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


def _caught(kills: list[Fault], entries: list[Any]) -> list[list[Any]]:
    """For each kill, from the ledger: the attempts of group members and of the steps of
    sagas with child sagas (those that leave a token) it cut short.

    An attempt whose ``end`` never came, by a process the kill killed, begun since the
    kill before (its ``attempt`` row between that kill's ledger top and this one's).
    """
    ended = {e.payload["token"] for e in entries if e.action == "end"}
    cut_short = [
        e
        for e in entries
        if e.action == "attempt"
        and isinstance(e.payload, dict)
        and "token" in e.payload
        and e.payload["token"] not in ended
    ]
    caught, after = [], 0
    for kill in kills:
        caught.append(
            [e for e in cut_short if after < e.id <= kill.top and e.payload["pid"] in kill.pids]
        )
        after = kill.top
    return caught


def _mid(attempt: Any, kind: str) -> bool:
    """Whether a cut-short attempt was a group member's ("member") or a child saga's
    step's ("child", as its saga id says)."""
    return bool(attempt.payload.get("member")) if kind == "member" else "." in attempt.saga_id


def _wait_until_all_end(observer_url: str, planned: list[Planned], timeout: float) -> list[str]:
    """Wait for every saga and child saga to be terminal (a child saga its parent never
    started: once its top saga is); the ids of those that are not after ``timeout``.

    One query a look for all of them, past the store's proxy: it must not cost the
    worker the CPU it needs (there are 2 cores)."""
    engine = create_engine(observer_url, pool_size=1, max_overflow=0)
    families = {p.saga_id: [s.saga_id for s in p.tree()] for p in planned}
    deadline = time.monotonic() + timeout
    running = list(families)
    left: list[str] = running
    try:
        while running and time.monotonic() < deadline:
            ids = [saga_id for top in running for saga_id in families[top]]
            query = select(saga_table.c.id, saga_table.c.status).where(saga_table.c.id.in_(ids))
            with contextlib.suppress(Exception), engine.connect() as connection:
                statuses = {row.id: SagaStatus(row.status) for row in connection.execute(query)}
                left = [i for i in ids if i in statuses and not statuses[i].is_terminal]
                left += [top for top in running if top not in statuses]
                running = list(dict.fromkeys(i.split(".")[0] for i in left))
            if running:
                time.sleep(0.5)
    finally:
        engine.dispose()
    return left if running else []


@dataclass
class Member:
    """One saga of a family (the top saga or a child saga) as the store holds it."""

    planned: Planned
    record: SagaRecord | None
    steps: list[StepRecord]
    signals: SignalLog | None = None  # a saga with a wait_for: what the test sent


@dataclass
class Seen:
    """A saga and its child sagas as the store and the ledger hold them after the run."""

    planned: Planned  # the top saga's plan, its children in it; outcomes filled in
    members: dict[str, Member]  # by saga id: the top saga and every child saga of it
    rows: list[tuple[int, str, str, str]]  # their ledger rows: (id, saga id, action, step)
    output: Any = None  # what SagaResult.get() returns, for a completed saga

    @functools.cached_property
    def family(self) -> Family:
        return Family(self.planned)

    @property
    def record(self) -> SagaRecord | None:
        return self.members[self.planned.saga_id].record

    @functools.cached_property
    def ledger(self) -> Counter[tuple[str, Key]]:
        return Counter((action, (saga_id, int(tag))) for _, saga_id, action, tag in self.rows)

    def ids(self, *actions: str) -> dict[Key, list[int]]:
        """The ledger ids of these actions, by step."""
        found: dict[Key, list[int]] = {}
        for row_id, saga_id, action, tag in self.rows:
            if action in actions:
                found.setdefault((saga_id, int(tag)), []).append(row_id)
        return found

    @property
    def status(self) -> SagaStatus | None:
        return None if self.record is None else self.record.status

    def describe(self) -> str:
        top = self.planned.saga_id
        text = [f"saga {top} ({self.planned.shape}):"]
        for member in self.members.values():
            text.append(self._describe(member, member.planned.saga_id[len(top) :] or "top"))
        rows = [(i, saga_id[len(top) :], action, tag) for i, saga_id, action, tag in self.rows]
        return "\n".join([*text, f"    ledger (id, saga, action, step): {rows}"])

    def _describe(self, member: Member, which: str) -> str:
        record, planned = member.record, member.planned
        plan = [
            (s.index, s.stage, s.branch, s.task,
             "fails" if s.fail else f"flakes {s.flakes}" if s.flakes else "ok")
            for s in planned.steps
        ]  # fmt: skip
        steps = [
            (s.index, s.status.value, s.attempts, s.compensation_attempts,
             s.error and f"{s.error['type']}: {s.error['message']}", s.args, s.result)
            for s in member.steps
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
            for s in member.steps
        ]  # fmt: skip
        error = record and record.error and f"{record.error['type']}: {record.error['message']}"
        return (
            f"  {which} {planned.saga_id}: plan (index, stage, member, task, what it does) "
            f"{plan}\n"
            f"    stored: {record.status if record else None}, error {error}, "
            f"failed_step {record.failed_step if record else None}, "
            f"finished {since(record.finished_at if record else None)} s after it was stored\n"
            f"    steps (index, status, attempts, compensation attempts, error, args, result): "
            f"{steps}\n"
            f"    seconds after the saga was stored (index, started, finished, compensation "
            f"started, compensation finished): {times}\n"
            f"    waits: {list(planned.waits.values())}, outcome {planned.outcome}, "
            f"signals {member.signals}"
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


def _cancelled(record: SagaRecord | None, row: StepRecord | None) -> bool:
    """Whether a child saga was stopped by the cancel of its top saga at the wait of step
    row ``row`` (the cancel puts a wait back to PENDING: it never reached its end)."""
    if record is None or row is None or row.status is not StepStatus.PENDING:
        return False
    error = record.error or {}
    return error.get("type") == CANCELLED and "stopped" in str(error.get("message"))


def _wait_violations(seen: Seen, member: Member) -> list[str]:
    """What is wrong with a saga's waits and sleeps: the signals (or the cancel) against
    what the store says the wait ended with, and the time a sleep or a timeout took."""
    planned, wrong = member.planned, []
    rows = {s.index: s for s in member.steps}
    stop = seen.family.stop(planned)
    for wait in planned.waits.values():
        row = rows.get(wait.index)
        if wait.stage < stop and (row is None or row.status is not StepStatus.SUCCEEDED):
            wrong.append("a wait or sleep the saga went past is not SUCCEEDED")
        outcome = planned.outcome.get(wait.index)
        log = member.signals or SignalLog()
        if wait.when == "cancel":
            if log.first == "cancelled" and outcome != "cancelled":
                wrong.append("a cancel accepted, but the child saga's wait not stopped by it")
            if outcome == "cancelled" and log.first not in ("cancelled", "in doubt"):
                wrong.append("a child saga stopped by a cancel that was never accepted")
        elif not wait.sleep:
            if outcome == "other":
                wrong.append("a wait ended with a payload the test did not send first")
            if log.first in ("delivered", "kept") and outcome not in ("signal", None):
                wrong.append("a signal accepted, but its wait timed out")
            if log.first == "delivered" and outcome is None:
                wrong.append("a signal delivered, but the wait did not end")
            if log.first in (None, "refused", "not found") and outcome == "signal":
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


def _error_violations(seen: Seen, member: Member) -> list[str]:
    """What is wrong with a stopped saga's error: the failing step's own in the saga that
    holds it, its child's (said so) in each saga above, the cancel's reason down from
    the top saga, 'its parent compensates' in a completed child undone as a unit."""
    family, planned, record = seen.family, member.planned, member.record
    assert record is not None
    if family.failing_stage is None:
        return []
    error = record.error or {}
    got = (error.get("type"), error.get("message"))
    if not family.on_path(planned):  # it completed before its parent's stage that failed
        parent = family.parent[planned.saga_id][0]
        if got != (CANCELLED, f"its parent saga {parent.saga_id!r} compensates"):
            return ["a child saga undone as a unit without its parent's reason"]
        return []
    if family.cancelled:
        if got != family.stopped(planned):
            return ["error is not the cancel's (the top saga's reason, or its parent's)"]
        if record.failed_step is not None:
            return ["a cancelled saga names a failed step"]
        return []
    position = [p.saga_id for p in family.path].index(planned.saga_id)
    if position + 1 == len(family.path):  # the saga whose own step failed
        wait = family.failing_wait
        own = (
            wait.error if wait is not None else (STEP_FAILURE, f"step {record.failed_step} failed")
        )
        if record.failed_step not in {i for _, i in family.candidates}:
            return ["failed_step is not the failing step"]
        if got != own:
            return ["error is not the failing step's own"]
        return []
    child = family.path[position + 1]
    below = seen.members[child.saga_id].record
    theirs = (below.error or {}) if below is not None else {}
    said = f"child saga {child.saga_id!r} ({child.name}) ended {SagaStatus.COMPENSATED}"
    if theirs.get("message"):
        said = f"{said}: {theirs['message']}"
    if record.failed_step != family.parent[child.saga_id][1]:
        return ["failed_step is not the step of its failing child saga"]
    if got != (theirs.get("type"), said) or error.get("child") != child.saga_id:
        return ["error is not its failing child saga's"]
    return []


def _saga_violations(seen: Seen, member: Member) -> list[str]:
    """What is wrong with one saga of a family (the top one, or a child), against the
    family's plan."""
    family, planned, record = seen.family, member.planned, member.record
    child = planned is not family.top
    of = "a child saga: " if child else ""
    if not family.started(planned.saga_id):
        if record is not None or member.steps:
            return ["a child saga started that its parent never got to"]
        return []
    if record is None or not record.status.is_terminal:
        return [f"{of}not terminal"]
    wrong = []
    expected = family.ending
    if record.status is not expected:
        wrong.append(f"{of}planned {expected.value}, ended {record.status.value}")
    if child:
        parent, index = family.parent[planned.saga_id]
        if (record.parent_id, record.parent_step) != (parent.saga_id, index):
            wrong.append("a child saga not linked to its parent's step")
        above = seen.members[parent.saga_id].record
        for status in (SagaStatus.COMPLETED, SagaStatus.COMPENSATED):
            if above is not None and above.status is status and record.status is not status:
                wrong.append(f"a child saga not {status.value} in a {status.value} parent")
    wrong += [f"{of}{v}" for v in _error_violations(seen, member)]
    busy = (StepStatus.RUNNING, StepStatus.COMPENSATING, StepStatus.WAITING)
    if any(s.status in busy for s in member.steps):
        wrong.append(f"{of}a step RUNNING, COMPENSATING or WAITING in a finished saga")
    if any(
        (s.kwargs or {}).get("index", s.index) != s.index or s.stage != planned.steps[s.index].stage
        for s in member.steps
    ):
        wrong.append(f"{of}step rows not numbered as planned")
    if any(s.args is not None and list(s.args) != planned.feed(s.index) for s in member.steps):
        wrong.append(f"{of}a step got other arguments than the results before it")

    def own(s: StepRecord) -> list[Any]:
        if s.index in planned.children:
            return [None, planned.children[s.index].output]
        wait = planned.waits.get(s.index)
        if wait is None:
            return [None, s.index]
        return [None, planned.result(s.stage), *([] if wait.sleep else [wait.payload])]

    if any(s.result not in own(s) for s in member.steps):
        wrong.append(f"{of}a step's stored result is not its own")
    if not child and record.status is SagaStatus.COMPLETED and seen.output != planned.output:
        wrong.append("the saga's result is not its last stage's")
    return wrong + [f"{of}{v}" for v in _wait_violations(seen, member)]


def _violations(seen: Seen) -> list[str]:
    """What is wrong with a saga and its child sagas, against its plan (nothing: [])."""
    family = seen.family
    top = _saga_violations(seen, seen.members[family.top.saga_id])
    if top == ["not terminal"]:
        return top
    wrong = top
    for saga in family.sagas.values():
        if saga is not family.top:
            wrong += _saga_violations(seen, seen.members[saga.saga_id])
    expected = family.ending
    effects = {key: n for key, n in seen.ledger.items() if key[0] in ("do", "undo")}
    if any(n != 1 for n in effects.values()):
        wrong.append("an effect applied or undone more than once")
    done = {key for (action, key) in effects if action == "do"}
    undone = {key for (action, key) in effects if action == "undo"}
    if not family.applied <= done or done - family.applied - family.maybe:
        wrong.append("effects applied not as planned")
    if undone != (done if expected is SagaStatus.COMPENSATED else set()):
        wrong.append("effects undone not as planned")
    if expected is SagaStatus.FAILED and seen.ids("undo-attempt"):
        wrong.append("a compensation ran in a saga that is to fail undoing nothing")
    ran = seen.ids("attempt")
    if family.never.intersection(ran):
        wrong.append("a step ran after the failing stage, or after a failing step")
    in_doubt = set(seen.ids("undo-nothing"))
    if in_doubt - family.maybe - family.candidates:
        wrong.append("a step undone in doubt outside the failing stage")
    if family.failing_stage is not None:
        begun = [i for ids in seen.ids("undo-attempt").values() for i in ids]
        attempts = [i for ids in ran.values() for i in ids]
        if begun and attempts and max(attempts) > min(begun):
            wrong.append("a step ran after a compensation began")
        undos = seen.ids(*_UNDONE)
        if any(max(undos[a]) > min(undos[b]) for a in undos for b in undos if family.before(a, b)):
            wrong.append(
                "undone out of order (stages not in reverse, or a member's steps, or a "
                "child saga's not before its parent's earlier ones)"
            )
    return list(dict.fromkeys(wrong))


def _filled(
    env: SagaEnv,
    planned: Planned,
    members: dict[str, Member],
    logs: dict[str, SignalLog],
    given: Any = None,
) -> Planned:
    """``planned`` with its waits' outcome (as the store says) and what it was given
    filled in, its children's too; each saga as the store holds it into ``members``."""
    result = SagaResult(planned.saga_id, app=env.app)
    record = result.record
    steps = result.steps if record is not None else []
    by_index = {s.index: s for s in steps}
    outcome = {}
    for i, wait in planned.waits.items():
        if wait.sleep:
            continue
        if wait.when == "cancel" and _cancelled(record, by_index.get(i)):
            outcome[i] = "cancelled"
        elif (o := _outcome(wait, by_index.get(i))) is not None:
            outcome[i] = o
    filled = replace(planned, outcome=outcome, input=given, children={})
    members[planned.saga_id] = Member(filled, record, steps, logs.get(planned.saga_id))
    for index, child in sorted(planned.children.items()):
        stage = planned.steps[index].stage
        filled.children[index] = _filled(env, child, members, logs, filled.result(stage - 1))
    return filled


def _collect(
    env: SagaEnv, planned: list[Planned], entries: list[Any], logs: dict[str, SignalLog]
) -> list[Seen]:
    """The sagas and their child sagas as the store and the ledger hold them; each plan
    with its waits' outcome (as the store says) filled in."""
    rows: dict[str, list[tuple[int, str, str, str]]] = {p.saga_id: [] for p in planned}
    for entry in entries:
        rows[entry.saga_id.split(".")[0]].append((entry.id, entry.saga_id, entry.action, entry.tag))
    seen = []
    for p in planned:
        members: dict[str, Member] = {}
        filled = _filled(env, p, members, logs)
        record = members[p.saga_id].record
        output = None
        if record is not None and record.status is SagaStatus.COMPLETED:
            output = SagaResult(p.saga_id, app=env.app).get(timeout=10)
        seen.append(Seen(filled, members, rows[p.saga_id], output))
    return seen


def _figures(seen: list[Seen]) -> Counter[str]:
    figures: Counter[str] = Counter(str(s.status.value if s.status else None).lower() for s in seen)
    for s in seen:
        planned, family = s.planned, s.family
        for key in family.effects:
            step = family.step(key)
            runs = s.ledger[("attempt", key)]
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
        if family.failing_stage in planned.groups:
            figures["with groups, compensated as a member failed"] += 1
        for key in family.maybe:
            if s.ledger[("undo", key)]:
                figures["members in flight as their group failed, undone"] += 1
        figures["members undone in doubt, nothing applied"] += len(s.ids("undo-nothing"))
    return figures


def _wait_figures(seen: list[Seen]) -> Counter[str]:
    """What became of the waits and sleeps (a child saga's too), and of the signals the
    test sent."""
    figures: Counter[str] = Counter()
    for s in seen:
        for member in s.members.values():
            rows = {st.index: st for st in member.steps}
            for wait in member.planned.waits.values():
                row = rows.get(wait.index)
                if wait.sleep:
                    figures["sleeps"] += 1
                    figures["sleeps slept"] += bool(row and row.status is StepStatus.SUCCEEDED)
                    continue
                outcome = member.planned.outcome.get(wait.index, "not reached")
                log = member.signals or SignalLog()
                if wait.when == "cancel":
                    figures[f"child waits for a cancel: {outcome}"] += 1
                    figures[f"cancels: {log.first or 'not sent'}"] += 1
                    figures["cancels retried (store or broker away)"] += log.tries
                    continue
                child = "child saga " * bool(member.planned.depth)
                figures[f"{child}waits"] += 1
                figures[f"{child}waits on_timeout={wait.on_timeout}: {outcome}"] += 1
                figures[f"signals {wait.when}: {log.first or 'not sent'}"] += 1
                figures["signals sent again (duplicates)"] += len(log.duplicates)
                figures["duplicates refused"] += log.duplicates.count("refused")
                figures["signals retried (store or broker away)"] += log.tries
                figures["signals told again (child saga not there yet)"] += log.not_yet
                if log.first == "refused" and wait.when == "race":
                    figures["signals that lost the race to the timeout"] += 1
    return figures


def _child_figures(seen: list[Seen]) -> Counter[str]:
    """What became of the child sagas: how each ended, and why."""
    figures: Counter[str] = Counter()
    for s in seen:
        family = s.family
        if len(family.sagas) == 1:
            continue
        figures["sagas with child sagas"] += 1
        figures[f"sagas with child sagas, {str(s.status.value if s.status else None).lower()}"] += 1
        for saga_id, planned in family.sagas.items():
            if planned is family.top:
                continue
            record = s.members[saga_id].record
            figures["child sagas"] += 1
            if record is None:
                figures["child sagas never started (a stage before them failed)"] += 1
                continue
            figures[f"child sagas ended {record.status.value.lower()}"] += 1
            figures["child sagas in a child saga, started"] += planned.depth > 1
            figures["child sagas with a group, started"] += planned.grouped
            figures["child sagas with a wait_for, started"] += any(
                not w.sleep and w.when != "cancel" for w in planned.waits.values()
            )
            figures["child sagas with a sleep, started"] += any(
                w.sleep for w in planned.waits.values()
            )
            if family.failing_stage is None:
                why = "completed"
            elif not family.on_path(planned):
                why = "completed, then undone as a unit as a stage after it failed"
            elif family.cancelled:
                why = "were cancelled with their top saga while they waited"
            elif planned is family.failing_saga:
                wait = family.failing_wait
                how = "timed out waiting" if wait is not None else "had a step fail"
                why = f"{how}: undid themselves, then their parent what came before"
            else:
                why = "had a child fail: undid themselves after it, then their parent"
            figures[f"child sagas that {why}"] += 1
    return figures


def _in_flight(seen: list[Seen], faults: list[Fault], wall: float) -> list[int]:
    """For each fault, the child sagas that were running (stored, not yet finished)
    while it lasted."""
    spans = [
        (m.record.created_at.timestamp() - wall, m.record.finished_at.timestamp() - wall)
        for s in seen
        for saga_id, m in s.members.items()
        if "." in saga_id and m.record is not None and m.record.finished_at is not None
    ]
    return [sum(1 for a, b in spans if a <= f.over and b >= f.at) for f in faults]


def _report(seen: list[Seen]) -> str:
    """Every violation: how many sagas of which kind, and examples with their step rows."""
    by_violation: dict[str, list[Seen]] = {}
    for s in seen:
        for violation in _violations(s):
            by_violation.setdefault(violation, []).append(s)
    lines: list[str] = []
    examples: dict[str, Seen] = {}
    for violation, sagas in sorted(by_violation.items(), key=lambda item: -len(item[1])):
        kinds = dict(Counter(s.family.kind for s in sagas))
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
    """How many sagas (with their child sagas) have each of the shapes the test means to
    have."""
    mix: Counter[str] = Counter()
    for p in planned:
        waits = [w for s in p.tree() for w in s.waits.values()]
        wait = next((w for w in waits if not w.sleep and w.when != "cancel"), None)
        if wait is not None:
            mix["with a wait_for"] += 1
            mix[f"with a wait_for, on_timeout={wait.on_timeout}"] += 1
            mix["with groups and a wait_for"] += p.grouped
        mix["with a sleep"] += any(w.sleep for w in waits)
        if p.children:
            children = [s for s in p.tree() if s is not p]
            mix["with child sagas"] += 1
            mix["with a child saga in a child saga"] += any(s.depth > 1 for s in children)
            mix["with a child saga holding a group"] += any(s.grouped for s in children)
            mix["with a child saga holding a wait_for"] += any(
                not w.sleep and w.when != "cancel" for s in children for w in s.waits.values()
            )
            mix["with a child saga holding a sleep"] += any(
                w.sleep for s in children for w in s.waits.values()
            )
            mix["cancelled while a child saga waits"] += any(w.when == "cancel" for w in waits)
        if not p.grouped:
            continue
        family = Family(p)
        mix["with groups"] += 1
        mix["with a chain member"] += any(len(m) > 1 for n in p.groups for m in p.stages[n])
        mix["starting with a group"] += 0 in p.groups
        mix["ending with a group"] += len(p.stages) - 1 in p.groups
        mix["with two groups"] += len(p.groups) > 1
        failing = family.failing_stage
        mix["with a member failing for good"] += failing in p.groups
        mix["with a step after a group failing for good"] += bool(
            failing is not None and failing not in p.groups and failing
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
    """Through transient step failures, kill -9s (at least 3 while group members run, 2
    while a child saga's step does), a 10 s store cut and a broker restart, every saga,
    linear, with groups or with child sagas, waiting for signals or sleeping, ends as
    planned, each effect applied once and undone once, stage by stage in reverse (a
    child saga's steps before its parent's earlier ones); every child saga ends as its
    top saga does, or never started."""
    if broker == "redis":  # a redis-server of the test's own, to restart
        server: RedisServer | None = RedisServer(
            require_binary("redis-server"), worker_logs / "chaos-redis-server.log"
        )
    else:
        require("rabbitmq")
        server = None
    queue = f"chaos-{uuid.uuid4().hex[:8]}"
    rng = random.Random(20261121)
    plans = [_plan_grouped] * GROUPED + [_plan_family] * FAMILIES
    plans += [_plan] * (SAGAS - len(plans))
    rng.shuffle(plans)
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
            for make in plans:  # at RATE, or slower while starts are refused
                saga, plan = make(env, rng)
                _start(saga, plan, refused)
                signaller.add(plan)
                planned.append(plan)
                time.sleep(1.0 / RATE)
            started = time.monotonic() - began
            while chaos.schedule[-1][0] > chaos.now() and chaos.error is None:
                time.sleep(0.1)  # the rest of the schedule
        if chaos.error is not None:
            raise chaos.error
        running = _wait_until_all_end(postgres_url, planned, WAIT)
        waited = time.monotonic() - began
        signaller.drain(10.0)  # duplicates still to send
        if signaller.error is not None:
            raise signaller.error
        ids = {p.saga_id for p in planned}
        entries = [e for e in env.ledger.entries() if e.saga_id.split(".")[0] in ids]
        seen = _collect(env, planned, entries, signaller.logs)
    figures = _figures(seen)
    waits = _wait_figures(seen)
    children = _child_figures(seen)
    caught = _caught(chaos.kills, entries)
    mid_group = sum(1 for attempts in caught if any(_mid(e, "member") for e in attempts))
    mid_child = sum(1 for attempts in caught if any(_mid(e, "child") for e in attempts))
    ends = [s.record.finished_at for s in seen if s.record and s.record.finished_at]
    last = max(chaos.faults, key=lambda f: f.over)
    wall = time.time() - (time.monotonic() - began)  # time.time() at the first start
    if running:
        ended = f"{len(running)} sagas not terminal {waited - last.over:.1f} s after it"
    else:
        at = max(ends, default=datetime.now(UTC)).timestamp() - wall
        ended = f"all terminal at {at:.1f} s, {at - last.over:.1f} s after it"
        latest = sorted(
            (s.record.finished_at.timestamp() - wall, s.planned.saga_id, s.family.kind)
            for s in seen
            if s.record and s.record.finished_at
        )[-3:]
        ended += "; the last to end: " + ", ".join(
            f"{saga_id} ({kind}) at {t:.1f} s" for t, saga_id, kind in reversed(latest)
        )
    faults = ", ".join(f"{f.what} at {f.at:.1f}-{f.over:.1f} s" for f in chaos.faults)
    cut = next(f.at for f in chaos.faults if f.what == "cut store")
    deepest = (
        max((n for t, n in depths if t < cut), default=0),
        max((n for _, n in depths), default=0),
    )

    def cut_short(e: Any) -> str:
        where = ", ".join(k for k in ("member", "child") if _mid(e, k))
        return f"saga {e.saga_id} step {e.tag}" + (f" ({where})" if where else "")

    kills = "\n".join(
        f"  {kill.what} at {kill.at:.1f} s: "
        + (
            f"cut short {len(attempts)} attempts (" + ", ".join(map(cut_short, attempts)) + ")"
            if attempts
            else "no member or child saga attempt cut short"
        )
        + (f"; aimed at {kill.aimed}" if kill.aimed else "")
        for kill, attempts in zip(chaos.kills, caught, strict=True)
    )
    back = f"{', '.join(f'{t:.1f}' for t in chaos.worker_back)} s"
    if chaos.revived:  # the worker had died on its own (as the Redis broker restarted)
        back += f"; one started at {', '.join(f'{t:.1f}' for t in chaos.revived)} s for a dead one"
    in_flight = _in_flight(seen, chaos.faults, wall)
    during = ", ".join(
        f"{f.what.split(' mid-')[0]} at {f.at:.1f} s: {n}"
        for f, n in zip(chaos.faults, in_flight, strict=True)
    )
    print(
        f"\nchaos on {broker}: {SAGAS} sagas ({dict(_mix(planned))}) started in "
        f"{started:.1f} s; {_settings(broker)}\n"
        f"faults: {faults}; a new worker ready at {back}\n"
        f"queue depth at most {deepest[0]} before the store cut, {deepest[1]} in all; "
        f"every 5 s: {[n for t, n in depths][4::5]}\n"
        f"kills mid-group (from the ledger): {mid_group} of {len(chaos.kills)}, mid-child "
        f"{mid_child}\n{kills}\n"
        f"child sagas running during each fault: {during}\n"
        f"last fault over at {last.over:.1f} s ({last.what}); {ended}\n"
        f"{dict(figures)}\nchild sagas: {dict(children)}\n"
        f"waits and signals: {dict(sorted(waits.items()))}\n"
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
    assert mix["with child sagas"] == FAMILIES
    assert all(mix[shape] > 0 for shape in (
        "with a child saga in a child saga", "with a child saga holding a group",
        "with a child saga holding a wait_for", "cancelled while a child saga waits",
    )), mix  # fmt: skip
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
    # every way a child saga can end happened, and the faults caught child sagas running
    for what in (
        "that completed",
        "that completed, then undone as a unit as a stage after it failed",
        "that had a step fail: undid themselves, then their parent what came before",
        "that had a child fail: undid themselves after it, then their parent",
        "that were cancelled with their top saga while they waited",
        "in a child saga, started",
        "with a group, started",
        "with a wait_for, started",
    ):
        assert children[f"child sagas {what}"] > 0, children
    assert waits["child saga waits on_timeout=compensate: timeout"] > 0, waits
    assert waits["child saga waits on_timeout=continue: signal"] > 0, waits
    for fault, n in zip(chaos.faults, in_flight, strict=True):
        if fault.what in ("cut store", "restart broker"):
            assert n > 0, f"no child saga running during {fault.what}: {during}"
    assert mid_child >= MID_CHILD, f"only {mid_child} kills landed mid-child:\n{kills}"
