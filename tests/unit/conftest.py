"""Fixtures for the unit tests: apps on memory:// with a throw-away SQLite store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.signals import before_task_publish

from tests.support.app import make_app


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    """A SQLite store file of this test's own."""
    return f"sqlite:///{tmp_path / 'store.sqlite3'}"


@pytest.fixture
def app(store_url: str) -> Iterator[Celery]:
    """The test app on memory:// with no worker (for what happens before anything runs)."""
    app = make_app("memory://", store_url, store_url)
    yield app
    app.close()


@pytest.fixture
def published() -> Iterator[list[str]]:
    """The names of the tasks published while the test runs."""
    names: list[str] = []

    def receiver(sender: str | None = None, **_: Any) -> None:
        names.append(str(sender))

    before_task_publish.connect(receiver, weak=False)
    yield names
    before_task_publish.disconnect(receiver)
