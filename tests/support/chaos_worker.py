"""``celery -A tests.support.chaos_worker worker``: the test app with the chaos test's tasks."""

from tests.support.chaos import chaos_app_from_env

app = chaos_app_from_env()
