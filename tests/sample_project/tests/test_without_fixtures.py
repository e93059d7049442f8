"""The test kit without pytest's fixtures, as a unittest suite would use it."""

import tempfile
import unittest
from pathlib import Path

from celery_saga import SagaCompensated

from shop.celery import app
from shop.services import gateway
from shop.tasks import checkout


class CheckoutTest(unittest.TestCase):
    def setUp(self):
        folder = tempfile.TemporaryDirectory()
        self.addCleanup(folder.cleanup)
        self.store_url = f"sqlite:///{Path(folder.name) / 'sagas.sqlite3'}"
        gateway.__init__()

    def test_failed_shipment_is_refunded(self):
        """A shipment that fails is undone: the card is refunded."""
        # --8<-- [start:kit]
        from celery_saga.testing import Faults, SagaEvents, configured, memory_settings, worker

        with (
            configured(app, memory_settings(self.store_url)),
            worker(app),
            Faults(app) as faults,
            SagaEvents() as events,
        ):
            faults.fail("shop.tasks.ship_order")
            result = checkout("o-1", "book", 30).apply_async()
            outcome = result.get(timeout=10, propagate=False)
            events.wait_for("saga_compensated", saga_id=result.id)

        self.assertIsInstance(outcome, SagaCompensated)
        self.assertEqual(gateway.balance("o-1"), 0)
        # --8<-- [end:kit]
