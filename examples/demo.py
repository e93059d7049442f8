"""The quick start: a real Celery worker, no servers, one saga completed and one compensated.

    pip install -e . && python examples/demo.py

It starts ``celery -A shop worker`` as a separate process (filesystem broker, SQLite
saga store in the working directory), runs two checkouts and prints their step tables.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent


def start_worker(broker_folder: Path, log: Path) -> subprocess.Popen[bytes]:
    """Start the shop's worker in its own process and wait until it is ready."""
    env = {
        **os.environ,
        "SHOP_BROKER_FOLDER": str(broker_folder),
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    command = [sys.executable, "-m", "celery", "-A", "shop", "worker", "--pool", "prefork",
               "--concurrency", "2", "--loglevel", "INFO", "--without-gossip",
               "--without-mingle"]  # fmt: skip
    with log.open("wb") as out:
        worker = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while " ready." not in log.read_text(errors="replace"):
        if worker.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the worker did not start:\n{log.read_text()}")
        time.sleep(0.1)
    return worker


def show(result: object) -> None:
    """Print a saga's status and its step table."""
    from celery_saga import SagaResult

    assert isinstance(result, SagaResult)
    print(f"\nsaga {result.id}: {result.status}")
    print(f"  {'#':<2} {'step':<28} {'status':<20} {'tries':<5} result / error")
    for step in result.steps:
        if step.error:
            outcome = f"{step.error['type']}: {step.error['message']}"
        else:
            outcome = str(step.result)
        print(f"  {step.index:<2} {step.name:<28} {step.status:<20} {step.attempts:<5} {outcome}")


def main() -> None:
    """Run the two checkouts against a worker process."""
    with tempfile.TemporaryDirectory(prefix="shop-broker-") as folder:
        os.environ["SHOP_BROKER_FOLDER"] = folder
        sys.path.insert(0, str(HERE))
        import shop  # the same app module the worker runs

        worker = start_worker(Path(folder), Path(folder) / "worker.log")
        try:
            run = uuid.uuid4().hex[:6]
            done = shop.checkout(f"o-{run}-1", 99, ["sku-1", "sku-2"]).apply_async(
                saga_id=f"order-{run}-1"
            )
            print("completed saga returned:", done.get(timeout=60))
            show(done)

            undone = shop.checkout(f"o-{run}-2", 45, ["sku-1", "sku-out-of-stock"]).apply_async(
                saga_id=f"order-{run}-2"
            )
            outcome = undone.get(timeout=60, propagate=False)
            print("\ncompensated saga returned:", repr(outcome))
            show(undone)
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=30)
        said = [
            line.split("] ", 1)[1]
            for line in Path(folder, "worker.log").read_text().splitlines()
            if "/ForkPoolWorker-" in line and line.startswith("[") and "] " in line
        ]
        print("\nwhat the steps and compensations did, in the worker:", *said, sep="\n  ")


if __name__ == "__main__":
    main()
