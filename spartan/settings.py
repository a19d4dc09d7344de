"""All configuration, read once from the environment (prefix ``SPARTAN_``).

Defaults are the embedded single-machine setup: everything under ``SPARTAN_HOME``
(``~/.spartan``): a SQLite job store, a local artifact folder, and kombu's SQLAlchemy
transport on a SQLite file as the Celery broker, so nothing else needs to be installed.
Production points ``SPARTAN_DATABASE_URL`` at PostgreSQL and ``SPARTAN_BROKER_URL`` at Redis.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Service settings; every field can be set as ``SPARTAN_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="SPARTAN_", extra="ignore")

    home: Path = Field(default_factory=lambda: Path.home() / ".spartan")
    database_url: str = ""  # default: sqlite:///{home}/spartan.db
    broker_url: str = ""  # default: sqla+sqlite:///{home}/broker.db
    artifact_dir: Path | None = None  # default: {home}/artifacts
    upload_dir: Path | None = None  # default: {home}/uploads
    checkpoint_dir: Path | None = None  # default: {home}/checkpoints
    data_roots: list[Path] = Field(default_factory=list)  # default: [{home}/data]

    auth_enabled: bool = False
    max_upload_bytes: int = 1 << 30
    max_body_bytes: int = 1 << 20  # JSON request bodies
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


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; tests call ``get_settings.cache_clear()`` after changing env."""
    return Settings()
