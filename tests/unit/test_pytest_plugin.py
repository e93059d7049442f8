"""The pytest plugin, the way users meet it: a project of their own using only its fixtures."""

from __future__ import annotations

import sys

from tests.support.sample import plugins_line, run_sample_project


def test_sample_project_passes_with_the_plugin_alone() -> None:
    """The sample shop's suite passes with celery_saga's plugin and no pytest-celery."""
    output = run_sample_project(sys.executable, "-p", "no:celery")

    plugins = plugins_line(output)
    assert "celery-sagas-" in plugins
    assert "celery-1." not in plugins  # pytest-celery is not there


def test_sample_project_passes_beside_celerys_own_plugin() -> None:
    """Celery's own pytest plugin (celery_app, celery_worker, ...) changes nothing for ours."""
    output = run_sample_project(sys.executable, "-p", "no:celery", "-p", "celery.contrib.pytest")

    assert "celery-sagas-" in plugins_line(output)
