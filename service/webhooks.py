"""Webhooks: a job's end announced to the URL it named, signed, retried, recorded.

Deliveries are rows (an outbox). The transaction that ends a job (service/jobs/queue.py: success,
failure, cancel, in the worker or in the API) also adds its delivery row when the job named
a `webhook_url`, so an announcement exists exactly when the end is committed: none for an
end that rolled back, none lost to a process dying between the two. A `Deliverer` thread in
every worker process claims due rows and POSTs them; training and serving never wait on a
receiver, and any worker delivers what another worker, or the API, recorded.

Each POST carries the event as JSON, signed when `WEBHOOK_SECRET` is set:
    X-Webhook-Id: <delivery id>          (the same on every retry: receivers dedupe by it)
    X-Webhook-Timestamp: <unix seconds>
    X-Webhook-Signature: sha256=<hex HMAC-SHA256(secret, f"{timestamp}.{body}")>
A 2xx answer delivers it. Anything else (another status, a refused connection, a timeout) is
retried after WEBHOOK_RETRY_SECONDS, doubling each time (at most MAX_BACKOFF_SECONDS), until
WEBHOOK_GIVE_UP_SECONDS after the job ended; then the row is `failed`. Every attempt is
logged in the row: when, the status code or the error, and how long it took.

At least once: a claim holds a row for the send's timeout plus a margin; a deliverer that dies
mid-send leaves it to be sent again once the hold runs out.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session

from service import logs
from service.config import Settings
from service.storage.db import Database
from service.storage.tables import Job, TrainedModel, WebhookDelivery, new_id, utcnow

log = logging.getLogger("service.webhooks")

EVENT_TYPE = "job.finished"
MAX_BACKOFF_SECONDS = 600.0
# A claimed row is held this much longer than a send may take (a slow database write).
HOLD_MARGIN_SECONDS = 30.0
CLAIM_BATCH = 20  # rows claimed at a time


# -- recording (in the transaction that ends the job) --------------------------------------


def announce(session: Session, job: Job) -> WebhookDelivery | None:
    """Add the delivery of the job's end to its webhook, if it named one. Called by every
    transition that ends a job, in its transaction, after the job's row says how it ended."""
    if not job.webhook_url:
        return None
    delivery_id = new_id("h")
    now = utcnow()
    delivery = WebhookDelivery(
        id=delivery_id,
        job_id=job.id,
        url=job.webhook_url,
        event=job_event(session, job, delivery_id),
        status="pending",
        attempts=0,
        log=[],
        next_attempt_at=now,
        created_at=now,
    )
    session.add(delivery)
    return delivery


def job_event(session: Session, job: Job, event_id: str) -> dict[str, Any]:
    """The body POSTed: what ended, how, and what it made or used."""
    spec = job.spec if isinstance(job.spec, dict) else {}
    # The model it used (an export's, a batch prediction's) or the one it made (training's).
    model_id = spec.get("model_id") or session.scalar(
        select(TrainedModel.id).where(TrainedModel.job_id == job.id)
    )
    event: dict[str, Any] = {
        "type": EVENT_TYPE,
        "id": event_id,
        "job_id": job.id,
        "kind": job.kind,
        "name": job.name,
        "status": job.status,
        "error": job.error,
        "attempts": job.attempts,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }
    if model_id is not None:
        event["model_id"] = model_id
    if job.dataset_id is not None:
        event["dataset_id"] = job.dataset_id
    if "prediction_id" in spec:
        event["prediction_id"] = spec["prediction_id"]
    return event


# -- signing --------------------------------------------------------------------------------


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """`sha256=<hex>` of HMAC-SHA256(secret, "<timestamp>.<body>"): the timestamp is signed
    too, so a receiver can refuse a replayed old event."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={digest.hexdigest()}"


def headers(settings: Settings, delivery_id: str, body: bytes, now: float) -> dict[str, str]:
    timestamp = int(now)
    sent = {
        "Content-Type": "application/json",
        "User-Agent": "transfer-service-webhooks",
        "X-Webhook-Id": delivery_id,
        "X-Webhook-Timestamp": str(timestamp),
    }
    if settings.webhook_secret is not None:
        sent["X-Webhook-Signature"] = signature(settings.webhook_secret, timestamp, body)
    return sent


# -- delivering (a worker's thread) ---------------------------------------------------------


@dataclass(frozen=True)
class Due:
    """A claimed delivery: what to send, and the attempt count that fences its record."""

    id: str
    job_id: str | None
    url: str
    event: dict[str, Any]
    attempts: int


def claim_due(db: Database, *, hold_seconds: float, limit: int = CLAIM_BATCH) -> list[Due]:
    """The pending deliveries whose time has come, held for `hold_seconds` so that no other
    deliverer sends them meanwhile (SQLite: BEGIN IMMEDIATE; PostgreSQL: SKIP LOCKED)."""
    now = utcnow()
    query = (
        select(WebhookDelivery)
        .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now)
        .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
        .limit(limit)
    )
    if not db.is_sqlite:
        query = query.with_for_update(skip_locked=True)
    with db.session(write=True) as session:
        rows = session.scalars(query).all()
        for row in rows:
            row.next_attempt_at = now + timedelta(seconds=hold_seconds)
        return [Due(row.id, row.job_id, row.url, row.event, row.attempts) for row in rows]


def send(client: httpx.Client, settings: Settings, due: Due) -> dict[str, Any]:
    """One POST; the attempt as the row's log keeps it."""
    body = json.dumps(due.event, separators=(",", ":"), sort_keys=True).encode()
    started = time.monotonic()
    attempt: dict[str, Any] = {"at": utcnow().isoformat(), "status_code": None, "error": None}
    try:
        response = client.post(
            due.url, content=body, headers=headers(settings, due.id, body, time.time())
        )
        attempt["status_code"] = response.status_code
    except httpx.HTTPError as error:
        attempt["error"] = f"{type(error).__name__}: {error}"[:500]
    attempt["seconds"] = round(time.monotonic() - started, 3)
    return attempt


def backoff(settings: Settings, attempts: int) -> float:
    """The wait after the `attempts`-th failure: WEBHOOK_RETRY_SECONDS, doubling, capped."""
    return min(settings.webhook_retry_seconds * 2 ** (attempts - 1), MAX_BACKOFF_SECONDS)


def record(db: Database, settings: Settings, due: Due, attempt: dict[str, Any]) -> str | None:
    """Log the attempt and decide the row's fate; its status, or None when another deliverer
    recorded this attempt first (our hold had run out)."""
    delivered = attempt["status_code"] is not None and 200 <= attempt["status_code"] < 300
    now = utcnow()
    with db.session(write=True) as session:
        row = session.scalars(
            select(WebhookDelivery).where(
                WebhookDelivery.id == due.id,
                WebhookDelivery.status == "pending",
                WebhookDelivery.attempts == due.attempts,
            )
        ).first()
        if row is None:
            return None
        row.attempts += 1
        row.log = [*row.log, attempt]
        if delivered:
            row.status, row.delivered_at, row.next_attempt_at = "delivered", now, None
        else:
            retry_at = now + timedelta(seconds=backoff(settings, row.attempts))
            if retry_at > _deadline(settings, row.created_at):
                row.status, row.next_attempt_at = "failed", None
            else:
                row.next_attempt_at = retry_at
        return row.status


def _deadline(settings: Settings, created_at: datetime) -> datetime:
    return created_at + timedelta(seconds=settings.webhook_give_up_seconds)


def deliver_due(db: Database, settings: Settings, client: httpx.Client) -> int:
    """Send every delivery that is due now, once each; how many were tried."""
    hold = settings.webhook_timeout_seconds + HOLD_MARGIN_SECONDS
    due = claim_due(db, hold_seconds=hold)
    for item in due:
        with logs.context(job_id=item.job_id):
            attempt = send(client, settings, item)
            status = record(db, settings, item, attempt)
            outcome = attempt["status_code"] or attempt["error"]
            log.info("webhook %s to %s: %s (%s)", item.id, item.url, outcome, status)
    return len(due)


class Deliverer:
    """A daemon thread delivering due webhooks every `POLL_SECONDS` until stopped."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)

    def start(self) -> Deliverer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        # No redirects: a signed event goes to the URL the job named, nowhere else.
        timeout = httpx.Timeout(self.settings.webhook_timeout_seconds)
        with httpx.Client(timeout=timeout, follow_redirects=False) as client:
            while not self._stop.is_set():
                try:
                    busy = deliver_due(self.db, self.settings, client) > 0
                except Exception:  # a busy or briefly unreachable database: try again later
                    log.exception("delivering webhooks failed")
                    busy = False
                if not busy:
                    self._stop.wait(self.settings.poll_seconds)
