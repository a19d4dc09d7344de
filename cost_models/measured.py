"""The measured side of the cost report: the deployment beside the cost model's prediction.

One rule for every measured latency in a report: the model is deployed
(``cost_models.deploy``: the fastest measured kernel per layer, dense where nothing sparse is
faster) on the device and input in question, and its report gives both the per-layer rows and
the end-to-end dense and deployed latency. ``deployment_section`` turns a deploy report into the
report's ``deployment`` (with the predicted latency and the relative error
(predicted - measured) / measured where the cost model predicts latency);
``MeasuredLatency.from_deployment`` gives the report's ``measured_latency`` summary from it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


class _Row(Protocol):
    """What a report row offers here (``cost_models.report.LayerRow``)."""

    module: str
    predicted_dense_latency_ms: float | None
    predicted_sparse_latency_ms: float | None


@dataclass
class DeployedLayer:
    """One deployed Linear / Conv2d layer: its kernel, measured times and the prediction."""

    module: str
    type: str
    layout: str
    kernel: str
    dense_ms: float
    deployed_ms: float
    speedup: float | None
    predicted_dense_ms: float | None = None
    predicted_ms: float | None = None
    relative_error: float | None = None


@dataclass
class Deployment:
    """The model deployed on the measuring device, end to end and per layer.

    ``predicted_*`` come from the cost model (its own batch size; see its ``params``),
    ``relative_error`` is (predicted_ms - deployed_ms) / deployed_ms.
    """

    device: str
    threads: int | None
    dtype: str
    batch_size: int
    input_shape: list[int]
    dense_ms: float
    deployed_ms: float
    speedup: float | None
    kernels: dict[str, int]
    layers: list[DeployedLayer]
    predicted_dense_ms: float | None = None
    predicted_ms: float | None = None
    relative_error: float | None = None
    dense_relative_error: float | None = None

    def kernel_choice(self) -> dict[str, str]:
        """``{layer name: kernel}``, what ``cost_models.apply_kernels`` replays."""
        return {layer.module: layer.kernel for layer in self.layers}


@dataclass
class MeasuredLatency:
    """Forward latency of the whole model, dense versus deployed (``Deployment``'s totals)."""

    device: str
    batch_size: int
    dense_ms: float
    sparse_ms: float
    speedup: float | None
    sparse_kernel: str

    @classmethod
    def from_deployment(cls, deployment: Deployment) -> MeasuredLatency:
        return cls(
            device=deployment.device,
            batch_size=deployment.batch_size,
            dense_ms=deployment.dense_ms,
            sparse_ms=deployment.deployed_ms,
            speedup=deployment.speedup,
            sparse_kernel="deployed",
        )


def relative_error(predicted: float | None, measured: float | None) -> float | None:
    """(predicted - measured) / measured, or None when either is missing or measured is 0."""
    if predicted is None or measured is None or not measured > 0:
        return None
    return (predicted - measured) / measured


def deployment_section(
    deploy_report: Mapping[str, Any],
    rows: Sequence[_Row],
    *,
    model_latency: tuple[float, float] | None = None,
) -> Deployment:
    """The report's ``deployment`` from a ``cost_models.deploy`` report and the report rows.

    A layer's prediction is the sum of its module's rows (one weight per Linear / Conv2d).
    The end-to-end prediction is ``model_latency`` (dense, sparse) where the cost model
    predicts the whole model (``profiled`` measures what it does not mask), else the sum of
    every row, which leaves out what the cost model does not price (norms, activations,
    attention arithmetic).

    Raises:
        ValueError: for a mapping that is not a deploy report.
    """
    try:
        totals = deploy_report["totals"]
        layer_rows = list(deploy_report["layers"])
        device = str(deploy_report["device"])
    except (KeyError, TypeError) as exc:
        raise ValueError(
            f"deployment: expected a cost_models.deploy report (deploy_report), missing {exc}"
        ) from None
    predicted: dict[str, tuple[float, float]] = {}
    for row in rows:
        if row.predicted_sparse_latency_ms is None or row.predicted_dense_latency_ms is None:
            continue
        dense, sparse = predicted.get(row.module, (0.0, 0.0))
        predicted[row.module] = (
            dense + row.predicted_dense_latency_ms,
            sparse + row.predicted_sparse_latency_ms,
        )
    layers = []
    for layer in layer_rows:
        dense_pred, sparse_pred = predicted.get(layer["name"], (None, None))
        layers.append(
            DeployedLayer(
                module=layer["name"],
                type=layer.get("type", ""),
                layout=(layer.get("layout") or {}).get("kind", ""),
                kernel=layer["kernel"],
                dense_ms=layer["dense_ms"],
                deployed_ms=layer["deployed_ms"],
                speedup=layer.get("speedup"),
                predicted_dense_ms=dense_pred,
                predicted_ms=sparse_pred,
                relative_error=relative_error(sparse_pred, layer["deployed_ms"]),
            )
        )
    all_predicted = bool(rows) and all(r.predicted_sparse_latency_ms is not None for r in rows)
    dense_pred = sparse_pred = None
    if model_latency is not None:
        dense_pred, sparse_pred = model_latency
    elif all_predicted:
        dense_pred = math.fsum(r.predicted_dense_latency_ms or 0.0 for r in rows)
        sparse_pred = math.fsum(r.predicted_sparse_latency_ms or 0.0 for r in rows)
    return Deployment(
        device=device,
        threads=deploy_report.get("threads"),
        dtype=str(deploy_report.get("dtype", "")),
        batch_size=int(deploy_report.get("batch_size", 1)),
        input_shape=list(deploy_report.get("input_shape", [])),
        dense_ms=totals["dense_ms"],
        deployed_ms=totals["deployed_ms"],
        speedup=totals.get("speedup"),
        kernels=dict(totals.get("kernels", {})),
        layers=layers,
        predicted_dense_ms=dense_pred,
        predicted_ms=sparse_pred,
        relative_error=relative_error(sparse_pred, totals["deployed_ms"]),
        dense_relative_error=relative_error(dense_pred, totals["dense_ms"]),
    )


def deployment_from_dict(data: Mapping[str, Any]) -> Deployment:
    """Rebuild a ``Deployment`` from its ``asdict`` form."""
    body = dict(data)
    body["layers"] = [DeployedLayer(**layer) for layer in body.get("layers", [])]
    return Deployment(**body)
