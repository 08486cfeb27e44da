"""Who may call, as FastAPI dependencies: the API key as a bearer token, or the console's
session cookie (with its CSRF token for a change); for `/metrics`, also an open network.

The rules themselves (the key, the cookie, the token, the networks) are service/security.py's;
this module only reads them off the request and answers 401 or 403. The gate
(service/api/gate.py) applies the same rules before a request's body is read; these
dependencies repeat them where a route is reached, which costs a comparison: the session the
gate found is kept in the request's state, so the database is asked once.
"""

from __future__ import annotations

from typing import Annotated

from anyio import to_thread
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service import security
from service.config import Settings
from service.storage import revocations
from service.storage.db import Database

# Where the request's console session is kept once found (None: no valid one).
_SESSION = "console_session"

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
    if credentials is not None and security.key_matches(settings, credentials.credentials):
        return
    session = request_session(request)
    if session is not None:
        if request.method in security.SAFE_METHODS or security.csrf_matches(
            settings, session, request.headers.get(security.CSRF_HEADER)
        ):
            return
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"a change made with the session cookie needs the {security.CSRF_HEADER} header "
            "of the service's own pages",
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
    settings: Settings = request.app.state.settings
    host = request.client.host if request.client is not None else None
    if security.in_open_network(settings, host):
        return
    check_api_key(request, credentials)


def _signed(request: Request) -> security.Session | None:
    settings: Settings = request.app.state.settings
    return security.read_session(settings, request.cookies.get(security.COOKIE))


def _revoked(request: Request, session: security.Session) -> bool:
    # Anonymous sessions (no API_KEY) have no logout, so none is ever revoked.
    if request.app.state.settings.api_key is None:
        return False
    database: Database = request.app.state.database
    return revocations.is_revoked(database, session.nonce)


def request_session(request: Request) -> security.Session | None:
    """The console session the request's cookie carries: this service's, unexpired and not
    ended by a logout; None otherwise. Asked of the database once per request."""
    state = request.scope.setdefault("state", {})
    if _SESSION not in state:
        session = _signed(request)
        state[_SESSION] = None if session is None or _revoked(request, session) else session
    return state[_SESSION]


async def find_session(request: Request) -> security.Session | None:
    """`request_session` for the event loop: the database is asked on a worker thread."""
    state = request.scope.setdefault("state", {})
    if _SESSION not in state:
        session = _signed(request)
        if session is not None and await to_thread.run_sync(_revoked, request, session):
            session = None
        state[_SESSION] = session
    return state[_SESSION]
