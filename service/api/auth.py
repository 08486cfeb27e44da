"""Who may call: the API key as a bearer token, or the browser's session cookie.

With `API_KEY` set, the console's login page exchanges the key for a signed, expiring session
cookie (HttpOnly, SameSite=Strict), which the API accepts as well as the header, so that the
browser's EventSource and image tags work. A request authenticated by the cookie alone that
changes something must also carry the session's CSRF token in `X-CSRF-Token`: the cookie is
sent by the browser on its own, the token only by the service's own pages.

The signing key is derived from the API key, so changing the key ends every session.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.config import Settings

COOKIE = "transfer_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Session:
    nonce: str
    expires: int

    def csrf_token(self, settings: Settings) -> str:
        return _sign(settings, f"csrf:{self.nonce}")


def _key(settings: Settings) -> bytes:
    assert settings.api_key is not None
    return hashlib.sha256(f"console-session:{settings.api_key}".encode()).digest()


def _sign(settings: Settings, message: str) -> str:
    digest = hmac.new(_key(settings), message.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def new_session(settings: Settings) -> tuple[Session, str]:
    """A fresh session and its cookie value."""
    expires = int(time.time()) + settings.session_seconds
    session = Session(nonce=secrets.token_urlsafe(16), expires=expires)
    payload = base64.urlsafe_b64encode(
        json.dumps({"n": session.nonce, "e": session.expires}).encode()
    ).decode()
    return session, f"{payload}.{_sign(settings, payload)}"


def read_session(settings: Settings, cookie: str | None) -> Session | None:
    """The session a cookie carries, if it is this service's, unexpired and signed with the
    current key; else None."""
    if not cookie or settings.api_key is None or "." not in cookie:
        return None
    payload, signature = cookie.rsplit(".", 1)
    if not hmac.compare_digest(signature, _sign(settings, payload)):
        return None
    try:
        fields = json.loads(base64.urlsafe_b64decode(payload))
        session = Session(nonce=str(fields["n"]), expires=int(fields["e"]))
    except (ValueError, KeyError, TypeError):
        return None
    return session if session.expires > time.time() else None


def key_matches(settings: Settings, given: str) -> bool:
    assert settings.api_key is not None
    return hmac.compare_digest(given.encode(), settings.api_key.encode())


def cookie_session(request: Request) -> Session | None:
    settings: Settings = request.app.state.settings
    return read_session(settings, request.cookies.get(COOKIE))


_bearer = HTTPBearer(auto_error=False, description="Needed when the API_KEY setting is given.")


async def require_api_key(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """The bearer key, or a session cookie (with its CSRF token for a change). `async`, as
    the checks are quick: a plain `def` would cost every request a trip to the thread pool."""
    check_api_key(request, credentials)


def check_api_key(request: Request, credentials: HTTPAuthorizationCredentials | None) -> None:
    settings: Settings = request.app.state.settings
    if settings.api_key is None:
        return
    if credentials is not None and key_matches(settings, credentials.credentials):
        return
    session = cookie_session(request)
    if session is not None:
        sent = request.headers.get(CSRF_HEADER, "")
        if request.method in SAFE_METHODS or hmac.compare_digest(
            sent, session.csrf_token(settings)
        ):
            return
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"a change made with the session cookie needs the {CSRF_HEADER} header of the "
            "service's own pages",
        )
    raise HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        "missing or wrong API key: send 'Authorization: Bearer <key>'",
        headers={"WWW-Authenticate": "Bearer"},
    )


async def require_metrics_access(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """As `require_api_key`, except for clients in METRICS_OPEN_NETWORKS: a Prometheus inside
    the cluster scrapes without the key. The address is the TCP peer's (behind a proxy, the
    proxy's, unless uvicorn is told to trust its forwarded headers)."""
    from service.metrics import in_open_network

    settings: Settings = request.app.state.settings
    if request.client is not None and in_open_network(settings, request.client.host):
        return
    check_api_key(request, credentials)
