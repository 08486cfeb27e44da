"""Webhooks reach the public internet only (or the networks WEBHOOK_ALLOWED_NETWORKS lists):
refused at submit when the URL spells an internal address, refused at delivery when a name
resolves to one, the checked address being the one connected to. A slow receiver holds a
delivery for WEBHOOK_TIMEOUT_SECONDS at most, and delays no other. Logs keep no query.

Names are resolved by a fake resolver: nothing here sends traffic beyond loopback."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import AnyUrl
from sqlalchemy import func, select

from service import webhook_addresses, webhooks
from service.problems import Invalid
from service.storage.tables import Job, WebhookDelivery, new_id, utcnow
from tests.conftest import Service, job_body, make_settings
from tests.test_webhooks import Receiver

INTERNAL = [
    "http://127.0.0.1:8080/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::1]:22/",
    "http://0x7f000001/",
    "http://2130706433/",
    "http://0177.0.0.1/",
    "http://127.1/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:a9fe:a9fe]/",
    "http://0.0.0.0:80/",
    "http://0/",
    "http://10.1.2.3/",
    "http://172.16.0.1/",
    "http://192.168.1.1/",
    "http://100.64.0.1/",
    "http://198.18.0.1/",
    "http://224.0.0.1/",
    "http://240.0.0.1/",
    "http://255.255.255.255/",
    "http://[fe80::1]/",
    "http://[fc00::1]/",
    "http://[::]/",
    "http://[ff02::1]/",
    "http://[64:ff9b::a9fe:a9fe]/",
    "http://[2002:7f00:1::]/",
    "https://localhost/",
    "http://LOCALHOST.:8000/hook",
    "http://api.localhost/",
]
# Never connected to: public addresses and names pass the submit check, which resolves nothing.
PUBLIC = [
    "http://93.184.216.34/hook",
    "https://hooks.example.com/x?token=1",
    "http://[2606:4700::1]/",
]


@pytest.fixture
def closed(tmp_path: Path, database_url: str) -> Iterator[Service]:
    """A service as deployed by default: no network allowed beyond the public internet."""
    running = Service(make_settings(tmp_path, database_url=database_url, import_root=tmp_path))
    yield running
    running.close()


def refused_naming_webhook_url(answer: Any) -> bool:
    return answer.status_code == 422 and answer.json()["detail"][0]["loc"][-1] == "webhook_url"


@pytest.mark.any_database
def test_internal_webhook_urls_are_refused_at_submit_on_every_route(closed: Service) -> None:
    for url in INTERNAL:
        answer = closed.client.post("/jobs", json=job_body("d_none", webhook_url=url))
        assert refused_naming_webhook_url(answer), (url, answer.text)
    for url in (INTERNAL[0], INTERNAL[3], INTERNAL[-1]):
        answers = {
            "advice": closed.client.post(
                "/datasets/d_none/advice",
                json={"backbone": {"name": "MobileNetV2"}, "webhook_url": url},
            ),
            "export": closed.client.post(
                "/models/m_none/exports", json={"format": "tflite", "webhook_url": url}
            ),
            "predictions": closed.client.post(
                "/predictions", data={"dataset_id": "d_none", "webhook_url": url}
            ),
            "import": closed.client.post(
                "/datasets/import", json={"path": ".", "webhook_url": url}
            ),
        }
        for route, answer in answers.items():
            assert refused_naming_webhook_url(answer), (route, url, answer.text)
    with closed.database.session() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0


def test_the_submit_check_reads_every_spelling_and_the_allowed_networks() -> None:
    for url in INTERNAL:
        with pytest.raises(Invalid) as refused:
            webhook_addresses.check_submitted(AnyUrl(url), [])
        assert refused.value.field == ("webhook_url",)
    for url in PUBLIC:
        webhook_addresses.check_submitted(AnyUrl(url), [])
    settings = make_settings(
        Path("unused"), webhook_allowed_networks=["10.0.0.0/8", "127.0.0.0/8", "fd00::/8"]
    )
    allowed = settings.webhook_allowed_networks
    for url in (
        "http://10.1.2.3/",
        "http://[::ffff:10.0.0.9]/",
        "http://localhost:9/",
        "http://[fd00::5]/",
    ):
        webhook_addresses.check_submitted(AnyUrl(url), allowed)
    for url in ("http://192.168.1.1/", "http://169.254.169.254/", "http://[::1]/"):
        with pytest.raises(Invalid):
            webhook_addresses.check_submitted(AnyUrl(url), allowed)


def test_allowed_networks_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBHOOK_ALLOWED_NETWORKS", '["10.0.0.0/8", "::1/128"]')
    settings = make_settings(Path("unused"))
    assert [str(net) for net in settings.webhook_allowed_networks] == ["10.0.0.0/8", "::1/128"]
    assert make_settings(Path("unused"), webhook_allowed_networks=[]).webhook_allowed_networks == []


# -- at delivery ---------------------------------------------------------------------------


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Names the service resolves, faked; the real resolver must never see them (a client
    that resolved the name again could reach another address than the one checked)."""
    names: dict[str, list[str]] = {}
    real = socket.getaddrinfo

    def lookup(host: str, port: int) -> list[str]:
        if host not in names:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return names[host]

    def guarded(host: Any, *args: Any, **kwargs: Any) -> Any:
        assert host not in names, f"{host} resolved again, past the check"
        return real(host, *args, **kwargs)

    monkeypatch.setattr(webhook_addresses, "lookup", lookup)
    monkeypatch.setattr(socket, "getaddrinfo", guarded)
    return names


def pending(service: Service, url: str) -> str:
    """A delivery due now, as a job's end records it."""
    delivery_id = new_id("h")
    with service.database.session(write=True) as session:
        session.add(
            WebhookDelivery(
                id=delivery_id,
                job_id=None,
                url=url,
                event={"type": "job.finished", "id": delivery_id},
                status="pending",
                attempts=0,
                log=[],
                next_attempt_at=utcnow(),
                created_at=utcnow(),
            )
        )
    return delivery_id


def row(service: Service, delivery_id: str) -> WebhookDelivery:
    with service.database.session() as session:
        found = session.get(WebhookDelivery, delivery_id)
        assert found is not None
        return found


@pytest.mark.any_database
def test_a_name_resolving_inside_is_refused_at_delivery_without_telling_what_answered(
    closed: Service, dns: dict[str, list[str]]
) -> None:
    receiver = Receiver([])
    port = receiver.server.server_port
    dns["inside.test"] = ["127.0.0.1"]
    listening = pending(closed, f"http://inside.test:{port}/hook")
    nothing = pending(closed, f"http://inside.test:{port + 1 if port < 65535 else 1}/hook")
    stored = pending(closed, f"http://0x7f000001:{port}/hook")  # stored before the check
    try:
        assert webhooks.deliver_due(closed.database, closed.settings) == 3
    finally:
        receiver.close()
    assert receiver.requests == []  # nothing was sent anywhere
    rows = [row(closed, each) for each in (listening, nothing, stored)]
    for found in rows:
        assert found.status == "failed" and found.attempts == 1, found.log
        assert found.log[0]["status_code"] is None
        assert found.log[0]["error"] == webhooks.REFUSED
    # A listening receiver and a closed port read alike: same status, same words.
    assert {(found.status, found.log[0]["error"]) for found in rows[:2]} == {
        ("failed", webhooks.REFUSED)
    }


def test_a_name_resolving_to_an_allowed_and_a_refused_address_is_refused(
    tmp_path: Path, dns: dict[str, list[str]]
) -> None:
    hooked = Service(make_settings(tmp_path, webhook_allowed_networks=["127.0.0.0/8"]))
    receiver = Receiver([])
    dns["mixed.test"] = ["127.0.0.1", "10.0.0.1"]
    mixed = pending(hooked, f"http://mixed.test:{receiver.server.server_port}/hook")
    try:
        webhooks.deliver_due(hooked.database, hooked.settings)
    finally:
        receiver.close()
        hooked.close()
    assert receiver.requests == []
    assert row(hooked, mixed).log[0]["error"] == webhooks.REFUSED


def test_an_allowed_name_is_sent_to_the_checked_address_and_logged_without_its_query(
    tmp_path: Path, dns: dict[str, list[str]], caplog: pytest.LogCaptureFixture
) -> None:
    hooked = Service(make_settings(tmp_path, webhook_allowed_networks=["127.0.0.0/8"]))
    receiver = Receiver([])
    port = receiver.server.server_port
    dns["receiver.test"] = ["127.0.0.1"]
    url = f"http://user:pa55word@receiver.test:{port}/hook?token=s3cret#frag"
    delivery = pending(hooked, url)
    try:
        with caplog.at_level(logging.INFO, logger="service.webhooks"):
            assert webhooks.deliver_due(hooked.database, hooked.settings) == 1
    finally:
        receiver.close()
        hooked.close()
    assert row(hooked, delivery).status == "delivered"
    (request,) = receiver.requests
    assert request["headers"]["Host"] == f"receiver.test:{port}"
    assert request["headers"]["Authorization"].startswith("Basic ")  # as before: userinfo
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert f"http://receiver.test:{port}/hook" in logged
    assert "s3cret" not in logged and "pa55word" not in logged and "frag" not in logged


# -- a slow receiver -----------------------------------------------------------------------


class RawReceiver:
    """A loopback TCP server that reads each request, then answers with `answer(conn,
    stop)`: it stops sending when the client has gone, or after 4 s at most."""

    def __init__(self, answer: Callable[[socket.socket, float], None]) -> None:
        self.answer = answer
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/hook"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            received = b""
            while b"\r\n\r\n" not in received:
                received += conn.recv(65536)
            head, _, body = received.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            while len(body) < length:
                body += conn.recv(65536)
            with contextlib.suppress(OSError):  # the client gave up: as the test wants
                self.answer(conn, time.monotonic() + 4)

    def close(self) -> None:
        self.listener.close()


def trickle(conn: socket.socket, until: float) -> None:
    """A 200, one byte every 0.2 s: never 10 s without a byte, and never done."""
    for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n":
        if time.monotonic() > until:
            return
        conn.sendall(bytes([byte]))
        time.sleep(0.2)


def endless(conn: socket.socket, until: float) -> None:
    """A 200 at once, then a body that never ends."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"4000\r\n" + b"x" * 0x4000 + b"\r\n"
    while time.monotonic() < until:
        conn.sendall(chunk)


@pytest.mark.any_database
def test_a_trickling_receiver_is_cut_at_the_deadline_and_delays_no_other(
    tmp_path: Path, database_url: str
) -> None:
    settings = make_settings(
        tmp_path,
        database_url=database_url,
        webhook_timeout_seconds=1.0,
        poll_seconds=0.05,
        webhook_allowed_networks=["127.0.0.0/8"],
    )
    hooked = Service(settings)
    slow, flood, fast = RawReceiver(trickle), RawReceiver(endless), Receiver([])
    # Claimed in this order: the slow receiver's first, as a sequential deliverer would.
    held = pending(hooked, slow.url)
    flooded = pending(hooked, flood.url)
    quick = pending(hooked, fast.url)
    started = time.monotonic()
    deliverer = webhooks.Deliverer(hooked.database, settings).start()
    try:
        deadline = started + 8
        while not (fast.requests and row(hooked, held).attempts):
            assert time.monotonic() < deadline, "the deliveries did not happen"
            time.sleep(0.02)
        slow_done = time.monotonic()
    finally:
        deliverer.stop()
        for server in (slow, flood, fast):
            server.close()
        hooked.close()
    fast_at = fast.requests[0]["at"] - started
    print(
        f"\nfast receiver reached after {fast_at:.2f} s; slow attempt ended after "
        f"{slow_done - started:.2f} s: {row(hooked, held).log}"
    )
    # The others went out while the slow one was held, not after it.
    assert fast_at < 0.9 and row(hooked, quick).status == "delivered"
    attempt = row(hooked, held).log[0]
    assert attempt["status_code"] is None and "Timeout" in attempt["error"], attempt
    assert 0.9 <= attempt["seconds"] < 2.0  # the deadline, and a loaded machine's lateness
    assert row(hooked, held).status == "pending"  # retried later, as any timeout
    # An answer's body is read to a bound: an endless one does not hold the attempt.
    flooded_row = row(hooked, flooded)
    assert flooded_row.status == "delivered" and flooded_row.log[0]["seconds"] < 0.9


def test_a_claim_outlasts_the_attempts_deadline(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, webhook_timeout_seconds=7.0)
    hooked = Service(settings)
    try:
        delivery = pending(hooked, "http://hooks.example.com/x")
        claimed_at = utcnow()
        (due,) = webhooks.claim_due(hooked.database, hold_seconds=webhooks.hold_seconds(settings))
        assert due.id == delivery
        held_until = row(hooked, delivery).next_attempt_at
        assert held_until is not None
        assert (held_until - claimed_at).total_seconds() >= settings.webhook_timeout_seconds
        assert webhooks.claim_due(hooked.database, hold_seconds=1) == []  # nobody else sends it
    finally:
        hooked.close()
