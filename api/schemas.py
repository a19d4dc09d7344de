"""Request and response schemas of the REST API, one family per resource.

The job body itself is ``spartan.spec.JobSpec``, shared with the worker; everything here is
what the API adds around it (identifiers, status, pagination wrappers, plan requests, errors).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from spartan.spec import CostModelSpec, ModelSpec, TargetSpec
from spartan.store import Job, JobStatus, Upload
from spartan.sweeps import Axis, SweepStatus


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


# sweeps ---------------------------------------------------------------------------------------
class SweepTargets(BaseModel):
    """The targets of a sweep: a list on exactly one axis (each value becomes one child job)."""

    model_config = ConfigDict(extra="forbid")

    sparsity: list[float] | None = Field(
        None,
        description="sparsity targets, each in (0, 1), e.g. [0.5, 0.8, 0.9] (params cost model "
        "only); distinct values, at most SPARTAN_MAX_SWEEP_POINTS",
    )
    cost_fraction: list[float] | None = Field(
        None,
        description="kept cost fractions, each in (0, 1], e.g. [0.5, 0.3, 0.2, 0.1]; distinct "
        "values, at most SPARTAN_MAX_SWEEP_POINTS",
    )


class SweepCreate(BaseModel):
    """A sweep: one job spec trained at several targets (``spartan.sweeps``)."""

    model_config = ConfigDict(extra="forbid")

    spec: dict[str, Any] = Field(
        description="a job spec as POST /v1/jobs takes it, without a target "
        "(sparsity.sparsity and sparsity.cost_fraction left out): each child job is this spec "
        "with one of the targets put into sparsity.<axis>"
    )
    targets: SweepTargets


class SweepJobPublic(BaseModel):
    """One child job of a sweep."""

    id: str
    target: float = Field(description="its value on the sweep's axis")
    status: JobStatus
    error: str | None = None


class SweepPointPublic(BaseModel):
    """What a succeeded child achieved."""

    job_id: str
    target: float
    top1: float = Field(description="validation top-1 of the final model, in [0, 1]")
    cost_fraction: float = Field(description="kept fraction of the cost (the cost report's)")
    latency_ms: float | None = Field(
        description="forward latency of the deployed model, measured on the worker (ms)"
    )


class SweepCreated(BaseModel):
    """The answer to a sweep submission: the sweep and its child jobs (all queued)."""

    id: str
    status: SweepStatus
    jobs: list[SweepJobPublic]


class SweepSummaryPublic(BaseModel):
    """A sweep in a list: its status and its children's counts by status."""

    id: str
    name: str | None
    status: SweepStatus = Field(
        description="from the children: queued (all queued), running (some unfinished), "
        "succeeded (all), partial (all finished, some succeeded), failed (none succeeded, "
        "some failed), cancelled (all cancelled)"
    )
    axis: Axis
    targets: list[float]
    counts: dict[str, int] = Field(description="child jobs by status")
    created_at: UtcDatetime


class SweepPublic(SweepSummaryPublic):
    """A sweep: its children, the points they reached and the Pareto frontier."""

    jobs: list[SweepJobPublic] = Field(description="the child jobs, in the order of targets")
    points: list[SweepPointPublic] = Field(description="every succeeded child, cheapest first")
    frontier: list[SweepPointPublic] = Field(
        description="the Pareto-optimal points (no other point has cost_fraction <= and "
        "top1 >= with one strict), cheapest first"
    )
    spec: dict[str, Any] = Field(description="the sweep's job spec, without a target")


class SweepsPublic(BaseModel):
    """One page of sweeps, newest first; ``count`` is the total."""

    data: list[SweepSummaryPublic]
    count: int
    limit: int
    offset: int


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
