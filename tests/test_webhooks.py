"""Webhooks: a job's end is recorded in the transaction that ends it, then POSTed, signed, by
a worker's deliverer thread, retried with backoff, and every attempt logged."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from service import jobs, webhooks
from service.predictions.task import store_results
from service.storage.tables import Job, WebhookDelivery
from tests.conftest import (
    LIGHT,
    Service,
    colour_images,
    job_body,
    make_settings,
    make_zip,
    png_bytes,
    stored_model,
)

SECRET = "a-webhook-secret-for-tests"
# Short backoff: retries 0.2 s, then 0.4 s after the failures. The receivers listen on
# loopback, which webhooks may reach only where the operator allows it.
FAST = {
    "webhook_secret": SECRET,
    "webhook_retry_seconds": 0.2,
    "poll_seconds": 0.05,
    "webhook_allowed_networks": ["127.0.0.0/8"],
}


class Receiver:
    """A real HTTP server on loopback answering the given statuses in turn (then 200), and
    keeping each request with the job's status as the database had it at that moment."""

    def __init__(self, statuses: list[int], job_status: Any = None) -> None:
        self.statuses = list(statuses)
        self.requests: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                event = json.loads(body)
                receiver.requests.append(
                    {
                        "at": time.monotonic(),
                        "headers": dict(self.headers),
                        "body": body,
                        "job_status": job_status(event["job_id"]) if job_status else None,
                    }
                )
                code = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hooked(tmp_path: Path, database_url: str) -> Iterator[Service]:
    running = Service(make_settings(tmp_path, database_url=database_url, **FAST))
    yield running
    running.close()


def deliveries(service: Service, job_id: str) -> list[WebhookDelivery]:
    with service.database.session() as session:
        query = select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)
        return list(session.scalars(query))


def job_status(service: Service, job_id: str) -> str:
    with service.database.session() as session:
        return session.scalar(select(Job.status).where(Job.id == job_id)) or ""


@pytest.mark.slow  # trains a model
def test_a_trained_jobs_end_is_delivered_signed_after_two_refusals(tmp_path: Path) -> None:
    """Real training, on SQLite only (it costs a training run; PostgreSQL's claims and ends
    are the next test's)."""
    hooked = Service(make_settings(tmp_path, **FAST))
    try:
        _delivered_after_two_refusals(hooked)
    finally:
        hooked.close()


def _delivered_after_two_refusals(hooked: Service) -> None:
    receiver = Receiver([500, 500], job_status=lambda job_id: job_status(hooked, job_id))
    deliverer = webhooks.Deliverer(hooked.database, hooked.settings).start()
    try:
        dataset_id = hooked.upload(colour_images(per_class=4))["id"]
        # The quick job: the backbone frozen, its features computed once (as `small_model`).
        frozen = {
            "backbone": LIGHT,
            "freeze": {"mode": "backbone"},
            "training": {"validation_split": 0.25},
        }
        body = job_body(dataset_id, webhook_url=receiver.url, **frozen)
        job_id = hooked.client.post("/jobs", json=body).json()["id"]
        assert hooked.worker.run_until_idle() == 1
        trained_at = time.monotonic()  # the worker is free again: it sent nothing itself
        row = _wait_delivered(hooked, job_id)
    finally:
        deliverer.stop()
        receiver.close()

    assert row.status == "delivered" and row.attempts == 3 and row.delivered_at is not None
    assert [attempt["status_code"] for attempt in row.log] == [500, 500, 200]
    print("\nwebhook delivery log:", json.dumps(row.log, indent=1))
    # Backoff: 0.2 s after the first refusal, 0.4 s after the second.
    times = [request["at"] for request in receiver.requests]
    assert times[1] - times[0] >= 0.2 and times[2] - times[1] >= 0.4
    assert receiver.requests[-1]["at"] > trained_at
    # Every POST came after the job's success was committed, and was signed as documented.
    assert {request["job_status"] for request in receiver.requests} == {"succeeded"}
    for request in receiver.requests:
        sent = request["headers"]
        message = f"{sent['X-Webhook-Timestamp']}.".encode() + request["body"]
        expected = hmac.new(SECRET.encode(), message, hashlib.sha256).hexdigest()
        assert sent["X-Webhook-Signature"] == f"sha256={expected}"
        assert sent["X-Webhook-Id"] == row.id
    event = json.loads(receiver.requests[-1]["body"])
    model_id = hooked.client.get(f"/jobs/{job_id}").json()["model_id"]
    assert event == {
        **event,
        "type": "job.finished",
        "job_id": job_id,
        "kind": "train",
        "status": "succeeded",
        "error": None,
        "model_id": model_id,
        "dataset_id": dataset_id,
    }
    assert event["finished_at"]


def _wait_delivered(service: Service, job_id: str) -> WebhookDelivery:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        rows = deliveries(service, job_id)
        if rows and rows[0].status != "pending":
            return rows[0]
        time.sleep(0.05)
    raise AssertionError(f"job {job_id}'s webhook was not delivered: {deliveries(service, job_id)}")


def test_a_batch_cancelled_while_queued_is_announced_then_given_up(hooked: Service) -> None:
    """The API's cancel records the announcement in its own transaction; a receiver that
    never answers is retried until WEBHOOK_GIVE_UP_SECONDS, then the delivery is failed."""
    with hooked.database.session(write=True) as session:
        session.add(model := stored_model(None))
    closed = Receiver([])
    closed.close()  # nothing listens there any more: every attempt is a refused connection
    archive = make_zip({"a.png": _pixels()})
    answer = hooked.client.post(
        "/predictions",
        data={"model_id": model.id, "webhook_url": closed.url},
        files={"file": ("images.zip", archive, "application/zip")},
    )
    assert answer.status_code == 202, answer.text
    batch = answer.json()
    assert hooked.client.post(f"/jobs/{batch['job_id']}/cancel").status_code in (200, 202)
    (row,) = deliveries(hooked, batch["job_id"])
    assert row.status == "pending" and row.attempts == 0 and row.url == closed.url
    assert row.event["status"] == "cancelled" and row.event["kind"] == "predict"
    assert row.event["model_id"] == model.id and row.event["prediction_id"] == batch["id"]

    settings = hooked.settings.model_copy(update={"webhook_give_up_seconds": 0.5})
    deadline = time.monotonic() + 10
    while deliveries(hooked, batch["job_id"])[0].status == "pending":
        assert time.monotonic() < deadline
        webhooks.deliver_due(hooked.database, settings)
        time.sleep(0.02)
    (row,) = deliveries(hooked, batch["job_id"])
    # Tries at 0, 0.2 and 0.6 s would be due; the third lies past 0.5 s: two, then failed.
    # One, when a loaded machine makes the first try over 0.3 s late: its retry lies past.
    assert row.status == "failed" and row.attempts == len(row.log)
    late = (datetime.fromisoformat(row.log[0]["at"]) - row.created_at).total_seconds()
    assert row.attempts in ({2} if late < 0.25 else {1} if late > 0.35 else {1, 2}), late
    assert all(attempt["error"] and attempt["status_code"] is None for attempt in row.log)
    _success_is_announced_in_its_transaction(hooked, model.id)


def _success_is_announced_in_its_transaction(hooked: Service, model_id: str) -> None:
    """The worker's success path (jobs.complete, storing a batch's results), without a model
    to run: the delivery is recorded, pending, in the transaction that stores the success."""
    answer = hooked.client.post(
        "/predictions",
        data={"model_id": model_id, "webhook_url": "https://example.org/h"},
        files={"file": ("images.zip", make_zip({"a.png": _pixels()}), "application/zip")},
    )
    assert answer.status_code == 202, answer.text
    claim = jobs.claim_next_job(hooked.database, worker_id="w", lease_seconds=30, max_attempts=3)
    assert claim is not None and claim.job_id == answer.json()["job_id"]
    assert deliveries(hooked, claim.job_id) == []  # running: nothing to announce yet
    assert jobs.complete(
        hooked.database, claim, store_results(claim.job_id, results=b"", summary={})
    )
    (row,) = deliveries(hooked, claim.job_id)
    assert row.event["status"] == "succeeded" and row.event["model_id"] == model_id
    assert row.status == "pending" and row.url == "https://example.org/h"


def _pixels() -> bytes:
    import numpy as np

    return png_bytes(np.zeros((8, 8, 3), dtype=np.uint8))


@pytest.mark.any_database
def test_webhook_urls_must_be_http(hooked: Service) -> None:
    dataset_id = hooked.upload(colour_images(per_class=2))["id"]
    for url in ("ftp://example.org/hook", "not a url", "http://" + "a" * 2000 + ".org"):
        answer = hooked.client.post("/jobs", json=job_body(dataset_id, webhook_url=url))
        assert answer.status_code == 422, (url, answer.text)
        assert answer.json()["detail"][0]["loc"][-1] == "webhook_url"
    answer = hooked.client.post(
        "/predictions", data={"dataset_id": dataset_id, "webhook_url": "file:///etc/passwd"}
    )
    assert answer.status_code == 422
    # No hook, no announcement: a job without a URL ends without a delivery row.
    job_id = hooked.client.post("/jobs", json=job_body(dataset_id)).json()["id"]
    hooked.client.post(f"/jobs/{job_id}/cancel")
    assert deliveries(hooked, job_id) == []
