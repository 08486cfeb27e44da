"""The worker process: claim a job, train it, store the model; repeat. It never serves HTTP."""

from __future__ import annotations

import logging
import os
import signal
import socket
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import undefer

from service import jobs, logs, metrics, webhooks, workers
from service.config import Settings
from service.ml import checkpoint
from service.problems import Problem
from service.spec import AdviceSpec, BatchPredictionSpec, ExportSpec, JobSpec
from service.storage.db import Database
from service.storage.features import DatabaseFeatureStore
from service.storage.tables import (
    WEIGHTS_SOURCES,
    DatasetImage,
    Job,
    TrainedModel,
    new_id,
    utcnow,
)

log = logging.getLogger("service.worker")


# -- devices (service/workers.py: the pure rules; here what TensorFlow is told) -------------


def configure_devices(settings: Settings) -> list[workers.Device]:
    """The devices this worker trains on: the GPUs WORKER_DEVICES and WORKER_GPUS pick
    (the others hidden from TensorFlow, memory growth on these so several processes can
    share one), or the CPU when it keeps none. Call it before TensorFlow starts its runtime:
    a multi-GPU job mirrors its model over exactly the GPUs left visible."""
    import tensorflow as tf

    found = tf.config.list_physical_devices("GPU")
    kept = [
        found[index]
        for index in workers.chosen_gpus(len(found), settings.worker_devices, settings.worker_gpus)
    ]
    try:
        if kept != found:
            tf.config.set_visible_devices(kept, "GPU")
        for gpu in kept:
            tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError as error:  # the runtime has started (a worker inside another process)
        log.warning("devices left as they are: %s", error)
        kept = tf.config.get_visible_devices("GPU")
    if not kept:
        cpu = tf.config.list_physical_devices("CPU")[0].name
        return [workers.Device("CPU", cpu, workers.host_memory_bytes())]
    memory = _gpu_memory_bytes(len(kept))
    return [
        workers.Device(
            "GPU",
            gpu.name,
            memory[number] if number < len(memory) else None,
            tf.config.experimental.get_device_details(gpu).get("device_name"),
        )
        for number, gpu in enumerate(kept)
    ]


def _gpu_memory_bytes(count: int) -> list[int | None]:
    """Each visible GPU's memory as TensorFlow's allocator may use it, in visible order.
    TensorFlow's public API does not say (get_memory_info counts use, not size): this asks
    the device list, which starts the runtime (after configure_devices has set it up)."""
    try:
        from tensorflow.python.client import device_lib

        local = device_lib.list_local_devices()
    except Exception:  # a private module: no memory figure rather than no worker
        log.warning("GPU memory unknown", exc_info=True)
        return [None] * count
    return [device.memory_limit for device in local if device.device_type == "GPU"]


class JobMonitor:
    """The trainer's observer: keeps the lease alive, writes progress, watches for cancel.

    A background thread does the database work every `interval` seconds, so a training
    step only updates memory; it also renews the lease while data loads or the model exports.
    """

    def __init__(self, db: Database, claim: jobs.Claim, settings: Settings) -> None:
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
            beat = jobs.heartbeat(
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


@dataclass(frozen=True)
class Outcome:
    """What a job's success stores, fenced by its lease (False: the lease was lost), and
    what the log calls it."""

    store: Callable[[], bool]
    stored: str


@dataclass
class Worker:
    db: Database
    settings: Settings
    worker_id: str = ""
    # The GPUs it claims jobs for; None: found on the first claim (see `claim_gpus`).
    gpus: int | None = None

    def __post_init__(self) -> None:
        if not self.worker_id:
            self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{new_id('w')[2:10]}"
        self.shutdown = threading.Event()
        self._presence: workers.Presence | None = None
        self._monitor: JobMonitor | None = None
        self._model_cache: Any = None
        self._scratch: tempfile.TemporaryDirectory[str] | None = None

    def request_shutdown(self) -> None:
        """Stop after the current step; the job goes back to the jobs."""
        self.shutdown.set()
        if self._monitor is not None:
            self._monitor.shutdown.set()

    def run_forever(self) -> None:
        # -- devices and presence (service/workers.py): the worker's row in GET /workers,
        # registered now, beating while it runs, stopped when it returns.
        devices = configure_devices(self.settings)
        self.gpus = workers.claimed_gpus(self.settings.worker_gpus, devices)
        log.info(
            "worker %s training on %s; claims jobs asking for up to %d GPU(s)",
            self.worker_id,
            workers.describe_devices(devices),
            self.gpus,
        )
        presence = workers.Presence(
            self.db,
            worker_id=self.worker_id,
            devices=devices,
            gpus=self.gpus,
            lease_seconds=self.settings.lease_seconds,
        )
        with presence:
            self._presence = presence
            self.prune_checkpoints()
            while not self.shutdown.is_set():
                if not self.run_once():
                    self.shutdown.wait(self.settings.poll_seconds)
        self._presence = None

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
        claim = jobs.claim_next_job(
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
        # -- eyes on it: the job's ids on every log line, its wait and run time measured.
        model_id = claim.spec.get("model_id")  # an export's or a batch prediction's
        with logs.context(job_id=claim.job_id, worker=self.worker_id, model_id=model_id):
            if claim.created_at is not None:
                metrics.observe_claim(claim.kind, (utcnow() - claim.created_at).total_seconds())
            log.info("job %s: attempt %d", claim.job_id, claim.attempt)
            started = time.monotonic()
            self.process(claim)
            metrics.observe_run(
                claim.kind, jobs.status_of(self.db, claim.job_id), time.monotonic() - started
            )
        if self._presence is not None:
            self._presence.working_on(None)
        return True

    def process(self, claim: jobs.Claim) -> None:
        from service.ml.build import WeightsUnavailable
        from service.ml.train import TrainingStopped

        with JobMonitor(self.db, claim, self.settings) as monitor:
            self._monitor = monitor
            if self.shutdown.is_set():
                monitor.shutdown.set()
            try:
                run = {
                    jobs.JobKind.ADVICE: self._advise,
                    jobs.JobKind.EXPORT: self._export,
                    jobs.JobKind.PREDICT: self._predict,
                    jobs.JobKind.IMPORT: self._import,
                }
                outcome = run.get(claim.kind, self._train)(claim, monitor)
            except TrainingStopped:
                outcome = None
            except (WeightsUnavailable, Problem) as error:
                log.warning("job %s failed: %s", claim.job_id, error)
                if jobs.end_job(self.db, claim, status=jobs.JobStatus.FAILED, error=str(error)):
                    self._forget_checkpoint(claim)
                return
            except Exception as error:
                log.error("job %s failed:\n%s", claim.job_id, traceback.format_exc())
                message = f"{type(error).__name__}: {error}"
                if jobs.end_job(self.db, claim, status=jobs.JobStatus.FAILED, error=message):
                    self._forget_checkpoint(claim)
                return
            finally:
                self._monitor = None
        if outcome is None or monitor.should_stop():
            self._stopped(claim, monitor)
        elif not outcome.store():
            log.warning("job %s: lease lost before its result was stored", claim.job_id)
        else:
            self._forget_checkpoint(claim)
            log.info("job %s succeeded: %s", claim.job_id, outcome.stored)

    def _stopped(self, claim: jobs.Claim, monitor: JobMonitor) -> None:
        if monitor.stop_reason == "cancelled":
            if jobs.end_job(self.db, claim, status=jobs.JobStatus.CANCELLED):
                self._forget_checkpoint(claim)
            log.info("job %s cancelled", claim.job_id)
        elif monitor.stop_reason == "lease lost":
            log.warning("job %s: lease taken over; its new holder carries on", claim.job_id)
        else:
            jobs.release_job(self.db, claim)
            log.info("job %s released to the queue", claim.job_id)

    def _train(self, claim: jobs.Claim, monitor: JobMonitor) -> Outcome:
        """Train the job; what stores its model (and the dataset's label review)."""
        import keras

        from service.ml import export
        from service.ml.build import describe_layers, parameter_counts
        from service.ml.drift import with_drift
        from service.ml.train import train

        spec = jobs.runnable_spec(claim.spec)
        data = load_dataset(self.db, spec, self.settings)
        keras.backend.clear_session()
        store = DatabaseFeatureStore(self.db, spec.dataset_id)
        saved = self._resume_point(claim, spec, data)
        with backbone_weights(self.db, spec) as weights:
            result = train(
                spec,
                data,
                monitor,
                backbone_weights=weights,
                feature_store=store,
                checkpoint_dir=saved,
            )
        if result.replicas > 1:
            log.info("job %s trained on %d replicas", claim.job_id, result.replicas)
        model = result.network.model
        trainable, non_trainable = parameter_counts(model)
        # The temperature fitted on the validation split, folded into the exported graph.
        savedmodel = export.export_savedmodel(model, temperature=result.temperature)
        stored = TrainedModel(
            id=new_id("m"),
            name=claim.name or spec.name or claim.job_id,
            job_id=claim.job_id,
            dataset_id=spec.dataset_id,
            backbone=spec.backbone.name,
            input_size=spec.input_size,
            classes=data.classes,
            metrics=result.metrics,
            evaluation=_with_samples(result, data),
            trainable_params=trainable,
            non_trainable_params=non_trainable,
            size_bytes=len(savedmodel),
            savedmodel_sha256=export.sha256(savedmodel),
            savedmodel=savedmodel,
            backbone_weights=export.weights_bytes(result.network.backbone),
        )
        # Compared after everything that moves weights: the stages, BN recompute, restores.
        layers = with_drift(describe_layers(model), result.network.backbone, result.initial_weights)
        review = _review_of_training(claim, spec, data, result)
        store = partial(
            jobs.complete_job, self.db, claim, model=stored, layers=layers, label_review=review
        )
        return Outcome(store, f"model {stored.id}")

    def _forget_checkpoint(self, claim: jobs.Claim) -> None:
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
                session.scalars(
                    select(Job.id).where(Job.id.in_(names), Job.status.in_(jobs.ACTIVE))
                )
            )
        for name in names:
            if name not in live:
                checkpoint.remove(folder / name)

    def _resume_point(self, claim: jobs.Claim, spec: JobSpec, data: Any) -> Path:
        """The job's checkpoint folder; when an earlier attempt left a checkpoint there, the
        job's history is set back to its epochs (training resumes after them)."""
        folder = self.settings.checkpoints / claim.job_id
        mark = checkpoint.fingerprint(spec.model_dump_json(), data.ids, len(data.labels))
        state = checkpoint.read_state(folder, mark)
        if state is not None:
            jobs.restore_history(self.db, claim, state.history)
            where = "its end" if state.stage_done else f"epoch {state.epochs_done}"
            log.info(
                "job %s: resuming from its checkpoint (stage %d, after %s)",
                claim.job_id,
                state.stage,
                where,
            )
        return folder

    def _export(self, claim: jobs.Claim, monitor: JobMonitor) -> Outcome:
        """Convert a model and check its parity; what stores the file. Below its bar the
        figures are stored in the export's report and the job fails with them."""
        from service import exports
        from service.ml.convert import export_model
        from service.ml.export import sha256

        spec = jobs.runnable_spec(claim.spec, ExportSpec)
        if spec.format == "onnx" and (reason := exports.onnx_unsupported()) is not None:
            raise Problem(reason)
        inputs = exports.load_export_inputs(self.db, spec)
        bar = exports.PARITY_BARS[spec.format]
        result = export_model(inputs, bar=bar, should_stop=monitor.should_stop)
        if not result.passed:
            jobs.record_export_report(self.db, claim, result.report)
            raise Problem(
                f"the {spec.format} export misses its parity bar: "
                f"{exports.report_figures(result.report)}"
            )
        store = partial(
            jobs.complete_export,
            self.db,
            claim,
            data=result.archive,
            sha256=sha256(result.archive),
            report=result.report,
        )
        return Outcome(store, f"{spec.format} export of model {spec.model_id}")

    def _predict(self, claim: jobs.Claim, monitor: JobMonitor) -> Outcome:
        """Classify a batch of images with the model it names; what stores the results."""
        from service import predictions
        from service.datasets import upload_limits
        from service.ml.batch import classify
        from service.ml.train import TrainingStopped

        spec = jobs.runnable_spec(claim.spec, BatchPredictionSpec)
        started = time.monotonic()
        inputs = predictions.load_batch_inputs(self.db, spec, upload_limits(self.settings))
        model = self._models().get(inputs.model)
        writer = predictions.ResultWriter(model.classes, spec.top_k)
        monitor.on_pass(0, inputs.total)
        batches = classify(
            model,
            inputs.items,
            batch_size=self.settings.batch_predict_size,
            explain_top_k=spec.top_k if spec.explain else 0,
            should_stop=monitor.should_stop,
        )
        for answers in batches:
            for answer in answers:
                writer.add(answer)
            monitor.on_pass(writer.images, inputs.total)
        monitor.flush()
        if monitor.should_stop():
            raise TrainingStopped()
        store = partial(
            jobs.complete_prediction,
            self.db,
            claim,
            results=writer.lines.getvalue(),
            summary=writer.summary(time.monotonic() - started),
        )
        return Outcome(store, f"{writer.images} images classified with model {model.model_id}")

    def _import(self, claim: jobs.Claim, monitor: JobMonitor) -> Outcome:
        """Check every file of a server-side folder (pass 1, with progress); what stores the
        images, re-read, with the job's success (service/imports.py)."""
        from service import imports
        from service.datasets import upload_limits
        from service.ml.train import TrainingStopped
        from service.spec import ImportSpec

        spec = jobs.runnable_spec(claim.spec, ImportSpec)
        limits = upload_limits(self.settings)

        plan = imports.scan_directory(
            spec,
            self.settings,
            limits,
            on_progress=monitor.on_pass,
            should_stop=monitor.should_stop,
        )
        monitor.flush()
        if plan is None or monitor.should_stop():
            raise TrainingStopped()
        done = partial(imports.finish_import, self.db, claim, spec, plan, limits.max_image_bytes)
        return Outcome(done, f"{len(plan.images)} images imported from {spec.path}")

    def _models(self) -> Any:
        """The worker's own cache of loaded models for batch prediction (unpacked in a scratch
        folder of its own, so that workers and the API on one host never share one)."""
        from service.ml.serving import ModelCache

        if self._model_cache is None:
            self._scratch = tempfile.TemporaryDirectory(prefix="worker-models-")
            self._model_cache = ModelCache(Path(self._scratch.name), capacity=2)
        return self._model_cache

    def _advise(self, claim: jobs.Claim, monitor: JobMonitor) -> Outcome:
        """Measure the dataset against the backbone; what stores the advice and the review."""
        from service.advice import Figures, advice_result
        from service.ml.labels import label_review
        from service.ml.probe import measure

        spec = jobs.runnable_spec(claim.spec, AdviceSpec)
        sample, counts = load_sample(self.db, spec)
        store = DatabaseFeatureStore(self.db, spec.dataset_id)
        with backbone_weights(self.db, spec) as weights:
            measured = measure(spec, sample, monitor, backbone_weights=weights, store=store)
        figures = Figures(
            counts=counts,
            sampled=len(sample.labels),
            folds=measured.pretrained.folds,
            probe_accuracy=measured.pretrained.accuracy,
            random_accuracy=measured.random.accuracy,
            chance=measured.chance,
            backbone_layers=measured.backbone_layers,
        )
        features = {"key": measured.key, "reused": measured.reused, "seconds": measured.seconds}
        assert sample.ids is not None and sample.filenames is not None
        # Random weights' features say little about the labels: keep any review made with
        # pretrained ones rather than replace it.
        review = (
            label_review(
                measured.pretrained,
                sample.labels,
                sample.ids,
                sample.filenames,
                sample.classes,
                features=measured.key,
                job_id=claim.job_id,
            )
            if measured.key is not None
            else None
        )
        store = partial(
            jobs.complete_advice,
            self.db,
            claim,
            dataset_id=spec.dataset_id,
            result=advice_result(figures, spec, features),
            label_review=review,
        )
        return Outcome(store, f"advice for dataset {spec.dataset_id}")


def load_dataset(db: Database, spec: JobSpec, settings: Settings | None = None) -> Any:
    """The job's images and labels, after the same reference checks the API made when the
    job was queued: what it names may have changed since.

    A dataset of up to TRAIN_IN_MEMORY_BYTES encoded bytes (or any, without `settings`) is
    read into memory in one query; a larger one comes as a `ShardedImages` over this host's
    shard cache (service/storage/shards.py), built from the database in bounded batches the
    first time: then only ids, labels and filenames are held here."""
    from sqlalchemy import func

    from service.ml.train import LabelledImages

    with db.session() as session:
        dataset = jobs.check_references(session, spec)
        classes = [entry["name"] for entry in dataset.classes]
        where = DatasetImage.dataset_id == dataset.id
        total = session.scalar(
            select(func.coalesce(func.sum(DatasetImage.size_bytes), 0)).where(where)
        )
        if settings is not None and total > settings.train_in_memory_bytes:
            return _streamed_dataset(db, settings, dataset.id, classes)
        rows = session.execute(
            select(DatasetImage.id, DatasetImage.label, DatasetImage.filename, DatasetImage.data)
            .where(where)
            .order_by(DatasetImage.id)
        ).all()
    index = {name: number for number, name in enumerate(classes)}
    return LabelledImages(
        images=[row.data for row in rows],
        labels=np.array([index[row.label] for row in rows], dtype=np.int32),
        classes=classes,
        ids=[row.id for row in rows],
        filenames=[row.filename for row in rows],
    )


def _streamed_dataset(db: Database, settings: Settings, dataset_id: str, classes: list[str]) -> Any:
    """A large dataset's labels and names, its images read from the shard cache."""
    from service.ml.train import LabelledImages
    from service.storage import shards

    with db.session() as session:
        rows = session.execute(
            select(
                DatasetImage.id, DatasetImage.label, DatasetImage.filename, DatasetImage.size_bytes
            )
            .where(DatasetImage.dataset_id == dataset_id)
            .order_by(DatasetImage.id)
        ).all()
    # Caches of deleted datasets go first: the disk they hold may be what this one needs.
    shards.prune_dataset_caches(db, settings.cache_dir)
    ids = [row.id for row in rows]
    root = shards.dataset_cache_root(settings.cache_dir)
    images = shards.dataset_shards(db, root, dataset_id, ids, [row.size_bytes for row in rows])
    index = {name: number for number, name in enumerate(classes)}
    return LabelledImages(
        images=images,
        labels=np.array([index[row.label] for row in rows], dtype=np.int32),
        classes=classes,
        ids=ids,
        filenames=[row.filename for row in rows],
    )


def _with_samples(result: Any, data: Any) -> dict[str, Any] | None:
    """The evaluation with each validation image's scores, named by its dataset row, so a
    client can show the images behind each cell of the confusion matrix."""
    from service.ml.train import prediction_samples

    if result.evaluation is None or result.validation_probabilities is None:
        return result.evaluation
    index = result.validation_index
    samples = prediction_samples(
        [data.ids[i] for i in index],
        data.labels[index],
        result.validation_probabilities,
        data.classes,
    )
    return {**result.evaluation, "samples": samples}


# A training job's label review probes at most this many images (a stratified sample).
REVIEW_MAX_IMAGES = 10_000


def load_sample(db: Database, spec: AdviceSpec) -> tuple[Any, list[int]]:
    """A stratified sample of at most `spec.max_images` of the dataset's images (only theirs
    are read), and the whole dataset's images per class."""
    from service.datasets import image_data
    from service.ml.features import stratified_sample
    from service.ml.train import LabelledImages

    with db.session() as session:
        dataset = jobs.check_references(session, spec)
        classes = [entry["name"] for entry in dataset.classes]
        rows = session.execute(
            select(DatasetImage.id, DatasetImage.label, DatasetImage.filename)
            .where(DatasetImage.dataset_id == dataset.id)
            .order_by(DatasetImage.id)
        ).all()
        index = {name: number for number, name in enumerate(classes)}
        labels = np.array([index[row.label] for row in rows], dtype=np.int32)
        chosen = [rows[i] for i in stratified_sample(labels, spec.max_images, spec.seed)]
        data = image_data(session, dataset.id, [row.id for row in chosen])
    sample = LabelledImages(
        images=[data[row.id] for row in chosen],
        labels=np.array([index[row.label] for row in chosen], dtype=np.int32),
        classes=classes,
        ids=[row.id for row in chosen],
        filenames=[row.filename for row in chosen],
    )
    return sample, np.bincount(labels, minlength=len(classes)).tolist()


def _review_of_training(
    claim: jobs.Claim, spec: JobSpec, data: Any, result: Any
) -> dict[str, Any] | None:
    """The label review from the features a frozen stage trained on, when it had the
    untouched pretrained backbone's features of every image."""
    from service.ml.features import feature_key
    from service.ml.labels import fold_count, label_review, probe

    if result.features is None or data.ids is None:
        return None
    positions, features = result.features
    if len(positions) > REVIEW_MAX_IMAGES:  # the probe's cost grows with the images
        from service.ml.features import stratified_sample

        kept = stratified_sample(data.labels[positions], REVIEW_MAX_IMAGES, spec.training.seed)
        positions, features = positions[kept], features[kept]
    labels = data.labels[positions]
    folds = fold_count(labels)
    if folds == 0:
        return None
    return label_review(
        probe(features, labels, folds=folds, seed=spec.training.seed),
        labels,
        [data.ids[i] for i in positions],
        [data.filenames[i] for i in positions],
        data.classes,
        features=feature_key(spec.backbone, spec.head.pooling) or "",
        job_id=claim.job_id,
    )


@contextmanager
def backbone_weights(db: Database, spec: JobSpec) -> Iterator[str | Path | None]:
    """What `make_backbone` takes for the spec: "imagenet" or None as they are; for
    "model:<id>" and "file:<id>" a scratch file holding those weights."""
    from service.ml.weights import weights_file

    stored = spec.backbone.stored_weights
    if stored is None:
        yield spec.backbone.weights
        return
    column = WEIGHTS_SOURCES[stored[0]].column
    with db.session() as session:
        source = jobs.weights_source(session, spec, undefer(column))
        blob = getattr(source, column.key)
    with weights_file(blob) as path:
        yield path


def run_worker(db: Database, settings: Settings) -> None:
    worker = Worker(db, settings)

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: finishing the current step, then releasing the job", signum)
        worker.request_shutdown()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    started = time.monotonic()
    # -- eyes on it: metrics on METRICS_PORT, and this process's share of webhook delivery.
    if settings.metrics_port:
        metrics.serve_worker_metrics(settings)
    deliverer = webhooks.Deliverer(db, settings).start()
    worker.run_forever()
    deliverer.stop()
    log.info("worker %s stopped after %.0f s", worker.worker_id, time.monotonic() - started)
