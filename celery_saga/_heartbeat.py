"""Leases renewed while a step or compensation body runs, by one thread per worker process.

A claim's lease (``saga_step_lease``) is how long its owner may go without news before
the recovery sweep takes the step for lost. While a body runs, its claim is *held*: a
daemon thread renews the leases of every claim the process holds, every third of the
lease, in one statement. The thread ends when the process holds no claim for a beat,
and starts again with the next one; a forked child starts its own.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from celery import Celery
from celery.utils.log import get_task_logger

from ._runtime import get_store
from .config import get_config

__all__ = ["forget", "held"]

logger = get_task_logger("celery_saga.execution")

Claim = tuple[str, int, str]  # (saga id, step index, fencing token)

_ATTR = "_celery_saga_heartbeat"
_lock = threading.Lock()


class _Heartbeat:
    def __init__(self, app: Celery) -> None:
        self.app = app
        self.pid = os.getpid()
        self.claims: set[Claim] = set()
        self.thread: threading.Thread | None = None

    def hold(self, claim: Claim) -> None:
        with _lock:
            self.claims.add(claim)
            if self.thread is None:
                self.thread = threading.Thread(
                    target=self._beat, name="celery-saga-lease", daemon=True
                )
                self.thread.start()

    def release(self, claim: Claim) -> None:
        with _lock:
            self.claims.discard(claim)

    def _beat(self) -> None:
        lease = get_config(self.app).step_lease
        store = get_store(self.app)
        while True:
            time.sleep(lease / 3)
            with _lock:
                claims = list(self.claims)
                if not claims:  # idle: end; the next claim starts a new thread
                    self.thread = None
                    return
            try:
                store.renew_leases(claims, lease)
            except Exception:  # the store is down: the next beat tries again
                logger.warning("celery_saga: could not renew the leases of %d claims", len(claims))


def _heartbeat(app: Celery) -> _Heartbeat:
    with _lock:
        beat: _Heartbeat | None = app.__dict__.get(_ATTR)
        if beat is None or beat.pid != os.getpid():  # none yet, or the parent's (forked)
            beat = _Heartbeat(app)
            setattr(app, _ATTR, beat)
        return beat


@contextmanager
def held(app: Celery, claim: Claim) -> Iterator[None]:
    """Keep ``claim``'s lease alive while the block runs."""
    beat = _heartbeat(app)
    beat.hold(claim)
    try:
        yield
    finally:
        beat.release(claim)


def forget(app: Celery, saga_id: str) -> None:
    """Stop renewing a saga's claims, as if their worker had died (for tests)."""
    beat = _heartbeat(app)
    with _lock:
        beat.claims = {claim for claim in beat.claims if claim[0] != saga_id}
