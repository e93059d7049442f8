"""Bad input is refused with a clear error before anything is stored or sent."""

from __future__ import annotations

import pytest
from celery import Celery

import celery_saga
from celery_saga import (
    SagaConfigurationError,
    SagaStoreError,
    SagaValidationError,
    saga,
    saga_step,
)
from celery_saga._runtime import get_store


def _nothing_stored(app: Celery, saga_id: str) -> bool:
    return get_store(app).get_saga(saga_id) is None


def test_non_json_argument_is_refused(app: Celery, published: list[str]) -> None:
    """A step argument that JSON cannot carry names the step and the argument, counted from 1."""
    steps = saga(app.signature("shop.act", args=(1, object()), kwargs={"tag": "a"}), app=app)
    with pytest.raises(SagaValidationError, match=r"argument 2 of saga step 'shop.act'"):
        steps.apply_async(saga_id="bad-arg")
    assert _nothing_stored(app, "bad-arg")
    assert published == []


def test_non_json_keyword_argument_is_refused(app: Celery, published: list[str]) -> None:
    """A keyword argument that JSON cannot carry is named in the error."""
    steps = saga(app.signature("shop.act", kwargs={"tag": "a", "when": {1, 2}}), app=app)
    with pytest.raises(SagaValidationError, match="keyword argument 'when'"):
        steps.apply_async(saga_id="bad-kwarg")
    assert _nothing_stored(app, "bad-kwarg")
    assert published == []


def test_unregistered_compensation_is_refused_with_a_hint(
    app: Celery, published: list[str]
) -> None:
    """A compensation name that is no registered task fails with a 'did you mean'."""

    @saga_step(compensate="shop.undoo")
    @app.task(name="shop.typo_step", shared=False)
    def typo_step() -> None: ...

    with pytest.raises(SagaValidationError, match=r"Did you mean 'shop\.undo'"):
        saga(typo_step.si(), app=app).apply_async(saga_id="bad-comp")
    assert _nothing_stored(app, "bad-comp")
    assert published == []


def test_plain_task_is_refused(app: Celery) -> None:
    """A task without @saga_step cannot be a saga step, and the error says how to fix it."""

    @app.task(name="shop.plain", shared=False)
    def plain() -> None: ...

    with pytest.raises(SagaValidationError, match=r"decorate it with @saga_step"):
        saga(plain.si(), app=app).apply_async()


def test_unknown_task_is_refused(app: Celery) -> None:
    """A signature of an unregistered task is refused with a suggestion."""
    with pytest.raises(SagaValidationError, match=r"Did you mean 'shop\.act'"):
        saga(app.signature("shop.acts"), app=app).apply_async()


def test_pickle_serializer_is_refused(app: Celery, published: list[str]) -> None:
    """An app configured for pickle cannot run sagas: the error names the setting."""
    app.conf.task_serializer = "pickle"
    with pytest.raises(SagaConfigurationError, match="task_serializer='json'"):
        saga(app.signature("shop.act", kwargs={"tag": "a"}), app=app).apply_async(saga_id="p")
    assert _nothing_stored(app, "p")
    assert published == []


def test_pickle_on_one_step_is_refused(app: Celery) -> None:
    """A step signature asking for pickle is refused too."""
    sig = app.signature("shop.act", kwargs={"tag": "a"}).set(serializer="pickle")
    with pytest.raises(SagaConfigurationError, match="pickle"):
        saga(sig, app=app).apply_async()


def test_callbacks_on_steps_are_refused(app: Celery) -> None:
    """link_error on a step is refused: compensation is the saga's own business."""
    sig = app.signature("shop.act", kwargs={"tag": "a"})
    sig.on_error(app.signature("shop.undo"))
    with pytest.raises(SagaValidationError, match="link_error"):
        saga(sig, app=app).apply_async()


@pytest.mark.parametrize(
    ("steps", "saga_id", "message"),
    [
        ((), None, "at least one step"),
        (("not a signature",), None, "Celery signatures"),
        (None, "", "saga_id must be"),
        (None, "x" * 256, "saga_id must be"),
    ],
)
def test_malformed_sagas_are_refused(
    app: Celery, steps: tuple[object, ...] | None, saga_id: str | None, message: str
) -> None:
    """Empty sagas, non-signature steps and unusable saga ids are refused."""
    if steps is None:
        steps = (app.signature("shop.act", kwargs={"tag": "a"}),)
    with pytest.raises(SagaValidationError, match=message):
        saga(*steps, app=app).apply_async(saga_id=saga_id)


def test_unreachable_store_fails_before_sending(published: list[str]) -> None:
    """With the store down, starting a saga raises SagaStoreError and sends nothing."""
    app = Celery("down", broker="memory://", set_as_current=False)
    app.conf.saga_store_url = "postgresql+psycopg://nobody@127.0.0.1:1/none"
    celery_saga.install(app)

    @saga_step
    @app.task(name="down.step", shared=False)
    def step() -> None: ...

    with pytest.raises(
        SagaStoreError, match=r"saga store postgresql\+psycopg://nobody@127.0.0.1:1"
    ):
        saga(step.si(), app=app).apply_async()
    assert published == []


def test_failed_publish_leaves_nothing_stored(store_url: str) -> None:
    """When the broker refuses the first message, the stored saga is removed again."""
    app = Celery("nobroker", broker="redis://127.0.0.1:1/0", set_as_current=False)
    app.conf.update(
        saga_store_url=store_url,
        task_publish_retry=False,
        broker_connection_retry=False,
        broker_connection_timeout=1,
    )
    celery_saga.install(app)

    @saga_step
    @app.task(name="nobroker.step", shared=False)
    def step() -> None: ...

    with pytest.raises(Exception, match=r"(?i)connect"):
        saga(step.si(), app=app).apply_async(saga_id="unsent")
    assert _nothing_stored(app, "unsent")


def test_uninstalled_app_is_refused() -> None:
    """Starting a saga on an app without celery_saga.install says to call it."""
    app = Celery("bare", broker="memory://", set_as_current=False)

    @saga_step
    @app.task(name="bare.step", shared=False)
    def step() -> None: ...

    with pytest.raises(SagaConfigurationError, match=r"celery_saga.install\(app\)"):
        saga(step.si(), app=app).apply_async()


def test_eager_mode_is_refused(app: Celery) -> None:
    """task_always_eager would fake the saga in the caller, so it is refused."""
    app.conf.task_always_eager = True
    with pytest.raises(SagaConfigurationError, match="real worker"):
        saga(app.signature("shop.act", kwargs={"tag": "a"}), app=app).apply_async()


@pytest.mark.parametrize(
    ("value", "problem"),
    [("a\x00b", "NUL character"), ({"k\x00": 1}, "NUL character"), (["\ud800"], "surrogate")],
)
def test_text_the_store_cannot_keep_is_refused(
    app: Celery, published: list[str], value: object, problem: str
) -> None:
    """NUL characters and lone surrogates in arguments are a validation error, not retryable."""
    steps = saga(app.signature("shop.act", args=(value,), kwargs={"tag": "a"}), app=app)
    with pytest.raises(SagaValidationError, match=problem) as raised:
        steps.apply_async(saga_id="bad-text")
    assert raised.value.retryable is False
    assert _nothing_stored(app, "bad-text")
    assert published == []


def test_oversize_arguments_are_refused(app: Celery, published: list[str]) -> None:
    """Arguments over saga_max_result_bytes are refused before anything is stored or sent."""
    app.conf.saga_max_result_bytes = 1000
    steps = saga(app.signature("shop.act", args=("x" * 2000,), kwargs={"tag": "a"}), app=app)
    with pytest.raises(SagaValidationError, match="over the saga_max_result_bytes limit"):
        steps.apply_async(saga_id="big-arg")
    assert _nothing_stored(app, "big-arg")
    assert published == []


def test_arguments_that_do_not_bind_are_refused(app: Celery, published: list[str]) -> None:
    """Arguments that do not fit the signature (with .s()'s previous result) are refused."""

    @saga_step
    @app.task(name="shop.two", shared=False)
    def two(a: int, b: int) -> int:
        return a + b

    ok = saga(app.signature("shop.two", args=(1, 2)), app.signature("shop.two", args=(3,)), app=app)
    ok.plan()  # the second gets the first's result as ``a``
    first = saga(app.signature("shop.two", args=(1, 2, 3)), app=app)
    with pytest.raises(SagaValidationError, match=r"do not fit its signature shop.two\(a"):
        first.apply_async(saga_id="bad-bind")
    later = saga(app.signature("shop.two", args=(1, 2)), app.signature("shop.two", args=(3, 4)),
                 app=app)  # fmt: skip
    with pytest.raises(SagaValidationError, match="after the previous step's result"):
        later.apply_async(saga_id="bad-bind-2")
    unknown = saga(app.signature("shop.two", args=(1,), kwargs={"b": 1, "c": 2}), app=app)
    with pytest.raises(SagaValidationError, match="unexpected keyword argument 'c'"):
        unknown.apply_async(saga_id="bad-bind-3")
    immutable = saga(app.signature("shop.two", args=(1, 2)),
                     app.signature("shop.two", args=(3, 4), immutable=True), app=app)  # fmt: skip
    immutable.plan()
    assert all(_nothing_stored(app, i) for i in ("bad-bind", "bad-bind-2", "bad-bind-3"))
    assert published == []
