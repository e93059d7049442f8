"""The shop's Celery app, configured for production: Redis and PostgreSQL."""

import os

import celery_saga
from celery import Celery

app = Celery(
    "shop",
    broker=os.environ.get("SHOP_BROKER_URL", "redis://127.0.0.1:6379/0"),
    include=["shop.tasks"],
)
app.conf.saga_store_url = os.environ.get(
    "SHOP_SAGA_STORE_URL", "postgresql+psycopg://shop@db.internal/shop"
)
celery_saga.install(app)
