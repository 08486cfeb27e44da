"""What the API process does with every answered prediction: capture and drift, in one call
the prediction routes make after answering (the console's Try it is not production traffic,
and is not watched)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from service.monitoring.drift import DriftMonitor, DriftTest
from service.monitoring.recorder import CaptureRecorder, Offered
from service.storage.db import Database
from service.storage.tables import WebhookDelivery, new_id, utcnow

log = logging.getLogger(__name__)

DRIFT_EVENT = "model.drift"


class Monitoring:
    def __init__(
        self,
        database: Database,
        *,
        drift_webhook_url: str | None = None,
        refresh_seconds: float = 5.0,
    ) -> None:
        self.database = database
        self.drift_webhook_url = drift_webhook_url
        self.recorder = CaptureRecorder(database, refresh_seconds=refresh_seconds)
        self.drift = DriftMonitor(on_change=self._drift_changed)

    def served(
        self,
        result: Any,  # predictions.serving.Classification
        images: Sequence[Any],  # predictions.serving.Image, in the answer's order
        request_id: str | None,
    ) -> None:
        """Offer the answered images to capture and their scores to drift: in-memory work
        only; whatever touches the database runs on the capture thread."""
        unknowns = result.unknown()
        if self.recorder.capturing(result.model_id):
            offered = [
                Offered(
                    image.name,
                    image.data,
                    probabilities,
                    unknown.ood_score if unknown else None,
                    unknown.unknown if unknown else None,
                )
                for image, probabilities, unknown in zip(
                    images, result.probabilities, unknowns, strict=True
                )
            ]
            self.recorder.offer(
                result.model_id,
                result.classes,
                result.input_size,
                offered,
                request_id,
                result.thresholds,
            )
        if result.ood_scores is not None and result.unknowns is not None:
            flags = [bool(unknown.unknown) for unknown in unknowns if unknown is not None]
            self.drift.observe(result.model_id, result.unknowns, result.ood_scores, flags)

    def _drift_changed(self, model_id: str, test: DriftTest) -> None:
        state = "started" if test.drifting else "stopped"
        log.warning(
            "model %s %s drifting: D = %.3f against %.3f, %.0f %% of the window unknown",
            model_id,
            state,
            test.statistic,
            test.threshold,
            100 * test.unknown_share,
        )
        if self.drift_webhook_url is not None:
            self.recorder.background(self._announce, model_id, test)

    def _announce(self, model_id: str, test: DriftTest) -> None:
        """The change, as a webhook delivery row: the workers' deliverers send it, signed and
        retried as a job's end is (service/webhooks.py)."""
        assert self.drift_webhook_url is not None
        delivery_id = new_id("h")
        event = {
            "type": DRIFT_EVENT,
            "id": delivery_id,
            "model_id": model_id,
            "drifting": test.drifting,
            "statistic": test.statistic,
            "threshold": test.threshold,
            "p_value": test.p_value,
            "unknown_share": test.unknown_share,
            "at": test.at.isoformat(),
        }
        now = utcnow()
        with self.database.session(write=True) as session:
            session.add(
                WebhookDelivery(
                    id=delivery_id,
                    job_id=None,
                    url=self.drift_webhook_url,
                    event=event,
                    status="pending",
                    attempts=0,
                    log=[],
                    next_attempt_at=now,
                    created_at=now,
                )
            )

    def close(self) -> None:
        self.recorder.close()
