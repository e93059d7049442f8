"""A Griffe extension: the Sphinx markup of celery_saga's docstrings, as Markdown.

The docstrings are written for ``help()`` and Sphinx-minded readers (``:class:`...```,
``.. code-block::``, ``text::`` literal blocks, ``.. versionadded::``); mkdocstrings
renders Markdown. This turns roles into code spans, code blocks into fenced blocks, and
versionadded into a line of text, when the API reference is built.
"""

from __future__ import annotations

import re
import textwrap
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj):`(~?)([^`]+)`")
_CODE_BLOCK = re.compile(r"^(?P<indent>\s*)\.\. code-block::\s*(?P<lang>\w*)\s*$")
_VERSION_ADDED = re.compile(r"^(?P<indent>\s*)\.\. versionadded::\s*(?P<version>\S+)\s*$")


def _role(match: re.Match[str]) -> str:
    short, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def to_markdown(text: str) -> str:
    """The docstring ``text`` with its Sphinx markup turned into Markdown."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        block = _CODE_BLOCK.match(line)
        version = _VERSION_ADDED.match(line)
        literal = line.rstrip().endswith("::") and not line.lstrip().startswith("..")
        if version:
            out.append(f"{version['indent']}*New in version {version['version']}.*")
        elif block or literal:
            if literal:  # "text::" then an indented block: the text, a colon, the code
                out += [_ROLE.sub(_role, line.rstrip()[:-1]), ""]
            indent = block["indent"] if block else line[: _indent(line)]
            lang = block["lang"] if block else "python"
            body: list[str] = []
            i += 1
            while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > len(indent)):
                body.append(lines[i])
                i += 1
            while body and not body[-1].strip():
                body.pop()
            code = textwrap.dedent("\n".join(body)).strip("\n")
            out += [f"{indent}```{lang}"]
            out += [f"{indent}{code_line}" if code_line else "" for code_line in code.splitlines()]
            out += [f"{indent}```", ""]
            continue
        else:
            out.append(_ROLE.sub(_role, line))
        i += 1
    return "\n".join(out)


class SphinxMarkup(griffe.Extension):
    """Rewrites each docstring once the object tree is built."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = to_markdown(obj.docstring.value)
