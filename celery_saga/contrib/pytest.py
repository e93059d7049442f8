"""The pytest plugin: fixtures to test your sagas with a real worker and no servers.

Installed with celery_saga (the ``pytest11`` entry point ``celery_saga``); every fixture
is named ``saga_*``, so it lives beside Celery's own plugin and pytest-celery's.

==================== =====================================================================
fixture              what it is
==================== =====================================================================
``saga_app``         a saga-ready Celery app on ``memory://`` with a throw-away SQLite
                     store; override it to test your own app (see below)
``saga_worker``      a real Celery worker in a thread, consuming ``saga_app``
``saga_events``      a :class:`~celery_saga.testing.SagaEvents` recording every signal
``saga_faults``      :class:`~celery_saga.testing.Faults` for ``saga_app``: failures,
                     compensation failures, worker crashes, then recovery
``saga_config``      ``{}``; override it to add settings (applied last)
``saga_includes``    ``()``; override it with modules to import (``@shared_task`` steps)
``saga_store_url``   the throw-away store: a SQLite file in the test's ``tmp_path``
``saga_settings``    what ``saga_app`` runs on: ``memory_settings(saga_store_url)``
                     updated with ``saga_config``
==================== =====================================================================

Each fixture is made afresh for each test. ``saga_app`` is a new app, set as the current
and default app, so ``@shared_task`` steps bind to it. Tasks made with ``@app.task`` on
your project's app live on that app; test them by overriding ``saga_app``:

.. code-block:: python

    # conftest.py
    import pytest
    from celery_saga.testing import configured

    from proj.celery import app


    @pytest.fixture
    def saga_app(saga_settings):
        with configured(app, saga_settings):
            yield app
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from celery import Celery
    from celery.worker import WorkController

    from ..testing import Faults, SagaEvents

# pytest loads this plugin into every run of an environment that has celery_saga, also
# runs that use none of its fixtures: so it imports the worker and the test kit
# (celery.worker, celery.contrib.testing, celery_saga.testing) inside the fixtures, for
# import cost. tests/unit/test_import_cost.py checks it.

__all__ = [
    "saga_app",
    "saga_config",
    "saga_events",
    "saga_faults",
    "saga_includes",
    "saga_settings",
    "saga_store_url",
    "saga_worker",
]


@pytest.fixture
def saga_config() -> Mapping[str, Any]:
    """Settings to add to (or change in) ``saga_settings``: override this fixture."""
    return {}


@pytest.fixture
def saga_includes() -> Sequence[str]:
    """Modules to import into ``saga_app`` (where ``@shared_task`` steps are defined)."""
    return ()


@pytest.fixture
def saga_store_url(tmp_path: Path) -> str:
    """The test's saga store: a SQLite file of its own, thrown away with ``tmp_path``."""
    return f"sqlite:///{tmp_path / 'sagas.sqlite3'}"


@pytest.fixture
def saga_settings(saga_store_url: str, saga_config: Mapping[str, Any]) -> dict[str, Any]:
    """What ``saga_app`` runs on: ``memory://``, the throw-away store, ``saga_config``."""
    from ..testing import memory_settings  # (import cost: see the top of the module)

    return {**memory_settings(saga_store_url), **saga_config}


@pytest.fixture
def saga_app(saga_settings: Mapping[str, Any], saga_includes: Sequence[str]) -> Iterator[Celery]:
    """A new saga-ready app (current and default while the test runs)."""
    from celery import Celery, _state  # (import cost: see the top of the module)

    from .._install import install
    from ..testing import configured

    state: Any = _state  # (Celery's own test app fixture saves and restores the same)
    previous_current = state._tls.current_app
    previous_default = state.default_app
    app = Celery("celery_saga.testing", set_as_current=True)
    try:
        with configured(app, saga_settings):
            install(app)
            app.set_default()
            for module in saga_includes:
                importlib.import_module(module)
            app.finalize()
            yield app
    finally:
        state.set_default_app(previous_default)
        state._tls.current_app = previous_current
        app.close()


@pytest.fixture
def saga_worker(saga_app: Celery) -> Iterator[WorkController]:
    """A real Celery worker (threads pool, 4 wide) in this process, running ``saga_app``."""
    from ..testing import worker  # (import cost: see the top of the module)

    with worker(saga_app) as controller:
        yield controller


@pytest.fixture
def saga_events() -> Iterator[SagaEvents]:
    """Every celery_saga signal sent while the test runs, in order."""
    from ..testing import SagaEvents  # (import cost: see the top of the module)

    with SagaEvents() as events:
        yield events


@pytest.fixture
def saga_faults(saga_app: Celery) -> Iterator[Faults]:
    """Fault injection for ``saga_app``'s steps and compensations."""
    from ..testing import Faults  # (import cost: see the top of the module)

    with Faults(saga_app) as faults:
        yield faults
