"""What importing celery_saga and loading its pytest plugin cost, counted in modules imported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: What only a schema change, a worker or a fixture needs.
HEAVY = ("alembic", "celery.worker", "celery.contrib.testing", "celery_saga.testing")


def imported_by(setup: str, statement: str) -> list[str]:
    """The modules that ``statement`` imports in a fresh interpreter after ``setup``."""
    code = (
        f"import json, sys\n{setup}\nbefore = set(sys.modules)\n{statement}\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    modules: list[str] = json.loads(done.stdout)
    return modules


def heavy(modules: list[str]) -> list[str]:
    return [m for m in modules if any(m == h or m.startswith(f"{h}.") for h in HEAVY)]


def test_import_celery_saga_imports_nothing_else() -> None:
    """`import celery_saga` loads its public names on first use: no Celery, no SQLAlchemy."""
    modules = imported_by("", "import celery_saga")
    assert [m for m in modules if m.startswith(("celery", "kombu", "sqlalchemy"))] == [
        "celery_saga"
    ]


def test_the_public_api_does_not_import_alembic() -> None:
    """Using the public API imports neither Alembic nor the worker nor the test kit."""
    modules = imported_by("", "from celery_saga import *")
    assert "celery_saga.store.migrations" in modules  # (the migrations, without Alembic)
    assert heavy(modules) == []


def test_every_public_name_is_loaded_on_first_use() -> None:
    """Each name of celery_saga.__all__ has a home the package loads it from, and no other."""
    import celery_saga

    assert sorted(celery_saga._WHERE) == sorted(celery_saga.__all__)
    for name in celery_saga.__all__:
        assert getattr(celery_saga, name) is not None


def test_a_schema_change_imports_alembic() -> None:
    """Alembic is imported when the tables are created, and only then."""
    modules = imported_by(
        "import celery_saga\nfrom celery_saga.store import make_engine, upgrade",
        "upgrade(make_engine('sqlite://'))",
    )
    assert "alembic" in modules


def test_the_pytest_plugin_imports_nothing_heavy() -> None:
    """Loading the plugin adds only its own module to `import celery_saga`: no worker, no kit."""
    modules = imported_by("import pytest\nimport celery_saga", "import celery_saga.contrib.pytest")
    assert [m for m in modules if m.startswith("celery")] == [
        "celery_saga.contrib",
        "celery_saga.contrib.pytest",
    ]


def test_a_pytest_run_without_the_fixtures_loads_no_kit(tmp_path: Path) -> None:
    """A pytest run that uses no saga_* fixture never imports the test kit or a worker."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_plain.py").write_text(
        "import sys\n\n\n"
        "def test_plain(request):\n"
        "    assert 'celery_saga.contrib.pytest' in sys.modules  # the plugin is loaded\n"
        f"    heavy = [m for m in sys.modules if m.startswith({HEAVY!r})]\n"
        "    assert heavy == []\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:celery", "-p", "no:cacheprovider"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout
