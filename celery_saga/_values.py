"""What the saga store can keep: JSON without NUL characters or lone surrogates."""

from __future__ import annotations

from typing import Any

from kombu.utils.json import dumps as json_dumps

__all__ = ["json_problem", "unstorable"]

_SURROGATES = range(0xD800, 0xE000)


def json_problem(value: Any) -> str | None:
    """Why ``value`` cannot go through (kombu's) JSON, or None."""
    try:
        json_dumps(value)
    except (TypeError, ValueError) as exc:
        return str(exc)
    return None


def _bad_text(text: str) -> str | None:
    if "\x00" in text:
        return "a NUL character (\\x00)"
    if any(ord(ch) in _SURROGATES for ch in text):
        return "a lone surrogate (not valid Unicode)"
    return None


def unstorable(value: Any, encoded: str | None = None) -> str | None:
    r"""Why the store cannot keep ``value`` (text the databases refuse), or None.

    PostgreSQL refuses NUL characters in JSON and text; no database takes a lone
    surrogate (it has no UTF-8 form). Looks through dicts (keys too), lists and tuples.
    ``encoded``, the value's JSON, lets the common case skip the look: JSON that is
    plain ASCII with no ``\u`` escape in it holds neither.
    """
    if encoded is not None and encoded.isascii() and "\\u" not in encoded:
        return None
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            problem = _bad_text(item)
            if problem is not None:
                return f"{problem} in {item[:40]!r}"
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return None
