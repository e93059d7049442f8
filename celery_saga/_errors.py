"""Turning exceptions into the JSON error records the store keeps."""

from __future__ import annotations

import traceback
from typing import Any

__all__ = ["describe_error"]

_MAX_TRACEBACK = 8000
_MAX_MESSAGE = 2000


def _type_name(exc: BaseException) -> str:
    kind = type(exc)
    if kind.__module__ in ("builtins", "__main__"):
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


def describe_error(exc: BaseException) -> dict[str, Any]:
    """``{"type", "message", "traceback"}`` for an exception, bounded in size."""
    formatted = "".join(traceback.format_exception(exc))
    if len(formatted) > _MAX_TRACEBACK:
        formatted = "...\n" + formatted[-_MAX_TRACEBACK:]
    return {
        "type": _type_name(exc),
        "message": str(exc)[:_MAX_MESSAGE],
        "traceback": formatted,
    }
