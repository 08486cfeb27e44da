"""The "search" task: the range test, the head trials on cached features, the finalists
fine-tuned with successive halving (service/searches/study.py), each trial stored as it ends
and announced on the job's event stream; a job resumed after its worker died starts from the
trials stored. Its success stores the best spec and, with `train_best`, queues its training."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, fields
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.jobs.context import JobContext
from service.jobs.kinds import JobStopped, Outcome
from service.jobs.queue import restore_history
from service.problems import Invalid, NotFound
from service.searches.spec import SearchSpec
from service.searches.study import Search, Trial, picked_rate, range_spec
from service.searches.trials import HEAD, check_freeze_depths, job_spec
from service.storage.feature_store import DatabaseFeatureStore
from service.storage.tables import Search as SearchRecord
from service.storage.tables import SearchTrial
from service.training.service import check_references, queue_training
from service.training.spec import JobSpec
from service.training.task import backbone_weights, from_ml, load_dataset


def search(context: JobContext, spec: SearchSpec) -> Outcome:
    """Run (or go on with) the search; what stores its best spec."""
    from service.ml.search import SearchLab

    begun = time.monotonic()
    db, monitor = context.db, context.monitor
    base = range_spec(spec)
    range_test, done, metric = _stored(context, spec)
    if not restore_history(db, context.claim, [_history_row(trial, metric) for trial in done]):
        raise JobStopped()
    data = load_dataset(db, base, context.settings)
    monitor.on_progress(_progress(spec, 1, len(done)))
    with backbone_weights(db, base) as weights, from_ml():
        lab = SearchLab(
            base,
            data,
            list(spec.space.pooling),
            backbone_weights=weights,
            store=DatabaseFeatureStore(db, spec.dataset_id),
            should_stop=monitor.should_stop,
        )
        check_freeze_depths(spec, lab.backbone_layers)  # checked when asked; again here
        # A budget in seconds counts this attempt's time from its start (the features' pass
        # included) and an earlier attempt's by its stored range test and trials.
        earlier = range_test["seconds"] if range_test is not None else 0.0
        if range_test is None:
            range_test = asdict(lab.range_test(base))
            _write(context, lambda s: _set(s, spec.search_id, range_test=range_test))
        spent = earlier + time.monotonic() - begun
        runner = Search(spec, lab, done, _Announcer(context, spec, metric), spent=spent)
        picked = picked_rate(spec, range_test["picked"])
        runner.heads(picked)
        runner.fine_tune(picked)
    best = runner.best()
    if best is None:
        raise Invalid("no trial finished within the budget: give the search more")
    return Outcome(_store_best(spec, best), f"search {spec.search_id}: trial {best.number}")


def _stored(
    context: JobContext, spec: SearchSpec
) -> tuple[dict[str, Any] | None, list[Trial], str]:
    """The range test and the trials an earlier attempt stored, and the search's metric."""
    with context.db.session() as session:
        record = session.get(SearchRecord, spec.search_id)
        if record is None:
            raise NotFound(f"no search {spec.search_id!r}: it was deleted")
        check_references(session, range_spec(spec))
        rows = session.scalars(
            select(SearchTrial)
            .where(SearchTrial.search_id == spec.search_id)
            .order_by(SearchTrial.number)
        ).all()
        return record.range_test, [_trial(row) for row in rows], record.metric


def _trial(row: SearchTrial) -> Trial:
    """A stored trial as the search takes it back: its row's columns of the same names."""
    return Trial(**{column.name: getattr(row, column.name) for column in fields(Trial)})


class _Announcer:
    """Stores each trial as it ends, fenced by the lease, and announces it: a row of the
    job's history (an `epoch` event on its stream) and the progress that follows."""

    def __init__(self, context: JobContext, spec: SearchSpec, metric: str) -> None:
        self.context = context
        self.spec = spec
        self.metric = metric

    def __call__(self, trial: Trial) -> None:
        row = SearchTrial(search_id=self.spec.search_id, **asdict(trial))
        _write(self.context, lambda session: session.add(row))
        self.context.monitor.on_epoch(_history_row(trial, self.metric))
        stage = 2 if trial.phase == HEAD else 3
        self.context.monitor.on_progress(_progress(self.spec, stage, trial.number + 1))


def _progress(spec: SearchSpec, stage: int, finished: int) -> dict[str, int]:
    """Stage 1 the range test, 2 the head trials, 3 fine-tuning; steps: the trials finished
    of those the budget plans (a budget in seconds plans none ahead)."""
    planned = max(spec.budget.trials or 0, finished, 1)
    trials = {"step": finished, "steps": planned}
    return {"stage": stage, "stages": 3, "epoch": 1, "epochs": 1, **trials}


def _history_row(trial: Trial, metric: str) -> dict[str, Any]:
    """A trial as a row of the job's history: the event stream's `epoch` event, its score
    under the search's metric (`val_accuracy`, `val_mean_average_precision`)."""
    return {
        "epoch": trial.number + 1,
        "stage": 2 if trial.phase == HEAD else 3,
        "trial": trial.number,
        f"val_{metric}": trial.value,
        "val_loss": trial.val_loss,
        "seconds": trial.seconds,
    }


def _write(context: JobContext, write: Callable[[Session], None]) -> None:
    if not context.write_while_owned(write):
        raise JobStopped()


def _set(session: Session, search_id: str, **values: Any) -> None:
    session.execute(update(SearchRecord).where(SearchRecord.id == search_id).values(**values))


def _store_best(spec: SearchSpec, best: Trial) -> Callable[[Session], None]:
    """Store the best trial and its spec; with `train_best`, queue that spec's training in
    the same transaction (its dataset version, checked again)."""
    trained = job_spec(spec, best.params, spec.dataset_version)

    def store(session: Session) -> None:
        job_id = None
        if spec.train_best:
            check_references(session, trained)
            job_id = queue_training(session, trained).id
        _set(
            session,
            spec.search_id,
            best={"trial": best.number, "spec": _as_posted(trained)},
            trained_job_id=job_id,
        )

    return store


def _as_posted(spec: JobSpec) -> dict[str, Any]:
    """A job spec as POST /jobs takes it and GET /jobs/{id} shows it (no webhook: a search
    announces nothing for the job it hands over)."""
    return spec.model_dump(mode="json", exclude={"webhook_url"})
