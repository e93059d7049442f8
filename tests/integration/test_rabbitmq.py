"""The saga behaviour suite on a RabbitMQ broker with a prefork worker process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.scenarios import SagaScenarios
from tests.support.envs import SagaEnv, process_env
from tests.support.services import RABBITMQ_URL, require

pytestmark = [pytest.mark.rabbitmq, pytest.mark.postgres]


@pytest.fixture(scope="module")
def env(postgres_url: str, worker_logs: Path) -> Iterator[SagaEnv]:
    require("rabbitmq")
    with process_env(
        "rabbitmq-postgres", RABBITMQ_URL, postgres_url, postgres_url, worker_logs
    ) as env:
        yield env


class TestRabbitMQWorkerPostgres(SagaScenarios):
    """RabbitMQ broker, prefork worker process (2 children), PostgreSQL store."""
