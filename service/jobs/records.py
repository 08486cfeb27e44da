"""Records a job of some kind fills in (a batch prediction, a comparison): each row keeps its
job's id in `job_id`, and is read with its job, whose status is the record's."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from service.jobs.queue import queue_job
from service.problems import NotFound
from service.storage.pages import Page, PageOf, fetch_page
from service.storage.tables import Job


def queue_for(record: Any, session: Session, kind: str, name: str, spec: BaseModel) -> Any:
    """Queue the job that fills `record` in (holding the dataset its spec names, if any) and
    store the record, pointing at it."""
    job = queue_job(
        session, kind=kind, name=name, spec=spec, dataset_id=getattr(spec, "dataset_id", None)
    )
    record.job_id = job.id
    session.add(record)
    session.flush()
    return record


def with_jobs(table: Any) -> Select[Any]:
    """`table`'s rows, each with its job (None once the job is deleted)."""
    return select(table, Job).outerjoin(Job, Job.id == table.job_id)


def page_with_jobs(session: Session, table: Any, page: Page) -> PageOf[tuple[Any, Job | None]]:
    """A page of `table`'s records, newest first, each with its job."""
    return fetch_page(session, with_jobs(table), table, page, scalars=False, key=lambda r: r[0])


def get_with_job(session: Session, table: Any, record_id: str, what: str) -> tuple[Any, Job | None]:
    """The record and its job; NotFound naming `what` ("batch prediction") and the id."""
    row = session.execute(with_jobs(table).where(table.id == record_id)).first()
    if row is None:
        raise NotFound(f"no {what} {record_id!r}")
    return row[0], row[1]


def record_status(job: Job | None) -> tuple[str, str | None]:
    """(status, error) of a record, from its job's."""
    if job is None:
        return "failed", "its job was removed"
    return job.status, job.error
