"""Eyes on it: /metrics (who may read it, what it says), the worker's metrics port, request
ids and JSON log lines."""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from service import logs, metrics
from service.job_kinds import KINDS
from service.storage.tables import WorkerRow, utcnow
from tests.conftest import LIGHT, Service, colour_images, job_body, make_settings

KEY = "a-metrics-test-key-of-length"


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a scrape, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: dict[Any, float], name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


def test_metrics_need_the_key_unless_the_client_is_in_an_open_network(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from service.api.app import create_app

    settings = make_settings(tmp_path, api_key=KEY, metrics_open_networks=["10.0.0.0/8"])
    Service(settings).close()  # migrates the database
    app = create_app(settings)
    for client_host, headers, expected in (
        ("testclient", {}, 401),
        ("testclient", {"Authorization": f"Bearer {KEY}"}, 200),
        ("10.1.2.3", {}, 200),
        ("192.168.1.1", {}, 401),
    ):
        with TestClient(app, client=(client_host, 40000)) as client:
            answer = client.get("/metrics", headers=headers)
            assert answer.status_code == expected, (client_host, headers, answer.text)
    assert answer.status_code == 401
    with TestClient(app, client=("10.1.2.3", 40000)) as client:
        answer = client.get("/metrics")
        assert answer.headers["content-type"].startswith("text/plain")
        assert "/metrics" not in client.get("/openapi.json", headers=headers).json()["paths"]


def test_metrics_report_the_databases_jobs_workers_and_uploads(service: Service) -> None:
    before = samples(service.client.get("/metrics").text)
    uploaded = value(before, "transfer_upload_bytes_count", kind="dataset") or 0
    dataset_id = service.upload(colour_images(per_class=2))["id"]
    service.client.post("/jobs", json=job_body(dataset_id))
    with service.database.session(write=True) as session:
        session.add(
            WorkerRow(id="w-1", hostname="h", pid=1, devices=[], gpus=0, heartbeat_at=utcnow())
        )
        session.flush()
        session.execute(update(WorkerRow).values(heartbeat_at=utcnow().replace(year=2000)))

    found = samples(service.client.get("/metrics").text)
    assert value(found, "transfer_database_up") == 1
    assert value(found, "transfer_jobs", kind="train", status="queued") == 1
    assert value(found, "transfer_jobs", kind="export", status="failed") == 0
    for kind in KINDS.names:  # every registered kind is a series, "import" included
        assert value(found, "transfer_jobs", kind=kind, status="running") is not None, kind
    assert value(found, "transfer_upload_bytes_count", kind="dataset") == uploaded + 1
    age = value(found, "transfer_worker_heartbeat_age_seconds", worker="w-1")
    assert age is not None and age > 20 * 365 * 86400
    assert value(found, "transfer_webhook_deliveries", status="pending") == 0


@pytest.mark.slow
def test_predict_latency_batches_cache_and_the_workers_timings(tmp_path: Path) -> None:
    """A model trained by the in-process worker: its queue wait, run time and epoch are in
    this process's registry, beside the API's predict timings. (Not a shared model: the
    pytest process that trained one of those may be another.)"""
    service = Service(make_settings(tmp_path))
    try:
        images = colour_images(per_class=2)
        dataset_id = service.upload(images)["id"]
        body = job_body(dataset_id, backbone=LIGHT, freeze={"mode": "backbone"})
        model_id = service.train(body)["model_id"]
        _predict_and_count(service, model_id, images["red"][0])
    finally:
        service.close()


def _predict_and_count(service: Service, model_id: str, image: bytes) -> None:
    # This process's registry is shared with other tests: count what changes.
    before = samples(service.client.get("/metrics").text)
    for _ in range(2):
        answer = service.client.post(
            "/predict", data={"model_id": model_id}, files={"files": ("a.png", image)}
        )
        assert answer.status_code == 200, answer.text
    after = samples(service.client.get("/metrics").text)

    def grew(name: str, **labels: str) -> float:
        return (value(after, name, **labels) or 0) - (value(before, name, **labels) or 0)

    assert grew("transfer_predict_seconds_count", model=model_id) == 2
    assert grew("transfer_predict_batch_size_count") == 2
    assert grew("transfer_predict_batch_size_sum") == 2  # one image each, nothing to share
    assert (value(after, "transfer_model_cache_loads_total") or 0) >= 1
    assert grew("transfer_model_cache_hits_total") >= 1
    assert value(after, "transfer_model_cache_evictions_total") == 0
    assert (value(after, "transfer_job_queue_wait_seconds_count", kind="train") or 0) >= 1
    ran = value(after, "transfer_job_run_seconds_count", kind="train", status="succeeded")
    assert (ran or 0) >= 1
    assert (value(after, "transfer_training_epochs_per_second") or 0) > 0


def test_the_worker_serves_its_metrics_on_its_port_behind_the_key(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = make_settings(tmp_path, api_key=KEY, metrics_port=port)
    server = metrics.serve_worker_metrics(settings, host="127.0.0.1")
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        assert httpx.get(url).status_code == 401
        answer = httpx.get(url, headers={"Authorization": f"Bearer {KEY}"})
        assert answer.status_code == 200
        assert "transfer_job_run_seconds" in answer.text
    finally:
        server.shutdown()
        server.server_close()


def test_request_ids_reach_the_answer_and_every_log_line(caplog: pytest.LogCaptureFixture) -> None:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from service.api.request_ids import RequestIds

    logs.stamp_records()  # as `python -m service` does at start

    def endpoint(request: Any) -> PlainTextResponse:  # sync: runs on a worker thread
        logging.getLogger("service.test").info("handled")
        return PlainTextResponse("ok")

    app = RequestIds(Starlette(routes=[Route("/", endpoint)]))
    with TestClient(app) as client, caplog.at_level(logging.INFO, "service.test"):
        given = client.get("/", headers={"X-Request-ID": "abc-123"})
        made = client.get("/", headers={"X-Request-ID": "no spaces\nor newlines"})
    assert given.headers["X-Request-ID"] == "abc-123"
    assert len(made.headers["X-Request-ID"]) == 32  # a fresh one, not the client's
    assert [record.request_id for record in caplog.records] == [  # type: ignore[attr-defined]
        "abc-123",
        made.headers["X-Request-ID"],
    ]


def test_json_log_lines_carry_the_ids_known() -> None:
    logs.stamp_records()
    logger = logging.getLogger("service.test")
    with logs.context(job_id="j_1", worker="host:1:w"):
        record = logger.makeRecord(logger.name, logging.INFO, "f", 1, "job %s", ("j_1",), None)
    line = json.loads(logs.JsonFormatter().format(record))
    assert line["message"] == "job j_1" and line["level"] == "INFO"
    assert line["job_id"] == "j_1" and line["worker"] == "host:1:w"
    assert "request_id" not in line and "model_id" not in line

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        logs.configure_logging("INFO", "json")
        assert all(isinstance(h.formatter, logs.JsonFormatter) for h in root.handlers)
    finally:  # pytest's own handlers back, as they were
        root.handlers[:] = handlers
        root.setLevel(level)
