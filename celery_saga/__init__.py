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
from .records import SagaRecord, StepRecord
from .recovery import Recovery, recover
from .result import SagaResult
from .retention import purge
from .retry import RetryPolicy
from .status import SagaStatus, StepStatus
from .step import saga_step

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
    "current_step",
    "install",
    "purge",
    "recover",
    "saga",
    "saga_step",
]
