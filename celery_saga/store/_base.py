"""The store's engines and plumbing: connections, error translation, schema set-up."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import Connection, CursorResult, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.sql.expression import Executable

from ..errors import SagaStoreError
from . import migrations
from ._direct import Direct, Written
from ._statements import claim_by_insert
from .engine import READ_ONLY, make_engine

__all__ = ["StoreBase"]

T = TypeVar("T")


def _written(result: CursorResult[Any]) -> Written:
    """What a write through SQLAlchemy did, as the driver path reports it."""
    return Written(result.rowcount, list(result.all()) if result.returns_rows else [])


class StoreBase:
    """What every part of the SQL store stands on: the engines, writes and reads."""

    def __init__(
        self,
        url: str,
        *,
        engine_options: Mapping[str, Any] | None = None,
        create_tables: bool = True,
    ) -> None:
        self.engine = make_engine(url, engine_options)
        self.create_tables = create_tables
        self._schema_ready = False
        # A write of one statement is atomic by itself: on servers, run it in autocommit
        # and save the BEGIN and COMMIT round trips. (SQLite keeps BEGIN IMMEDIATE.)
        dialect = self.engine.dialect
        self._claim_insert = claim_by_insert(dialect.name, dialect.insert_returning)
        # (An engine of its own, made in autocommit, so its pooled connections are not
        # switched in and out of autocommit on every checkout.)
        self._autocommit: Engine | None = (
            None
            if self.engine.dialect.name == "sqlite"
            else make_engine(url, {**(engine_options or {}), "isolation_level": "AUTOCOMMIT"})
        )
        # the hot writes, past SQLAlchemy
        self._direct = Direct.of(self.engine if self._autocommit is None else self._autocommit)
        options = engine_options or {}
        self._isolation_set = "isolation_level" in options or "isolation_level" in (
            options.get("execution_options") or {}
        )

    # -- plumbing -----------------------------------------------------------------

    @property
    def engines(self) -> tuple[Engine, ...]:
        """Every engine the store writes through (to watch its statements, e.g. in tests)."""
        return (self.engine,) if self._autocommit is None else (self.engine, self._autocommit)

    @property
    def safe_url(self) -> str:
        """The store's URL with any password hidden."""
        return self.engine.url.render_as_string(hide_password=True)

    def ensure_schema(self) -> None:
        """Create or upgrade the tables, once per process (if ``create_tables``)."""
        if self._schema_ready or not self.create_tables:
            return
        with self._errors("create the saga tables"):
            migrations.upgrade(self.engine)
        self._schema_ready = True

    def schema_version(self) -> int:
        """The schema version of the store's tables (0: none yet); changes nothing."""
        with self._errors("read the schema version"), self.engine.connect() as connection:
            return migrations.current_version(connection)

    def upgrade_schema(self) -> tuple[int, int]:
        """Create or upgrade the tables; ``(version before, version after)``."""
        with self._errors("upgrade the schema"):
            versions = migrations.upgrade(self.engine)
        self._schema_ready = True
        return versions

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except (OperationalError, DBAPIError) as exc:
            if isinstance(exc, IntegrityError):
                raise
            cause = (
                f"{type(exc.orig).__name__ if exc.orig else type(exc).__name__}: "
                f"{str(exc.orig or exc).strip().splitlines()[0]}"
            )
            if exc.statement is None:  # it failed to connect: no statement was sent
                raise SagaStoreError(
                    f"saga store {self.safe_url} cannot be reached (to {doing}): {cause}; "
                    f"is the database server up, and saga_store_url right?"
                ) from exc
            raise SagaStoreError(f"saga store {self.safe_url} could not {doing}: {cause}") from exc

    @contextmanager
    def _write(self, doing: str) -> Iterator[Connection]:
        self.ensure_schema()
        with self._errors(doing), self.engine.begin() as connection:
            yield connection

    @contextmanager
    def _write_one(self, doing: str) -> Iterator[Connection]:
        """A connection for a write that is a single statement (or needs no atomicity)."""
        if self._autocommit is None:
            with self._write(doing) as connection:
                yield connection
            return
        self.ensure_schema()
        with self._errors(doing), self._autocommit.connect() as connection:
            yield connection

    def _on_driver(self, doing: str, run: Callable[[Direct], T | None]) -> T | None:
        """``run`` on the store's driver path, its errors translated as the store's.

        None: no driver path on this store, a listener watching the engine, or a
        statement the driver path does not run.
        """
        direct = self._direct
        if direct is None or direct.watched:
            return None
        self.ensure_schema()
        with self._errors(doing):
            return run(direct)

    def _one(self, doing: str, statement: Executable, params: Mapping[str, Any]) -> Written:
        """Run a write that is one statement (in autocommit where the server allows).

        On PostgreSQL with psycopg, and on a SQLite file, it goes to the driver directly
        (:mod:`._direct`), unless something listens to the engine's statements.
        """
        written = self._on_driver(doing, lambda direct: direct.execute(statement, params))
        if written is not None:
            return written
        with self._write_one(doing) as connection:
            return _written(connection.execute(statement, params))

    def _in_turn(
        self,
        doing: str,
        statements: Sequence[Executable],
        params: Mapping[str, Any],
        go_on: Callable[[Written], bool],
    ) -> list[Written]:
        """Statements in one transaction, each while the one before it said ``go_on``.

        On the driver where it can (SQLite, see :mod:`._direct`), else through SQLAlchemy.
        """
        found = self._on_driver(
            doing, lambda direct: direct.execute_in_turn(statements, params, go_on=go_on)
        )
        if found is not None:
            return found
        done = []
        with self._write(doing) as connection:
            for statement in statements:
                done.append(_written(connection.execute(statement, params)))
                if not go_on(done[-1]):
                    break
        return done

    def _read_direct(
        self,
        doing: str,
        statement: Executable,
        params: Mapping[str, Any],
        *,
        alone: bool = False,
    ) -> Written | None:
        """A read of one statement on the driver, in autocommit; None: not on this store.

        ``alone``: the read stands by itself (one statement reads one snapshot, on any
        backend). Otherwise it is one of the reads that run apart at READ COMMITTED,
        PostgreSQL's default: there a transaction around them would give each statement
        its own snapshot as well. Once more on a fresh connection if a stale pooled one
        was dropped, as :meth:`_read` does.
        """
        direct = self._direct
        if direct is None or direct.watched:
            return None
        if not alone:
            if self._isolation_set:
                return None
            # (the server's default, known once an engine has connected)
            levels = {
                getattr(engine.dialect, "default_isolation_level", None) for engine in self.engines
            }
            if "READ COMMITTED" not in levels:  # (SQLite: SERIALIZABLE)
                return None
        return self._again_if_stale(doing, lambda: direct.execute(statement, params, read=True))

    def _read(self, doing: str, read: Callable[[Connection], T], *, one: bool = False) -> T:
        """Run ``read`` on a connection; once more if a stale pooled one was dropped.

        After the database went away, the first use of each pooled connection fails;
        a read is safe to repeat on a fresh one (writes are retried by their callers).
        ``one``: ``read`` is a single statement: on servers it runs in autocommit, with
        no BEGIN and ROLLBACK around it (what ``SagaResult.get`` polls with).
        """
        self.ensure_schema()
        engine = self._autocommit if one and self._autocommit is not None else self.engine

        def attempt() -> T:
            with engine.connect() as connection:
                return read(connection.execution_options(**READ_ONLY))

        return self._again_if_stale(doing, attempt)

    def _again_if_stale(self, doing: str, read: Callable[[], T]) -> T:
        """``read()``, errors translated; once more if it met a stale pooled connection."""
        for attempt in (1, 2):
            try:
                with self._errors(doing):
                    return read()
            except SagaStoreError as exc:
                cause = exc.__cause__
                stale = isinstance(cause, DBAPIError) and cause.connection_invalidated
                if attempt == 2 or not stale:
                    raise
        raise AssertionError("unreachable")

    def dispose(self, *, close: bool = True) -> None:
        """Drop the connection pools (``close=False`` in a forked child)."""
        self.engine.dispose(close=close)
        if self._autocommit is not None:
            self._autocommit.dispose(close=close)
