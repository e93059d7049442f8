"""``celery -A tests.support.worker_app worker``: the test app, configured from the environment."""

from tests.support.app import app_from_env

app = app_from_env()
