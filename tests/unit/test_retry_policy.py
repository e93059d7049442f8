"""RetryPolicy: checked on construction, delays that double, capped, jittered."""

from __future__ import annotations

from typing import Any

import pytest

from celery_saga import RetryPolicy, saga_step


def test_delays_double_up_to_the_cap() -> None:
    """Without jitter the delays are backoff * 2**n, never above max_backoff."""
    policy = RetryPolicy(attempts=6, backoff=1.0, max_backoff=5.0, jitter=False)
    assert [policy.delay(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_jitter_stays_in_the_upper_half() -> None:
    """With jitter each delay is drawn between half the ceiling and the ceiling."""
    policy = RetryPolicy(backoff=2.0, max_backoff=60.0)
    delays = [policy.delay(3) for _ in range(200)]
    assert all(4.0 <= d <= 8.0 for d in delays)
    assert len(set(delays)) > 1


def test_retry_on_and_dont_retry_on() -> None:
    """Only retry_on errors are retryable, minus dont_retry_on ones."""
    policy = RetryPolicy(retry_on=(OSError,), dont_retry_on=(FileNotFoundError,))
    assert policy.retryable(ConnectionError())
    assert not policy.retryable(FileNotFoundError())
    assert not policy.retryable(ValueError())


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (4, RetryPolicy(attempts=4)),
        ({"attempts": 2, "backoff": 0.5}, RetryPolicy(attempts=2, backoff=0.5)),
    ],
)
def test_shorthands(value: Any, expected: RetryPolicy | None) -> None:
    """retry= takes a policy, a number of attempts or a mapping of fields."""
    assert RetryPolicy.of(value) == expected


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"attempts": 0}, ValueError, "attempts must be >= 1"),
        ({"attempts": 2.5}, TypeError, "attempts must be an int"),
        ({"backoff": -1}, ValueError, "must be >= 0"),
        ({"retry_on": ValueError}, TypeError, "tuple of exception classes"),
        ({"retry_on": (int,)}, TypeError, "tuple of exception classes"),
    ],
)
def test_bad_policies_are_refused(kwargs: dict[str, Any], error: type, message: str) -> None:
    """A mistyped policy fails where it is written, naming the field."""
    with pytest.raises(error, match=message):
        RetryPolicy(**kwargs)


def test_saga_step_refuses_a_bad_retry() -> None:
    """@saga_step(retry=...) refuses what is not a policy, a count or a mapping."""
    with pytest.raises(TypeError, match="retry= takes a RetryPolicy"):
        saga_step(retry="often")  # type: ignore[arg-type]
