"""The store's hot writes, handed straight to the driver.

A saga step makes two writes (its claim and its record) and each costs the worker CPU:
through SQLAlchemy's ``Connection.execute`` about 0.30 ms for a claim on this project's
benchmark machine, of which the driver's own work is about 0.13 ms; the rest is the
pooled ``Connection``, the compiled-cache lookup, the execution context and the result
objects (``benchmarks/README.md``). Here a statement is compiled once, its parameters
go through the bind processors SQLAlchemy would apply (the JSON columns' encoding), and
it runs on a connection of the same pool, whose driver adapters SQLAlchemy set up (the
JSON encoder and decoder), through a cursor kept with that connection in the pool (a
new cursor per statement cost psycopg about 0.02 ms, a sixth of a claim's CPU). A
driver error is raised as the SQLAlchemy error that ``Connection.execute`` raises for
it, a lost connection invalidated in the pool the same way, so the store's error
handling does not tell the two paths apart.

Two drivers: psycopg 3 on PostgreSQL, where each statement runs in autocommit (the
engine's), and Python's ``sqlite3`` on a SQLite file, where each runs in a ``BEGIN
IMMEDIATE`` transaction of its own, as the engine's ``begin`` event makes SQLAlchemy's
(a write that reads first takes the write lock up front, and waits for it under the
``busy_timeout``); there a few statements may also run in one such transaction
(:meth:`Direct.execute_in_turn`); on PostgreSQL a write and the reads after it may go in
one round trip (:meth:`Direct.write_then_read`, psycopg's pipeline mode). A statement
whose returned columns SQLAlchemy would convert (SQLite hands back JSON and timestamps
as text) is left to SQLAlchemy, and so is a SQLite without ``RETURNING`` (before 3.35),
whose claims read their rows back.

Whenever anything listens to the engine's statements (``before_cursor_execute`` or
``after_cursor_execute``: a tracing instrumentation, a test counting statements), every
statement goes through SQLAlchemy instead, so that the listeners see it.
"""

from __future__ import annotations

import contextlib
from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, InvalidRequestError
from sqlalchemy.pool import SingletonThreadPool, StaticPool
from sqlalchemy.sql.expression import Executable

__all__ = ["Direct", "Written"]


@dataclass(frozen=True, slots=True)
class Written:
    """What a write did: the rows it matched, and the rows it returned (if any)."""

    rowcount: int
    rows: list[Any]

    def first(self) -> Any:
        """The first row returned, or None."""
        return self.rows[0] if self.rows else None


#: The statements compiled and kept, at most: the store's are module constants, a few
#: dozen; one built per call is not for here (it would only fill the cache).
_KEPT = 256
_CURSOR = "celery_saga.cursor"  #: the connection's kept cursor, in its pool record's info


@lru_cache(maxsize=64)
def _row_type(names: tuple[str, ...]) -> Callable[..., Any]:
    """Rows whose columns read as attributes and by name, like SQLAlchemy's."""
    fields: Any = namedtuple("Fields", names, rename=True)  # type: ignore[misc]

    class Row(fields):
        __slots__ = ()

        @property
        def _mapping(self) -> dict[str, Any]:
            return dict(zip(names, self, strict=True))

    return Row


def _written(cursor: Any) -> Written:
    """What the cursor's last statement did: its rowcount, and its rows if it has any."""
    rows: list[Any] = []
    description = cursor.description
    if description is not None:
        row = _row_type(tuple(column[0] for column in description))
        rows = [row(*fields) for fields in cursor.fetchall()]
    return Written(cursor.rowcount, rows)


@dataclass(frozen=True, slots=True)
class _Compiled:
    sql: str
    defaults: dict[str, Any]  # the literal values the statement carries, processed
    processors: dict[str, Callable[[Any], Any]]  # by parameter name, for those given
    order: tuple[str, ...] | None  # a positional driver's (sqlite3's): the names in order


class Direct:
    """Runs compiled statements on the engine's pooled connections, without SQLAlchemy.

    Only for ``postgresql+psycopg`` and a SQLite file through ``sqlite3`` (see
    :meth:`of`). On PostgreSQL the engine should be in autocommit: each statement is
    atomic by itself, and nothing here begins or ends a transaction; on SQLite each call
    is a ``BEGIN IMMEDIATE`` ... ``COMMIT`` of its own. The statements are module
    constants with bind parameters (compiled once each, by identity and the names of
    the parameters given).
    """

    def __init__(self, engine: Engine, *, begin: str | None = None) -> None:
        self.engine = engine
        self._begin = begin  # what starts each call's transaction (None: autocommit)
        self._compiled: dict[tuple[int, frozenset[str]], _Compiled | None] = {}
        self._statements: list[Executable] = []  # (keeps the keys' statements alive)
        # psycopg's pipeline mode needs libpq 14 or later (the binary package's is)
        pipeline = getattr(engine.dialect.loaded_dbapi, "Pipeline", None)
        self._pipelines = begin is None and pipeline is not None and pipeline.is_supported()
        # a cursor kept with each pooled connection, unless the pool hands one connection
        # to several threads at once (their statements would share the cursor's results)
        self._keeps_cursors = not isinstance(engine.pool, StaticPool)

    @classmethod
    def of(cls, engine: Engine | None) -> Direct | None:
        """A ``Direct`` for PostgreSQL through psycopg 3 or a SQLite file, else None.

        (A SQLite database in memory is one connection that the engine's threads share,
        or one per thread of a shared cache: their transactions are SQLAlchemy's to keep
        apart. A SQLite without ``RETURNING`` keeps SQLAlchemy's path for its claims.)
        """
        if engine is None:
            return None
        dialect = engine.dialect
        if dialect.name == "postgresql" and dialect.driver == "psycopg":
            return cls(engine)
        if (
            dialect.name == "sqlite"
            and dialect.driver == "pysqlite"
            and dialect.insert_returning
            and dialect.update_returning
            and not isinstance(engine.pool, (StaticPool, SingletonThreadPool))
        ):
            return cls(engine, begin="BEGIN IMMEDIATE")
        return None

    @property
    def watched(self) -> bool:
        """Whether the engine's statements are to go through SQLAlchemy (then: not here).

        When something listens to them or to their errors, when the engine logs them
        (``echo``) or hides their parameters in errors, or translates schema names.
        """
        engine = self.engine
        dispatch = engine.dispatch
        listened = (
            dispatch.before_cursor_execute
            or dispatch.after_cursor_execute
            or dispatch.before_execute
            or dispatch.after_execute
            or engine.dialect.dispatch.handle_error
        )
        options = engine.get_execution_options()
        return bool(
            listened or engine.echo or engine.hide_parameters or options.get("schema_translate_map")
        )

    def _compile(self, statement: Executable, params: Mapping[str, Any]) -> _Compiled | None:
        key = (id(statement), frozenset(params))
        if key in self._compiled:
            return self._compiled[key]
        if len(self._compiled) >= _KEPT:  # not a statement made once: leave it to SQLAlchemy
            return None
        dialect = self.engine.dialect
        # (column_keys: an INSERT names the columns it is given, as at execution)
        done = statement.compile(dialect=dialect, column_keys=sorted(params))  # type: ignore[attr-defined]
        processors: dict[str, Callable[[Any], Any]] = {}
        for bind, name in done.bind_names.items():
            if bind.required and name not in params:  # as SQLAlchemy: never sent as NULL
                raise InvalidRequestError(f"A value is required for bind parameter {name!r}")
            process = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if process is not None:
                processors[name] = process
        # (None too goes through its processor, as in SQLAlchemy: JSON's None is 'null')
        defaults = {
            name: processors[name](value) if name in processors else value
            for name, value in done.params.items()
            if name not in params
        }
        given = {name: process for name, process in processors.items() if name in params}
        sql = str(done)
        order = tuple(done.positiontup or ()) if dialect.positional else None
        # Not for here: an IN list (rendered at execution, from its values), and returned
        # columns SQLAlchemy converts on the way out (SQLite's JSON and timestamps).
        converted = any(
            column.type.dialect_impl(dialect).result_processor(dialect, None) is not None
            for column in done._result_columns
        )
        compiled = (
            None if "POSTCOMPILE" in sql or converted else _Compiled(sql, defaults, given, order)
        )
        self._compiled[key] = compiled
        self._statements.append(statement)
        return compiled

    def execute(
        self, statement: Executable, params: Mapping[str, Any], *, read: bool = False
    ) -> Written | None:
        """Run one statement; raises what ``Connection.execute`` would raise for it.

        ``read``: it only reads, and runs alone (on SQLite with no ``BEGIN IMMEDIATE``,
        which would take the write lock: a single statement reads one snapshot).
        None, running nothing, for a statement it cannot run (an ``IN`` list, returned
        columns SQLAlchemy converts).
        """
        compiled = self._compile(statement, params)
        if compiled is None:
            return None
        return self._execute((compiled,), params, None, None if read else self._begin)[0]

    def execute_in_turn(
        self,
        statements: Sequence[Executable],
        params: Mapping[str, Any],
        *,
        go_on: Callable[[Written], bool] | None = None,
    ) -> list[Written] | None:
        """Run statements one after another in one transaction, with the same parameters.

        Each runs while the one before it said ``go_on``; what they wrote is committed
        together. None, running nothing, if one of them cannot be run here, or for
        several statements on an engine in autocommit (they would not be atomic).
        """
        if len(statements) > 1 and self._begin is None:
            return None
        compiled = self._compile_all(statements, params)
        return None if compiled is None else self._execute(compiled, params, go_on, self._begin)

    def write_then_read(
        self, write: Executable, reads: Sequence[Executable], params: Mapping[str, Any]
    ) -> list[Written] | None:
        """PostgreSQL: a write, committed, then reads of what it left: one round trip.

        Sent together in psycopg's pipeline mode, the write in a ``BEGIN`` ... ``COMMIT``
        of its own, so that the reads start after its commit (and see whatever other
        sessions committed before them, as reads after a write would). The write's
        result and each read's, in order. None, running nothing, on SQLite, with a libpq
        older than 14 (no pipeline mode), or if one of them cannot be run here.
        """
        if not self._pipelines:  # (never on SQLite: its calls begin transactions)
            return None
        compiled = self._compile_all((write, *reads), params)
        return (
            None
            if compiled is None
            else self._execute(compiled, params, None, None, pipelined=True)
        )

    def _compile_all(
        self, statements: Sequence[Executable], params: Mapping[str, Any]
    ) -> list[_Compiled] | None:
        """Each statement compiled, or None if one of them cannot be run here."""
        compiled = []
        for statement in statements:
            each = self._compile(statement, params)
            if each is None:
                return None
            compiled.append(each)
        return compiled

    def _execute(
        self,
        compiled: Sequence[_Compiled],
        params: Mapping[str, Any],
        go_on: Callable[[Written], bool] | None,
        begin: str | None,
        *,
        pipelined: bool = False,
    ) -> list[Written]:
        """The compiled statements on one pooled connection, in a transaction if ``begin``.

        ``pipelined``: all sent at once (the first, a write, committed before the rest),
        their results read after the pipeline's sync. (A write the server refused
        leaves its ``BEGIN`` open: rolled back here, as SQLite's failed transactions are.)
        """
        # (the parameters first: a bind processor's error is raised before anything is sent)
        prepared = [(each, self._values(each, params)) for each in compiled]
        dialect = self.engine.dialect
        dbapi_error: type[Exception] = dialect.loaded_dbapi.Error
        try:
            connection = self.engine.raw_connection()
        except dbapi_error as exc:  # it could not connect: no statement was sent
            lost = dialect.is_disconnect(exc, None, None)  # type: ignore[arg-type]
            raise DBAPIError.instance(
                None, None, exc, dbapi_error, connection_invalidated=lost, dialect=dialect
            ) from exc
        try:
            driver: Any = connection.dbapi_connection
            cursor = connection.info.get(_CURSOR) if self._keeps_cursors else None
            closing: list[Any] = []  # the cursors made for this call alone
            if cursor is None or cursor.connection is not driver:
                cursor = driver.cursor()
                if self._keeps_cursors:
                    connection.info[_CURSOR] = cursor
                else:
                    closing.append(cursor)
            sql = ""  # (the statement an error names, and its values)
            values: dict[str, Any] = {}
            try:
                done: list[Written] = []
                if begin is not None:
                    sql = begin
                    cursor.execute(sql)
                if pipelined:  # each on a cursor of its own, read once all are answered
                    into_each = [driver.cursor() for _ in prepared]
                    closing += into_each
                    with driver.pipeline():
                        cursor.execute("BEGIN")
                        for number, ((each, values), into) in enumerate(
                            zip(prepared, into_each, strict=True)
                        ):
                            sql = each.sql
                            into.execute(sql, values)
                            if not number:  # the write: committed before the reads
                                cursor.execute("COMMIT")
                    return [_written(opened) for opened in into_each]
                for each, values in prepared:
                    sql, order = each.sql, each.order
                    cursor.execute(sql, values if order is None else [values[n] for n in order])
                    done.append(_written(cursor))
                    if go_on is not None and not go_on(done[-1]):
                        break
                if begin is not None:
                    sql, values = "COMMIT", {}
                    cursor.execute(sql)
                return done
            except dbapi_error as exc:
                lost = dialect.is_disconnect(exc, connection.dbapi_connection, cursor)  # type: ignore[arg-type]
                if (begin is not None or pipelined) and not lost:
                    self._roll_back(connection)
                if lost:  # as SQLAlchemy does: this one, and every older one of the pool
                    self.engine.pool._invalidate(connection, exc)
                raise DBAPIError.instance(
                    sql, values, exc, dbapi_error, connection_invalidated=lost, dialect=dialect
                ) from exc
            except BaseException as exc:  # interrupted mid-statement: not fit to reuse
                connection.invalidate(exc if isinstance(exc, Exception) else None)
                raise
            finally:
                for opened in closing:
                    with contextlib.suppress(dbapi_error):  # (sqlite3's, once it is invalidated)
                        opened.close()
        finally:
            connection.close()

    @staticmethod
    def _values(compiled: _Compiled, params: Mapping[str, Any]) -> dict[str, Any]:
        """The statement's parameters as the driver takes them (bind processors applied)."""
        values = {**compiled.defaults, **params}
        for name, process in compiled.processors.items():
            values[name] = process(values[name])
        return values

    @staticmethod
    def _roll_back(connection: Any) -> None:
        """End the failed transaction it began, if it is still open.

        (SQLite's ``BEGIN IMMEDIATE``, or a pipeline's ``BEGIN`` whose write the server
        refused: psycopg's ``rollback`` sends one only for an open transaction.)
        """
        driver = connection.dbapi_connection
        if not getattr(driver, "in_transaction", True):  # (sqlite3 says; psycopg checks)
            return
        with contextlib.suppress(Exception):  # (its own error is the one to raise)
            driver.rollback()
