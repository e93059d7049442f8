"""``celery -A proj saga ...``: look at sagas and act on them, with the app's own settings.

Registered under the ``celery.commands`` entry point, so Celery's ``-A``/``--app``,
``--config`` and ``--no-color`` apply. Every command takes ``--json`` for scripts; an
error (unknown id, store unreachable, a saga in the wrong status) is one line on
stderr and exit status 1 (with ``--json``: ``{"error": {...}}`` on stdout, exit status 1).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import click
from celery import Celery

from ._runtime import get_store
from .errors import SagaError, SagaNotFound, SagaStateError
from .machine import Topology
from .operator import cancel, resume, retry_compensation, signal
from .records import SagaRecord, StepRecord
from .recovery import recover
from .retention import PURGED_BY_DEFAULT, purge
from .status import SagaStatus, StepStatus
from .store import SCHEMA_VERSION

__all__ = ["parse_duration", "saga"]

F = TypeVar("F", bound=Callable[..., Any])

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_MAX_VALUE = 200  # characters of a result or error shown by ``show`` (``--json``: all)

_COLOURS = {
    SagaStatus.COMPLETED: "green",
    SagaStatus.RUNNING: "cyan",
    SagaStatus.WAITING: "blue",
    SagaStatus.COMPENSATING: "yellow",
    SagaStatus.COMPENSATED: "yellow",
    SagaStatus.FAILED: "red",
    StepStatus.SUCCEEDED: "green",
    StepStatus.RUNNING: "cyan",
    StepStatus.WAITING: "blue",
    StepStatus.FAILED: "red",
    StepStatus.TIMED_OUT: "red",
    StepStatus.COMPENSATING: "yellow",
    StepStatus.COMPENSATED: "yellow",
    StepStatus.COMPENSATION_FAILED: "red",
}


def parse_duration(text: str) -> timedelta:
    """``"7d"``, ``"12h"``, ``"1d12h"``, ``"90m"``, ``"30s"``, ``"2w"`` or plain seconds."""
    value = text.strip().lower()
    try:
        return timedelta(seconds=float(value))
    except ValueError:
        pass
    parts = _DURATION.findall(value)
    if not parts or "".join(number + unit for number, unit in parts) != value:
        raise ValueError(f"not a duration: {text!r} (try 7d, 12h, 30m, 45s or seconds)")
    return timedelta(seconds=sum(float(number) * _UNITS[unit] for number, unit in parts))


class _Duration(click.ParamType):  # type: ignore[type-arg]
    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, timedelta):
            return value
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


DURATION = _Duration()
#: What ``list --status`` takes: the statuses a stored saga can have. (``PENDING`` is only
#: what ``SagaResult`` says of an id the store does not know.)
STATUS = click.Choice(
    [status.value for status in SagaStatus if status is not SagaStatus.PENDING],
    case_sensitive=False,
)


def _app(ctx: click.Context) -> Celery:
    obj = ctx.find_root().obj
    app: Celery | None = getattr(obj, "app", None)
    if app is None:
        raise click.UsageError("no Celery app: run it as `celery -A proj saga ...`")
    return app


def _colour(ctx: click.Context) -> bool | None:
    """False under Celery's ``--no-color``; otherwise click's own terminal check."""
    return False if getattr(ctx.find_root().obj, "no_color", False) else None


def _echo(ctx: click.Context, text: str = "") -> None:
    click.echo(text, color=_colour(ctx))


#: Stands for a ``Decimal`` in JSON text while it is being written (see :func:`_dumps`).
_NUMBER = "\x00number:"
_NUMBER_TEXT = re.compile(r'"\\u0000number:([^"]*)"')


def _numbers(value: Any) -> Any:
    """``value`` with every ``Decimal`` (kombu's JSON gives them back) as a marked string."""
    if isinstance(value, Decimal):
        return f"{_NUMBER}{value}" if value.is_finite() else str(value)
    if isinstance(value, dict):
        return {key: _numbers(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_numbers(item) for item in value]
    return value


def _dumps(value: Any, **options: Any) -> str:
    """JSON text in which a ``Decimal`` is a number, written exactly (``9.99``, not "9.99")."""
    text = json.dumps(_numbers(value), default=_json_default, **options)
    return _NUMBER_TEXT.sub(lambda match: match.group(1), text)


def _emit_json(data: Any) -> None:
    click.echo(_dumps(data, indent=2, sort_keys=True))


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return str(value)  # UUID, date, time: as kombu's JSON writes them


def _as_dict(record: Any) -> dict[str, Any]:
    return {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}


class _JSONError(click.ClickException):
    """A saga error under ``--json``: ``{"error": {"code", "type", "message"}}`` on stdout."""

    def __init__(self, exc: SagaError) -> None:
        super().__init__(str(exc))
        self.error = {"code": exc.code, "type": type(exc).__name__, "message": str(exc),
                      "retryable": exc.retryable}  # fmt: skip

    def show(self, file: Any = None) -> None:
        _emit_json({"error": self.error})


def _operation(function: F) -> F:
    """Turn a saga error into one ``Error: ...`` line (``--json``: JSON) and exit status 1."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except SagaError as exc:
            if kwargs.get("as_json"):
                raise _JSONError(exc) from exc
            raise click.ClickException(str(exc)) from exc

    return wrapper  # type: ignore[return-value]


def _handles(function: F) -> F:
    """What every command has: ``--json``, the click context, saga errors as one line."""
    with_json = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
    return with_json(click.pass_context(_operation(function)))  # type: ignore[return-value]


@click.group(name="saga")
def saga() -> None:
    """Sagas: list, show, cancel, resume, recover, purge, and the store's schema.

    Every command takes --json: JSON for scripts, errors included.
    """


@saga.command(name="list")
@click.option(
    "--status", "statuses", type=STATUS, multiple=True, help="Only this status (repeatable)."
)
@click.option("--name", help="Only sagas of this name.")
@click.option("--version", "version", help="Only sagas started with saga(..., version=).")
@click.option(
    "--parked", is_flag=True, help="Only sagas waiting for a worker that has one of their tasks."
)
@click.option("--parent", help="Only the child sagas of this saga.")
@click.option("--older-than", type=DURATION, help="Started longer ago than this (7d, 2h).")
@click.option("--newer-than", type=DURATION, help="Started within this (30m).")
@click.option("--limit", type=click.IntRange(1, 10000), default=50, show_default=True)
@click.option("--page", type=click.IntRange(1), default=1, show_default=True)
@_handles
def list_(
    ctx: click.Context,
    statuses: Sequence[str],
    name: str | None,
    version: str | None,
    parked: bool,
    parent: str | None,
    older_than: timedelta | None,
    newer_than: timedelta | None,
    limit: int,
    page: int,
    as_json: bool,
) -> None:
    """Sagas, newest first, a page at a time."""
    now = datetime.now(UTC)
    records = get_store(_app(ctx)).list_sagas(
        statuses=[SagaStatus(s.upper()) for s in statuses],
        name=name,
        version=version,
        parked=parked,
        parent=parent,
        created_before=None if older_than is None else now - older_than,
        created_after=None if newer_than is None else now - newer_than,
        limit=limit,
        offset=(page - 1) * limit,
    )
    if as_json:
        _emit_json([_saga_summary(record) for record in records])
        return
    if not records:
        _echo(ctx, "no sagas")
        return
    width = max(len(record.id) for record in records)
    _echo(ctx, click.style(f"{'ID':<{width}}  {'STATUS':<12}  {'STARTED':<23}  "
                           f"{'TOOK':>9}  NAME", bold=True))  # fmt: skip
    for record in records:
        status = click.style(f"{record.status.value:<12}", fg=_COLOURS.get(record.status))
        took = _seconds(record.duration)
        name = record.name
        if record.parent_id is not None:
            name += click.style(f"  (child of {record.parent_id})", dim=True)
        if record.parked and not record.status.is_terminal:
            task = record.parked.get("task", "")
            name += click.style(f"  (parked: no worker has {task})", fg="yellow")
        _echo(ctx, f"{record.id:<{width}}  {status}  {_time(record.created_at)}  {took:>9}  {name}")
    if len(records) == limit:
        _echo(ctx, f"(page {page}; --page {page + 1} for more)")


def _saga_summary(record: SagaRecord) -> dict[str, Any]:
    summary = _as_dict(record)
    summary.pop("plan")
    summary["duration"] = record.duration
    return summary


@saga.command()
@click.argument("saga_id")
@_handles
def show(ctx: click.Context, saga_id: str, as_json: bool) -> None:
    """One saga: its steps and their compensations, with results and errors."""
    store = get_store(_app(ctx))
    record = store.get_saga(saga_id)
    if record is None:
        raise SagaNotFound(saga_id)
    steps = store.get_steps(saga_id)
    children = store.child_sagas(saga_id) if Topology.of(record.plan).children else []
    if as_json:
        data = _saga_summary(record)
        data["children"] = [_saga_summary(child) for child in children]
        data["steps"] = [
            {**_as_dict(step), "duration": step.duration,
             "compensation_duration": step.compensation_duration}
            for step in steps
        ]  # fmt: skip
        _emit_json(data)
        return
    for line in render_saga(record, steps, children):
        _echo(ctx, line)


def render_saga(
    record: SagaRecord, steps: Sequence[StepRecord], children: Sequence[SagaRecord] = ()
) -> list[str]:
    """The human-readable tree ``celery saga show`` prints (``children``: its child sagas)."""
    status = click.style(record.status.value, fg=_COLOURS.get(record.status), bold=True)
    version = "" if record.version is None else f"  version {record.version}"
    lines = [f"saga {record.id}  {record.name}{version}  {status}"]
    when = f"  started {_time(record.created_at)}"
    if record.finished_at is not None:
        when += f", ended {_time(record.finished_at)} ({_seconds(record.duration)})"
    lines.append(when)
    if record.parent_id is not None:
        lines.append(f"  child saga of {record.parent_id} (its step {record.parent_step})")
    lines += ["  " + click.style(f"why: {why}", fg="red") for why in _why(record, steps)]
    if record.parked and not record.status.is_terminal:
        lines.append("  " + click.style(f"parked: {record.parked.get('message', '')}", fg="yellow"))
    if record.recovery_error:
        noted = record.recovery_error
        text = f"recovery failed {noted.get('at', '')}: {noted.get('message', '')}"
        lines.append("  " + click.style(text, fg="yellow"))
    now = datetime.now(UTC)
    by_step = {child.parent_step: child for child in children}
    lines += _tree(_shape(record, steps), "", now, by_step)
    return lines


#: A node of the drawn tree: a step, or a titled group of nodes (a group, a branch).
_Node = StepRecord | tuple[str, list[Any]]


def _shape(record: SagaRecord, steps: Sequence[StepRecord]) -> list[_Node]:
    """The saga's steps as a tree: a group's members side by side under it."""
    by_index = {step.index: step for step in steps}
    nodes: list[_Node] = []
    for stage in Topology.of(record.plan).stages:
        if not stage.group:
            nodes += [by_index[i] for i in stage.steps if i in by_index]
            continue
        members: list[_Node] = []
        for branch in stage.branches:
            chained = [by_index[i] for i in branch if i in by_index]
            members.append(chained[0] if len(chained) == 1 else ("chain", list(chained)))
        size = len(stage.branches)
        nodes.append((f"group: {size} member{'' if size == 1 else 's'} at once", members))
    return nodes


def _tree(
    nodes: Sequence[_Node],
    indent: str,
    now: datetime,
    children: Mapping[int | None, SagaRecord],
) -> list[str]:
    lines: list[str] = []
    for number, node in enumerate(nodes):
        last = number == len(nodes) - 1
        branch, stem = ("└─", "   ") if last else ("├─", "│  ")
        if isinstance(node, tuple):
            title, members = node
            lines.append(f"{indent}{branch} " + click.style(title, dim=True))
            lines += _tree(members, indent + stem, now, children)
            continue
        child = children.get(node.index)
        lines += _step_lines(node, f"{indent}{branch}", f"{indent}{stem}", now, child)
    return lines


def _step_lines(
    step: StepRecord, branch: str, stem: str, now: datetime, child: SagaRecord | None = None
) -> list[str]:
    """A step (with the child saga it ran), its lease, result, error, and compensation."""
    lines = [f"{branch} {step.index} {step.name}  {_step_status(step)}"]
    if child is not None:
        status = click.style(child.status.value, fg=_COLOURS.get(child.status))
        lines.append(f"{stem}   child saga {child.id}  {child.name}  {status}")
    lease = _lease(step, now)
    if lease:
        lines.append(f"{stem}   {lease}")
    if step.result is not None:
        lines.append(f"{stem}   result: {_value(step.result)}")
    if step.error:
        lines.append(f"{stem}   " + click.style(f"error: {_error(step.error)}", fg="red"))
    if step.compensate and step.compensation_attempts:
        lines.append(f"{stem}   ↩ undo {step.compensate}  {_undo_status(step)}")
        if step.compensation_error:
            error = _error(step.compensation_error)
            lines.append(f"{stem}     " + click.style(f"error: {error}", fg="red"))
    return lines


def _why(record: SagaRecord, steps: Sequence[StepRecord]) -> list[str]:
    """Why the saga ended as it did: for ``FAILED``, the compensations that gave up first."""
    reasons = []
    if record.status is SagaStatus.FAILED:
        reasons = [
            f"step {step.index} {step.name}: compensation {step.compensate} gave up: "
            f"{_error(step.compensation_error or {'type': 'unknown error'})}"
            for step in steps
            if step.status is StepStatus.COMPENSATION_FAILED
        ]
    if record.error:
        where = "" if record.failed_step is None else f"step {record.failed_step}: "
        after = "after " if reasons else ""
        reasons.append(f"{after}{where}{_error(record.error)}")
    return reasons


def _lease(step: StepRecord, now: datetime) -> str:
    """When a running step's (or compensation's) owner stops owning it, if it does."""
    running = step.status in (StepStatus.RUNNING, StepStatus.COMPENSATING)
    if not running or step.lease_expires_at is None:
        return ""
    left = (step.lease_expires_at - now).total_seconds()
    when = f"in {_human(left)}" if left >= 0 else f"ran out {_human(-left)} ago"
    return f"lease ends {_time(step.lease_expires_at)} ({when})"


_HUMAN_UNITS = (("day", 86400), ("hour", 3600), ("minute", 60))


def _human(seconds: float) -> str:
    """A duration as a person writes it, in its two largest units: "7 days", "1 day 12 hours"."""
    if seconds < 60:
        whole = round(seconds)
        return f"{whole} second{'' if whole == 1 else 's'}"
    parts: list[str] = []
    rest = round(seconds)
    for unit, size in _HUMAN_UNITS:
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count} {unit}{'' if count == 1 else 's'}")
    if rest:
        parts.append(f"{rest} second{'' if rest == 1 else 's'}")
    return " ".join(parts[:2])


def _step_status(step: StepRecord) -> str:
    text = click.style(step.status.value, fg=_COLOURS.get(step.status))
    if step.status is StepStatus.PENDING:
        return click.style("PENDING (not started)", dim=True)
    plural = "" if step.attempts == 1 else "s"
    return f"{text}  {step.attempts} attempt{plural}  {_seconds(step.duration)}"


def _undo_status(step: StepRecord) -> str:
    if step.status is StepStatus.COMPENSATED:
        state = click.style("done", fg="green")
    elif step.status is StepStatus.COMPENSATION_FAILED:
        state = click.style("gave up", fg="red")
    else:
        state = click.style("running", fg="yellow")
    plural = "" if step.compensation_attempts == 1 else "s"
    took = _seconds(step.compensation_duration)
    return f"{state}  {step.compensation_attempts} attempt{plural}  {took}"


def _time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


def _value(value: Any) -> str:
    text = _dumps(value, sort_keys=True)
    return text if len(text) <= _MAX_VALUE else text[: _MAX_VALUE - 3] + "..."


def _error(error: dict[str, Any]) -> str:
    message = str(error.get("message") or "")
    if len(message) > _MAX_VALUE:
        message = message[: _MAX_VALUE - 3] + "..."
    return f"{error.get('type') or 'Error'}: {message}" if message else str(error.get("type"))


def _need(app: Celery, saga_id: str, allowed: tuple[SagaStatus, ...], action: str) -> None:
    """Raise the one-line error when the saga is missing or in the wrong status."""
    status = get_store(app).get_status(saga_id)
    if status is None:
        raise SagaNotFound(saga_id)
    if status not in allowed:
        names = " or ".join(s.value for s in allowed)
        article = "an" if names[0] in "AEIOU" else "a"
        raise SagaStateError(saga_id, status.value, action, f"{article} {names}")


@saga.command(name="cancel")
@click.argument("saga_id")
@click.option("--reason", default="cancelled from the command line", show_default=True)
@_handles
def cancel_(ctx: click.Context, saga_id: str, reason: str, as_json: bool) -> None:
    """Stop a running saga: no new step starts; what succeeded is undone."""
    app = _app(ctx)
    if not cancel(app, saga_id, reason):
        _need(app, saga_id, (SagaStatus.RUNNING, SagaStatus.WAITING), "cancelled")
    if as_json:
        _emit_json({"id": saga_id, "cancelled": True, "reason": reason})
    else:
        _echo(ctx, f"saga {saga_id}: cancelled ({reason}); its steps are being undone")


@saga.command(name="signal")
@click.argument("saga_id")
@click.argument("name")
@click.option("--data", default=None, help="The payload, as JSON (default: null).")
@_handles
def signal_(ctx: click.Context, saga_id: str, name: str, data: str | None, as_json: bool) -> None:
    """Send a saga the signal NAME: its wait_for(NAME) ends, with --data as the payload."""
    try:
        payload = None if data is None else json.loads(data)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--data") from exc
    went_on = signal(_app(ctx), saga_id, name, payload)
    if as_json:
        _emit_json({"id": saga_id, "signal": name, "kept": not went_on})
    elif went_on:
        _echo(ctx, f"saga {saga_id}: signal {name!r} received; the saga goes on")
    else:
        _echo(ctx, f"saga {saga_id}: signal {name!r} kept until the saga gets to its wait")


@saga.command(name="resume")
@click.argument("saga_id")
@click.option(
    "--force",
    is_flag=True,
    help="Take over steps still under a lease: their worker is known to be dead.",
)
@_handles
def resume_(ctx: click.Context, saga_id: str, force: bool, as_json: bool) -> None:
    """Drive a stuck saga on now from the store (next step, or its compensations)."""
    plan = resume(_app(ctx), saga_id, force=force)
    if as_json:
        _emit_json(_as_dict(plan))
    else:
        _echo(ctx, _recovery_line(plan.saga_id, plan.action, plan.steps, plan.reason))


@saga.command(name="retry-compensation")
@click.argument("saga_id")
@_handles
def retry_compensation_(ctx: click.Context, saga_id: str, as_json: bool) -> None:
    """Run again the compensations of a FAILED saga that gave up."""
    app = _app(ctx)
    _need(app, saga_id, (SagaStatus.FAILED,), "retried")
    steps = retry_compensation(app, saga_id)
    if as_json:
        _emit_json({"id": saga_id, "steps": steps})
    else:
        _echo(ctx, f"saga {saga_id}: compensations of steps {steps} sent again")


@saga.command(name="recover")
@click.option("--dry-run", is_flag=True, help="Say what it would do; do nothing.")
@click.option("--stalled-after", type=DURATION, help="Override saga_recovery_stall.")
@_handles
def recover_(
    ctx: click.Context, dry_run: bool, stalled_after: timedelta | None, as_json: bool
) -> None:
    """One recovery sweep: drive on the sagas whose worker or messages were lost."""
    seconds = None if stalled_after is None else stalled_after.total_seconds()
    plans = recover(_app(ctx), stalled_after=seconds, dry_run=dry_run)
    acting = [plan for plan in plans if plan.action not in ("none", "error")]
    failed = [plan for plan in plans if plan.action == "error"]
    if as_json:
        data: dict[str, Any] = {
            "looked_at": len(plans),
            "dry_run": dry_run,
            "errors": len(failed),
            "actions": [_as_dict(plan) for plan in acting + failed],
        }
        if dry_run:  # what it would do with every saga, "none" included
            data["sagas"] = [_as_dict(plan) for plan in plans]
        _emit_json(data)
        return
    verb = "would act on" if dry_run else "acted on"
    summary = f"looked at {len(plans)} unfinished sagas; {verb} {len(acting)}"
    _echo(ctx, summary + (f"; {len(failed)} failed (see below)" if failed else ""))
    for plan in plans if dry_run else acting + failed:
        _echo(ctx, _recovery_line(plan.saga_id, plan.action, plan.steps, plan.reason, plan.error))


def _recovery_line(
    saga_id: str, action: str, steps: Sequence[int], reason: str, error: str | None = None
) -> str:
    sent = f" steps {list(steps)}" if steps else ""
    failure = f": {error}" if error else ""
    return f"saga {saga_id}: {action}{sent} ({reason}){failure}"


@saga.command(name="purge")
@click.option("--older-than", type=DURATION, required=True, help="Ended longer ago (7d).")
@click.option(
    "--status",
    "statuses",
    type=click.Choice(["COMPLETED", "COMPENSATED", "FAILED"], case_sensitive=False),
    multiple=True,
    help="Which finished sagas (default: COMPLETED and COMPENSATED).",
)
@click.option("--dry-run", is_flag=True, help="Count only; delete nothing.")
@_handles
def purge_(
    ctx: click.Context,
    older_than: timedelta,
    statuses: Sequence[str],
    dry_run: bool,
    as_json: bool,
) -> None:
    """Delete finished sagas; running and compensating ones are never touched."""
    wanted = [SagaStatus(s.upper()) for s in statuses] or list(PURGED_BY_DEFAULT)
    count = purge(_app(ctx), older_than, wanted, dry_run=dry_run)
    if as_json:
        _emit_json({"deleted": 0 if dry_run else count, "matched": count, "dry_run": dry_run,
                    "statuses": [s.value for s in wanted]})  # fmt: skip
        return
    verb = "would delete" if dry_run else "deleted"
    names = ", ".join(s.value for s in wanted)
    _echo(ctx, f"{verb} {count} sagas ({names}) that ended more than "
               f"{_human(older_than.total_seconds())} ago")  # fmt: skip


@saga.group(name="db")
def db() -> None:
    """The saga tables' schema version."""


@db.command(name="current")
@_handles
def db_current(ctx: click.Context, as_json: bool) -> None:
    """The schema version of the store, and the latest this version of celery_saga has."""
    store = get_store(_app(ctx))
    version = store.schema_version()
    if as_json:
        _emit_json({"current": version, "latest": SCHEMA_VERSION, "store": store.safe_url})
        return
    state = "up to date" if version == SCHEMA_VERSION else "run `celery saga db upgrade`"
    if version == 0:
        state = "no saga tables yet; run `celery saga db upgrade`"
    _echo(ctx, f"{store.safe_url}: schema version {version} of {SCHEMA_VERSION} ({state})")


@db.command(name="upgrade")
@_handles
def db_upgrade(ctx: click.Context, as_json: bool) -> None:
    """Create or upgrade the saga tables (for deployments that run DDL separately)."""
    store = get_store(_app(ctx))
    before, after = store.upgrade_schema()
    if as_json:
        _emit_json({"before": before, "after": after, "store": store.safe_url})
    elif before == after:
        _echo(ctx, f"{store.safe_url}: schema version {after}, up to date")
    else:
        _echo(ctx, f"{store.safe_url}: schema upgraded from version {before} to {after}")
