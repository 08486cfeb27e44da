"""Workers say what they have: the workers table, GET /workers, and jobs asking for GPUs.

No GPU here: a worker is told how many it has (WORKER_GPUS), which is all the claim reads.
Nothing trains: the claims are made directly, and the worker loops find no job they may run.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from service import jobs
from service.jobs import devices
from service.jobs import presence as workers
from service.storage.tables import Job, WorkerRow, utcnow
from tests.conftest import Service, colour_images, job_body, make_settings, wait_for

CLAIM = {"lease_seconds": 30, "max_attempts": 3}


def queue(service: Service, dataset_id: str, gpus: int | None) -> str:
    body = job_body(dataset_id)
    if gpus is not None:
        body["resources"] = {"gpus": gpus}
    response = service.client.post("/jobs", json=body)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def test_a_cpu_worker_leaves_gpu_jobs_to_a_gpu_worker(service: Service, tmp_path: Path) -> None:
    from service.job_kinds import KINDS
    from service.jobs.runner import Worker

    dataset_id = service.upload(colour_images(per_class=2))["id"]
    gpu_job = queue(service, dataset_id, gpus=1)  # the oldest: first in line
    cpu_job = queue(service, dataset_id, gpus=None)
    assert service.client.get(f"/jobs/{gpu_job}").json()["spec"]["resources"] == {"gpus": 1}
    with service.database.session() as session:
        assert session.get(Job, gpu_job).gpus == 1 and session.get(Job, cpu_job).gpus == 0

    cpu = jobs.claim_next_job(service.database, worker_id="cpu", gpus=0, **CLAIM)
    assert cpu is not None and cpu.job_id == cpu_job
    assert jobs.claim_next_job(service.database, worker_id="cpu", gpus=0, **CLAIM) is None
    # A worker loop told it has no GPU finds nothing it may run, and trains nothing.
    settings = make_settings(tmp_path, database_url=service.settings.database_url, worker_gpus=0)
    assert not Worker(service.database, settings, KINDS).run_once()
    assert service.client.get(f"/jobs/{gpu_job}").json()["status"] == "queued"

    gpu = jobs.claim_next_job(service.database, worker_id="gpu", gpus=1, **CLAIM)
    assert gpu is not None and gpu.job_id == gpu_job
    assert jobs.claim_next_job(service.database, worker_id="big", gpus=8, **CLAIM) is None


def test_any_worker_ends_a_dead_gpu_job_it_could_not_run(service: Service) -> None:
    """A cancelled GPU job whose worker died is ended by the next claim, GPU or not."""
    dataset_id = service.upload(colour_images(per_class=2))["id"]
    job_id = queue(service, dataset_id, gpus=2)
    assert jobs.claim_next_job(service.database, worker_id="gpu", gpus=2, **CLAIM) is not None
    assert service.client.post(f"/jobs/{job_id}/cancel").status_code == 200
    with service.database.session(write=True) as session:
        expired = utcnow() - timedelta(seconds=1)
        session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=expired))
    assert jobs.claim_next_job(service.database, worker_id="cpu", gpus=0, **CLAIM) is None
    assert service.client.get(f"/jobs/{job_id}").json()["status"] == "cancelled"


@pytest.mark.any_database
def test_a_job_cannot_ask_for_negative_gpus(service: Service) -> None:
    body = {**job_body("d_x"), "resources": {"gpus": -1}}
    response = service.client.post("/jobs", json=body)
    assert response.status_code == 422 and "resources" in response.text


def listed(service: Service) -> dict[str, dict]:
    response = service.client.get("/workers")
    assert response.status_code == 200, response.text
    return {worker["id"]: worker for worker in response.json()}


def test_workers_register_beat_and_stop(service: Service, tmp_path: Path) -> None:
    from service.job_kinds import KINDS
    from service.jobs.runner import Worker

    # Told it has one GPU (it trains on the CPU here); a short lease makes it beat often.
    settings = make_settings(
        tmp_path, database_url=service.settings.database_url, worker_gpus=1, lease_seconds=0.6
    )
    worker = Worker(service.database, settings, KINDS, worker_id="w-test")
    thread = threading.Thread(target=worker.run_forever)
    thread.start()
    try:
        first = wait_for(lambda: listed(service).get("w-test"), 30, "the worker's row")
        assert first["status"] == "alive" and first["gpus"] == 1 and first["job_id"] is None
        assert [device["kind"] for device in first["devices"]] == ["CPU"]
        assert first["memory_bytes"] > 0 and first["heartbeat_age_seconds"] < 5
        # It beats while idle: the heartbeat moves on past the registration.
        wait_for(
            lambda: listed(service)["w-test"]["heartbeat_at"] > first["heartbeat_at"],
            10,
            "a later heartbeat",
        )
        page = service.client.get("/console").text
        assert 'id="workers"' in page and "1 GPU" in page and "CPU" in page
    finally:
        worker.request_shutdown()
        thread.join(timeout=30)
    assert not thread.is_alive()
    stopped = listed(service)["w-test"]
    assert stopped["status"] == "stopped" and stopped["stopped_at"] is not None


def test_a_silent_worker_is_listed_as_lost(service: Service) -> None:
    cpu = devices.Device("CPU", "/physical_device:CPU:0", 8 * 2**30)
    gpus = [devices.Device("GPU", f"/physical_device:GPU:{i}", 80 * 2**30) for i in range(2)]
    workers.register(service.database, worker_id="old", devices=[cpu], gpus=0)
    workers.register(service.database, worker_id="new", devices=gpus, gpus=2)
    lease = service.settings.lease_seconds
    with service.database.session(write=True) as session:
        silent = utcnow() - timedelta(seconds=workers.LOST_AFTER_LEASES * lease + 1)
        session.execute(
            update(WorkerRow)
            .where(WorkerRow.id == "old")
            .values(heartbeat_at=silent, started_at=silent)
        )
    response = service.client.get("/workers").json()
    assert [worker["id"] for worker in response] == ["new", "old"]  # newest start first
    assert [worker["status"] for worker in response] == ["alive", "lost"]
    assert response[0]["devices"][1]["memory_bytes"] == 80 * 2**30
    assert response[1]["heartbeat_age_seconds"] > workers.LOST_AFTER_LEASES * lease
    # Rows silent past FORGET_AFTER go when a worker registers.
    with service.database.session(write=True) as session:
        forgotten = utcnow() - workers.FORGET_AFTER - timedelta(seconds=1)
        session.execute(
            update(WorkerRow).where(WorkerRow.id == "old").values(heartbeat_at=forgotten)
        )
    workers.register(service.database, worker_id="new", devices=gpus, gpus=2)
    with service.database.session() as session:
        assert session.scalars(select(WorkerRow.id)).all() == ["new"]


@pytest.mark.parametrize(
    ("found", "indices", "count", "chosen"),
    [
        (2, None, None, [0, 1]),
        (2, [1], None, [1]),
        (2, None, 1, [0]),
        (4, [3, 1], 1, [3]),
        (2, None, 0, []),
        (0, None, None, []),
        (0, None, 1, []),  # told of a GPU it has not: claims for one, trains on the CPU
        (2, [], None, []),
    ],
)
def test_which_gpus_a_worker_trains_on(
    found: int, indices: list[int] | None, count: int | None, chosen: list[int]
) -> None:
    assert devices.chosen_gpus(found, indices, count) == chosen


@pytest.mark.parametrize("indices", [[2], [-1], [0, 0]])
def test_devices_it_does_not_have_are_refused(indices: list[int]) -> None:
    with pytest.raises(ValueError, match="WORKER_DEVICES"):
        devices.chosen_gpus(2, indices, None)


def test_the_gpus_it_claims_for() -> None:
    gpu = devices.Device("GPU", "/physical_device:GPU:0")
    cpu = devices.Device("CPU", "/physical_device:CPU:0")
    assert devices.claimed_gpus(None, [gpu, gpu]) == 2
    assert devices.claimed_gpus(None, [cpu]) == 0
    assert devices.claimed_gpus(1, [cpu]) == 1
    assert devices.claimed_gpus(0, [gpu]) == 0
    assert "GPU /physical_device:GPU:0" in devices.describe_devices([gpu])
