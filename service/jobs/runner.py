"""The worker process: claim a job, run its kind's task under the lease, store what the task
made; repeat. It never serves HTTP, and knows no kind: it looks each job's kind up in the
registry it is given (service/job_kinds.py) and fails a job whose kind is not there.

    claim → look up the kind → validate the stored spec → run the task (the monitor keeps the
    lease, writes progress, watches for cancel) → store its outcome, fenced by the lease
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from service import logs, metrics, webhooks
from service.config import Settings
from service.jobs import devices, presence
from service.jobs.context import JobContext, JobMonitor, WorkerResources
from service.jobs.kinds import JobStopped, KindRegistry, Outcome
from service.jobs.queue import (
    ACTIVE,
    Claim,
    JobStatus,
    claim_next_job,
    complete,
    end_job,
    release_job,
    runnable_spec,
    status_of,
)
from service.ml import checkpoint
from service.ml.images import limit_concurrent_decodes
from service.problems import Problem
from service.storage.db import Database
from service.storage.tables import Job, new_id, utcnow

log = logging.getLogger("service.worker")


@dataclass
class Worker:
    db: Database
    settings: Settings
    kinds: KindRegistry
    worker_id: str = ""
    # The GPUs it claims jobs for; None: found on the first claim (see `claim_gpus`).
    gpus: int | None = None
    resources: WorkerResources = field(default_factory=WorkerResources)

    def __post_init__(self) -> None:
        if not self.worker_id:
            self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{new_id('w')[2:10]}"
        self.shutdown = threading.Event()
        self._presence: presence.Presence | None = None
        self._monitor: JobMonitor | None = None

    def request_shutdown(self) -> None:
        """Stop after the current step; the job goes back to the queue."""
        self.shutdown.set()
        if self._monitor is not None:
            self._monitor.shutdown.set()

    def run_forever(self) -> None:
        # The worker's row in GET /workers: registered now, beating while it runs.
        found = devices.configure_devices(self.settings)
        self.gpus = devices.claimed_gpus(self.settings.worker_gpus, found)
        log.info(
            "worker %s training on %s; claims jobs asking for up to %d GPU(s)",
            self.worker_id,
            devices.describe_devices(found),
            self.gpus,
        )
        row = presence.Presence(
            self.db,
            worker_id=self.worker_id,
            devices=found,
            gpus=self.gpus,
            lease_seconds=self.settings.lease_seconds,
        )
        with row:
            self._presence = row
            self.prune_checkpoints()
            while not self.shutdown.is_set():
                if not self.run_once():
                    self.shutdown.wait(self.settings.poll_seconds)
        self._presence = None
        self.resources.close()

    def claim_gpus(self) -> int:
        """The GPUs it claims jobs for: set by run_forever from its devices; for a worker
        driven by run_once alone (tests, benches), WORKER_GPUS or the GPUs TensorFlow shows."""
        if self.gpus is None:
            import tensorflow as tf

            shown = len(tf.config.get_visible_devices("GPU"))
            self.gpus = shown if self.settings.worker_gpus is None else self.settings.worker_gpus
        return self.gpus

    def run_until_idle(self) -> int:
        """Process jobs until none is waiting; the number processed."""
        count = 0
        while self.run_once():
            count += 1
        return count

    def run_once(self) -> bool:
        claim = claim_next_job(
            self.db,
            worker_id=self.worker_id,
            lease_seconds=self.settings.lease_seconds,
            max_attempts=self.settings.max_attempts,
            gpus=self.claim_gpus(),
        )
        if claim is None:
            return False
        if self._presence is not None:  # GET /workers names the job at once
            self._presence.working_on(claim.job_id)
        # The job's ids on every log line, its wait and run time measured.
        model_id = claim.spec.get("model_id")  # an export's or a batch prediction's
        with logs.context(job_id=claim.job_id, worker=self.worker_id, model_id=model_id):
            if claim.created_at is not None:
                metrics.observe_claim(claim.kind, (utcnow() - claim.created_at).total_seconds())
            log.info("job %s: attempt %d", claim.job_id, claim.attempt)
            started = time.monotonic()
            self.process(claim)
            metrics.observe_run(
                claim.kind, status_of(self.db, claim.job_id), time.monotonic() - started
            )
        if self._presence is not None:
            self._presence.working_on(None)
        return True

    def process(self, claim: Claim) -> None:
        with JobMonitor(self.db, claim, self.settings) as monitor:
            self._monitor = monitor
            if self.shutdown.is_set():
                monitor.shutdown.set()
            try:
                outcome: Outcome | None = self._run_task(claim, monitor)
            except JobStopped:
                outcome = None
            except Problem as problem:
                self._refused(claim, problem)
                return
            except Exception as error:
                log.error("job %s failed:\n%s", claim.job_id, traceback.format_exc())
                self._fail(claim, f"{type(error).__name__}: {error}")
                return
            finally:
                self._monitor = None
        if outcome is None or monitor.should_stop():
            self._stopped(claim, monitor)
        else:
            self._store(claim, outcome)

    def _store(self, claim: Claim, outcome: Outcome) -> None:
        try:
            stored = complete(self.db, claim, outcome.store)
        except Problem as problem:  # found while storing (rolled back): the job fails with it
            self._refused(claim, problem)
            return
        if not stored:
            log.warning("job %s: lease lost before its result was stored", claim.job_id)
        else:
            self._forget_checkpoint(claim)
            log.info("job %s succeeded: %s", claim.job_id, outcome.stored)

    def _run_task(self, claim: Claim, monitor: JobMonitor) -> Outcome:
        kind = self.kinds.get(claim.kind)  # UnknownKind fails the job, naming it
        spec = runnable_spec(claim.spec, kind.spec)
        context = JobContext(self.db, self.settings, claim, monitor, self.resources)
        return kind.load_task()(context, spec)

    def _refused(self, claim: Claim, problem: Problem) -> None:
        """A problem the job's own inputs caused: its message is the job's error, no trace."""
        log.warning("job %s failed: %s", claim.job_id, problem)
        self._fail(claim, str(problem))

    def _fail(self, claim: Claim, reason: str) -> None:
        if end_job(self.db, claim, status=JobStatus.FAILED, error=reason):
            self._forget_checkpoint(claim)

    def _stopped(self, claim: Claim, monitor: JobMonitor) -> None:
        if monitor.stop_reason == "cancelled":
            if end_job(self.db, claim, status=JobStatus.CANCELLED):
                self._forget_checkpoint(claim)
            log.info("job %s cancelled", claim.job_id)
        elif monitor.stop_reason == "lease lost":
            log.warning("job %s: lease taken over; its new holder carries on", claim.job_id)
        else:
            release_job(self.db, claim)
            log.info("job %s released to the queue", claim.job_id)

    def _forget_checkpoint(self, claim: Claim) -> None:
        """The job has ended: nothing will resume from its checkpoint."""
        checkpoint.remove(self.settings.checkpoints / claim.job_id)

    def prune_checkpoints(self) -> None:
        """Remove checkpoints of jobs that ended without this worker's knowing (cancelled
        while no worker held them, or ended by a worker that died before removing them)."""
        folder = self.settings.checkpoints
        if not folder.is_dir():
            return
        names = [entry.name for entry in folder.iterdir() if entry.is_dir()]
        with self.db.session() as session:
            live = set(
                session.scalars(select(Job.id).where(Job.id.in_(names), Job.status.in_(ACTIVE)))
            )
        for name in names:
            if name not in live:
                checkpoint.remove(folder / name)


def run_worker(db: Database, settings: Settings, kinds: KindRegistry) -> None:
    limit_concurrent_decodes(settings.max_concurrent_decodes)
    worker = Worker(db, settings, kinds)

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: finishing the current step, then releasing the job", signum)
        worker.request_shutdown()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    started = time.monotonic()
    # Metrics on METRICS_PORT, and this process's share of webhook delivery.
    if settings.metrics_port:
        metrics.serve_worker_metrics(settings)
    deliverer = webhooks.Deliverer(db, settings).start()
    worker.run_forever()
    deliverer.stop()
    log.info("worker %s stopped after %.0f s", worker.worker_id, time.monotonic() - started)
