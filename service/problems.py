"""The domain's errors: what the service refuses, and why, in words a person can act on.

Service functions raise these; the API maps them to HTTP statuses (api/errors.py), the
console shows them on the page, and the worker fails a job with the same message.
"""

from __future__ import annotations


class Problem(Exception):
    """A request cannot be carried out as asked; the message says why.

    `field` locates the problem in the request (("training", "class_weight", "cats")) when it
    lies in one field.
    """

    def __init__(
        self, message: str, *, field: tuple[str | int, ...] = (), part: str = "body"
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.part = part  # where the field is: body, query or path

    def __str__(self) -> str:
        where = ".".join(str(part) for part in self.field)
        return f"{where}: {self.message}" if where else self.message


class BadContent(Problem):
    """What was sent cannot be used: a corrupt image, a zip without class folders (HTTP 400)."""


class NotFound(Problem):
    """Something the request names does not exist (HTTP 404)."""


class Invalid(Problem):
    """The request does not fit what it refers to (HTTP 422)."""


class Conflict(Problem):
    """The request conflicts with the current state (HTTP 409)."""


class Unsupported(Problem):
    """The service cannot do this with the software installed; the message names the
    versions it needs (HTTP 501)."""
