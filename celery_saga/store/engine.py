"""Engines of the saga store: kombu's JSON for the JSON columns, SQLite made multi-process safe."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kombu.utils.json import dumps as json_dumps
from kombu.utils.json import loads as json_loads
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.pool import StaticPool

__all__ = ["READ_ONLY", "EncodedJSON", "make_engine"]

#: Execution options of a connection that only reads (SQLite: a deferred BEGIN).
READ_ONLY = {"celery_saga_read": True}


class EncodedJSON(str):
    """JSON text encoded already: the store writes it as it is instead of encoding again."""

    __slots__ = ()


def _encode(value: Any) -> str:
    return value if type(value) is EncodedJSON else json_dumps(value)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below issue BEGIN, not the sqlite3 module.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout = 30000")
        cursor.execute("PRAGMA foreign_keys = ON")
        if engine.url.database not in (None, "", ":memory:"):
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        read_only = connection.get_execution_options().get("celery_saga_read", False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def make_engine(url: str, options: Mapping[str, Any] | None = None) -> Engine:
    """Create the engine of a saga store, with kombu's JSON for the JSON columns."""
    kwargs: dict[str, Any] = {"json_serializer": _encode, "json_deserializer": json_loads}
    parsed = make_url(url)
    is_sqlite = parsed.get_backend_name() == "sqlite"
    if is_sqlite and parsed.database in (None, "", ":memory:"):
        kwargs["poolclass"] = StaticPool
        kwargs["connect_args"] = {"check_same_thread": False}
    kwargs.update(options or {})
    engine = create_engine(parsed, **kwargs)
    if is_sqlite:
        _configure_sqlite(engine)
    return engine
