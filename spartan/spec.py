"""The job specification: the contract between the API and the worker.

Pydantic only (no torch, FastAPI or Celery), so both sides import it cheaply. Unknown fields
are errors everywhere: a typo must not silently run a different job. Checks that need torch
(does the architecture exist, can the target be reached) live beside the model registry in the
job runtime (``runtime.validation``), which the API calls at submission; what the spec's
strings name (files, folders, the queue) is resolved by ``spartan.resolve``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Strict):
    """Which network to sparsify."""

    source: Literal["timm", "torchvision"] = "torchvision"
    name: str = Field(
        min_length=1,
        max_length=200,
        description="architecture, e.g. resnet18; for timm also a pretrained tag "
        "(resnet50.a1_in1k) or a Hugging Face Hub id (hf-hub:timm/resnet18.a1_in1k)",
    )
    num_classes: int = Field(10, ge=2, le=100_000)
    input_size: tuple[
        Annotated[int, Field(ge=1, le=4)],
        Annotated[int, Field(ge=8, le=4096)],
        Annotated[int, Field(ge=8, le=4096)],
    ] = Field((3, 32, 32), description="(channels, height, width) of one input")
    checkpoint: str | None = Field(
        None,
        description="an upload id from POST /v1/uploads, or a .safetensors path under a data "
        "root; .pt/.pth files are loaded with weights_only=True",
    )
    pretrained: bool = Field(
        False,
        description="start from timm's pretrained weights for model.name (timm.create_model("
        "name, pretrained=True): the Hugging Face cache, offline with HF_HUB_OFFLINE=1); "
        "a classifier of another class count starts fresh",
    )

    @model_validator(mode="after")
    def _one_weight_source(self) -> ModelSpec:
        if self.pretrained and self.checkpoint:
            raise ValueError(
                "model.pretrained and model.checkpoint both give the starting weights: set one"
            )
        return self


class DataSpec(_Strict):
    """Where the training and validation images come from."""

    source: Literal["digits", "synthetic", "imagefolder"] = "digits"
    path: str | None = Field(
        None, description="imagefolder root (with train/ and val/ folders), under a data root"
    )
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="digits/synthetic split")
    num_samples: int = Field(1024, ge=16, le=10_000_000, description="synthetic only")
    num_workers: int = Field(0, ge=0, le=64)

    @model_validator(mode="after")
    def _path_matches_source(self) -> DataSpec:
        if self.source == "imagefolder" and not self.path:
            raise ValueError("data.path is required when data.source is 'imagefolder'")
        if self.source != "imagefolder" and self.path:
            raise ValueError(f"data.path is only used with imagefolder, not {self.source!r}")
        return self


Patterns = list[Annotated[str, Field(max_length=500)]]


class TargetSpec(_Strict):
    """A budget and how it is spread over layers: shared by jobs and one-shot plans.

    Give ``sparsity`` or ``cost_fraction``, not both; with ``nm`` both may be left out (the
    masked layers then keep n / m, see ``spartan_core.SparsifierConfig``).
    """

    sparsity: Fraction | None = Field(
        None, description="fraction of maskable weights removed (params cost model only)"
    )
    cost_fraction: Annotated[float, Field(gt=0.0, le=1.0)] | None = Field(
        None, description="kept fraction of the cost model's total cost"
    )
    distribution: Literal["global", "uniform", "erk"] = "global"
    block_shape: tuple[
        Annotated[int, Field(ge=1, le=1024)], Annotated[int, Field(ge=1, le=1024)]
    ] = (1, 1)
    nm: (
        tuple[
            Annotated[int, Field(ge=1, le=1024, strict=True)],
            Annotated[int, Field(ge=2, le=1024, strict=True)],
        ]
        | None
    ) = Field(
        None,
        description="N:M structure [n, m]: n of every m consecutive weights along each layer's "
        "input are kept ([2, 4] runs on NVIDIA sparse tensor cores); block_shape stays [1, 1] "
        "and the target may be left out (n / m of the masked layers)",
    )
    include: Patterns = Field(default_factory=list, max_length=1000)
    exclude: Patterns = Field(default_factory=list, max_length=1000)

    @field_validator("nm")
    @classmethod
    def _nm_fits(
        cls, value: tuple[int, int] | None, info: ValidationInfo
    ) -> tuple[int, int] | None:
        if value is None:
            return value
        n, m = value
        if n >= m:
            raise ValueError(f"expected [n, m] with 1 <= n < m, such as [2, 4]; got [{n}, {m}]")
        block = tuple(info.data.get("block_shape", (1, 1)))
        if block != (1, 1):
            raise ValueError(
                f"N:M keeps single weights: nm [{n}, {m}] needs block_shape [1, 1], got "
                f"block_shape {list(block)}"
            )
        if info.data.get("distribution") == "erk":
            raise ValueError(
                f"nm [{n}, {m}] keeps n/m of every layer, so distribution 'erk' does not apply; "
                "use 'global' or 'uniform'"
            )
        return value

    @model_validator(mode="after")
    def _one_target(self) -> TargetSpec:
        if self.sparsity is not None and self.cost_fraction is not None:
            raise ValueError("sparsity: give exactly one of sparsity and cost_fraction")
        if self.sparsity is None and self.cost_fraction is None and self.nm is None:
            raise ValueError(
                "sparsity: give exactly one of sparsity and cost_fraction (or nm, with neither)"
            )
        return self

    @property
    def target(self) -> float | None:
        """The kept cost fraction f (1 - sparsity when sparsity was given); None only with nm."""
        if self.sparsity is not None:
            return 1.0 - self.sparsity
        return None if self.cost_fraction is None else float(self.cost_fraction)


class SparsitySpec(TargetSpec):
    """What to sparsify, how far, and with which method and schedule."""

    method: Literal["spartan", "topkast", "magnitude"] = "spartan"
    beta_init: float | None = Field(
        None, gt=0.0, le=1e6, description="default: min(10, beta_max) (published: 1)"
    )
    beta_max: float | None = Field(
        None, gt=0.0, le=1e6, description="default: 3 unstructured and N:M, 10 for blocks"
    )
    layer_floor: float | None = Field(
        None,
        ge=0.0,
        lt=1.0,
        description=(
            "global distribution: every layer keeps at least this share of the kept fraction "
            "(default 0.4, 0 under nm; 0 is the published behaviour, see docs/accuracy.md)"
        ),
    )
    warmup_frac: float = Field(0.2, ge=0.0, lt=1.0)
    finetune_frac: float = Field(0.2, ge=0.0, lt=1.0)
    annealing: Literal["linear", "cosine"] = "cosine"

    @model_validator(mode="after")
    def _schedule_fits(self) -> SparsitySpec:
        if self.warmup_frac + self.finetune_frac >= 1.0:
            raise ValueError("finetune_frac: warmup_frac + finetune_frac must be below 1")
        if self.nm is not None and self.layer_floor:
            raise ValueError(
                f"layer_floor: nm {list(self.nm)} keeps n/m of every layer, so a floor does not "
                f"apply; got {self.layer_floor}"
            )
        return self


class CostModelSpec(_Strict):
    """The linear cost model: a registered name and its parameters (e.g. an inline table)."""

    name: str = Field("params", min_length=1, max_length=100)
    params: dict[str, Any] = Field(default_factory=dict)


class TrainingSpec(_Strict):
    """How to train."""

    epochs: int = Field(2, ge=1, le=10_000)
    batch_size: int = Field(64, ge=1, le=65_536)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0.0, le=10.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(5e-4, ge=0.0, le=1.0)
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0.0, le=1000.0)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    mixed_precision: Literal["auto", "off"] = Field(
        "auto", description="auto: bfloat16/float16 autocast on CUDA, full precision on CPU"
    )
    checkpoint_every_steps: int | None = Field(None, ge=1, description="default: settings")


MAX_DEVICES = 64


class ResourcesSpec(_Strict):
    """Where, on how many devices and for how long the job may run.

    ``devices``: N > 1 runs the job as N torch.distributed ranks on one worker machine (one
    GPU per rank on CUDA, N processes on CPU; ``runtime.training.distributed``).
    ``training.batch_size`` is the global batch, split evenly across the ranks, so it must be
    a multiple of N (``runtime.validation``).
    """

    queue: str = Field("default", min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")
    time_limit_s: int = Field(24 * 3600, ge=10, le=30 * 24 * 3600)
    devices: int = Field(
        1,
        ge=1,
        le=MAX_DEVICES,
        description="devices (ranks) on one worker machine: GPUs on CUDA, processes on CPU; "
        "training.batch_size is the global batch, split evenly across them",
    )


class TrackingSpec(_Strict):
    """Where the job's params, metric series and artifacts are logged (``runtime.tracking``).

    ``mlflow``: None follows the service (``SPARTAN_MLFLOW_TRACKING_URI``, if set); false
    logs nowhere; true needs the service's URI; a URI logs there. A job may name only an
    ``http://`` or ``https://`` tracking server: file stores and databases on the worker
    are the operator's to choose (the setting).
    """

    mlflow: bool | str | None = Field(
        None, description="an MLflow tracking URI (http/https), or true/false (see above)"
    )
    experiment: str | None = Field(
        None, min_length=1, max_length=200, description="default: SPARTAN_MLFLOW_EXPERIMENT"
    )

    @field_validator("mlflow")
    @classmethod
    def _remote_uri(cls, value: bool | str | None) -> bool | str | None:
        if isinstance(value, str) and (
            not value.startswith(("http://", "https://")) or len(value) > 2000
        ):
            raise ValueError(
                f"an MLflow tracking URI in a job is http:// or https:// (got {value[:80]!r}); "
                "other stores are set by the service (SPARTAN_MLFLOW_TRACKING_URI)"
            )
        return value


class JobSpec(_Strict):
    """A complete training job."""

    name: str | None = Field(None, max_length=200)
    model: ModelSpec
    data: DataSpec = Field(default_factory=DataSpec)
    sparsity: SparsitySpec
    cost_model: CostModelSpec = Field(default_factory=CostModelSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)

    @field_validator("name")
    @classmethod
    def _printable_name(cls, value: str | None) -> str | None:
        if value is not None and not value.isprintable():
            raise ValueError("name must be printable text")
        return value

    @model_validator(mode="after")
    def _sparsity_needs_params(self) -> JobSpec:
        if self.sparsity.sparsity is not None and self.cost_model.name != "params":
            raise ValueError(
                "sparsity.sparsity: a sparsity target needs the params cost model; "
                f"with cost model {self.cost_model.name!r} give sparsity.cost_fraction"
            )
        return self


def read_spec_file(path: Path) -> dict[str, Any]:
    """A job specification file (YAML, or JSON) as a mapping, not yet validated.

    Raises:
        ValueError: naming the file, when it cannot be read or is not a mapping.
    """
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read the job specification: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a job specification is a mapping, got {type(data).__name__}")
    return data


def load_spec_file(path: Path) -> JobSpec:
    """Read and validate a job specification file.

    Raises:
        ValueError: for unreadable files, or one ``field.path: reason`` line per problem.
    """
    data = read_spec_file(path)
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "spec"
            lines.append(f"{where}: {err['msg']}")
        raise ValueError("\n".join(lines)) from None
