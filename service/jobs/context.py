"""What a running task sees of the engine: the monitor that keeps its lease alive, writes its
progress and tells it to stop, and the context a task is called with."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from service import metrics
from service.config import Settings
from service.jobs.queue import Claim, heartbeat, while_owned
from service.storage.db import Database

log = logging.getLogger("service.worker")

T = TypeVar("T")


class JobMonitor:
    """A running job's observer: keeps the lease alive, writes progress, watches for cancel.

    A background thread does the database work every `interval` seconds, so a training
    step only updates memory; it also renews the lease while data loads or the model exports.
    """

    def __init__(self, db: Database, claim: Claim, settings: Settings) -> None:
        self.db = db
        self.claim = claim
        self.lease_seconds = settings.lease_seconds
        self.interval = min(settings.progress_seconds, settings.lease_seconds / 3)
        self.stop_reason: str | None = None
        self.shutdown = threading.Event()
        self._progress: dict[str, Any] | None = None
        self._written: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="job-heartbeat", daemon=True)

    def __enter__(self) -> JobMonitor:
        self._beat()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    # -- TrainingObserver -----------------------------------------------------------------

    def on_progress(self, progress: dict[str, int]) -> None:
        self._progress = progress

    def on_epoch(self, row: dict[str, float]) -> None:
        self._beat(history_row=row)
        metrics.observe_epoch(row.get("seconds", 0.0))

    def on_pass(self, step: int, steps: int) -> None:
        """Progress of a job that makes one pass over its items (images, files), in the shape
        every job's progress has (GET /jobs/{id}): a step per item."""
        self.on_progress(
            {"stage": 1, "stages": 1, "epoch": 1, "epochs": 1, "step": step, "steps": steps}
        )

    def should_stop(self) -> bool:
        return self.stop_reason is not None or self.shutdown.is_set()

    def flush(self) -> None:
        """Write the latest progress now, not at the next beat: the job's last word on it."""
        self._beat()

    # -- the heartbeat --------------------------------------------------------------------

    def _run(self) -> None:
        while not self._done.wait(self.interval):
            try:
                self._beat()
            except Exception:  # a busy or briefly unreachable database: try again next beat
                log.exception("heartbeat for job %s failed", self.claim.job_id)

    def _beat(self, history_row: dict[str, Any] | None = None) -> None:
        with self._lock:
            progress = self._progress
            changed = progress is not None and progress != self._written
            beat = heartbeat(
                self.db,
                self.claim,
                lease_seconds=self.lease_seconds,
                progress=progress if changed else None,
                history_row=history_row,
            )
            if changed:
                self._written = progress
        if not beat.lease_held:
            self.stop_reason = "lease lost"
        elif beat.cancel_requested:
            self.stop_reason = "cancelled"


class WorkerResources:
    """What a worker process keeps across the jobs it runs (a cache of loaded models, say),
    made by the first task that asks and closed when the worker stops."""

    def __init__(self) -> None:
        self._made: dict[str, Any] = {}
        self._closers: list[Callable[[], None]] = []

    def shared(
        self, key: str, make: Callable[[], T], close: Callable[[T], None] | None = None
    ) -> T:
        if key not in self._made:
            made = make()
            self._made[key] = made
            if close is not None:
                self._closers.append(lambda: close(made))
        value: T = self._made[key]
        return value

    def close(self) -> None:
        for closer in reversed(self._closers):
            closer()
        self._made.clear()
        self._closers.clear()


@dataclass
class JobContext:
    """What a task is called with, beside its validated spec."""

    db: Database
    settings: Settings
    claim: Claim
    monitor: JobMonitor
    resources: WorkerResources = field(default_factory=WorkerResources)

    def write_while_owned(self, write: Callable[[Session], None]) -> bool:
        """Write something of the job's now, fenced by its lease (see queue.while_owned)."""
        return while_owned(self.db, self.claim, write)
