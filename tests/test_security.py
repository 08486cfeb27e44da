"""service/security.py's primitives, without an app or TensorFlow: the key, the session cookie,
the CSRF token and the open networks of /metrics. The routes that use them are tested in
test_console.py, test_hostile.py and test_metrics.py."""

from __future__ import annotations

import ast
import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest

from service import security
from service.config import Settings

KEY = "k" * 24


def settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {"data_dir": tmp_path, "api_key": KEY, "session_seconds": 60}
    return Settings(_env_file=None, **{**values, **overrides})  # type: ignore[arg-type]


def test_the_key_matches_only_itself_whatever_the_text(tmp_path: Path) -> None:
    config = settings(tmp_path)
    assert security.key_matches(config, KEY)
    for wrong in ("", KEY[:-1], KEY + "k", "é" * 24, "\ud800" * 24, KEY.upper()):
        assert not security.key_matches(config, wrong)


def test_a_session_cookie_reads_back_as_the_session_it_was_made_for(tmp_path: Path) -> None:
    config = settings(tmp_path)
    session, cookie = security.new_session(config, now=1000)
    assert session.expires == 1060
    assert security.read_session(config, cookie, now=1059) == session
    other, _ = security.new_session(config, now=1000)
    assert other.nonce != session.nonce


def test_a_tampered_or_foreign_cookie_is_refused(tmp_path: Path) -> None:
    config = settings(tmp_path)
    session, cookie = security.new_session(config, now=1000)
    payload, signature = cookie.rsplit(".", 1)
    longer = base64.urlsafe_b64encode(
        json.dumps({"n": session.nonce, "e": session.expires + 10**6}).encode()
    ).decode()
    flipped = signature[:-1] + ("A" if signature[-1] != "A" else "B")
    for forged in (
        f"{longer}.{signature}",  # a later expiry under the old signature
        f"{payload}.{flipped}",
        payload,
        f"{payload}.",
        f"{payload}.é",  # non-ASCII: refused, not a TypeError (which was a 500)
        f"é.{signature}",
        "",
        None,
    ):
        assert security.read_session(config, forged, now=1001) is None, forged
    # Another key (a rotated API_KEY) signs differently: every session ends with the old key.
    rotated = settings(tmp_path, api_key="r" * 24)
    assert security.read_session(rotated, cookie, now=1001) is None
    # Without a key there are no sessions at all.
    assert security.read_session(settings(tmp_path, api_key=None), cookie, now=1001) is None


def test_an_expired_cookie_is_refused(tmp_path: Path) -> None:
    config = settings(tmp_path)
    _, cookie = security.new_session(config, now=1000)
    assert security.read_session(config, cookie, now=1060) is None
    assert security.read_session(config, cookie, now=10**10) is None
    _, fresh = security.new_session(config)  # the clock's now
    assert security.read_session(config, fresh) is not None


def test_the_csrf_token_belongs_to_its_session(tmp_path: Path) -> None:
    config = settings(tmp_path)
    session, _ = security.new_session(config)
    other, _ = security.new_session(config)
    token = security.csrf_token(config, session)
    assert security.csrf_matches(config, session, token)
    assert security.csrf_token(config, other) != token
    for wrong in (None, "", security.csrf_token(config, other), token[:-1], token + "x", "é"):
        assert not security.csrf_matches(config, session, wrong)


@pytest.mark.parametrize(
    ("host", "open_"),
    [
        ("10.1.2.3", True),
        ("192.168.0.7", True),
        ("fd00::1", True),
        ("11.0.0.1", False),
        ("192.168.1.7", False),
        ("::1", False),
        ("testclient", False),  # Starlette's TestClient: not an address
        ("", False),
        (None, False),
    ],
)
def test_open_networks_are_the_listed_ones(tmp_path: Path, host: str | None, open_: bool) -> None:
    networks = ["10.0.0.0/8", "192.168.0.0/24", "fd00::/8"]
    config = settings(tmp_path, metrics_open_networks=networks)
    assert security.in_open_network(config, host) is open_
    assert not security.in_open_network(settings(tmp_path), host)  # none listed: none open


def _imported(path: str) -> set[str]:
    """Every module a source file imports, at its top or inside a function."""
    tree = ast.parse(Path(path).read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_no_import_cycle_between_the_api_and_the_metrics() -> None:
    """The primitives belong to neither the API nor the console: the metrics (the worker's
    port is guarded by the key) and security import neither, not even inside a function, as
    the cycle service.api.auth <-> service.metrics once did; and auth no longer needs the
    metrics for the open networks."""
    root = Path(__file__).resolve().parent.parent
    for source in ("service/security.py", "service/metrics.py"):
        found = {
            name
            for name in _imported(str(root / source))
            if name.startswith(("service.api", "service.web", "fastapi", "starlette"))
        }
        assert not found, (source, found)
    assert not {"service.metrics"} & _imported(str(root / "service/api/auth.py"))


def test_the_workers_metrics_run_without_the_api() -> None:
    """Guarding the worker's metrics port with the key, in a fresh interpreter (so that what
    other tests imported cannot hide an import), loads no module of the API or the console."""
    code = f"""
import sys, tempfile
from service.config import Settings
from service.metrics import worker_app
settings = Settings(_env_file=None, data_dir=tempfile.mkdtemp(), api_key={KEY!r})
answers = []
for key in ({KEY!r}, "wrong"):
    environ = {{"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics", "QUERY_STRING": "",
               "HTTP_AUTHORIZATION": "Bearer " + key, "REMOTE_ADDR": "10.0.0.1",
               "SERVER_NAME": "x", "SERVER_PORT": "1", "wsgi.url_scheme": "http"}}
    worker_app(settings)(environ, lambda status, headers: answers.append(status))
print(answers)
print(sorted(m for m in sys.modules
             if m.split(".")[:2] in (["service", "api"], ["service", "web"]) or m == "fastapi"))
"""
    found = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert found == ["['200 OK', '401 Unauthorized']", "[]"]
