"""Who may call, over HTTP: a request without a valid key or session is refused before any of
its body is read; without a key, no other site can make changes through a visitor's browser;
logout ends a session everywhere; forwarded headers are believed only from named proxies;
the console's pages carry security headers; guessing the key at /login is slowed down.

The primitives are unit-tested in test_security.py; every route's 401 in test_hostile.py."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.web import PAGE_MODULES
from tests.browser import free_port, start_live_service
from tests.conftest import (
    Service,
    class_zip,
    colour_images,
    console_token,
    make_settings,
    stored_rows,
)

KEY = "k" * 32
CHUNK = 8 * 1024
BOUNDARY = "edge"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


PART = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.zip"\r\n\r\n'


class Streamed:
    """A request body of `total` bytes that counts how many the server pulled."""

    def __init__(self, total: int = 1024 * 1024) -> None:
        self.total = total
        self.pulled = 0

    def __iter__(self) -> Iterator[bytes]:
        head = (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.zip"\r\n\r\n'
        )
        yield head.encode()
        while self.pulled < self.total:
            self.pulled += CHUNK
            yield b"\0" * CHUNK


def concrete(template: str) -> str:
    return re.sub(r"\{[^}]+\}", "x_1", template)


def write_routes(client: TestClient) -> list[tuple[str, str]]:
    """Every operation that takes a body: the API's (TF Serving's paths among them) and the
    console's writes, with logout."""
    routes = [
        (method.upper(), concrete(template))
        for template, methods in client.app.openapi()["paths"].items()  # type: ignore[attr-defined]
        for method in methods
        if method in ("post", "put", "patch", "delete")
    ]
    routes += [
        (method, concrete(route.path))
        for module in PAGE_MODULES
        for route in module.writes.routes
        for method in route.methods  # type: ignore[attr-defined]
    ]
    return [*routes, ("POST", "/logout")]


def send_streamed(client: TestClient, method: str, path: str, **headers: str) -> tuple[int, int]:
    body = Streamed()
    response = client.request(
        method,
        path,
        content=body,
        headers={"Content-Type": MULTIPART, **headers},
        follow_redirects=False,
    )
    return response.status_code, body.pulled


# -- 1. refused before the body ------------------------------------------------------------


def test_without_the_key_no_route_reads_the_body(tmp_path: Path) -> None:
    service = Service(make_settings(tmp_path, api_key=KEY))
    try:
        routes = write_routes(service.client)
        assert len(routes) >= 35
        for method, path in routes:
            status, pulled = send_streamed(service.client, method, path)
            console = path.startswith("/console") or path == "/logout"
            assert status == (303 if console else 401), (method, path, status)
            assert pulled <= CHUNK, (method, path, pulled)
        # A wrong key, a forged cookie, a cookie without its CSRF token: the same.
        for headers in (
            {"Authorization": "Bearer " + "w" * 32},
            {"Cookie": "transfer_session=eyJuIjoieCJ9.forged"},
        ):
            status, pulled = send_streamed(service.client, "POST", "/datasets", **headers)
            assert (status, pulled) == (401, 0), headers
        service.client.post("/login", data={"api_key": KEY})
        for path in ("/datasets", "/console/datasets"):
            status, pulled = send_streamed(service.client, "POST", path)
            assert (status, pulled) == (403, 0), path
        assert stored_rows(service) == (0, 0)
    finally:
        service.close()


def raw_request(port: int, head: str, body_sent: int) -> tuple[str, float]:
    """Send `head` and `body_sent` bytes of the body it declares, then wait for an answer:
    one comes only if the server answers without the rest of the body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        # A well-formed start, so that a server reading the body waits for the rest of it.
        start = PART if "multipart" in head else "["
        connection.sendall(head.encode() + start.encode() + b"0" * body_sent)
        started = time.monotonic()
        answer = connection.recv(4096).decode("latin-1")
        return answer, time.monotonic() - started


def test_a_live_server_answers_401_without_waiting_for_the_body(tmp_path: Path) -> None:
    live = start_live_service(tmp_path / "data", api_key=KEY)
    port = int(live.url.rsplit(":", 1)[1])
    try:
        for path, content_type, declared in (
            ("/datasets", MULTIPART, 200 * 1024 * 1024),
            ("/v1/models/x:predict", "application/json", 16 * 1024 * 1024),
            ("/console/datasets", MULTIPART, 200 * 1024 * 1024),
        ):
            head = (
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {declared}\r\n\r\n"
            )
            answer, waited = raw_request(port, head, 4096)
            expected = "303" if path.startswith("/console") else "401"
            assert answer.startswith(f"HTTP/1.1 {expected}"), (path, answer[:200])
            assert "connection: close" in answer.lower()
            assert waited < 5
    finally:
        live.stop()


# -- 3. no key: loopback only, and no cross-site writes -------------------------------------


@pytest.fixture
def keyless(tmp_path: Path) -> Iterator[Service]:
    running = Service(make_settings(tmp_path))
    # A browser that has not opened a console page: no session cookie, no token.
    running.client.cookies.clear()
    running.client.headers.pop("X-CSRF-Token")
    yield running
    running.close()


def upload(client: TestClient, path: str, **headers: str) -> int:
    archive = class_zip(colour_images(per_class=2))
    files = {"file": ("c.zip", archive, "application/zip")}
    return client.post(path, files=files, headers=headers).status_code


def test_without_a_key_no_other_site_writes_through_the_browser(keyless: Service) -> None:
    client = keyless.client
    evil = {"Origin": "https://evil.example"}
    # A form on another site posting to the console, or to the API: refused, nothing stored.
    assert upload(client, "/console/datasets", **evil) == 403
    assert upload(client, "/datasets", **evil) == 403
    assert upload(client, "/datasets", Origin="null") == 403
    # The console's writes need the token of one of its pages, even with no Origin at all.
    assert upload(client, "/console/datasets") == 403
    assert upload(client, "/console/datasets", **{"X-CSRF-Token": "forged"}) == 403
    status, pulled = send_streamed(client, "POST", "/console/datasets")
    assert (status, pulled) == (403, 0)
    assert stored_rows(keyless) == (0, 0)
    # What worked keeps working: the API from a client that is no browser, or from the
    # service's own origin; the console with its page's token.
    assert upload(client, "/datasets") == 201
    assert upload(client, "/datasets", Origin="http://testserver") == 201
    token = console_token(client)
    assert upload(client, "/console/datasets", **{"X-CSRF-Token": token}) == 201
    assert stored_rows(keyless)[0] == 3


class Recorded:
    """What `python -m service api` would hand uvicorn.run."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, dict[str, Any]]] = []

    def __call__(self, app: Any, **options: Any) -> None:
        self.calls.append((app, options))


def run_api(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *args: str, **environment: str
) -> tuple[int, Recorded]:
    from service import __main__ as cli
    from service.config import get_settings
    from service.ml import model_cache

    recorded = Recorded()
    monkeypatch.setattr(uvicorn, "run", recorded)
    monkeypatch.setattr(model_cache, "configure_tensorflow_threads", lambda **_: None)
    for name in ("API_KEY", "ALLOW_OPEN_WITHOUT_KEY", "FORWARDED_ALLOW_IPS", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    monkeypatch.setenv("AUTO_MIGRATE", "true")
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)  # away from any .env file
    get_settings.cache_clear()
    try:
        return cli.main(["api", *args]), recorded
    finally:
        get_settings.cache_clear()


def test_without_a_key_the_api_listens_on_loopback_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for host in ("0.0.0.0", "::", "192.0.2.1", "example.internal"):
        status, recorded = run_api(monkeypatch, tmp_path, "--host", host)
        assert status == 2 and not recorded.calls, host
        error = capsys.readouterr().err
        assert "API_KEY" in error and "ALLOW_OPEN_WITHOUT_KEY" in error, error
    for host, environment in (
        ("127.0.0.1", {}),
        ("localhost", {}),
        ("::1", {}),
        ("0.0.0.0", {"API_KEY": KEY}),
        ("0.0.0.0", {"ALLOW_OPEN_WITHOUT_KEY": "true"}),
    ):
        status, recorded = run_api(monkeypatch, tmp_path, "--host", host, **environment)
        assert status == 0 and len(recorded.calls) == 1, (host, environment)
        assert recorded.calls[0][1]["host"] == host


# -- 9. forwarded headers ---------------------------------------------------------------------


def serve(app: Any, options: dict[str, Any]) -> tuple[uvicorn.Server, str]:
    port = free_port()
    overrides = {"host": "127.0.0.1", "port": port, "log_config": None}
    config = uvicorn.Config(app, **{**options, **overrides})
    server = uvicorn.Server(config)
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{port}"


def metrics_status(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **environment: str) -> int:
    import httpx

    status, recorded = run_api(
        monkeypatch, tmp_path, API_KEY=KEY, METRICS_OPEN_NETWORKS='["10.0.0.0/8"]', **environment
    )
    assert status == 0
    app, options = recorded.calls[0]
    server, url = serve(app, options)
    try:
        forged = {"X-Forwarded-For": "10.1.2.3"}
        return httpx.get(f"{url}/metrics", headers=forged, timeout=30).status_code
    finally:
        server.should_exit = True


def test_forwarded_headers_are_believed_only_from_named_proxies(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Any local process claiming to forward for an open network: still the key.
    assert metrics_status(monkeypatch, tmp_path) == 401
    # The operator names the proxy in front: its X-Forwarded-For is believed.
    assert metrics_status(monkeypatch, tmp_path, FORWARDED_ALLOW_IPS="127.0.0.1") == 200


# -- 7. logout ends the session ----------------------------------------------------------------


def sign_in(client: TestClient) -> tuple[str, str]:
    """The session cookie and the CSRF token of a fresh login."""
    signed_in = client.post("/login", data={"api_key": KEY}, follow_redirects=False)
    assert signed_in.status_code == 303
    cookie = client.cookies["transfer_session"]
    page = client.get("/console").text
    token = re.search(r'name="csrf-token" content="([^"]+)"', page)
    assert token is not None
    return cookie, token.group(1)


def test_logout_ends_the_session_in_every_replica(tmp_path: Path) -> None:
    service = Service(make_settings(tmp_path, api_key=KEY))
    replica = TestClient(create_app(service.settings))
    try:
        with replica:
            cookie, token = sign_in(service.client)
            kept = {"Cookie": f"transfer_session={cookie}"}
            assert replica.get("/datasets", headers=kept).status_code == 200
            other_cookie, _ = sign_in(TestClient(service.client.app))
            out = service.client.post("/logout", headers={"X-CSRF-Token": token})
            assert out.status_code == 204
            service.client.cookies.clear()
            # The copied cookie, signed and unexpired, no longer works, here or elsewhere.
            for client in (service.client, replica):
                assert client.get("/datasets", headers=kept).status_code == 401
                page = client.get("/console", headers=kept, follow_redirects=False)
                assert page.status_code == 303 and page.headers["location"].startswith("/login")
            again = service.client.post(
                "/logout", headers={**kept, "X-CSRF-Token": token}, follow_redirects=False
            )
            assert again.status_code == 303
            # Another login is another session: still signed in.
            other = {"Cookie": f"transfer_session={other_cookie}"}
            assert replica.get("/datasets", headers=other).status_code == 200
    finally:
        service.close()


def test_changing_the_api_key_ends_every_session(tmp_path: Path) -> None:
    service = Service(make_settings(tmp_path, api_key=KEY))
    rotated = make_settings(tmp_path, api_key="r" * 32, database_url=service.settings.database_url)
    try:
        cookie, _ = sign_in(service.client)
        with TestClient(create_app(rotated)) as restarted:
            kept = {"Cookie": f"transfer_session={cookie}"}
            assert restarted.get("/datasets", headers=kept).status_code == 401
    finally:
        service.close()


# -- 15. headers, backoff, Secure ----------------------------------------------------------------


def test_console_pages_carry_security_headers(keyless: Service) -> None:
    dataset = keyless.upload(colour_images(per_class=2))
    for path in ("/console", "/console/datasets", f"/console/datasets/{dataset['id']}", "/login"):
        response = keyless.client.get(path)
        assert response.status_code == 200, path
        policy = response.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in policy and "script-src 'self'" in policy
        assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"


def test_the_console_has_no_inline_script_or_style() -> None:
    """What the policy would refuse: a script that is not a file or a JSON data block, a
    style attribute or element, an event handler attribute, an htmx eval."""
    folder = Path(__file__).resolve().parents[1] / "service" / "web" / "templates"
    for template in folder.rglob("*.html"):
        text = template.read_text()
        for tag in re.findall(r"<script\b[^>]*>", text):
            assert "src=" in tag or 'type="application/json"' in tag, (template.name, tag)
        assert not re.search(r"\sstyle=|<style\b|\son[a-z]+=|hx-on|js:", text), template.name


def test_repeated_wrong_keys_at_login_are_slowed_down(tmp_path: Path) -> None:
    service = Service(make_settings(tmp_path, api_key=KEY))
    try:
        client = service.client
        wrong = {"api_key": "w" * 32}
        answers = [client.post("/login", data=wrong).status_code for _ in range(6)]
        assert answers == [401] * 5 + [429]
        refused = client.post("/login", data={"api_key": KEY}, follow_redirects=False)
        assert refused.status_code == 429  # blocked: even the right key is not compared
        assert int(refused.headers["retry-after"]) >= 1
        # Another client is not blocked by this one's guesses.
        other = TestClient(client.app, client=("192.0.2.7", 1234))
        assert (
            other.post("/login", data={"api_key": KEY}, follow_redirects=False).status_code == 303
        )
    finally:
        service.close()


def test_the_login_backoff_grows_and_holds_bounded_memory() -> None:
    from service.security import LoginThrottle

    throttle = LoginThrottle(free=3, first=1, longest=60, clients=100)
    for _ in range(3):
        assert throttle.retry_after("a", now=0) == 0
        throttle.failed("a", now=0)
    delays = []
    for attempt in range(8):
        moment = 1000.0 * attempt
        throttle.failed("a", now=moment)
        delays.append(throttle.retry_after("a", now=moment))
    assert delays == [2, 4, 8, 16, 32, 60, 60, 60]
    throttle.succeeded("a")
    assert throttle.retry_after("a", now=8000) == 0
    for number in range(10_000):
        throttle.failed(f"10.0.{number // 256}.{number % 256}", now=0)
    assert len(throttle) == 100


def test_the_cookie_is_secure_behind_a_tls_proxy(tmp_path: Path) -> None:
    for secure in (False, True):
        service = Service(make_settings(tmp_path / str(secure), api_key=KEY, cookie_secure=secure))
        try:
            signed_in = service.client.post("/login", data={"api_key": KEY}, follow_redirects=False)
            assert ("secure" in signed_in.headers["set-cookie"].lower()) is secure
        finally:
            service.close()


# -- 11. no secrets in open answers ------------------------------------------------------------


def test_readyz_says_the_database_is_unavailable_without_its_error(
    service: Service, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def unreachable() -> str:
        raise RuntimeError("could not connect to db.internal as admin, password hunter2")

    monkeypatch.setattr(service.database.__class__, "schema_problem", lambda self: unreachable())
    answer = service.client.get("/readyz")
    assert answer.status_code == 503
    assert answer.json() == {"status": "unavailable", "detail": "database unavailable"}
    assert "hunter2" in caplog.text  # for the operator, in the log
