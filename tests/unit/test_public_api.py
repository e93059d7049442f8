"""The public surface: what `import celery_saga` offers is pinned here."""

from __future__ import annotations

from importlib import resources

import celery_saga

EXPECTED = [
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


def test_all_is_pinned_and_sorted() -> None:
    """__all__ lists exactly the public names, sorted."""
    assert celery_saga.__all__ == EXPECTED
    assert sorted(celery_saga.__all__) == celery_saga.__all__


def test_every_public_name_resolves() -> None:
    """Every name in __all__ is importable from the package."""
    for name in celery_saga.__all__:
        assert getattr(celery_saga, name) is not None


def test_package_is_typed() -> None:
    """The package ships py.typed for type checkers."""
    assert resources.files("celery_saga").joinpath("py.typed").is_file()


def test_errors_form_one_tree() -> None:
    """Every celery_saga exception derives from SagaError and has a code."""
    errors = [getattr(celery_saga, n) for n in celery_saga.__all__ if n.startswith("Saga")]
    errors = [e for e in errors if isinstance(e, type) and issubclass(e, Exception)]
    assert len(errors) == 9
    for error in errors:
        assert issubclass(error, celery_saga.SagaError)
        assert isinstance(error.code, str)
