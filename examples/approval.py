"""Sagas that wait: a large order waits for a person's approval, no worker held meanwhile.

    pip install -e . && python examples/approval.py

It starts the shop's worker as ``demo.py`` does (no servers), then runs two large
orders: one is approved with ``result.signal("approved", {...})`` and goes on with the
approval as its next step's argument; the other is never approved and is refunded when
its timeout passes (the saga ends ``COMPENSATED`` with a ``WaitTimedOut`` error).
Last, a checkout runs as a child saga before an approval that never comes: at the
timeout the completed checkout is undone as a unit, its own steps newest first.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

from demo import HERE, show, start_worker


def main() -> None:
    """Run an approved and an unapproved large order against a worker process."""
    with tempfile.TemporaryDirectory(prefix="shop-broker-") as folder:
        os.environ["SHOP_BROKER_FOLDER"] = folder
        sys.path.insert(0, str(HERE))
        import shop  # the same app module the worker runs

        from celery_saga import SagaResult, SagaStatus

        worker = start_worker(Path(folder), Path(folder) / "worker.log")
        try:
            run = uuid.uuid4().hex[:6]
            approved = shop.big_order(f"o-{run}-1", 5000, 60).apply_async(saga_id=f"big-{run}-1")
            while approved.status is not SagaStatus.WAITING:
                time.sleep(0.05)
            print(f"saga {approved.id} is {approved.status}: no worker is busy with it")
            approved.signal("approved", {"by": "alice"})
            print("approved saga returned:", approved.get(timeout=60))
            show(approved)

            forgotten = shop.big_order(f"o-{run}-2", 7000, 2).apply_async(saga_id=f"big-{run}-2")
            outcome = forgotten.get(timeout=60, propagate=False)
            print("\nunapproved saga returned:", repr(outcome))
            show(forgotten)

            composed = shop.approved_checkout(f"o-{run}-3", 120, ["sku-1"], 2)
            parent = composed.apply_async(saga_id=f"composed-{run}")
            parent.get(timeout=60, propagate=False)
            show(parent)
            show(SagaResult(f"{parent.id}.0", app=shop.app))  # its checkout, a child saga
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=30)


if __name__ == "__main__":
    main()
