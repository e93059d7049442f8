"""saga_store_url as people write it: driverless URLs work, mistakes say what to write."""

from __future__ import annotations

from importlib import util

import pytest

from celery_saga import SagaConfigurationError, SagaStoreError
from celery_saga.store import SagaStore, make_engine
from celery_saga.store import engine as engine_module


@pytest.mark.parametrize(
    "url",
    ["postgres://shop:secret@127.0.0.1/shop", "postgresql://shop:secret@127.0.0.1/shop"],
)
def test_postgres_urls_get_the_installed_driver(url: str) -> None:
    """postgres:// and postgresql:// are PostgreSQL through psycopg 3 when it is installed."""
    engine = make_engine(url)
    assert engine.url.drivername == "postgresql+psycopg"
    assert engine.url.password == "secret"
    assert engine.url.database == "shop"


def test_postgres_url_falls_back_to_psycopg2(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without psycopg 3, a driverless PostgreSQL URL uses psycopg2 if that is there."""
    installed = {"psycopg2"}
    monkeypatch.setattr(engine_module, "find_spec", lambda name: name in installed or None)
    assert engine_module.store_url("postgres://db/shop").drivername == "postgresql+psycopg2"


def test_postgres_url_without_any_driver_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With no PostgreSQL driver at all, the error says what to install and which URL to write."""
    monkeypatch.setattr(engine_module, "find_spec", lambda name: None)
    with pytest.raises(SagaConfigurationError) as raised:
        make_engine("postgres://shop:secret@db/shop")
    message = str(raised.value)
    assert "'postgres://shop:***@db/shop'" in message
    assert 'pip install "celery-sagas[postgres]"' in message
    assert "postgresql+psycopg://user@host/db" in message
    assert "secret" not in message


def test_mysql_url_gets_pymysql() -> None:
    """mysql:// without a driver is PyMySQL when mysqlclient is not installed."""
    expected = "mysql+mysqldb" if util.find_spec("MySQLdb") else "mysql+pymysql"
    assert make_engine("mysql://root@127.0.0.1/shop").url.drivername == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql+nodriver://u:secret@db/shop", r"no database or driver 'postgresql\+nodriver'"),
        ("mongodb://u:secret@db/shop", "no database or driver 'mongodb'"),
        ("u:secret@db/shop", "is not a SQLAlchemy URL"),
    ],
)
def test_unknown_dialect_or_driver_is_a_configuration_error(url: str, message: str) -> None:
    """A URL SQLAlchemy has no dialect or driver for names the URL, hides the password, says how."""
    with pytest.raises(SagaConfigurationError, match=message) as raised:
        SagaStore(url)
    assert "secret" not in str(raised.value)
    assert "sqlite:///celery_saga.sqlite3, postgresql+psycopg://" in str(raised.value)


def test_known_dialect_missing_driver_is_a_configuration_error() -> None:
    """A URL naming a driver that is not installed says so and what to install."""
    if util.find_spec("psycopg2"):
        pytest.skip("psycopg2 is installed here")
    with pytest.raises(SagaConfigurationError, match="its driver is not installed") as raised:
        make_engine("postgresql+psycopg2://u:secret@db/shop")
    assert 'pip install "celery-sagas[postgres]"' in str(raised.value)
    assert "secret" not in str(raised.value)


def test_refused_connection_says_the_store_cannot_be_reached() -> None:
    """A server that refuses the connection: the store cannot be reached at the URL."""
    store = SagaStore("postgresql://shop:secret@127.0.0.1:1/shop")
    with pytest.raises(SagaStoreError) as raised:
        store.ensure_schema()
    message = str(raised.value)
    assert message.startswith(
        "saga store postgresql+psycopg://shop:***@127.0.0.1:1/shop cannot be reached"
    )
    assert "create the saga tables" in message  # what it was doing, not what went wrong
    assert "secret" not in message
    assert raised.value.retryable
