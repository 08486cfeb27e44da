"""The service's settings: one class, read from the environment (and a `.env` file)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    data_dir: Path = Field(Path("data"), description="Where the SQLite file and caches live.")
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
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="The service's own log lines; DEBUG also shows libraries' lines."
    )

    max_dataset_bytes: int = Field(1024 * MiB, gt=0, description="Largest dataset upload.")
    max_image_bytes: int = Field(
        32 * MiB, gt=0, description="Largest single image, in a zip or sent to /predict."
    )
    max_dataset_files: int = Field(200_000, gt=0, description="Most members in one zip.")
    max_predict_bytes: int = Field(64 * MiB, gt=0, description="Largest /predict body.")
    max_predict_files: int = Field(64, gt=0, description="Most images in one /predict.")
    max_weights_bytes: int = Field(
        1024 * MiB, gt=0, description="Largest weights file sent to /weights."
    )

    model_cache_size: int = Field(4, ge=1, description="Loaded models kept in memory by the API.")
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
    tf_intra_op_threads: int = Field(
        0, ge=0, description="TensorFlow threads inside one op in the API (0: all cores)."
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

    @model_validator(mode="after")
    def _default_database(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{(self.data_dir / 'service.db').resolve()}"
        return self

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"


@lru_cache
def get_settings() -> Settings:
    return Settings()
