"""The domain's errors: what the service refuses, and why, in words a person can act on.

Service functions raise these (classifying too: an unknown model, an unreadable image, too
many images, a corrupt stored model); one table maps each kind to its HTTP status
(api/errors.py), which the API answers and the console shows its page with, and the worker
fails a job with the same message.
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


class TooLarge(Problem):
    """More was sent than the service takes at once: images per request (HTTP 413)."""


class Unsupported(Problem):
    """The service cannot do this with the software installed; the message names the
    versions it needs (HTTP 501)."""


class Unavailable(Problem):
    """What the request needs is there but cannot be used now: a stored model failing its
    checksum. Others still serve (HTTP 503)."""
