"""Response models of the workers list (GET /workers)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from service.schemas import example_config

# -- workers (GET /workers; service/jobs/presence.py) ---------------------------------------


class DeviceRead(BaseModel):
    kind: Literal["GPU", "CPU"]
    name: str = Field(description="TensorFlow's physical device name.")
    memory_bytes: int | None = Field(
        None, description="A GPU's memory as TensorFlow may use it; for the CPU, the host's RAM."
    )
    model: str | None = Field(None, description='The GPU as its driver names it: "NVIDIA H200".')


class WorkerRead(BaseModel):
    model_config = example_config(
        {
            "id": "gpu-host-1:4242:0123abcd",
            "hostname": "gpu-host-1",
            "pid": 4242,
            "status": "alive",
            "devices": [
                {
                    "kind": "GPU",
                    "name": "/physical_device:GPU:0",
                    "memory_bytes": 150_000_000_000,
                    "model": "NVIDIA H200",
                }
            ],
            "gpus": 1,
            "memory_bytes": 137_438_953_472,
            "job_id": "j_0123456789abcdef",
            "started_at": "2026-11-29T15:00:00Z",
            "heartbeat_at": "2026-11-29T15:10:00Z",
            "heartbeat_age_seconds": 4.2,
            "stopped_at": None,
        }
    )

    id: str = Field(description="The worker's name, as jobs' lease owner.")
    hostname: str
    pid: int
    status: Literal["alive", "lost", "stopped"] = Field(
        description='"alive": its heartbeat is recent; "lost": silent for two leases (it died, '
        'or its host did); "stopped": it shut down cleanly.'
    )
    devices: list[DeviceRead] = Field(description="What it trains on: its GPUs, or the CPU.")
    gpus: int = Field(description="GPUs it claims jobs for (WORKER_GPUS, else its GPUs).")
    memory_bytes: int | None = Field(description="The host's RAM.")
    job_id: str | None = Field(description="The job it runs now.")
    started_at: datetime
    heartbeat_at: datetime
    heartbeat_age_seconds: float
    stopped_at: datetime | None
