"""The files a finished job leaves in its artifact folder.

- ``model.safetensors``: the finalized sparse weights, keyed exactly like
  ``create_model(spec.model).state_dict()``, so plain timm/torchvision code loads them with
  ``model.load_state_dict(safetensors.torch.load_file(path))``;
- ``model.sparse.safetensors``: the same weights compressed (``cost_models.save_sparse``: kept
  values plus a bitmask, block coordinates or N:M indices), with the architecture and the
  deployment measured by the worker; ``cost_models.load_sparse(path)`` rebuilds the model;
- ``masks.safetensors``: one bool tensor per masked weight (weight-shaped, True = kept);
- ``cost_report.json`` and ``cost_report.csv``: ``cost_models.cost_report`` of the final model,
  with the deployment measured on the worker's device (``deployment``);
- ``metrics.json``: ``dense`` and ``final`` top-1/top-5 (fractions in [0, 1]), per-epoch
  ``history`` and run facts;
- ``spec.json``: the resolved job specification (every default filled in).

Every file is written to a temporary name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save
from torch import nn

import cost_models
from cost_models.architectures import Architecture
from runtime.checkpoints import atomic_write, atomic_write_json, atomic_write_text

MODEL = "model.safetensors"
SPARSE_MODEL = "model.sparse.safetensors"
MASKS = "masks.safetensors"
COST_REPORT_JSON = "cost_report.json"
COST_REPORT_CSV = "cost_report.csv"
METRICS = "metrics.json"
SPEC = "spec.json"
ARTIFACT_NAMES = (MODEL, SPARSE_MODEL, MASKS, COST_REPORT_JSON, COST_REPORT_CSV, METRICS, SPEC)


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Save tensors as safetensors atomically (CPU, contiguous, no shared storage)."""
    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    data = save(plain, metadata=metadata)
    atomic_write(path, lambda handle: handle.write(data))


def write_artifacts(
    out_dir: Path,
    *,
    model: nn.Module,
    masks: dict[str, torch.Tensor],
    cost_report: Any,
    metrics: dict[str, Any],
    spec: dict[str, Any],
    deployment: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write every artifact of a finished run into ``out_dir``; returns name -> path.

    Args:
        model: the finalized (plain, unparametrized) model.
        masks: weight-shaped masks keyed by parameter name.
        cost_report: an object with ``to_dict()`` and ``to_csv()``.
        metrics: the metrics dict (JSON-able).
        spec: the resolved job specification (JSON-able).
        deployment: the ``cost_models.deploy`` report stored in ``model.sparse.safetensors``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"architecture": f"{spec['model']['source']}/{spec['model']['name']}"}
    paths = {name: out_dir / name for name in ARTIFACT_NAMES}
    save_tensors(paths[MODEL], model.state_dict(), meta)
    cost_models.save_sparse(
        model,
        paths[SPARSE_MODEL],
        architecture=Architecture.from_dict(spec["model"], field="model"),
        deployment=deployment,
    )
    save_tensors(paths[MASKS], {k: m.bool() for k, m in masks.items()}, meta)
    atomic_write_json(paths[COST_REPORT_JSON], cost_report.to_dict())
    atomic_write_text(paths[COST_REPORT_CSV], cost_report.to_csv())
    atomic_write_json(paths[SPEC], spec)
    # metrics last: its presence marks a complete set
    atomic_write_json(paths[METRICS], metrics)
    return paths
