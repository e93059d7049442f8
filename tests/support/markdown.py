"""The fenced code blocks of a Markdown page, for tests that run the docs as written."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_FENCE = re.compile(
    r'^```(?P<lang>[\w-]+)(?: title="(?P<title>[^"]*)")?\n(?P<code>.*?)^```$', re.M | re.S
)


@dataclass(frozen=True)
class Block:
    lang: str
    title: str
    code: str


def code_blocks(page: Path) -> list[Block]:
    """Every fenced block of the page, in order."""
    return [
        Block(match["lang"], match["title"] or "", match["code"])
        for match in _FENCE.finditer(page.read_text())
    ]
