"""The console's way in: login with the API key (a signed session cookie), logout."""

from __future__ import annotations

import math
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from service.api.deps import DatabaseDep, SettingsDep
from service.security import COOKIE, LoginThrottle, client_key, key_matches, new_session
from service.storage import revocations
from service.storage.tables import URL_LENGTH
from service.web.common import (
    EXPIRED_NOTICE_SECONDS,
    SessionUser,
    console_write,
)
from service.web.render import page, set_session_cookie

router = APIRouter(include_in_schema=False)

# -- login ------------------------------------------------------------------------------


def _safe_next(target: str) -> str:
    return target if target.startswith("/console") and "//" not in target else "/console"


@router.get("/", response_class=RedirectResponse)
def root() -> RedirectResponse:
    return RedirectResponse("/console", status_code=303)


@router.get("/login", response_class=HTMLResponse)
def login_page(
    request: Request, settings: SettingsDep, next: str = "/console", expired: bool = False
) -> Response:
    if settings.api_key is None:
        return RedirectResponse(_safe_next(next), status_code=303)
    message = "Your session has expired: sign in again." if expired else None
    return page(request, "login.html", next=_safe_next(next), message=message)


@router.post("/login", response_class=HTMLResponse)
def login(
    request: Request,
    settings: SettingsDep,
    api_key: Annotated[str, Form(max_length=1000)],
    next: Annotated[str, Form(max_length=URL_LENGTH)] = "/console",
) -> Response:
    if settings.api_key is None:
        return RedirectResponse(_safe_next(next), status_code=303)
    throttle: LoginThrottle = request.app.state.login_throttle
    client = client_key(request.client.host if request.client is not None else None)
    wait = throttle.retry_after(client)
    if wait > 0:
        # Before the key is compared: a blocked client learns nothing from its guesses.
        seconds = math.ceil(wait)
        message = f"Too many wrong keys: try again in {seconds} s."
        refused = page(request, "login.html", 429, next=_safe_next(next), message=message)
        refused.headers["Retry-After"] = str(seconds)
        return refused
    if not key_matches(settings, api_key):
        throttle.failed(client)
        return page(
            request, "login.html", 401, next=_safe_next(next), message="That is not the API key."
        )
    throttle.succeeded(client)
    _, cookie = new_session(settings)
    response = RedirectResponse(_safe_next(next), status_code=303)
    # Kept past its expiry, so that the page can say "expired" rather than nothing.
    set_session_cookie(request, response, cookie, settings.session_seconds + EXPIRED_NOTICE_SECONDS)
    return response


@router.post("/logout", dependencies=[Depends(console_write)])
def logout(user: SessionUser, database: DatabaseDep) -> Response:
    if user is not None:
        # The cookie is signed and carries its expiry: only the server can end it sooner.
        revocations.revoke(database, user.nonce, user.expires)
    response = Response(status_code=204, headers={"HX-Redirect": "/login"})
    response.delete_cookie(COOKIE)
    return response
