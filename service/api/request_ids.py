"""Every request gets an id: the client's `X-Request-ID` when it sent a sane one, else a new
one. It is on every log line made for the request (service/logs.py) and in the answer's
`X-Request-ID`, so a client's report and the server's logs meet.

Plain ASGI rather than Starlette's BaseHTTPMiddleware: streamed answers (the jobs' event
stream) pass through untouched, and the context variable is set in the request's own task.
"""

from __future__ import annotations

import re
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import logs

HEADER = "X-Request-ID"
# What a client may choose: short, and nothing a log line or a header could be forged with.
_SANE = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class RequestIds:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next(
            (value.decode("latin-1") for key, value in scope["headers"] if key == b"x-request-id"),
            "",
        )
        request_id = given if _SANE.fullmatch(given) else uuid.uuid4().hex

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[HEADER] = request_id
            await send(message)

        with logs.context(request_id=request_id, job_id=None, model_id=None, worker=None):
            await self.app(scope, receive, send_with_id)
