"""Kinds of job, and the registry the engine finds them in.

A kind declares, once, everything the engine needs to queue, run and describe its jobs:
its name (the `kind` column), the model its stored spec validates against, and the task a
worker runs, named by import path so that the API, which lists and validates kinds, never
imports a task's TensorFlow. The task returns an `Outcome`: what its success stores, which
the engine writes in the transaction that marks the job succeeded, fenced by the lease.

The engine knows no kind by name: service/job_kinds.py builds the registry the service runs
with, and a job whose kind is not in it fails with a reason naming the kind (as
procrastinate fails a job whose task is unknown) instead of being guessed at.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel
from sqlalchemy.orm import Session

from service.problems import Problem

if TYPE_CHECKING:
    from service.jobs.context import JobContext

SpecT = TypeVar("SpecT", bound=BaseModel)


class JobStopped(Exception):
    """A task saw `should_stop` and gave up: the runner cancels the job, releases it to the
    queue or leaves it to the lease's new holder, by why it was stopped."""


class UnknownKind(Problem):
    """A job of a kind this service does not register (queued by a newer or older version)."""


@dataclass(frozen=True)
class Outcome:
    """What a task's success leaves behind: `store` runs in the transaction that marks the
    job succeeded (nothing of it is written when the lease was lost), and `stored` is what
    the log calls it ("model m_…")."""

    store: Callable[[Session], None]
    stored: str


Task = Callable[["JobContext", Any], Outcome]


@dataclass(frozen=True)
class JobKind(Generic[SpecT]):
    """One kind of job: `name` as stored, the `spec` model, the `task` as "module:function"
    (imported by the worker the first time it runs one), and a sentence for the docs."""

    name: str
    spec: type[SpecT]
    task: str
    summary: str

    def load_task(self) -> Task:
        module, _, function = self.task.partition(":")
        task: Task = getattr(importlib.import_module(module), function)
        return task


class KindRegistry:
    """The kinds a service runs, by name, in the order they were registered."""

    def __init__(self, kinds: Iterable[JobKind[Any]]) -> None:
        self._kinds: dict[str, JobKind[Any]] = {}
        for kind in kinds:
            if kind.name in self._kinds:
                raise ValueError(f"job kind {kind.name!r} registered twice")
            self._kinds[kind.name] = kind

    def __iter__(self) -> Iterator[JobKind[Any]]:
        return iter(self._kinds.values())

    def __contains__(self, name: object) -> bool:
        return name in self._kinds

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._kinds)

    def get(self, name: str) -> JobKind[Any]:
        """The kind called `name`; UnknownKind naming it and the known ones otherwise."""
        try:
            return self._kinds[name]
        except KeyError:
            raise UnknownKind(
                f"job kind {name!r} is not registered in this service "
                f"(it runs: {', '.join(self._kinds)})"
            ) from None
