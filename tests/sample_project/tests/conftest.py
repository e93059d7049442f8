"""Run the shop's own app on celery_saga's test settings (memory://, a SQLite store)."""

import pytest
from celery_saga.testing import configured

from shop.celery import app
from shop.services import gateway, warehouse


# --8<-- [start:saga_app]
@pytest.fixture
def saga_app(saga_settings):
    with configured(app, saga_settings):
        yield app


# --8<-- [end:saga_app]


@pytest.fixture(autouse=True)
def services():
    gateway.__init__()
    warehouse.__init__()
