"""The workers table: each worker process says what it has, and that it is still there.

A worker registers at start (its devices, how many GPUs it claims jobs for, the host's RAM),
beats every `beat_seconds(lease)` while it runs — idle or busy, from a thread of its own, so
that a long training step never makes it look gone — and marks itself stopped on a clean
shutdown. One that dies without stopping keeps its last heartbeat, and reads as "lost" once
that is older than LOST_AFTER_LEASES leases: by then its job's lease has run out too and
another worker may have taken the job over.

The rows are what the workers said, for people (GET /workers, the console); the claim does
not read them: a worker passes its own GPU count to `jobs.claim_next_job`.

TensorFlow-free: the worker finds its devices (service/jobs/devices.py) and passes them in.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from service.jobs.devices import Device, host_memory_bytes
from service.storage.db import Database
from service.storage.tables import WorkerRow, utcnow

log = logging.getLogger("service.workers")

# A worker silent for this many leases is listed as lost (its job's lease has run out too).
LOST_AFTER_LEASES = 2
# Rows silent this long are deleted when a worker registers: every restart adds a row.
FORGET_AFTER = timedelta(days=7)


class WorkerStatus(StrEnum):
    ALIVE = "alive"
    LOST = "lost"
    STOPPED = "stopped"


@dataclass(frozen=True)
class WorkerView:
    """A worker as listed: its row, and what its heartbeat's age makes of it."""

    row: WorkerRow
    status: WorkerStatus
    heartbeat_age_seconds: float


def beat_seconds(lease_seconds: float) -> float:
    """How often a worker beats: three times a lease, like a job's heartbeat."""
    return lease_seconds / 3


def register(
    db: Database,
    *,
    worker_id: str,
    devices: Sequence[Device],
    gpus: int,
    now: datetime | None = None,
) -> None:
    """Insert or refresh the worker's row as started now, and forget long-silent rows."""
    now = now or utcnow()
    values: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "devices": [asdict(device) for device in devices],
        "gpus": gpus,
        "memory_bytes": host_memory_bytes(),
        "job_id": None,
        "started_at": now,
        "heartbeat_at": now,
        "stopped_at": None,
    }
    with db.session(write=True) as session:
        session.execute(delete(WorkerRow).where(WorkerRow.heartbeat_at < now - FORGET_AFTER))
        row = session.get(WorkerRow, worker_id)
        if row is None:
            session.add(WorkerRow(id=worker_id, **values))
        else:
            for name, value in values.items():
                setattr(row, name, value)


def beat(db: Database, *, worker_id: str, job_id: str | None, now: datetime | None = None) -> bool:
    """Record that the worker is alive and which job it runs; False if it has no row."""
    with db.session(write=True) as session:
        result = session.execute(
            update(WorkerRow)
            .where(WorkerRow.id == worker_id)
            .values(heartbeat_at=now or utcnow(), job_id=job_id)
        )
        return result.rowcount == 1


def stop(db: Database, *, worker_id: str, now: datetime | None = None) -> None:
    """Mark the worker stopped (a clean shutdown): listed as such, never as lost."""
    now = now or utcnow()
    with db.session(write=True) as session:
        session.execute(
            update(WorkerRow)
            .where(WorkerRow.id == worker_id)
            .values(heartbeat_at=now, stopped_at=now, job_id=None)
        )


def status_of(row: WorkerRow, *, lease_seconds: float, now: datetime) -> WorkerStatus:
    if row.stopped_at is not None:
        return WorkerStatus.STOPPED
    silent = (now - row.heartbeat_at).total_seconds()
    return WorkerStatus.LOST if silent > LOST_AFTER_LEASES * lease_seconds else WorkerStatus.ALIVE


def list_workers(
    session: Session, *, lease_seconds: float, now: datetime | None = None
) -> list[WorkerView]:
    """Every worker heard from in FORGET_AFTER (older rows may linger until the next
    registration), newest start first."""
    now = now or utcnow()
    rows = session.scalars(
        select(WorkerRow).order_by(WorkerRow.started_at.desc(), WorkerRow.id)
    ).all()
    return [
        WorkerView(
            row=row,
            status=status_of(row, lease_seconds=lease_seconds, now=now),
            heartbeat_age_seconds=max(0.0, (now - row.heartbeat_at).total_seconds()),
        )
        for row in rows
    ]


class Presence:
    """A worker's row kept current while it runs: registered on enter, a beat every
    `beat_seconds(lease)` from a thread of its own (and at once when its job changes),
    stopped on exit.

    A beat that fails (the database briefly unreachable) is logged and tried again at the
    next one; a row that has gone (deleted by hand) is registered again.
    """

    def __init__(
        self,
        db: Database,
        *,
        worker_id: str,
        devices: Sequence[Device],
        gpus: int,
        lease_seconds: float,
    ) -> None:
        self.db = db
        self.worker_id = worker_id
        self.devices = list(devices)
        self.gpus = gpus
        self.interval = beat_seconds(lease_seconds)
        self._job_id: str | None = None
        self._wake = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worker-heartbeat", daemon=True)

    def __enter__(self) -> Presence:
        self._register()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._wake.set()
        self._thread.join()
        try:
            stop(self.db, worker_id=self.worker_id)
        except Exception:  # shutting down anyway: the row will read as lost instead
            log.exception("worker %s: could not mark itself stopped", self.worker_id)

    def working_on(self, job_id: str | None) -> None:
        """The job the worker now runs (None: idle), written at once by the thread."""
        self._job_id = job_id
        self._wake.set()

    def _register(self) -> None:
        register(self.db, worker_id=self.worker_id, devices=self.devices, gpus=self.gpus)

    def _run(self) -> None:
        while not self._done.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._done.is_set():
                return
            try:
                if not beat(self.db, worker_id=self.worker_id, job_id=self._job_id):
                    self._register()
                    beat(self.db, worker_id=self.worker_id, job_id=self._job_id)
            except Exception:
                log.exception("worker %s: heartbeat failed", self.worker_id)
