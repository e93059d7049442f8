"""Engines of the saga store: kombu's JSON for the JSON columns, SQLite made multi-process safe.

A URL without a driver (``postgres://``, ``postgresql://``, ``mysql://``, as hosting
providers hand them out) gets the driver that is installed: psycopg 3 before psycopg2,
mysqlclient before PyMySQL. A URL SQLAlchemy cannot use is a
:class:`~celery_saga.SagaConfigurationError` that names it (password hidden) and the fix.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from importlib.util import find_spec
from typing import Any

from kombu.utils.json import dumps as json_dumps
from kombu.utils.json import loads as json_loads
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.pool import StaticPool

from ..errors import SagaConfigurationError

__all__ = ["READ_ONLY", "EncodedJSON", "make_engine", "store_url"]

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


#: For a URL without a driver: the drivers to try, in order, as (module, SQLAlchemy name).
_DRIVERS = {
    "postgresql": (("psycopg", "psycopg"), ("psycopg2", "psycopg2")),
    "mysql": (("MySQLdb", "mysqldb"), ("pymysql", "pymysql")),
    "mariadb": (("MySQLdb", "mysqldb"), ("pymysql", "pymysql")),
}
#: ``postgres://`` is what Heroku and others hand out; SQLAlchemy 1.4 stopped taking it.
_ALIASES = {"postgres": "postgresql"}
#: What to install, and an example URL, per database.
_INSTALL = {
    "postgresql": ('pip install "celery-sagas[postgres]"', "postgresql+psycopg://user@host/db"),
    "mysql": ('pip install "celery-sagas[mysql]"', "mysql+pymysql://user@host/db"),
    "mariadb": ('pip install "celery-sagas[mysql]"', "mysql+pymysql://user@host/db"),
}
_EXAMPLES = (
    "sqlite:///celery_saga.sqlite3, postgresql+psycopg://user@host/db "
    "or mysql+pymysql://user@host/db"
)


def _hidden(url: str | URL) -> str:
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return re.sub(r":[^:@/]*@", ":***@", url)


def store_url(url: str | URL) -> URL:
    """The SQLAlchemy URL of a ``saga_store_url``, with an installed driver where none is given.

    Raises :class:`~celery_saga.SagaConfigurationError` when it is not a URL, or names a
    database or driver SQLAlchemy does not know or that is not installed.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise SagaConfigurationError(
            f"saga_store_url {_hidden(url)!r} is not a SQLAlchemy URL ({exc}); "
            f"write one like {_EXAMPLES}"
        ) from exc
    backend, _, driver = parsed.drivername.partition("+")
    backend = _ALIASES.get(backend, backend)
    if not driver and backend in _DRIVERS:
        installed = [name for module, name in _DRIVERS[backend] if find_spec(module)]
        if not installed:
            install, example = _INSTALL[backend]
            raise SagaConfigurationError(
                f"saga_store_url {_hidden(parsed)!r}: no {backend} driver is installed; "
                f"{install} and write the URL as {example}"
            )
        driver = installed[0]
    drivername = f"{backend}+{driver}" if driver else backend
    parsed = parsed.set(drivername=drivername)
    try:
        parsed.get_dialect()
    except NoSuchModuleError as exc:
        raise SagaConfigurationError(
            f"saga_store_url {_hidden(parsed)!r}: SQLAlchemy has no database or driver "
            f"{drivername!r}; write a URL like {_EXAMPLES}"
        ) from exc
    return parsed


def make_engine(url: str | URL, options: Mapping[str, Any] | None = None) -> Engine:
    """Create the engine of a saga store, with kombu's JSON for the JSON columns.

    Raises :class:`~celery_saga.SagaConfigurationError` for a URL it cannot use (see
    :func:`store_url`), or whose driver is not installed.
    """
    kwargs: dict[str, Any] = {"json_serializer": _encode, "json_deserializer": json_loads}
    parsed = store_url(url)
    is_sqlite = parsed.get_backend_name() == "sqlite"
    if is_sqlite and parsed.database in (None, "", ":memory:"):
        kwargs["poolclass"] = StaticPool
        kwargs["connect_args"] = {"check_same_thread": False}
    kwargs.update(options or {})
    try:
        engine = create_engine(parsed, **kwargs)
    except ImportError as exc:  # the dialect is known, its driver is not installed
        backend = parsed.get_backend_name()
        install = _INSTALL.get(backend, (f"install the {parsed.get_driver_name()} driver", ""))[0]
        raise SagaConfigurationError(
            f"saga_store_url {_hidden(parsed)!r}: its driver is not installed ({exc}); "
            f"{install}, or name an installed driver in the URL"
        ) from exc
    if is_sqlite:
        _configure_sqlite(engine)
    return engine
