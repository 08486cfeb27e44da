"""The "predict" task: a batch of images classified with the model the request resolved to,
a batch at a time, results stored as JSON Lines with the job's success."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from service.datasets.service import upload_limits
from service.jobs.context import JobContext
from service.jobs.kinds import JobStopped, Outcome
from service.predictions.batch import ResultWriter, load_batch_inputs
from service.predictions.spec import BatchPredictionSpec
from service.storage.tables import BatchPrediction

if TYPE_CHECKING:
    from service.ml.model_cache import ModelCache


def predict(context: JobContext, spec: BatchPredictionSpec) -> Outcome:
    """Classify a batch of images with the model it names; what stores the results."""
    from service.ml.batch import classify

    monitor = context.monitor
    started = time.monotonic()
    inputs = load_batch_inputs(context.db, spec, upload_limits(context.settings))
    model = worker_models(context).get(inputs.model)
    writer = ResultWriter(model.classes, spec.top_k, model.unknowns, model.thresholds)
    monitor.on_pass(0, inputs.total)
    batches = classify(
        model,
        inputs.items,
        batch_size=context.settings.batch_predict_size,
        explain_top_k=spec.top_k if spec.explain else 0,
        should_stop=monitor.should_stop,
    )
    for answers in batches:
        for answer in answers:
            writer.add(answer)
        monitor.on_pass(writer.images, inputs.total)
    monitor.flush()
    if monitor.should_stop():
        raise JobStopped()
    store = store_results(
        context.claim.job_id,
        results=writer.lines.getvalue(),
        summary=writer.summary(time.monotonic() - started),
    )
    return Outcome(store, f"{writer.images} images classified with model {model.model_id}")


def store_results(
    job_id: str, *, results: bytes, summary: dict[str, Any]
) -> Callable[[Session], None]:
    """What a batch's success stores: its results and counts; its uploaded zip is dropped
    (read, and never needed again)."""

    def store(session: Session) -> None:
        session.execute(
            update(BatchPrediction)
            .where(BatchPrediction.job_id == job_id)
            .values(results=results, archive=None, **summary)
        )

    return store


def worker_models(context: JobContext) -> ModelCache:
    """The worker's own cache of loaded models for batch prediction (unpacked in a scratch
    folder of its own, so that workers and the API on one host never share one)."""
    from service.ml.model_cache import ModelCache

    scratch = context.resources.shared(
        "model-scratch",
        lambda: tempfile.TemporaryDirectory(prefix="worker-models-"),
        close=lambda folder: folder.cleanup(),
    )
    return context.resources.shared(
        "model-cache", lambda: ModelCache(Path(scratch.name), capacity=2)
    )
