"""Batch prediction: a zip of images, or a stored dataset, classified by the worker.

`POST /predictions` resolves the model once (an alias that moves afterwards does not move a
batch already asked for), stores the uploaded zip in the record and queues a job of kind
"predict" on the jobs queue: the same leases, retries, cancelling and progress events as
training. The worker classifies the images in batches, exactly as `/predict` would, and
stores the results as JSON Lines; CSV is rendered from them when asked for. Images that
cannot be read are listed with their reason, not fatal. No TensorFlow here.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy.orm import Session

from service import jobs, metrics
from service.datasets import service as datasets
from service.datasets import versions
from service.datasets.ingest import (
    BadArchive,
    Inflated,
    Limits,
    archive_files,
    check_entry_count,
    read_capped,
)
from service.jobs import records
from service.ml.batch import Answer, Item
from service.ml.model_cache import ModelSource, UnknownThresholds
from service.models.registry import ModelRef, resolve
from service.predictions.kind import PREDICT
from service.predictions.serving import check_explain_top_k, stored_source, top_scores
from service.predictions.spec import BatchPredictionSpec
from service.problems import BadContent, Conflict, Invalid, NotFound, TooLarge
from service.storage.db import Database, largest_value
from service.storage.pages import Page, PageOf
from service.storage.tables import BatchPrediction, Dataset, Job, new_id

ResultFormat = Literal["jsonl", "csv"]
MEDIA_TYPES: dict[str, str] = {"jsonl": "application/x-ndjson", "csv": "text/csv"}


@dataclass(frozen=True)
class BatchRequest:
    """What `POST /predictions` asks: the model, the images (a zip or a dataset), the answer."""

    model: ModelRef
    top_k: int
    explain: bool
    dataset_id: str | None = None
    archive: bytes | None = None
    filename: str | None = None
    webhook_url: str | None = None  # announce the job's end there (service/webhooks.py)


# -- what the API and the console ask ---------------------------------------------------------


def request_batch(session: Session, request: BatchRequest, limits: Limits) -> BatchPrediction:
    """Check the request, store its record and queue its job. NotFound for the model or the
    dataset, Invalid unless exactly one source is given, BadContent for a zip that is not one
    or has no files."""
    if (request.archive is None) == (request.dataset_id is None):
        raise Invalid(
            "send the images one way: a zip in `file`, or the `dataset_id` of a stored dataset",
            field=("file",) if request.archive is None else ("dataset_id",),
        )
    if request.explain:
        check_explain_top_k(request.top_k)
    if request.archive is not None:
        check_storable(session, request.archive, request.filename)
    model = resolve(session, request.model)
    if request.dataset_id is not None and session.get(Dataset, request.dataset_id) is None:
        raise NotFound(f"no dataset {request.dataset_id!r}", field=("dataset_id",))
    if request.archive is not None:
        count = len(_entries(request.archive, request.filename, limits))
        if count == 0:
            raise BadContent(f"{request.filename or 'file'}: the zip holds no files")
        metrics.observe_upload("predictions", len(request.archive))
    record = BatchPrediction(
        id=new_id("p"),
        model_id=model.id,
        model_ref=_named(request.model),
        dataset_id=request.dataset_id,
        filename=request.filename,
        top_k=request.top_k,
        explain=request.explain,
        archive=request.archive,
    )
    spec = BatchPredictionSpec(
        prediction_id=record.id,
        model_id=model.id,
        top_k=request.top_k,
        explain=request.explain,
        dataset_id=request.dataset_id,
        webhook_url=request.webhook_url,
    )
    # The job holds the dataset it classifies, if any; the model is held through its spec.
    name = f"predict-{model.name}-v{model.version}"
    return records.queue_for(record, session, PREDICT.name, name, spec)


def check_storable(session: Session, archive: bytes, filename: str | None) -> None:
    """TooLarge, naming the limit, for a zip larger than the database stores in one value
    (`largest_value`: on SQLite about 1,000,000,000 bytes, under MAX_DATASET_BYTES' default
    1 GiB): the record keeps the zip until its job has read it."""
    largest = largest_value(session)
    if len(archive) > largest:
        raise TooLarge(
            f"{filename or 'file'}: the zip is {len(archive)} bytes; the database stores at most "
            f"{largest} bytes in one value, so a batch prediction's zip is at most that"
        )


def _named(ref: ModelRef) -> dict[str, Any]:
    """How the request named the model, for the record."""
    fields = {"model_id": ref.model_id, "name": ref.name, "version": ref.version}
    return {key: value for key, value in {**fields, "alias": ref.alias}.items() if value}


batch_status = records.record_status


def list_batches(session: Session, page: Page) -> PageOf[tuple[BatchPrediction, Job | None]]:
    """A page of batch predictions, newest first, each with its job."""
    return records.page_with_jobs(session, BatchPrediction, page)


def get_batch(session: Session, prediction_id: str) -> tuple[BatchPrediction, Job | None]:
    return records.get_with_job(session, BatchPrediction, prediction_id, "batch prediction")


def delete_batch(session: Session, prediction_id: str) -> None:
    """Delete the record and its results; a queued or running job is cancelled with it."""
    record, job = get_batch(session, prediction_id)
    if job is not None and job.status in jobs.ACTIVE:
        jobs.cancel(session, job)
    session.delete(record)
    session.flush()


def results(session: Session, prediction_id: str, format: ResultFormat) -> bytes:
    """The results as JSON Lines or CSV: Conflict while the job is queued or running, NotFound
    once it failed or was cancelled (there will be none)."""
    record, job = get_batch(session, prediction_id)
    status, error = batch_status(job)
    if status in jobs.ACTIVE:
        raise Conflict(f"batch prediction {prediction_id} is {status}; no results yet")
    if status != jobs.JobStatus.SUCCEEDED:
        why = f" ({error})" if error else ""
        raise NotFound(f"batch prediction {prediction_id} {status}{why}; it has no results")
    session.refresh(record, ["results"])
    lines = record.results or b""
    return lines if format == "jsonl" else to_csv(lines, record.top_k)


def to_csv(lines: bytes, top_k: int) -> bytes:
    """The JSON Lines results as CSV: one row per image, its `top_k` labels and scores in
    columns label_1, score_1, …, and the error of an image that could not be classified."""
    ranks = range(1, top_k + 1)
    columns = ["file", "image_id", "label"]
    columns += [f"{kind}_{rank}" for rank in ranks for kind in ("predicted", "score")]
    columns += ["ood_score", "unknown"]
    out = io.StringIO()
    writer = csv.DictWriter(out, [*columns, "error"], extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for line in lines.splitlines():
        row = json.loads(line)
        for rank, score in enumerate(row.get("top", []), start=1):
            row[f"predicted_{rank}"], row[f"score_{rank}"] = score["label"], score["score"]
        writer.writerow(row)
    return out.getvalue().encode()


# -- what the worker reads and writes ---------------------------------------------------------


@dataclass(frozen=True)
class BatchInputs:
    """A batch job's model and images: `total` of them, read lazily in order."""

    spec: BatchPredictionSpec
    model: ModelSource
    total: int
    items: Iterator[Item]


def load_batch_inputs(db: Database, spec: BatchPredictionSpec, limits: Limits) -> BatchInputs:
    """The model to load and the images to classify; NotFound when the record, the model or
    the dataset went away since the job was queued."""
    with db.session() as session:
        record = session.get(BatchPrediction, spec.prediction_id)
        if record is None:
            raise NotFound(f"no batch prediction {spec.prediction_id!r}: it was deleted")
        model = resolve(session, ModelRef(model_id=spec.model_id))
        source = stored_source(db, model)
        if spec.dataset_id is None:
            session.refresh(record, ["archive"])
            archive = record.archive or b""
            entries = _entries(archive, record.filename, limits)
            return BatchInputs(spec, source, len(entries), _zip_items(archive, entries, limits))
        if session.get(Dataset, spec.dataset_id) is None:
            raise NotFound(f"no dataset {spec.dataset_id!r}: it was deleted")
        # The dataset's latest version as the job runs: its images, labelled as it labels them.
        latest = versions.version_id(session, spec.dataset_id, None)
        rows = session.execute(versions.version_images(latest)).all()
    return BatchInputs(spec, source, len(rows), dataset_items(db, spec.dataset_id, rows))


def _entries(archive: bytes, filename: str | None, limits: Limits) -> list[Any]:
    """The zip's files in path order (no folders, no OS metadata); BadContent naming the
    upload when it is not a zip, or unsafe."""
    try:
        file = io.BytesIO(archive)
        check_entry_count(file, limits.max_files)  # before zipfile reads the directory
        with zipfile.ZipFile(file) as opened:
            return archive_files(opened, limits)
    except BadArchive as error:
        raise BadContent(f"{filename or 'file'}: {error}") from None
    except (zipfile.BadZipFile, OSError, ValueError):
        raise BadContent(f"{filename or 'file'}: not a zip archive") from None


def _zip_items(archive: bytes, entries: list[Any], limits: Limits) -> Iterator[Item]:
    """Each file of the zip, read one at a time under the upload's limits."""
    inflated = Inflated(limits.max_total_bytes)
    with zipfile.ZipFile(io.BytesIO(archive)) as opened:
        for info, parts in entries:
            about = {"file": "/".join(parts)}
            try:
                data = read_capped(opened, info, limits.max_image_bytes, inflated)
            except BadArchive as error:  # a zip bomb: stop reading, say so on each file left
                yield Item(about, None, str(error))
                continue
            except (zipfile.BadZipFile, OSError, EOFError, RuntimeError) as error:
                yield Item(about, None, f"corrupt entry: {error}")
                continue
            if data is None:
                yield Item(about, None, f"larger than the {limits.max_image_bytes}-byte limit")
            else:
                yield Item(about, data)


def dataset_items(db: Database, dataset_id: str, rows: list[Any]) -> Iterator[Item]:
    """The dataset's images in id order, their bytes read a bounded batch at a time, each
    batch in a short transaction of its own."""
    for start in range(0, len(rows), datasets.FETCH):
        chunk = rows[start : start + datasets.FETCH]
        with db.session() as session:
            data = datasets.image_data(session, dataset_id, [row.id for row in chunk])
        for row in chunk:
            about = {"file": row.filename, "image_id": row.id, "label": row.label}
            image = data.get(row.id)
            yield Item(about, image, "" if image is not None else "deleted from the dataset")


def result_row(
    answer: Answer,
    classes: list[str],
    top_k: int,
    threshold: float | None = None,
    label_thresholds: list[float] | None = None,
) -> dict[str, Any]:
    """One image's line of the results: its file (and image id and label for a dataset), then
    its `top_k` labels and scores, best first (a multi-label model's: those reaching their
    `label_thresholds`), each explained one with its map, and its ood_score and `unknown`
    (past `threshold`, the model's) where the model has them; or its error."""
    row = dict(answer.item.about)
    if answer.probabilities is None:
        return {**row, "error": answer.error}
    cutoff = label_thresholds if label_thresholds is not None else 0.0
    (top,) = top_scores(answer.probabilities[None, :], classes, top_k, cutoff)
    row["top"] = [score.model_dump(exclude_none=True) for score in top]
    if answer.ood_score is not None and threshold is not None:
        row["ood_score"] = answer.ood_score
        row["unknown"] = answer.ood_score > threshold
    if answer.explained is not None:
        indices, maps = answer.explained
        row["heatmaps"] = {
            classes[int(index)]: {"method": answer.method, "map": maps[n].astype(float).tolist()}
            for n, index in enumerate(indices)
        }
    return row


class ResultWriter:
    """The results as they are made: one JSON line per image, and the bad images' list."""

    def __init__(
        self,
        classes: list[str],
        top_k: int,
        unknowns: UnknownThresholds | None = None,
        label_thresholds: list[float] | None = None,
    ) -> None:
        self.classes = classes
        self.top_k = top_k
        self.label_thresholds = label_thresholds
        self.threshold = unknowns.threshold() if unknowns is not None else None
        self.lines = io.BytesIO()
        self.images = 0
        self.bad: list[dict[str, str]] = []

    def add(self, answer: Answer) -> None:
        row = result_row(answer, self.classes, self.top_k, self.threshold, self.label_thresholds)
        self.lines.write(json.dumps(row, ensure_ascii=False).encode() + b"\n")
        self.images += 1
        if "error" in row:
            self.bad.append({"file": row["file"], "reason": row["error"]})

    def summary(self, seconds: float) -> dict[str, Any]:
        """What the record stores beside the results: counts, bad images, the time taken."""
        return {
            "images": self.images,
            "classified": self.images - len(self.bad),
            "bad": self.bad,
            "seconds": round(seconds, 3),
        }
