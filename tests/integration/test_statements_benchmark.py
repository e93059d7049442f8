"""benchmarks/statements.py in small: it times each write of sagas that did their work."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.envs import ROOT
from tests.support.services import SERVICES, require

pytestmark = [pytest.mark.postgres]


def test_the_statement_benchmark_times_the_seven_writes_of_sagas_that_completed() -> None:
    """benchmarks/statements.py times each write of a 3-step saga, and its sagas completed."""
    require("postgres")
    if SERVICES["postgres"] != ("127.0.0.1", 5432):
        pytest.skip("the benchmark runs against PostgreSQL on 127.0.0.1")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "statements.py"), "--count", "20",
         "--rounds", "2"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert "the last round's sagas completed: 20 of 20" in done.stdout
    table = done.stdout.split("rounds of 20:\n")[1].splitlines()
    timed = dict(line.strip().rsplit(None, 1) for line in table)
    writes = [
        "insert the saga", "claim step 1", "record step 1", "claim step 2", "record step 2",
        "claim step 3", "record step 3 (completes)",
    ]  # fmt: skip
    assert list(timed) == [*writes, "floor: the record on psycopg alone",
                           "a 3-step saga, the seven writes"]  # fmt: skip
    figures = {kind: float(spent) for kind, spent in timed.items()}
    assert all(figures[kind] > 0 for kind in writes)
    assert figures["a 3-step saga, the seven writes"] == pytest.approx(
        sum(figures[kind] for kind in writes), abs=0.01
    )
