"""The job engine: one queue for every kind of job, and the worker loop that runs them.

- `queue`: what a job is and may become (status, transitions, lease, the "in use" rule);
- `kinds`: how a kind declares itself (spec, task, outcome), and the registry of kinds;
- `context`: what a running task sees (the monitor, its lease, worker-wide resources);
- `runner`: the worker loop; `devices` and `presence`: what a worker has and that it is there.

It knows no kind by name: service/job_kinds.py lists the service's kinds. The lifecycle is
re-exported here, so callers write `jobs.claim_next_job(…)`.
"""

from service.jobs.queue import (
    ACTIVE,
    FINISHED,
    Claim,
    Heartbeat,
    JobStatus,
    cancel,
    claim_next_job,
    complete,
    end_job,
    ensure_unused,
    get_job,
    heartbeat,
    list_jobs,
    queue_job,
    release_job,
    restore_history,
    runnable_spec,
    status_of,
    what_fails,
    while_owned,
)

__all__ = [
    "ACTIVE",
    "FINISHED",
    "Claim",
    "Heartbeat",
    "JobStatus",
    "cancel",
    "claim_next_job",
    "complete",
    "end_job",
    "ensure_unused",
    "get_job",
    "heartbeat",
    "list_jobs",
    "queue_job",
    "release_job",
    "restore_history",
    "runnable_spec",
    "status_of",
    "what_fails",
    "while_owned",
]
