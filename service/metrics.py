"""Prometheus metrics: what this process observed, and what the shared database says.

Two kinds, exposed together by each API replica's `GET /metrics` and by each worker on
`METRICS_PORT`:
- observed by the process that does the work, in prometheus-client's default registry: queue
  wait and run time (the worker, as it claims and ends a job), epoch times (the worker, per
  finished epoch), predict latency per model and the dynamic batcher's batch sizes (the API),
  upload sizes (the API); plus prometheus-client's own process and Python collectors;
- read at scrape time by collectors: the jobs by kind and status, the workers' heartbeat ages
  and the webhook deliveries by status come from the database, so every replica reports the
  one shared truth rather than its own share of it; the model cache's hits, loads and
  evictions are the API's `ModelCache` counters, read as they stand.

The ML room (service/ml/) imports nothing from here: the batcher takes a callback, the cache
keeps plain counters, and the collectors below read them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Gauge,
    Histogram,
    generate_latest,
    make_wsgi_app,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from service.config import Settings
from service.jobs.queue import JobStatus
from service.security import in_open_network, key_matches
from service.storage.db import Database
from service.storage.tables import Job, WebhookDelivery, WorkerRow, utcnow

if TYPE_CHECKING:
    from service.ml.model_cache import ModelCache
from service.monitoring.watch import Monitoring

log = logging.getLogger("service.metrics")

__all__ = ["CONTENT_TYPE_LATEST"]

# The statuses every scrape reports, with each registered kind (given to the collector), at 0
# when there are none, so a series does not vanish when its last job moves on.
STATUSES = tuple(JobStatus)
DELIVERY_STATUSES = ("pending", "delivered", "failed")

QUEUE_WAIT = Histogram(
    "transfer_job_queue_wait_seconds",
    "From a job's creation to the claim that runs it, observed by the claiming worker.",
    ["kind"],
    buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600),
)
RUN_TIME = Histogram(
    "transfer_job_run_seconds",
    "A worker's time on one claim of a job, by the status it left the job in.",
    ["kind", "status"],
    buckets=(1, 5, 15, 60, 300, 900, 1800, 3600, 3 * 3600, 12 * 3600, 48 * 3600),
)
EPOCH_SECONDS = Histogram(
    "transfer_training_epoch_seconds",
    "Wall time of each finished training epoch, in the worker.",
    buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600),
)
EPOCHS_PER_SECOND = Gauge(
    "transfer_training_epochs_per_second",
    "The worker's latest finished epoch: 1 / its wall time.",
)
PREDICT_SECONDS = Histogram(
    "transfer_predict_seconds",
    "Classifying one request's images (lookup, decoding, batching, the model), per model.",
    ["model"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
BATCH_SIZE = Histogram(
    "transfer_predict_batch_size",
    "Images per model call of the dynamic batcher (concurrent /predict requests together).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
UPLOAD_BYTES = Histogram(
    "transfer_upload_bytes",
    "Accepted uploads' sizes: dataset zips, batch prediction zips.",
    ["kind"],
    buckets=tuple(2**power for power in (16, 20, 23, 26, 28, 30, 32)),
)


# -- observing ------------------------------------------------------------------------------


def observe_claim(kind: str, queued_seconds: float) -> None:
    QUEUE_WAIT.labels(kind).observe(max(queued_seconds, 0.0))


def observe_run(kind: str, status: str, seconds: float) -> None:
    RUN_TIME.labels(kind, status).observe(seconds)


def observe_epoch(seconds: float) -> None:
    EPOCH_SECONDS.observe(seconds)
    if seconds > 0:
        EPOCHS_PER_SECOND.set(1.0 / seconds)


def observe_predict(model_id: str, seconds: float) -> None:
    PREDICT_SECONDS.labels(model_id).observe(seconds)


def observe_batch(images: int) -> None:
    BATCH_SIZE.observe(images)


def observe_upload(kind: str, size: int) -> None:
    UPLOAD_BYTES.labels(kind).observe(size)


# -- read at scrape time ----------------------------------------------------------------------


class DatabaseCollector:
    """Jobs by kind and status, the running workers' heartbeat ages and the webhook
    deliveries by status, counted in the database at each scrape. A database that cannot
    answer gives `transfer_database_up 0` instead of failing the whole scrape."""

    def __init__(self, database: Database, kinds: Sequence[str]) -> None:
        self.database = database
        self.kinds = tuple(kinds)

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("transfer_database_up", "Whether the database answered.")
        try:
            families = list(self._read())
        except SQLAlchemyError:
            log.warning("metrics: the database did not answer", exc_info=True)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _read(self) -> Iterator[Metric]:
        now = utcnow()
        with self.database.session() as session:
            jobs = dict.fromkeys(((kind, status) for kind in self.kinds for status in STATUSES), 0)
            for kind, status, count in session.execute(
                select(Job.kind, Job.status, func.count()).group_by(Job.kind, Job.status)
            ):
                jobs[(kind, status)] = count
            deliveries = dict.fromkeys(DELIVERY_STATUSES, 0)
            deliveries.update(
                session.execute(
                    select(WebhookDelivery.status, func.count()).group_by(WebhookDelivery.status)
                ).all()
            )
            heartbeats = session.execute(
                select(WorkerRow.id, WorkerRow.heartbeat_at).where(WorkerRow.stopped_at.is_(None))
            ).all()
        yield _gauge("transfer_jobs", "Jobs by kind and status.", ["kind", "status"], jobs)
        yield _gauge(
            "transfer_worker_heartbeat_age_seconds",
            "Seconds since each running worker's latest heartbeat (workers table).",
            ["worker"],
            {(worker,): (now - beat).total_seconds() for worker, beat in heartbeats},
        )
        yield _gauge(
            "transfer_webhook_deliveries",
            "Webhook deliveries by status.",
            ["status"],
            {(status,): count for status, count in deliveries.items()},
        )


class CacheCollector:
    """The API's loaded-model cache, as its own counters stand."""

    def __init__(self, cache: ModelCache) -> None:
        self.cache = cache

    def collect(self) -> Iterator[Metric]:
        for name, value, what in (
            ("hits", self.cache.hits, "Model lookups answered from memory."),
            ("loads", self.cache.loads, "Models unpacked and loaded into memory."),
            ("evictions", self.cache.evictions, "Models dropped to stay within its size."),
        ):
            counter = CounterMetricFamily(f"transfer_model_cache_{name}", what)
            counter.add_metric([], value)
            yield counter
        yield _gauge(
            "transfer_model_cache_models", "Models in memory now.", [], {(): len(self.cache)}
        )


def _gauge(
    name: str, what: str, labels: list[str], values: dict[tuple[str, ...], float]
) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(name, what, labels=labels)
    for label_values, value in values.items():
        gauge.add_metric(list(label_values), value)
    return gauge


class MonitoringCollector:
    """Drift per served model (this process's windows) and capture's counters."""

    def __init__(self, monitoring: Monitoring) -> None:
        self.monitoring = monitoring

    def collect(self) -> Iterator[Metric]:
        latest = self.monitoring.drift.latest()
        labels = ["model_id"]
        for name, what, value in (
            ("drift_statistic", "The last drift test's KS statistic D.", "statistic"),
            ("drift_threshold", "The critical D for its false-alarm rate.", "threshold"),
            ("drift_unknown_share", "Share of the window's images unknown.", "unknown_share"),
            ("drifting", "1 while the model's traffic drifts.", "drifting"),
        ):
            values = {(model_id,): float(getattr(test, value)) for model_id, test in latest}
            yield _gauge(f"transfer_model_{name}", what, labels, values)
        recorder = self.monitoring.recorder
        for name, value, what in (
            ("stored", recorder.stored, "Predicted images captured."),
            ("dropped", recorder.dropped, "Images capture drew but dropped (it fell behind)."),
        ):
            counter = CounterMetricFamily(f"transfer_captures_{name}", what)
            counter.add_metric([], value)
            yield counter


def api_registry(
    database: Database, cache: ModelCache, kinds: Sequence[str], monitoring: Monitoring
) -> CollectorRegistry:
    """An API app's scrape-time collectors (one registry per app: tests run several apps in
    one process, and the default registry refuses a second collector of the same names);
    `kinds`: the registered kinds of job, each reported even when it has none."""
    registry = CollectorRegistry()
    registry.register(DatabaseCollector(database, kinds))  # type: ignore[arg-type]
    registry.register(CacheCollector(cache))  # type: ignore[arg-type]
    registry.register(MonitoringCollector(monitoring))  # type: ignore[arg-type]
    return registry


def exposition(*registries: CollectorRegistry) -> bytes:
    """The process's own metrics, then the registries', in Prometheus' text format."""
    return b"".join(generate_latest(registry) for registry in (REGISTRY, *registries))


# -- who may scrape ---------------------------------------------------------------------------


def worker_app(settings: Settings) -> Callable[..., Iterable[bytes]]:
    """The worker's /metrics as a WSGI app, guarded as the API's is: an open network, or
    the API key as a bearer token (a worker has no console sessions)."""
    metrics = make_wsgi_app(REGISTRY)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        given = environ.get("HTTP_AUTHORIZATION", "").removeprefix("Bearer ").strip()
        if (
            settings.api_key is None
            or in_open_network(settings, environ.get("REMOTE_ADDR"))
            or (given and key_matches(settings, given))
        ):
            return metrics(environ, start_response)
        start_response("401 Unauthorized", [("WWW-Authenticate", "Bearer")])
        return [b"missing or wrong API key: send 'Authorization: Bearer <key>'\n"]

    return app


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # scrapes are not news
        pass


def serve_worker_metrics(settings: Settings, host: str = "0.0.0.0") -> ThreadingWSGIServer:
    """Serve the worker's metrics on `METRICS_PORT` from a daemon thread; the server, for
    `shutdown()`."""
    server = make_server(
        host, settings.metrics_port, worker_app(settings), ThreadingWSGIServer, _Quiet
    )
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    log.info("metrics on port %d", server.server_port)
    return server
