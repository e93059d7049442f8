"""``RetryPolicy``: how a saga step retries before it fails for good (and compensates)."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["RetryPolicy"]


@dataclass(frozen=True)
class RetryPolicy:
    """Retry a failing step with exponential backoff, capped, with jitter.

    ``@saga_step(retry=RetryPolicy(attempts=5, backoff=2.0, retry_on=(TimeoutError,)))``,
    or ``retry=5`` for five attempts with the defaults. ``attempts`` counts every run of
    the body, the first included. Delays double from ``backoff`` up to ``max_backoff``
    seconds; with ``jitter`` each is drawn from its upper half, so that many sagas
    failing together do not retry together. An exception that is not one of
    ``retry_on``, or is one of ``dont_retry_on``, fails the step at once; its error
    record says ``"retryable": false``.

    .. versionadded:: 0.1
    """

    attempts: int = 3
    backoff: float = 1.0
    max_backoff: float = 60.0
    jitter: bool = True
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    dont_retry_on: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int):
            raise TypeError(f"RetryPolicy.attempts must be an int, got {self.attempts!r}")
        if self.attempts < 1:
            raise ValueError(f"RetryPolicy.attempts must be >= 1, got {self.attempts}")
        if self.backoff < 0 or self.max_backoff < 0:
            raise ValueError("RetryPolicy.backoff and max_backoff must be >= 0")
        for field in ("retry_on", "dont_retry_on"):
            kinds = getattr(self, field)
            if not isinstance(kinds, tuple) or not all(
                isinstance(k, type) and issubclass(k, BaseException) for k in kinds
            ):
                raise TypeError(f"RetryPolicy.{field} must be a tuple of exception classes")

    @classmethod
    def of(cls, value: RetryPolicy | int | Mapping[str, Any] | None) -> RetryPolicy | None:
        """A policy from what ``@saga_step(retry=...)`` accepts."""
        if value is None or isinstance(value, RetryPolicy):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return cls(attempts=value)
        if isinstance(value, Mapping):
            return cls(**value)
        raise TypeError(
            f"retry= takes a RetryPolicy, a number of attempts or a mapping of "
            f"RetryPolicy fields, got {value!r}"
        )

    def retryable(self, exc: BaseException) -> bool:
        """Whether this kind of error is worth another attempt."""
        return isinstance(exc, self.retry_on) and not isinstance(exc, self.dont_retry_on)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (from 1)."""
        ceiling = min(self.backoff * 2.0 ** (attempt - 1), self.max_backoff)
        return random.uniform(ceiling / 2, ceiling) if self.jitter else ceiling
