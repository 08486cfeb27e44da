"""The gate: who may send a request, decided from its headers alone, before its body is read.

FastAPI reads a form or JSON body before it runs a route's dependencies, so a key checked as
a dependency (service/api/auth.py) is checked after the body: a 200 MB upload without a key
was read to its end before its 401. This plain ASGI middleware answers before the app sees
the request, and its refusals close the connection, so the server reads no more of the body
either. The routes' own dependencies stay, saying the same from the same primitives
(service/security.py).

- Open to all: the paths in `PUBLIC` and under `/static/`.
- With `API_KEY`: the bearer key; or a console session (signed, unexpired, not logged out),
  with its CSRF token for a change; `/metrics` also from `METRICS_OPEN_NETWORKS`. Otherwise
  401, or, for the console's pages, the login page as before.
- Without a key: what is safe passes; a change sent by a page of another site (its `Origin`)
  is refused, and a change through the console needs its anonymous session's CSRF token.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service import security
from service.api.auth import find_session
from service.config import Settings
from service.web.render import LoginRequired, login_redirect

PUBLIC = frozenset(
    {
        "/",
        "/login",
        "/healthz",
        "/readyz",
        "/docs",
        "/docs/oauth2-redirect",
        "/redoc",
        "/openapi.json",
    }
)
STATIC = "/static/"
METRICS = "/metrics"
NO_KEY = "missing or wrong API key: send 'Authorization: Bearer <key>'"
NO_TOKEN = f"missing or wrong {security.CSRF_HEADER}: reload the page"
CROSS_SITE = "a change sent by a page of another site is refused"


def is_public(path: str) -> bool:
    return path in PUBLIC or path.startswith(STATIC)


def is_console(path: str) -> bool:
    """The console's pages and writes, and its logout: a session's, never the bare key's."""
    return path in ("/console", "/logout") or path.startswith("/console/")


def refuse(status: int, detail: str, headers: dict[str, str] | None = None) -> Response:
    # Closed: the server would otherwise read (and drop) the rest of the body to reuse it.
    return JSONResponse({"detail": detail}, status, {**(headers or {}), "Connection": "close"})


def bearer(request: Request) -> str | None:
    """The key in `Authorization: Bearer <key>` (the scheme in any case, as HTTPBearer)."""
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    return credentials if scheme.lower() == "bearer" and credentials else None


class Gate:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_public(scope["path"]):
            await self.app(scope, receive, send)
            return
        request = Request(scope)  # no `receive`: the gate cannot read the body
        if self.settings.api_key is None:
            refusal = self.keyless(request)
        else:
            refusal = await self.keyed(request)
        if refusal is None:
            await self.app(scope, receive, send)
        else:
            await refusal(scope, receive, send)

    async def keyed(self, request: Request) -> Response | None:
        settings, path = self.settings, request.url.path
        client = request.client.host if request.client is not None else None
        if path == METRICS and security.in_open_network(settings, client):
            return None
        key = bearer(request)
        if key is not None and security.key_matches(settings, key):
            return None
        session = await find_session(request)
        if session is None:
            if is_console(path):
                expired = security.COOKIE in request.cookies
                response = login_redirect(request, LoginRequired(_target(request), expired))
                response.headers["Connection"] = "close"
                return response
            return refuse(401, NO_KEY, {"WWW-Authenticate": "Bearer"})
        if request.method in security.SAFE_METHODS or security.csrf_matches(
            settings, session, request.headers.get(security.CSRF_HEADER)
        ):
            return None
        if is_console(path):
            return refuse(403, NO_TOKEN)
        return refuse(
            403,
            f"a change made with the session cookie needs the {security.CSRF_HEADER} header "
            "of the service's own pages",
        )

    def keyless(self, request: Request) -> Response | None:
        """No key: anyone who reaches the port may use the API, but a web page the user
        visits must not use it through their browser."""
        if request.method in security.SAFE_METHODS:
            return None
        origin, host = request.headers.get("origin"), request.headers.get("host")
        if security.cross_origin(origin, host, self.settings.cors_origins):
            return refuse(403, CROSS_SITE)
        if is_console(request.url.path):
            session = security.read_session(self.settings, request.cookies.get(security.COOKIE))
            sent = request.headers.get(security.CSRF_HEADER)
            if session is None or not security.csrf_matches(self.settings, session, sent):
                return refuse(403, NO_TOKEN)
        return None


def _target(request: Request) -> str:
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")
