"""Per-app, per-process runtime state: the store of each app."""

from __future__ import annotations

import os
import threading

from celery import Celery

from .config import clear_config, get_config
from .store import SagaStore

__all__ = ["get_store", "reset"]

_STORE_ATTR = "_celery_saga_store"
_lock = threading.Lock()


def _cached(app: Celery) -> tuple[int, SagaStore] | None:
    entry: tuple[int, SagaStore] | None = app.__dict__.get(_STORE_ATTR)
    return entry


def get_store(app: Celery) -> SagaStore:
    """The app's saga store in this process (a forked worker child gets its own engine)."""
    entry = _cached(app)
    pid = os.getpid()
    if entry is not None and entry[0] == pid:
        return entry[1]
    with _lock:
        # another thread may have made it meanwhile
        entry = _cached(app)
        if entry is not None and entry[0] == pid:
            return entry[1]
        if entry is not None:
            entry[1].dispose(close=False)  # the parent's connections are not ours to close
        config = get_config(app)
        store = SagaStore(
            config.store_url,
            engine_options=config.store_engine_options,
            create_tables=config.create_tables,
        )
        setattr(app, _STORE_ATTR, (pid, store))
        return store


def reset(app: Celery) -> None:
    """Close and forget the app's store and config: the next use reads ``app.conf`` again."""
    with _lock:
        entry = app.__dict__.pop(_STORE_ATTR, None)
        clear_config(app)
    if entry is not None:
        entry[1].dispose(close=entry[0] == os.getpid())
