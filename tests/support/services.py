"""The servers the integration tests use: reachable, or skipped locally / failed in CI."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import pytest
from sqlalchemy import create_engine, text

POSTGRES_ADMIN_URL = os.environ.get(
    "SAGA_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
MYSQL_ADMIN_URL = os.environ.get("SAGA_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
REDIS_URL = os.environ.get("SAGA_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RABBITMQ_URL = os.environ.get("SAGA_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")


def _address(url: str, default_port: int) -> tuple[str, int]:
    parsed = urlsplit(url)
    return parsed.hostname or "127.0.0.1", parsed.port or default_port


#: Where each service is expected (from the SAGA_TEST_*_URL settings above).
SERVICES: dict[str, tuple[str, int]] = {
    "postgres": _address(POSTGRES_ADMIN_URL, 5432),
    "redis": _address(REDIS_URL, 6379),
    "rabbitmq": _address(RABBITMQ_URL, 5672),
    "mysql": _address(MYSQL_ADMIN_URL, 3306),
}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(service: str) -> None:
    """Skip (locally) or fail (with CI=true) unless ``service`` accepts connections."""
    host, port = SERVICES[service]
    try:
        with socket.create_connection((host, port), timeout=2):
            return
    except OSError as exc:
        message = f"{service} is not reachable at {host}:{port} ({exc})"
    if in_ci():
        pytest.fail(f"{message}; CI=true requires every service", pytrace=False)
    pytest.skip(message)


@contextmanager
def scratch_database(admin_url: str, dialect: str) -> Iterator[str]:
    """A new, empty database for one test session, dropped afterwards."""
    name = f"celery_saga_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {name}"))
    url = admin.url.set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as connection:
            if dialect == "postgresql":
                connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            else:
                connection.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        admin.dispose()
