"""The service's settings: one class, read from the environment (and a `.env` file)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, IPvAnyNetwork, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    data_dir: Path = Field(Path("data"), description="Where the SQLite file and caches live.")
    checkpoint_dir: Path | None = Field(
        None,
        description="Where workers keep training checkpoints to resume from; every worker "
        "must reach it (a shared directory across hosts). Empty: <data_dir>/checkpoints.",
    )
    database_url: str = Field(
        "", description="SQLAlchemy URL; empty means sqlite:///<data_dir>/service.db."
    )
    auto_migrate: bool = Field(
        False, description="Apply pending migrations at start instead of refusing to start."
    )

    api_key: str | None = Field(None, description="When set, requests need 'Bearer <key>'.")
    cors_origins: list[str] = Field(default_factory=list)
    session_seconds: int = Field(
        12 * 3600, gt=0, description="How long a console login lasts (with API_KEY set)."
    )
    allow_open_without_key: bool = Field(
        False,
        description="Let `api` listen on an address other than loopback with no API_KEY: "
        "anyone who reaches the port may then use the service. Off: without a key the API "
        "refuses to start on any --host but loopback.",
    )
    forwarded_allow_ips: str = Field(
        "",
        description="The reverse proxies (comma-separated addresses or CIDRs, or *) whose "
        "X-Forwarded-For and X-Forwarded-Proto the API believes. Empty: none; a client is "
        "the TCP peer (which METRICS_OPEN_NETWORKS and the login backoff go by).",
    )
    cookie_secure: bool = Field(
        False,
        description="Mark the console's cookie Secure even where the API sees plain http: "
        "behind a proxy that ends TLS. Off: Secure only when the API itself serves https.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="The service's own log lines; DEBUG also shows libraries' lines."
    )

    max_dataset_bytes: int = Field(1024 * MiB, gt=0, description="Largest dataset upload.")
    max_image_bytes: int = Field(
        32 * MiB, gt=0, description="Largest single image, in a zip or sent to /predict."
    )
    max_dataset_files: int = Field(200_000, gt=0, description="Most members in one zip.")
    # -- server-side dataset import (service/datasets/imports.py) --
    import_root: Path | None = Field(
        None,
        description="The directory POST /datasets/import may read class folders from (only "
        "inside it, symlinks that leave it refused). Empty: import is off.",
    )
    max_predict_bytes: int = Field(64 * MiB, gt=0, description="Largest /predict body.")
    max_predict_files: int = Field(64, gt=0, description="Most images in one /predict.")
    max_concurrent_decodes: int = Field(
        0,
        ge=0,
        description="Images one process (the API, a worker) decodes at once, whatever asked "
        "(uploads, /predict, thumbnails, batch prediction, training); more wait their turn, "
        "so the memory of many large images sent at once stays bounded (service/ml/images.py)."
        " 0: one per CPU core the process may use.",
    )
    max_weights_bytes: int = Field(
        1024 * MiB, gt=0, description="Largest weights file sent to /weights."
    )

    # -- training datasets larger than memory (service/storage/shard_cache.py) -------------------
    train_in_memory_bytes: int = Field(
        1024 * MiB,
        ge=0,
        description="A training job reads a dataset of up to this many encoded bytes into "
        "the worker's memory; a larger one streams from a shard cache the worker builds once "
        "under <data_dir>/cache/datasets.",
    )

    model_cache_size: int = Field(4, ge=1, description="Loaded models kept in memory by the API.")
    freeze_loaded_models: bool = Field(
        True,
        description="After each model load, keep the objects the API holds out of the garbage "
        "collector's full scans (gc.freeze), so a collection does not pause serving for the "
        "whole loaded TensorFlow heap; an evicted model's are handed back.",
    )
    warm_models: bool = Field(
        True,
        description="At start, load in the background the models registry aliases point to, "
        "then those this host loaded most recently, up to MODEL_CACHE_SIZE; /readyz answers "
        '503 "warming" until they are loaded.',
    )
    batch_predict_size: int = Field(
        32, ge=1, le=1024, description="Images per model call in a batch prediction job."
    )
    predict_max_batch: int = Field(
        32, ge=1, description="Most images that concurrent /predict requests share one call."
    )
    predict_max_wait_ms: float = Field(
        0.0,
        ge=0,
        description="How long a /predict batch waits to fill; 0: requests arriving while a "
        "batch runs form the next one, and a request alone never waits.",
    )
    predict_recheck_seconds: float = Field(
        1.0,
        ge=0,
        description="How long /predict takes a model id it has found as still there before "
        "reading its row again (rows never change; a model deleted through another API "
        "process stops being served within this). 0: every request reads it.",
    )
    predict_lanes: int = Field(
        0,
        ge=0,
        description="Model calls one model runs at once in the API, each on its own batch; "
        "0: one per CPU core the API may use.",
    )
    tf_intra_op_threads: int = Field(
        0,
        ge=0,
        description="TensorFlow threads inside one op in the API (0: its CPU cores shared "
        "out among the lanes, at least 1 each).",
    )
    tf_inter_op_threads: int = Field(
        0, ge=0, description="TensorFlow ops run at once in the API (0: TensorFlow's choice)."
    )

    lease_seconds: float = Field(
        60.0, gt=0, description="A worker's claim on a job lasts this long."
    )
    max_attempts: int = Field(3, ge=1, description="Claims of one job before it is failed.")
    poll_seconds: float = Field(1.0, gt=0, description="Idle worker's wait between claims.")
    progress_seconds: float = Field(
        0.5, gt=0, description="How often a training worker writes progress and checks cancel."
    )
    events_poll_seconds: float = Field(
        0.5, gt=0, description="How often /jobs/{id}/events reads the job for news."
    )

    # -- a worker's devices (service/jobs/devices.py, service/jobs/presence.py) -------
    worker_devices: list[int] | None = Field(
        None,
        description="The GPUs a worker trains on, as indices of those TensorFlow sees (JSON "
        "list: [0, 1]); unset: all of them; []: none (CPU only).",
    )
    worker_gpus: int | None = Field(
        None,
        ge=0,
        description="GPUs a worker says it has: it claims only jobs asking for at most as "
        "many, and trains on at most the first that many of WORKER_DEVICES; unset: the GPUs "
        "it trains on; 0: CPU only.",
    )

    # -- operating it (service/metrics.py, service/logs.py, service/webhooks.py) ------------
    log_format: Literal["text", "json"] = Field(
        "text",
        description="json: one JSON object per log line, with job, model, worker and "
        "request ids when known.",
    )
    metrics_port: int = Field(
        0, ge=0, le=65535, description="A worker's /metrics port (0: the worker serves none)."
    )
    metrics_open_networks: list[IPvAnyNetwork] = Field(
        default_factory=list,
        description="Client networks (CIDR, JSON list) that may read /metrics without the API "
        "key: a Prometheus scraping from inside the cluster.",
    )
    webhook_secret: str | None = Field(
        None, description="Signs webhook events (HMAC-SHA256); unset: events are sent unsigned."
    )
    webhook_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="How long one webhook attempt may take in all: resolving, connecting, "
        "sending and reading the answer.",
    )
    webhook_allowed_networks: list[IPvAnyNetwork] = Field(
        default_factory=list,
        description="Networks (CIDR, JSON list) webhooks may be sent to besides the public "
        "internet: an on-premises receiver. Empty: loopback, private, link-local and other "
        "non-public addresses are refused.",
    )
    webhook_retry_seconds: float = Field(
        1.0, gt=0, description="The wait before a failed webhook's first retry; doubles per try."
    )
    webhook_give_up_seconds: float = Field(
        3600.0,
        gt=0,
        description="A webhook event not accepted this long after the job ended "
        "is recorded as failed.",
    )
    drift_webhook_url: str | None = Field(
        None,
        pattern=r"^https?://\S+$",
        max_length=2000,
        description="Where `model.drift` events go when a served model starts or stops "
        "drifting (docs/unknowns.md); unset: drift is only logged, shown and measured.",
    )
    capture_refresh_seconds: float = Field(
        5.0,
        gt=0,
        description="How often each API process reads the capture policies: a policy set "
        "through another process takes effect within this.",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("api_key")
    @classmethod
    def _api_key_strong_enough(cls, value: str | None) -> str | None:
        if value is not None and value != "" and len(value) < 16:
            raise ValueError("API_KEY must be at least 16 characters")
        return value or None

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("webhook_secret")
    @classmethod
    def _empty_is_unset(cls, value: str | None) -> str | None:
        return value or None

    @model_validator(mode="after")
    def _default_database(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{(self.data_dir / 'service.db').resolve()}"
        return self

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    @property
    def checkpoints(self) -> Path:
        return self.checkpoint_dir or self.data_dir / "checkpoints"

    @property
    def serving_lanes(self) -> int:
        return self.predict_lanes or usable_cores()

    @property
    def serving_intra_op_threads(self) -> int:
        return self.tf_intra_op_threads or max(1, usable_cores() // self.serving_lanes)


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity: a container's cpuset)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@lru_cache
def get_settings() -> Settings:
    return Settings()
