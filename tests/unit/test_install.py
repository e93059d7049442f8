"""install(): the beat entries it adds, and its refusal to run beside the other celery-saga."""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from importlib import metadata
from pathlib import Path

import pytest
from celery import Celery, current_app
from celery.schedules import crontab, maybe_schedule
from celery.signals import worker_process_init

import celery_saga
from celery_saga import SagaConfig, SagaConfigurationError, _runtime


def _beat(app: Celery) -> dict[str, dict[str, object]]:
    entries: dict[str, dict[str, object]] = app.conf.beat_schedule
    return entries


def test_install_schedules_recovery_and_purge() -> None:
    """After install(), beat runs celery_saga.recover every 30 s and celery_saga.purge daily."""
    app = Celery("beat-default", set_as_current=False)
    celery_saga.install(app)

    entries = _beat(app)
    recover = entries["celery_saga.recover"]
    assert recover["task"] == "celery_saga.recover"
    assert maybe_schedule(recover["schedule"]).run_every == timedelta(seconds=30)
    assert entries["celery_saga.purge"]["task"] == "celery_saga.purge"
    assert isinstance(entries["celery_saga.purge"]["schedule"], crontab)
    assert "celery_saga.recover" in app.tasks


def test_recovery_interval_is_a_setting() -> None:
    """saga_recovery_interval, set before the app is configured, is the sweep's interval."""
    app = Celery("beat-interval", set_as_current=False)
    app.config_from_object({"saga_recovery_interval": timedelta(seconds=15)})
    celery_saga.install(app)

    recover = _beat(app)["celery_saga.recover"]["schedule"]
    assert maybe_schedule(recover).run_every == timedelta(seconds=15)


@pytest.mark.parametrize("off", [None, 0])
def test_recovery_interval_none_schedules_no_sweep(off: object) -> None:
    """saga_recovery_interval = None (or 0) puts no recover entry in beat; purge stays."""
    app = Celery("beat-off", set_as_current=False)
    app.conf.saga_recovery_interval = off
    celery_saga.install(app)

    assert "celery_saga.recover" not in _beat(app)
    assert "celery_saga.purge" in _beat(app)


def test_an_own_recover_entry_is_not_doubled() -> None:
    """A beat_schedule that already runs celery_saga.recover gets no second sweep."""
    app = Celery("beat-own", set_as_current=False)
    app.conf.beat_schedule = {"saga-recovery": {"task": "celery_saga.recover", "schedule": 30.0}}
    celery_saga.install(app)

    recovers = [e for e in _beat(app).values() if e["task"] == "celery_saga.recover"]
    assert recovers == [{"task": "celery_saga.recover", "schedule": 30.0}]


@pytest.mark.parametrize("bad", ["1m", -5, True])
def test_bad_recovery_interval_is_refused(bad: object) -> None:
    """A recovery interval that is not seconds fails with the setting's name."""
    with pytest.raises(SagaConfigurationError, match="saga_recovery_interval must be seconds"):
        SagaConfig.from_conf({"saga_recovery_interval": bad})
    app = Celery("beat-bad", set_as_current=False)
    app.conf.update(saga_recovery_interval=bad, broker_url="memory://")
    assert app.conf.broker_url == "memory://"  # (the app is configured now)
    with pytest.raises(SagaConfigurationError, match="saga_recovery_interval must be seconds"):
        celery_saga.install(app)


def _fake_distribution(root: Path, name: str, summary: str) -> Path:
    info = root / "celery_saga-0.1.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1.1\nSummary: {summary}\n"
    )
    return root


def test_install_refuses_the_other_celery_saga(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the other project's celery-saga installed too, install() names both and the fix."""
    site = _fake_distribution(tmp_path, "celery-saga", "Saga pattern for Celery")
    monkeypatch.syspath_prepend(str(site))
    assert metadata.distribution("celery-saga").version == "0.1.1"

    app = Celery("clash", set_as_current=False)
    with pytest.raises(SagaConfigurationError) as raised:
        celery_saga.install(app)
    message = str(raised.value)
    assert "'celery-saga' 0.1.1 (another project" in message
    assert "'celery-sagas'" in message
    assert "pip uninstall -y celery-saga celery-sagas && pip install celery-sagas" in message
    assert "celery_saga.compensate" not in app.tasks  # nothing registered


def test_this_project_under_its_former_name_is_no_clash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stale celery_saga.egg-info of this project (its former name) does not stop install()."""
    site = _fake_distribution(tmp_path, "celery-saga", "Sagas for Celery: multi-step ...")
    monkeypatch.syspath_prepend(str(site))

    app = Celery("former-name", set_as_current=False)
    celery_saga.install(app)
    assert "celery_saga.compensate" in app.tasks


def test_this_environment_has_only_this_distribution() -> None:
    """The test venv holds celery-sagas, and no celery-saga beside it."""
    assert metadata.distribution("celery-sagas").metadata["Name"] == "celery-sagas"
    assert not any(
        (d.metadata["Name"] or "").lower() == "celery-saga"
        and not (d.metadata["Summary"] or "").startswith("Sagas for Celery")
        for d in metadata.distributions(path=sys.path)
    )


def test_a_worker_process_makes_its_store_when_it_starts(tmp_path: Path) -> None:
    """A prefork child's start (``worker_process_init``) makes the app's store, without
    connecting; a store URL it cannot use raises nothing there."""
    previous = current_app._get_current_object()  # type: ignore[attr-defined]
    app = Celery("process-init", set_as_current=False)
    app.conf.saga_store_url = f"sqlite:///{tmp_path / 'init.sqlite3'}"
    celery_saga.install(app)
    app.set_current()
    try:
        assert _runtime._cached(app) is None
        worker_process_init.send(sender=None)
        entry = _runtime._cached(app)
        assert entry is not None
        pid, store = entry
        assert pid == os.getpid()
        assert store.engine.pool.checkedin() == 0  # nothing connected yet
        _runtime.reset(app)
        app.conf.saga_store_url = "nosuchdb://"
        worker_process_init.send(sender=None)
        assert _runtime._cached(app) is None
    finally:
        _runtime.reset(app)
        previous.set_current()
