"""Settings: ``saga_*`` keys on the Celery app's ``conf``, resolved once into a typed config.

================================= ================================= ================================
setting                           default                           meaning
================================= ================================= ================================
``saga_store_url``                ``sqlite:///celery_saga.sqlite3`` SQLAlchemy URL of the store
``saga_store_engine_options``     ``{}``                            ``create_engine`` keywords
``saga_create_tables``            ``True``                          create/upgrade tables on use
``saga_step_lease``               ``30``                            seconds a claim is owned
``saga_max_result_bytes``         ``1048576``                       largest JSON result of a step
``saga_compensation_max_retries`` ``5``                             retries of a compensation
``saga_compensation_retry_delay`` ``1.0``                           first delay, doubling, <= 60 s
``saga_store_max_retries``        ``30``                            step retries while store is down
``saga_result_poll_interval``     ``0.005``                         first poll of ``SagaResult.get``
``saga_redact``                   ``None``                          redactor for spans and logs
``saga_recovery_stall``           ``300``                           quiet seconds before recovery
``saga_recovery_batch``           ``500``                           sagas looked at per sweep
``saga_recovery_interval``        ``30``                            seconds between beat's sweeps
``saga_result_expires``           ``604800`` (7 days)               purge finished sagas this old
``saga_park_retry``               ``30``                            resend a parked saga's message
================================= ================================= ================================

``saga_redact`` is a callable ``redact(step, field, value)`` (or its ``"module:name"``):
``step`` is the step's task name, ``field`` one of ``"args"``, ``"kwargs"``, ``"result"``,
``"error"`` (the error's message), and what it returns replaces ``value`` wherever
celery_saga shows it outside the store: span attributes and events, its log lines, and
the ``argsrepr``/``kwargsrepr`` Celery's monitoring shows. The store keeps the originals.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from celery import Celery
from celery.utils.imports import symbol_by_name

from .errors import SagaConfigurationError

__all__ = [
    "DEFAULT_STORE_URL",
    "Redactor",
    "SagaConfig",
    "clear_config",
    "get_config",
    "recovery_interval",
]

#: ``redact(step, field, value) -> value``: see ``saga_redact``.
Redactor = Callable[[str, str, Any], Any]

DEFAULT_STORE_URL = "sqlite:///celery_saga.sqlite3"
_CACHE_ATTR = "_celery_saga_config"


@dataclass(frozen=True)
class SagaConfig:
    """The ``saga_*`` settings of one Celery app, checked and typed.

    .. versionadded:: 0.1
    """

    store_url: str = DEFAULT_STORE_URL
    store_engine_options: Mapping[str, Any] = field(default_factory=dict)
    create_tables: bool = True
    step_lease: float = 30.0
    max_result_bytes: int = 1024 * 1024
    compensation_max_retries: int = 5
    compensation_retry_delay: float = 1.0
    store_max_retries: int = 30
    result_poll_interval: float = 0.005
    redact: Redactor | None = None
    recovery_stall: float = 300.0
    recovery_batch: int = 500
    recovery_interval: float | None = 30.0
    result_expires: float | None = 7 * 24 * 3600.0
    park_retry: float = 30.0

    @classmethod
    def from_conf(cls, conf: Mapping[str, Any]) -> SagaConfig:
        """Read and check the ``saga_*`` keys of a Celery ``app.conf``."""
        defaults = cls()

        def number(key: str, default: float, *, minimum: float = 0.0) -> float:
            value = conf.get(f"saga_{key}")
            if value is None:
                return default
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise SagaConfigurationError(
                    f"saga_{key} must be a number, got {type(value).__name__}: {value!r}"
                )
            if value < minimum:
                raise SagaConfigurationError(f"saga_{key} must be >= {minimum}, got {value!r}")
            return float(value)

        url = conf.get("saga_store_url") or defaults.store_url
        if not isinstance(url, str):
            raise SagaConfigurationError(
                f"saga_store_url must be a SQLAlchemy URL string, got {url!r}"
            )
        engine_options = conf.get("saga_store_engine_options") or {}
        if not isinstance(engine_options, Mapping):
            raise SagaConfigurationError(
                f"saga_store_engine_options must be a mapping, got {engine_options!r}"
            )
        create_tables = conf.get("saga_create_tables")
        return cls(
            store_url=url,
            store_engine_options=dict(engine_options),
            create_tables=defaults.create_tables if create_tables is None else bool(create_tables),
            step_lease=number("step_lease", defaults.step_lease, minimum=1.0),
            max_result_bytes=int(
                number("max_result_bytes", defaults.max_result_bytes, minimum=1.0)
            ),
            compensation_max_retries=int(
                number("compensation_max_retries", defaults.compensation_max_retries)
            ),
            compensation_retry_delay=number(
                "compensation_retry_delay", defaults.compensation_retry_delay
            ),
            store_max_retries=int(number("store_max_retries", defaults.store_max_retries)),
            result_poll_interval=number(
                "result_poll_interval", defaults.result_poll_interval, minimum=0.001
            ),
            redact=_redactor(conf.get("saga_redact")),
            recovery_stall=number("recovery_stall", defaults.recovery_stall, minimum=0.0),
            recovery_batch=int(number("recovery_batch", defaults.recovery_batch, minimum=1.0)),
            recovery_interval=recovery_interval(conf),
            result_expires=_expires(conf, defaults.result_expires),
            park_retry=number("park_retry", defaults.park_retry, minimum=0.1),
        )


def _seconds_or_off(
    conf: Mapping[str, Any], key: str, default: float | None, off: str
) -> float | None:
    """A setting in seconds (or a ``timedelta``) that ``None`` or ``0`` turns off."""
    if key not in conf:
        return default
    value = conf[key]
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if value is None or value == 0:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise SagaConfigurationError(
            f"{key} must be seconds (or a timedelta), or None or 0 {off}, got {value!r}"
        )
    return float(value)


def _expires(conf: Mapping[str, Any], default: float | None) -> float | None:
    """``saga_result_expires``: seconds or a ``timedelta``; ``None`` or ``0``: keep forever."""
    return _seconds_or_off(conf, "saga_result_expires", default, "to keep finished sagas forever")


def recovery_interval(conf: Mapping[str, Any]) -> float | None:
    """``saga_recovery_interval``: seconds (or a ``timedelta``) between the sweeps beat runs.

    ``None`` or ``0``: :func:`celery_saga.install` puts no ``celery_saga.recover`` in beat.
    """
    return _seconds_or_off(
        conf, "saga_recovery_interval", SagaConfig.recovery_interval, "to schedule no sweep"
    )


def _redactor(value: Any) -> Redactor | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = symbol_by_name(value)
        except (ImportError, AttributeError, ValueError) as exc:
            raise SagaConfigurationError(
                f"saga_redact: cannot import {value!r} ({exc}); give a callable or 'module:name'"
            ) from exc
    if not callable(value):
        raise SagaConfigurationError(
            f"saga_redact must be a callable redact(step, field, value), got {value!r}"
        )
    redact: Redactor = value
    return redact


def get_config(app: Celery) -> SagaConfig:
    """Return the app's saga config, reading ``app.conf`` the first time only."""
    config: SagaConfig | None = app.__dict__.get(_CACHE_ATTR)
    if config is None:
        config = SagaConfig.from_conf(app.conf)
        setattr(app, _CACHE_ATTR, config)
    return config


def clear_config(app: Celery) -> None:
    """Forget the app's saga config: the next :func:`get_config` reads ``app.conf`` again."""
    app.__dict__.pop(_CACHE_ATTR, None)
