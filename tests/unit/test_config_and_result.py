"""Settings are checked when read; a SagaResult of an unknown id behaves like AsyncResult."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeoutError

from celery_saga import SagaConfig, SagaConfigurationError, SagaResult, SagaStatus
from celery_saga.config import DEFAULT_STORE_URL, get_config


def test_defaults() -> None:
    """An app without saga_* settings gets the embedded SQLite store and documented defaults."""
    config = SagaConfig.from_conf({})
    assert config.store_url == DEFAULT_STORE_URL
    assert config.step_lease == 30.0
    assert config.max_result_bytes == 1024 * 1024


def test_settings_are_read_once(app: Celery) -> None:
    """The config is resolved once and cached on the app."""
    assert get_config(app) is get_config(app)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("saga_step_lease", "ten", "must be a number"),
        ("saga_step_lease", 0, "must be >= 1.0"),
        ("saga_store_url", 5, "SQLAlchemy URL"),
        ("saga_store_engine_options", [1], "must be a mapping"),
        ("saga_max_result_bytes", True, "must be a number"),
        ("saga_redact", "no_such_module:redact", "saga_redact: cannot import"),
        ("saga_redact", 42, "must be a callable redact"),
        ("saga_result_expires", "7d", "saga_result_expires must be seconds"),
        ("saga_result_expires", -1, "saga_result_expires must be seconds"),
    ],
)
def test_bad_settings_are_refused(key: str, value: object, message: str) -> None:
    """A mistyped saga_* setting fails with the setting's name."""
    with pytest.raises(SagaConfigurationError, match=message):
        SagaConfig.from_conf({key: value})


def test_result_expires_forms() -> None:
    """saga_result_expires: 7 days by default; seconds or a timedelta; None or 0 keeps all."""
    assert SagaConfig.from_conf({}).result_expires == 7 * 86400
    assert SagaConfig.from_conf({"saga_result_expires": timedelta(hours=1)}).result_expires == 3600
    assert SagaConfig.from_conf({"saga_result_expires": 60}).result_expires == 60
    assert SagaConfig.from_conf({"saga_result_expires": None}).result_expires is None
    assert SagaConfig.from_conf({"saga_result_expires": 0}).result_expires is None


def test_redactor_by_name() -> None:
    """saga_redact given as "module:name" resolves to that callable."""
    config = SagaConfig.from_conf({"saga_redact": "json:dumps"})
    assert config.redact is json.dumps


def test_unknown_saga_is_pending(app: Celery) -> None:
    """An id the store does not know reads as PENDING, and get() times out."""
    result = SagaResult("nobody", app=app)
    assert result.status is SagaStatus.PENDING
    assert result.steps == []
    assert not result.ready()
    with pytest.raises(CeleryTimeoutError, match=r"did not finish within 0\.2 s"):
        result.get(timeout=0.2)
