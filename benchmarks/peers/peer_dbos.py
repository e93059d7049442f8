# mypy: ignore-errors
# (it runs in a venv of its own, against DBOS: not this project's types)
"""The peer DBOS (PyPI ``dbos``), for ``throughput.py --peers``: a workflow, called directly.

Runs from a virtual environment of its own. ``python peer_dbos.py`` launches DBOS on the
benchmark's PostgreSQL (its own database, ``celery_saga_bench_dbos``) and reads commands
on stdin (``run N``: start N workflows at once and wait for them; ``lat N``: N one at a
time), answering a JSON line each. A workflow is ``BENCH_STEPS`` no-op steps, each
checkpointed by DBOS; with ``BENCH_FAILURE=1`` the last raises and the workflow runs the
compensations of the steps before it, newest first, as steps of their own (DBOS has no
saga of its own: this is how its docs write one). No broker, no worker: DBOS runs the
workflows in this process's threads.
"""

from __future__ import annotations

import json
import os
import sys
import time

from dbos import DBOS, DBOSConfig

STEPS = int(os.environ.get("BENCH_STEPS", "3"))
FAILURE = os.environ.get("BENCH_FAILURE") == "1"
DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/celery_saga_bench_dbos"


@DBOS.step()
def noop(value: int) -> int:
    """A no-op step."""
    return value


@DBOS.step()
def boom(value: int) -> int:
    """The step that fails."""
    raise RuntimeError("boom")


@DBOS.step()
def undo(value: int) -> None:
    """A compensation."""


@DBOS.workflow()
def bench() -> str:
    done: list[int] = []
    try:
        for index in range(STEPS):
            if FAILURE and index == STEPS - 1:
                boom(index)
            done.append(noop(index))
    except RuntimeError:
        for value in reversed(done):
            undo(value)
        return "compensated"
    return "completed"


def main() -> None:
    config: DBOSConfig = {
        "name": "celery-saga-bench",
        "system_database_url": DATABASE_URL,
        "log_level": "WARNING",
    }
    DBOS(config=config)
    DBOS.launch()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command, count = line.split()
        if command == "run":
            started = time.perf_counter()
            handles = [DBOS.start_workflow(bench) for _ in range(int(count))]
            for handle in handles:
                handle.get_result()
            print(json.dumps({"elapsed": time.perf_counter() - started}), flush=True)
        elif command == "lat":
            latencies = []
            for _ in range(int(count)):
                started = time.perf_counter()
                bench()
                latencies.append(time.perf_counter() - started)
            print(json.dumps({"latencies": latencies}), flush=True)
    DBOS.destroy()


if __name__ == "__main__":
    main()
