"""Rendering the console's pages: templates, what every page knows, and who may see them."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from service.api.auth import request_session
from service.config import Settings
from service.security import COOKIE, CSRF_HEADER, Session, csrf_token, new_session

HERE = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=HERE / "templates")


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "—"


def _count(number: int | float | None) -> str:
    return "—" if number is None else f"{number:,}"


def _percent(number: float | None, digits: int = 1) -> str:
    return "—" if number is None else f"{100 * number:.{digits}f} %"


def _size(number: int | None) -> str:
    """Bytes for a person: 812 B, 3.4 kB, 9.1 MB (powers of 1000, as file managers show)."""
    if number is None:
        return "—"
    for unit in ("B", "kB", "MB"):
        if number < 1000:
            return f"{number} {unit}" if unit == "B" else f"{number:.1f} {unit}"
        number /= 1000
    return f"{number:.1f} GB"


def _fraction(number: float) -> str:
    """A small figure such as a probability difference: four decimals, or two significant
    digits when it is too small for them to show (3.1e-07, not 0.0000)."""
    return f"{number:.4f}" if number == 0 or abs(number) >= 5e-5 else f"{number:.1e}"


templates.env.filters.update(
    when=_when, count=_count, percent=_percent, size=_size, fraction=_fraction
)


class LoginRequired(Exception):
    """The page needs a session (API_KEY is set and the browser has none that is valid)."""

    def __init__(self, path: str, expired: bool) -> None:
        super().__init__(path)
        self.path = path
        self.expired = expired


def console_session(request: Request) -> Session | None:
    """The browser's session; None when the service has no API key (then no login at all)."""
    settings: Settings = request.app.state.settings
    if settings.api_key is None:
        return None
    session = request_session(request)
    if session is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise LoginRequired(target, expired=COOKIE in request.cookies)
    return session


def login_redirect(request: Request, error: Exception) -> Response:
    assert isinstance(error, LoginRequired)
    url = f"/login?next={quote(error.path, safe='')}" + ("&expired=1" if error.expired else "")
    if request.headers.get("HX-Request"):
        # htmx swaps fragments: tell it to load the login page as a whole page instead.
        return Response(status_code=401, headers={"HX-Redirect": url})
    return RedirectResponse(url, status_code=303)


def set_session_cookie(request: Request, response: Response, cookie: str, max_age: int) -> None:
    settings: Settings = request.app.state.settings
    response.set_cookie(
        COOKIE,
        cookie,
        max_age=max_age,
        httponly=True,
        samesite="strict",
        # COOKIE_SECURE: behind a proxy that ends TLS, uvicorn itself sees plain http.
        secure=settings.cookie_secure or request.url.scheme == "https",
    )


def page(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    settings: Settings = request.app.state.settings
    session = request_session(request)
    cookie = None
    if session is None and settings.api_key is None:
        # No key, no login: the page's CSRF token needs a session all the same, anonymous.
        session, cookie = new_session(settings)
    response = templates.TemplateResponse(
        request,
        template,
        {
            "csrf_header": CSRF_HEADER,
            "csrf_token": csrf_token(settings, session) if session else "",
            "logged_in": session is not None and settings.api_key is not None,
            "path": request.url.path,
            **context,
        },
        status_code=status_code,
    )
    if cookie is not None:
        set_session_cookie(request, response, cookie, settings.session_seconds)
    return response
