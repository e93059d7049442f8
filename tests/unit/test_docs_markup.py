"""The Griffe extension that renders the docstrings' Sphinx markup as Markdown."""

from __future__ import annotations

import importlib.util
from types import ModuleType

from tests.support.envs import ROOT


def _extension() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "sphinx_markup", ROOT / "docs" / "_ext" / "sphinx_markup.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_roles_code_blocks_and_versions_become_markdown() -> None:
    """Roles become code spans, code-block and ``::`` blocks fenced code, versionadded text."""
    to_markdown = _extension().to_markdown
    docstring = "\n".join([
        "Use :class:`~celery_saga.testing.Faults` or :func:`celery_saga.recover`::",
        "",
        "    faults.fail('shop.ship')",
        "",
        ".. code-block:: bash",
        "",
        "    celery -A shop saga list",
        "",
        ".. versionadded:: 0.1",
    ])  # fmt: skip

    assert to_markdown(docstring).splitlines() == [
        "Use `Faults` or `celery_saga.recover`:",
        "",
        "```python",
        "faults.fail('shop.ship')",
        "```",
        "",
        "```bash",
        "celery -A shop saga list",
        "```",
        "",
        "*New in version 0.1.*",
    ]
