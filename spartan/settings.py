"""All configuration, read once from the environment (prefix ``SPARTAN_``).

Defaults are the embedded single-machine setup: everything under ``SPARTAN_HOME``
(``~/.spartan``): a SQLite job store, a local artifact folder, and kombu's SQLAlchemy
transport on a SQLite file as the Celery broker, so nothing else needs to be installed.
Production points ``SPARTAN_DATABASE_URL`` at PostgreSQL and ``SPARTAN_BROKER_URL`` at Redis.

List settings take a JSON list or comma-separated values: ``SPARTAN_DATA_ROOTS=/data,/other``
and ``SPARTAN_DATA_ROOTS='["/data", "/other"]'`` are the same.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Service settings; every field can be set as ``SPARTAN_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="SPARTAN_", extra="ignore")

    home: Path = Field(default_factory=lambda: Path.home() / ".spartan")
    database_url: str = ""  # default: sqlite:///{home}/spartan.db
    broker_url: str = ""  # default: sqla+sqlite:///{home}/broker.db
    artifact_dir: Path | None = None  # default: {home}/artifacts
    upload_dir: Path | None = None  # default: {home}/uploads
    checkpoint_dir: Path | None = None  # default: {home}/checkpoints
    # default: [{home}/data]; JSON or comma-separated
    data_roots: Annotated[list[Path], NoDecode] = Field(default_factory=list)

    auth_enabled: bool = False
    max_upload_bytes: int = 1 << 30
    max_body_bytes: int = 1 << 20  # JSON request bodies
    # Bounds checked at submission (``runtime.bounds``): a job whose estimated training memory
    # (input batch, activations kept for the backward pass, weights with their gradients,
    # optimizer state and masks, the data set's index) is over this is refused with 400.
    max_job_memory_bytes: int = 32 << 30
    # Per-owner quotas (0: none): a submission while the owner has this many jobs queued, or
    # this many running, is refused with 429 and ``Retry-After: quota_retry_after_s``.
    max_queued_jobs_per_owner: int = Field(100, ge=0)
    max_running_jobs_per_owner: int = Field(10, ge=0)
    quota_retry_after_s: int = Field(60, ge=1)
    # The most targets one sweep may have (POST /v1/sweeps: one child job per target).
    max_sweep_points: int = Field(16, ge=1)
    max_delivery_attempts: int = 3
    job_time_limit_s: int = 7 * 24 * 3600
    checkpoint_every_steps: int = 200
    progress_interval_s: float = 2.0
    default_queue: str = "default"
    # Liveness of running jobs (``spartan.lease``): the process running a job renews its
    # lease every min(progress_interval_s, lease_ttl_s / 3); a lease not renewed for
    # lease_ttl_s means that process is gone, and the job is resumed elsewhere.
    lease_ttl_s: float = 30.0
    # How often each worker reconciles the store with the broker: running jobs whose process
    # is gone are re-queued, queued jobs whose message is lost are re-sent.
    reconcile_interval_s: float = 10.0
    # A queued job whose message was last sent or seen in the broker longer ago than this and
    # is not in the broker now is sent again.
    resend_after_s: float = 20.0
    # Jobs claimed by workers that write no lease (older versions): lost when their progress
    # is older than this.
    heartbeat_timeout_s: float = 600.0

    # REST API and its clients (api/, spartan/client.py)
    api_url: str = "http://127.0.0.1:8000"  # where the CLI finds the service
    api_key: str = ""  # bearer token the CLI sends when the service has auth on
    cancel_grace_s: float = 30.0  # cooperative cancel window before the task is killed
    resend_interval_s: float = 10.0  # the API's reconcile period for queued jobs (0: off)

    # Experiment tracking (``runtime.tracking``): every job's params, metric series and
    # artifacts go to an MLflow run at this tracking URI (e.g. http://mlflow:5000 or
    # file:/srv/mlruns); empty: none, unless a job's spec names one (``tracking.mlflow``).
    mlflow_tracking_uri: str = ""
    mlflow_experiment: str = "spartan"  # a job's ``tracking.experiment`` overrides it
    # The tracking servers a job's spec may name (``tracking.mlflow``), comma-separated: a job
    # makes the worker connect where it says, so only these (and mlflow_tracking_uri) pass.
    mlflow_allowed_uris: Annotated[list[str], NoDecode] = Field(default_factory=list)

    @field_validator("data_roots", "mlflow_allowed_uris", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        return split_list(value)

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        self.home = self.home.expanduser()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.home / 'spartan.db'}"
        if not self.broker_url:
            self.broker_url = f"sqla+sqlite:///{self.home / 'broker.db'}"
        self.artifact_dir = (self.artifact_dir or self.home / "artifacts").expanduser()
        self.upload_dir = (self.upload_dir or self.home / "uploads").expanduser()
        self.checkpoint_dir = (self.checkpoint_dir or self.home / "checkpoints").expanduser()
        self.data_roots = [p.expanduser() for p in self.data_roots] or [self.home / "data"]
        return self

    def ensure_dirs(self) -> None:
        """Create the local folders the settings name."""
        for path in (self.home, self.artifact_dir, self.upload_dir, self.checkpoint_dir):
            path.mkdir(parents=True, exist_ok=True)


def split_list(value: Any) -> Any:
    """A list setting from the environment: a JSON list, or comma-separated values (empty
    items dropped); anything that is not a string is left to the field's validation."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not a JSON list ({exc}); or give comma-separated values") from None
    return [item.strip() for item in text.split(",") if item.strip()]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; tests call ``get_settings.cache_clear()`` after changing env."""
    return Settings()
