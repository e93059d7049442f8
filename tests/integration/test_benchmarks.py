"""benchmarks/matrix.py in small: it runs, and its runs do the work they say they measure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.envs import ROOT
from tests.support.services import SERVICES, require

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def test_the_matrix_runs_each_row_against_plain_celery(tmp_path: Path) -> None:
    """A small matrix writes its table and each run's figures, from sagas that did their work."""
    require("postgres")
    require("redis")
    if (SERVICES["postgres"], SERVICES["redis"]) != (("127.0.0.1", 5432), ("127.0.0.1", 6379)):
        pytest.skip("the benchmark runs against PostgreSQL and Redis on 127.0.0.1")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "matrix.py"), "--scale", "0.02",
         "--only", "success,failure", "--out", str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    success = json.loads((tmp_path / "01.json").read_text())
    failure = json.loads((tmp_path / "02.json").read_text())
    assert success["arguments"]["failure"] is False
    assert failure["arguments"]["failure"] is True
    # every saga of the run (the warm-up's too) ran its 3 steps; on the failure path the
    # 2 before the failing one were compensated
    assert success["steps_started_per_saga"] == 3.0
    assert success["compensations_per_saga"] == 0.0
    assert failure["steps_started_per_saga"] == 3.0
    assert failure["compensations_per_saga"] == 2.0
    assert (success["items"], failure["items"]) == (20, 12)  # (1000 and 600, scaled)
    for figures in (success, failure):
        for kind in ("plain", "saga"):
            seen = figures["kinds"][kind]
            assert seen["per_second"] > 0
            assert 0 < seen["p50_ms"] <= seen["p95_ms"]
            assert seen["first_message_bytes"] > 0
            assert seen["cpu_ms"]["worker"] > 0
        assert figures["kinds"]["saga"]["cpu_ms"]["postgres"] > 0
        assert len(figures["kinds"]["saga"]["round_ratios"]) == 2
    assert set(success["hops_ms"]) == {
        "to the first claim", "claim to record", "record to the next claim",
        "last record to seen",
    }  # fmt: skip
    table = (tmp_path / "matrix.md").read_text().splitlines()
    assert table == done.stdout.strip().splitlines()[-len(table) :]
    for line, figures in zip(table[2:], (success, failure), strict=True):
        saga = figures["kinds"]["saga"]
        assert f" {saga['ratio']:.2f}x ({saga['median_ratio']:.2f}x) " in line
