"""Request and response schemas of the REST API, one family per resource.

The job body itself is ``spartan.spec.JobSpec``, shared with the worker; everything here is
what the API adds around it (identifiers, status, pagination wrappers, plan requests, errors).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, model_validator

from spartan.spec import CostModelSpec, ModelSpec, TargetSpec
from spartan.store import Job, JobStatus, Upload


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; every stored time is UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


UtcDatetime = Annotated[datetime, AfterValidator(_utc)]


class ErrorItem(BaseModel):
    """One problem with a request: where (``loc``) and why (``msg``)."""

    loc: list[str | int]
    msg: str
    type: str = "value_error"


class ErrorPublic(BaseModel):
    """The body of every 4xx/5xx answer."""

    detail: list[ErrorItem]


# jobs -----------------------------------------------------------------------------------------
class JobCreated(BaseModel):
    """The answer to a submission."""

    id: str
    status: JobStatus


class JobPublic(BaseModel):
    """A job as its owner sees it."""

    id: str
    name: str | None
    status: JobStatus
    progress: dict[str, Any] | None = Field(
        None, description="latest progress: step, epoch, loss, accuracy, sparsity, eta_s, ..."
    )
    metrics: dict[str, Any] | None = Field(None, description="final metrics of a finished job")
    error: str | None = Field(None, description="why a failed job failed")
    traceback: str | None = Field(
        None, description="the Python traceback of a failed job (its last 20000 characters)"
    )
    attempts: int
    cancel_requested: bool
    spec: dict[str, Any]
    created_at: UtcDatetime
    updated_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None

    @classmethod
    def from_job(cls, job: Job) -> JobPublic:
        return cls.model_validate(job.model_dump(exclude={"owner", "worker"}))


class JobsPublic(BaseModel):
    """One page of jobs, newest first; ``count`` is the total matching the filter."""

    data: list[JobPublic]
    count: int
    limit: int
    offset: int


class JobMetricsPublic(BaseModel):
    """A job's whole metric series so far, stored as it runs (``spartan.series``)."""

    job_id: str
    points: list[dict[str, Any]] = Field(
        description="training progress reports, increasing in step: step, loss, accuracy, "
        "lr, beta, sparsity, cost_fraction, scheduled_cost_fraction, throughput, epoch, ..."
    )
    epochs: list[dict[str, Any]] = Field(
        description="per-epoch records: epoch, step, val_top1, val_top5, val_loss, "
        "train_loss, train_accuracy, lr, sparsity, cost_fraction, beta"
    )
    last_id: int = Field(
        description="the id of the newest record (the event id of GET /v1/jobs/{id}/events)"
    )


# artifacts ------------------------------------------------------------------------------------
class ArtifactPublic(BaseModel):
    """One file a finished (or running) job left in its artifact folder."""

    name: str
    size: int = Field(description="bytes")
    url: str


class ArtifactsPublic(BaseModel):
    data: list[ArtifactPublic]
    count: int


# uploads --------------------------------------------------------------------------------------
class UploadPublic(BaseModel):
    """A stored checkpoint; use ``id`` as ``model.checkpoint`` in a job or a plan."""

    id: str
    filename: str
    size: int = Field(description="bytes")
    sha256: str
    num_tensors: int
    created_at: UtcDatetime

    @classmethod
    def from_upload(cls, upload: Upload) -> UploadPublic:
        return cls.model_validate(upload.model_dump(exclude={"owner", "path"}))


# plans ----------------------------------------------------------------------------------------
class PlanCreate(TargetSpec):
    """A one-shot plan: how a target would be spread over the layers, without training.

    The allocation is the hard top-k of |w| per unit cost over the model's current weights
    (randomly initialised, or ``model.checkpoint``: an upload id).
    """

    model: ModelSpec
    cost_model: CostModelSpec = Field(default_factory=CostModelSpec)

    @model_validator(mode="after")
    def _sparsity_needs_params(self) -> PlanCreate:
        if self.sparsity is not None and self.cost_model.name != "params":
            raise ValueError(
                "sparsity: a sparsity target needs the params cost model; "
                f"with cost model {self.cost_model.name!r} give cost_fraction"
            )
        return self


class PlanPublic(BaseModel):
    """The plan: per-layer allocation and predicted cost (as ``cost_models.plan`` gives it)."""

    model: str
    cost_model: str
    target: float = Field(description="kept cost fraction")
    plan: dict[str, Any]


# registries -----------------------------------------------------------------------------------
class ModelPublic(BaseModel):
    source: str
    name: str


class ModelsPublic(BaseModel):
    data: list[ModelPublic]
    count: int


class CostModelsPublic(BaseModel):
    data: list[dict[str, Any]]
    count: int


# health ---------------------------------------------------------------------------------------
class HealthPublic(BaseModel):
    status: Literal["ok"]


class ReadyPublic(BaseModel):
    status: Literal["ready", "unavailable"]
    checks: dict[str, str] = Field(description="component -> 'ok' or the error")
