"""Log lines that say what they are about: the job, model, worker and request behind them.

The ids live in context variables: the API's request-id middleware sets `request_id` for a
request (and whatever runs for it, worker threads included: Starlette and AnyIO copy the
context into them), the worker sets `job_id`, `worker` and `model_id` while it processes a
job. A log record factory stamps them on every record when it is made, in the thread that
logs, so any handler or formatter can use them; with `LOG_FORMAT=json` each line is one
JSON object carrying those that are known. Text lines stay as they were.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FIELDS = ("job_id", "model_id", "worker", "request_id")
_context: dict[str, ContextVar[str | None]] = {
    name: ContextVar(name, default=None) for name in FIELDS
}


@contextmanager
def context(**fields: str | None) -> Iterator[None]:
    """Log lines inside carry these ids (None clears one); the previous ones come back after."""
    tokens = [(_context[name], _context[name].set(value)) for name, value in fields.items()]
    try:
        yield
    finally:
        for variable, token in reversed(tokens):
            variable.reset(token)


def bind(**fields: str | None) -> None:
    """Set ids for the rest of the current context (a request's task, a thread's run)."""
    for name, value in fields.items():
        _context[name].set(value)


def current() -> dict[str, str]:
    """The ids known here and now."""
    return {name: value for name, variable in _context.items() if (value := variable.get())}


def stamp_records() -> None:
    """Stamp the ids on every record, once per process, whatever logger made it."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "stamps_context", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        for name, variable in _context.items():
            setattr(record, name, variable.get())
        return record

    factory.stamps_context = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, the ids that
    are set, and the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(
            (name, value) for name in FIELDS if (value := getattr(record, name, None)) is not None
        )
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def configure_logging(level: str, log_format: str = "text") -> None:
    """The service's own lines at `level`; libraries (Alembic, TensorFlow, httpx) only from
    WARNING up, unless `level` is DEBUG. `log_format` "json": one JSON object a line."""
    stamp_records()
    numeric = logging.getLevelName(level)
    libraries = logging.DEBUG if numeric == logging.DEBUG else logging.WARNING
    logging.basicConfig(level=libraries, format=TEXT_FORMAT, force=True)
    if log_format == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())
    logging.getLogger("service").setLevel(numeric)
