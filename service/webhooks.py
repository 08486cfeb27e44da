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

Only public addresses, or those in WEBHOOK_ALLOWED_NETWORKS, are sent to: each attempt
resolves the URL's host once, checks every address (service/webhook_addresses.py) and
connects to the checked one. A refused destination fails the delivery at once, never
connected to. Each attempt has one deadline, WEBHOOK_TIMEOUT_SECONDS, for all of it, and a
deliverer runs up to MAX_CONCURRENT at once: a slow receiver delays no other. Logs name a
URL without its query, userinfo or fragment.

At least once: a claim holds a row for the attempt's deadline plus a margin; a deliverer that
dies mid-send leaves it to be sent again once the hold runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session

from service import logs
from service import webhook_addresses as addresses
from service.config import Settings
from service.storage.db import Database
from service.storage.tables import Job, TrainedModel, WebhookDelivery, new_id, utcnow

log = logging.getLogger("service.webhooks")

EVENT_TYPE = "job.finished"
MAX_BACKOFF_SECONDS = 600.0
# A claimed row is held this much longer than an attempt's deadline (a slow database write).
HOLD_MARGIN_SECONDS = 30.0
CLAIM_BATCH = 20  # rows claimed at a time
MAX_CONCURRENT = 8  # attempts a deliverer has in flight at once
MAX_ANSWER_BYTES = 16 * 1024  # of a receiver's answer read: its status is what counts
# The attempt's error when the URL's host is not an allowed address: the same words whether
# or not anything listens there (it is never connected to).
REFUSED = "refused: the webhook's host is not a public address (WEBHOOK_ALLOWED_NETWORKS)"


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


def hold_seconds(settings: Settings) -> float:
    """How long a claim holds a row: longer than an attempt can take (its deadline), so no
    other deliverer sends the same event while this one still may."""
    return settings.webhook_timeout_seconds + HOLD_MARGIN_SECONDS


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


def redacted(url: str) -> str:
    """scheme://host[:port]/path, for logs: no userinfo, query or fragment, where receivers
    put their tokens."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    try:
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def new_client(settings: Settings) -> httpx.AsyncClient:
    """The deliverer's client. No redirects: a signed event goes to the URL the job named
    (and checked), nowhere else. No kept-alive connections: each attempt connects to the
    address it has just checked, and a connection made for one name (its certificate
    verified for that name) is never reused for another name at the same address. No
    HTTP(S)_PROXY from the environment: a proxy would resolve the name again, after the
    check, and verify TLS against the address instead of the name."""
    return httpx.AsyncClient(
        follow_redirects=False,
        timeout=httpx.Timeout(settings.webhook_timeout_seconds),
        limits=httpx.Limits(max_keepalive_connections=0),
        trust_env=False,
    )


async def send(client: httpx.AsyncClient, settings: Settings, due: Due) -> dict[str, Any]:
    """One attempt, as the row's log keeps it. WEBHOOK_TIMEOUT_SECONDS bounds all of it
    (resolving, connecting, sending, the answer's headers and body): httpx's own timeouts are
    per read, and a receiver trickling a byte at a time would never trip them."""
    body = json.dumps(due.event, separators=(",", ":"), sort_keys=True).encode()
    started = time.monotonic()
    attempt: dict[str, Any] = {"at": utcnow().isoformat(), "status_code": None, "error": None}
    try:
        async with asyncio.timeout(settings.webhook_timeout_seconds):
            attempt["status_code"] = await _post(client, settings, due, body)
    except addresses.Refused:
        attempt["error"] = REFUSED  # the same words whatever is or is not listening there
    except TimeoutError:
        seconds = settings.webhook_timeout_seconds
        attempt["error"] = f"Timeout: no complete answer within {seconds:g} s"
    except (httpx.HTTPError, OSError) as error:  # OSError: the name did not resolve
        attempt["error"] = _scrubbed(f"{type(error).__name__}: {error}", due.url)[:500]
    attempt["seconds"] = round(time.monotonic() - started, 3)
    return attempt


async def _post(client: httpx.AsyncClient, settings: Settings, due: Due, body: bytes) -> int:
    """POST to the address the URL's host was checked to have, never resolving it again:
    the URL's host is swapped for that address, the Host header keeps the name, and for
    https the TLS server name (SNI, and the name the certificate is verified against) is
    the name too (httpcore's `sni_hostname` extension). The answer's body is read only up
    to MAX_ANSWER_BYTES: its status is all that counts."""
    url = httpx.URL(due.url)
    host = url.raw_host.decode("ascii")
    port = url.port or (443 if url.scheme == "https" else 80)
    allowed = settings.webhook_allowed_networks
    address = await asyncio.to_thread(addresses.checked_address, host, port, allowed)
    sent = {**headers(settings, due.id, body, time.time()), "Host": _host_header(url)}
    named = url.scheme == "https" and addresses.literal_address(host) is None
    extensions = {"sni_hostname": host} if named else {}
    target = url.copy_with(host=str(address))
    request = client.stream("POST", target, content=body, headers=sent, extensions=extensions)
    async with request as response:
        read = 0
        async for chunk in response.aiter_raw():
            read += len(chunk)
            if read >= MAX_ANSWER_BYTES:
                break
        return response.status_code


def _scrubbed(message: str, url: str) -> str:
    # An error that quotes the URL must not carry its secrets into the row's log or the logs.
    parts = urlsplit(url)
    for secret in (parts.query, parts.fragment, parts.password):
        if secret:
            message = message.replace(secret, "…")
    return message


def _host_header(url: httpx.URL) -> str:
    # As httpx would send it for the URL as named (the port only when not the default).
    return httpx.Request("POST", url).headers["Host"]


def backoff(settings: Settings, attempts: int) -> float:
    """The wait after the `attempts`-th failure: WEBHOOK_RETRY_SECONDS, doubling, capped."""
    return min(settings.webhook_retry_seconds * 2 ** (attempts - 1), MAX_BACKOFF_SECONDS)


def record(db: Database, settings: Settings, due: Due, attempt: dict[str, Any]) -> str | None:
    """Log the attempt and decide the row's fate; its status, or None when another deliverer
    recorded this attempt first (our hold had run out). A refused destination fails the
    delivery at once: retrying cannot make it allowed."""
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
            if attempt["error"] == REFUSED or retry_at > _deadline(settings, row.created_at):
                row.status, row.next_attempt_at = "failed", None
            else:
                row.next_attempt_at = retry_at
        return row.status


def _deadline(settings: Settings, created_at: datetime) -> datetime:
    return created_at + timedelta(seconds=settings.webhook_give_up_seconds)


async def deliver_one(
    db: Database, settings: Settings, client: httpx.AsyncClient, due: Due
) -> None:
    """Send one claimed delivery and record how it went."""
    with logs.context(job_id=due.job_id):
        try:
            attempt = await send(client, settings, due)
            status = await asyncio.to_thread(record, db, settings, due, attempt)
        except Exception:  # the database, briefly: the hold runs out and it is sent again
            log.exception("webhook %s to %s: not recorded", due.id, redacted(due.url))
            return
        outcome = attempt["status_code"] or attempt["error"]
        log.info("webhook %s to %s: %s (%s)", due.id, redacted(due.url), outcome, status)


def deliver_due(db: Database, settings: Settings) -> int:
    """Send every delivery that is due now, once each and all at once; how many were tried.
    (The deliverer's loop does this continuously; this is one round of it.)"""

    async def round_() -> int:
        _own_threads()
        due = claim_due(db, hold_seconds=hold_seconds(settings))
        async with new_client(settings) as client:
            await asyncio.gather(*(deliver_one(db, settings, client, item) for item in due))
        return len(due)

    return asyncio.run(round_())


def _own_threads() -> None:
    """Threads enough for every slot's lookup and database write: a lookup past its attempt's
    deadline still holds its thread until the resolver gives up, and must not delay the
    records of the attempts that follow."""
    workers = 2 * MAX_CONCURRENT + 2
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(workers, "webhooks"))


class Deliverer:
    """A daemon thread delivering due webhooks until stopped: up to MAX_CONCURRENT attempts
    at once on an event loop of its own, so a slow receiver holds one slot for at most its
    deadline while the others are delivered. Rows are claimed only for free slots, so every
    attempt starts at once and ends before its claim runs out."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)

    def start(self) -> Deliverer:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop claiming, let the attempts under way end (each within its deadline)."""
        self._stop.set()
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already ended
                loop.call_soon_threadsafe(wake.set)
        self._thread.join()

    def _run(self) -> None:
        asyncio.run(self._deliver_until_stopped())

    async def _deliver_until_stopped(self) -> None:
        _own_threads()
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        running: set[asyncio.Task[None]] = set()
        async with new_client(self.settings) as client:
            while not self._stop.is_set():
                if not await self._start_due(client, running):
                    await self._idle(running)
            if running:
                await asyncio.wait(running)

    async def _start_due(self, client: httpx.AsyncClient, running: set[asyncio.Task[None]]) -> bool:
        """Claim what free slots can send now and start sending it; whether any was."""
        free = MAX_CONCURRENT - len(running)
        if free <= 0:
            return False
        try:
            hold = hold_seconds(self.settings)
            due = await asyncio.to_thread(claim_due, self.db, hold_seconds=hold, limit=free)
        except Exception:  # a busy or briefly unreachable database: try again later
            log.exception("delivering webhooks failed")
            return False
        for item in due:
            task = asyncio.create_task(deliver_one(self.db, self.settings, client, item))
            running.add(task)
            task.add_done_callback(running.discard)
        return bool(due)

    async def _idle(self, running: set[asyncio.Task[None]]) -> None:
        """Wait for the poll interval, a slot coming free, or stop."""
        assert self._wake is not None
        woken = asyncio.create_task(self._wake.wait())
        await asyncio.wait(
            {woken, *running}, timeout=self.settings.poll_seconds, return_when="FIRST_COMPLETED"
        )
        woken.cancel()
