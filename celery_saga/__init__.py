"""Sagas for Celery: multi-step operations that complete, or are compensated in reverse order.

.. code-block:: python

    import celery_saga
    from celery_saga import saga, saga_step

    celery_saga.install(app)

    @saga_step(compensate=refund_payment)
    @app.task
    def charge_payment(order_id, amount): ...

    result = saga(charge_payment.s("o-1", 99), create_order.s(), name="checkout").apply_async()
    result.get(timeout=30)
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names below are loaded on first use (see __getattr__)
    from ._install import install
    from .canvas import Saga, SagaPlan, saga
    from .config import SagaConfig
    from .context import StepContext, current_step
    from .errors import (
        SagaCompensated,
        SagaConfigurationError,
        SagaConflictError,
        SagaError,
        SagaFailed,
        SagaNotFound,
        SagaStateError,
        SagaStoreError,
        SagaValidationError,
    )
    from .operator import signal
    from .records import SagaRecord, StepRecord
    from .recovery import Recovery, recover
    from .result import SagaResult
    from .retention import purge
    from .retry import RetryPolicy
    from .status import SagaStatus, StepStatus
    from .step import saga_step
    from .waits import Wait, sleep, wait_for

#: Where each public name lives: ``import celery_saga`` alone loads none of them (nor
#: Celery, nor SQLAlchemy), so the pytest plugin and tools that import the package for
#: one thing stay cheap; ``from celery_saga import saga`` loads what it needs.
_WHERE = {
    "install": "._install",
    "Saga": ".canvas",
    "SagaPlan": ".canvas",
    "saga": ".canvas",
    "SagaConfig": ".config",
    "StepContext": ".context",
    "current_step": ".context",
    "SagaCompensated": ".errors",
    "SagaConfigurationError": ".errors",
    "SagaConflictError": ".errors",
    "SagaError": ".errors",
    "SagaFailed": ".errors",
    "SagaNotFound": ".errors",
    "SagaStateError": ".errors",
    "SagaStoreError": ".errors",
    "SagaValidationError": ".errors",
    "signal": ".operator",
    "SagaRecord": ".records",
    "StepRecord": ".records",
    "Recovery": ".recovery",
    "recover": ".recovery",
    "SagaResult": ".result",
    "purge": ".retention",
    "RetryPolicy": ".retry",
    "SagaStatus": ".status",
    "StepStatus": ".status",
    "saga_step": ".step",
    "Wait": ".waits",
    "sleep": ".waits",
    "wait_for": ".waits",
}


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'celery_saga' has no attribute {name!r}")
    value = getattr(import_module(where, __name__), name)
    globals()[name] = value  # once loaded, a plain module attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})


__version__ = "0.1.0"

__all__ = [
    "Recovery",
    "RetryPolicy",
    "Saga",
    "SagaCompensated",
    "SagaConfig",
    "SagaConfigurationError",
    "SagaConflictError",
    "SagaError",
    "SagaFailed",
    "SagaNotFound",
    "SagaPlan",
    "SagaRecord",
    "SagaResult",
    "SagaStateError",
    "SagaStatus",
    "SagaStoreError",
    "SagaValidationError",
    "StepContext",
    "StepRecord",
    "StepStatus",
    "Wait",
    "current_step",
    "install",
    "purge",
    "recover",
    "saga",
    "saga_step",
    "signal",
    "sleep",
    "wait_for",
]
