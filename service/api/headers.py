"""Security headers on every answer: what a browser may load into the console's pages, that no
other site may frame them, that it must not guess content types, and that it sends no
Referer (console URLs name datasets and models) to anyone.

The Content-Security-Policy allows scripts, styles and connections from this service only:
the console has no inline script or style (its data blocks are `type="application/json"`,
which the policy does not govern; bars are drawn in SVG rather than by `style` attributes,
and htmx is told not to insert its indicator style, which console.css holds instead). Images
may also be `data:` (the favicon, heat maps) and `blob:` (an image being tried). Swagger UI
and ReDoc (`/docs`, `/redoc`), FastAPI's pages with inline scripts, only get the framing rule.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.openapi import DOCS_URL, OAUTH2_REDIRECT_URL, REDOC_URL

POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "media-src 'self' blob:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
FRAMING_ONLY = "frame-ancestors 'none'"
DOC_PAGES = frozenset({DOCS_URL, OAUTH2_REDIRECT_URL, REDOC_URL})


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = FRAMING_ONLY if scope["path"] in DOC_PAGES else POLICY

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("Content-Security-Policy", policy)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("X-Frame-Options", "DENY")
                headers.setdefault("Referrer-Policy", "no-referrer")
            await send(message)

        await self.app(scope, receive, send_with_headers)
