"""Every error answer, built and rendered in one place: FastAPI's shape, `{"detail": …}`, with
a 422's `detail` the list FastAPI itself gives. Error answers echo what the client sent, so
they are made safe to render whatever bytes that was.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from service.problems import (
    BadContent,
    Conflict,
    Invalid,
    NotFound,
    Problem,
    TooLarge,
    Unavailable,
    Unsupported,
)


def unprocessable(
    errors: Iterable[Mapping[str, Any]], *, prefix: Sequence[str | int] = ()
) -> RequestValidationError:
    """The one place a 422 is built: `errors` as pydantic lists them (type, loc, msg, input,
    maybe ctx), each `loc` under `prefix`, e.g. ("body",) for a model validated by hand."""
    return RequestValidationError([{**error, "loc": (*prefix, *error["loc"])} for error in errors])


def invalid(
    location: list[str | int], message: str, *, part: str = "body"
) -> RequestValidationError:
    """A 422 for checks pydantic cannot make alone; `part` is where the field is: body, query
    or path."""
    error = {"type": "value_error", "loc": tuple(location), "msg": message, "input": None}
    return unprocessable([error], prefix=(part,))


def validation_detail(errors: Sequence[Any]) -> list[Any]:
    """The `detail` list of a 422 as it is answered."""
    return json_safe(list(errors))


def json_safe(value: Any) -> Any:
    """`value` made renderable as UTF-8 JSON. Error answers echo what the client sent, and
    bytes that are not UTF-8, lone surrogates (valid in a JSON string escape) or NaN would
    otherwise turn the error answer itself into a 500."""
    if isinstance(value, Mapping):
        return {json_safe(str(key)): json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, str):
        return value.encode("utf-8", errors="backslashreplace").decode("utf-8")
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    try:  # pydantic models, dataclasses, exceptions in `ctx`: as FastAPI itself encodes them
        encoded = jsonable_encoder(value, custom_encoder=_SAFE_ENCODERS)
    except Exception:  # what FastAPI cannot encode either is shown as Python shows it
        return ascii(value)
    return json_safe(encoded)


# FastAPI's encoder decodes bytes (say, inside a model) as strict UTF-8; a client's need not be.
_SAFE_ENCODERS: dict[Any, Callable[[Any], Any]] = {
    bytes: lambda data: data.decode("utf-8", errors="replace")
}


# The one mapping of the domain's problems to HTTP, for the API and the console alike; a
# subclass (storage's BadCursor is an Invalid) answers as its nearest kind listed here.
STATUS: dict[type[Problem], int] = {
    Problem: 400,
    BadContent: 400,
    NotFound: 404,
    Conflict: 409,
    TooLarge: 413,
    Invalid: 422,
    Unsupported: 501,
    Unavailable: 503,
}


async def unprocessable_answer(request: Request, error: Exception) -> JSONResponse:
    """Every 422, FastAPI's and ours, in FastAPI's shape; `input` echoes what was sent, which
    may be bytes no JSON answer can hold as they are (FastAPI's own handler then fails: 500)."""
    assert isinstance(error, RequestValidationError)
    return JSONResponse({"detail": validation_detail(error.errors())}, status_code=422)


async def http_error_answer(request: Request, error: Exception) -> Response:
    """FastAPI's answer for an HTTPException, its detail made safe to render the same way."""
    assert isinstance(error, HTTPException)
    safe = HTTPException(error.status_code, json_safe(error.detail), error.headers)
    return await http_exception_handler(request, safe)


async def problem_answer(request: Request, error: Exception) -> Response:
    """The domain's problems: their status from STATUS, a 422 in FastAPI's shape locating
    the field."""
    assert isinstance(error, Problem)
    if isinstance(error, Invalid):
        return await unprocessable_answer(
            request, invalid(list(error.field), error.message, part=error.part)
        )
    return await http_error_answer(request, HTTPException(status_of(error), str(error)))


def status_of(problem: Problem) -> int:
    """The HTTP status a domain problem is answered with, for the API and the console."""
    return next(STATUS[kind] for kind in type(problem).__mro__ if kind in STATUS)


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, unprocessable_answer)
    app.add_exception_handler(HTTPException, http_error_answer)
    app.add_exception_handler(Problem, problem_answer)
