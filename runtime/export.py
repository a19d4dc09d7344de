"""Export a job's artifacts for deployment on this machine (``spartan export``).

``export_artifacts(artifact_dir, out_dir)`` reads a folder written by ``spartan train`` or
``spartan download`` (``model.safetensors`` and ``spec.json``), rebuilds the architecture the
spec names, loads the finalized weights strictly and writes into ``out_dir``:

- ``model.sparse.safetensors``: ``cost_models.save_sparse`` with the architecture and the
  deployment measured here (``cost_models.load_sparse`` replays it on the same kind of device);
- ``deploy.json``: the ``cost_models.deploy`` report measured on this machine, for a random
  input of the spec's input size at ``batch_size`` samples on ``device``;
- ``model.onnx``: the finalized (dense, zeros in the weights) model by ``torch.onnx.export``
  (opset 18, batch dimension dynamic, input ``input``, output ``logits``), checked against
  torch with onnxruntime on the same input: within ``ONNX_TOLERANCE`` absolute + relative.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnxruntime
import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

import cost_models
from cost_models.architectures import Architecture
from cost_models.sparse_format import load_strict
from runtime import artifacts as art
from runtime.checkpoints import atomic_write_text
from runtime.models import create_model
from spartan.spec import JobSpec
from spartan_core.device import resolve_device

log = logging.getLogger(__name__)

DEPLOY_REPORT = "deploy.json"
ONNX_MODEL = "model.onnx"
ONNX_TOLERANCE = 1e-4
EXPORT_NAMES = (art.SPARSE_MODEL, DEPLOY_REPORT, ONNX_MODEL)


@dataclass(frozen=True)
class ExportResult:
    """What ``export_artifacts`` wrote.

    Attributes:
        files: file name -> path, for ``EXPORT_NAMES``.
        deploy_report: the deployment measured here (``deploy.json``).
        onnx_max_abs_diff: the largest |onnxruntime - torch| on the check input.
        dense_bytes: the size of the source ``model.safetensors``.
    """

    files: dict[str, Path]
    deploy_report: dict[str, Any]
    onnx_max_abs_diff: float
    dense_bytes: int


def load_artifacts(artifact_dir: Path) -> tuple[Any, nn.Module]:
    """The job spec and the finalized model of an artifact folder.

    Raises:
        ValueError: naming the folder or file: no such folder, ``model.safetensors`` or
            ``spec.json`` missing or unreadable, or a spec whose architecture does not match
            the weights.
    """
    if not artifact_dir.is_dir():
        raise ValueError(f"artifact_dir: {str(artifact_dir)!r} is not a folder")
    for name in (art.MODEL, art.SPEC):
        if not (artifact_dir / name).is_file():
            raise ValueError(
                f"artifact_dir: {str(artifact_dir)!r} has no {name} (expected a folder written "
                "by `spartan train` or `spartan download`)"
            )
    try:
        spec = JobSpec.model_validate(json.loads((artifact_dir / art.SPEC).read_text("utf-8")))
    except (OSError, json.JSONDecodeError, ValidationError) as exc:
        raise ValueError(f"{art.SPEC}: not a valid job specification: {exc}") from None
    try:
        state = load_file(str(artifact_dir / art.MODEL), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{art.MODEL}: cannot read it: {exc}") from None
    model = create_model(spec.model)
    try:
        load_strict(model, state, art.MODEL)
    except ValueError as exc:
        raise ValueError(
            f"{art.SPEC}: its model {spec.model.source}/{spec.model.name} "
            f"({spec.model.num_classes} classes, input {list(spec.model.input_size)}) does not "
            f"match {art.MODEL}: {str(exc).partition(': ')[2]}"
        ) from None
    return spec, model.eval()


def export_onnx(
    model: nn.Module, example_input: torch.Tensor, path: Path, *, tolerance: float = ONNX_TOLERANCE
) -> float:
    """Write ``model`` as ONNX and check it with onnxruntime; returns the max |difference|.

    The model is exported on the CPU in eval mode with a dynamic batch dimension; onnxruntime
    runs ``example_input`` and its output must equal torch's within ``tolerance`` (absolute
    plus relative to each value).

    Raises:
        RuntimeError: when the export fails or onnxruntime's output differs.
    """
    model = model.to("cpu").eval()
    x = example_input.to("cpu")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (x,),
                str(tmp),
                dynamo=True,
                external_data=False,
                opset_version=18,
                input_names=["input"],
                output_names=["logits"],
                dynamic_shapes=({0: torch.export.Dim.DYNAMIC},),
                verbose=False,
            )
        session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        (got,) = session.run(["logits"], {"input": x.numpy()})
        with torch.no_grad():
            want = model(x)
        got_t = torch.from_numpy(got)
        diff = float((got_t - want).abs().max()) if want.numel() else 0.0
        if not torch.allclose(got_t, want, rtol=tolerance, atol=tolerance):
            raise RuntimeError(
                f"{ONNX_MODEL}: onnxruntime's output differs from torch's by up to {diff:.3g} "
                f"(tolerance {tolerance})"
            )
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return diff


def export_artifacts(
    artifact_dir: Path,
    out_dir: Path,
    *,
    device: str | torch.device | None = "cpu",
    batch_size: int = 1,
) -> ExportResult:
    """Deploy an artifact folder on this machine and write ``EXPORT_NAMES`` into ``out_dir``.

    Args:
        artifact_dir: a folder with ``model.safetensors`` and ``spec.json``.
        out_dir: where the exported files go (created; may be ``artifact_dir``).
        device: where to deploy and measure (``cpu``, ``cuda``, ``cuda:1``, ``auto``).
        batch_size: samples in the measured input (>= 1).

    Raises:
        ValueError: for a bad folder, spec or weights (see ``load_artifacts``), an unknown or
            absent device, or a batch size below 1.
    """
    target = resolve_device(device)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size!r}")
    spec, model = load_artifacts(artifact_dir)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn((batch_size, *spec.model.input_size), generator=generator)
    log.info("export: deploying on %s at batch %d", target, batch_size)
    report = cost_models.deploy(model, x, device=target).deploy_report
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {name: out_dir / name for name in EXPORT_NAMES}
    atomic_write_text(files[DEPLOY_REPORT], json.dumps(report, indent=2, allow_nan=False))
    cost_models.save_sparse(
        model,
        files[art.SPARSE_MODEL],
        architecture=Architecture.from_dict(spec.model.model_dump(mode="json"), field="model"),
        deployment=report,
    )
    diff = export_onnx(model, x, files[ONNX_MODEL])
    return ExportResult(
        files=files,
        deploy_report=report,
        onnx_max_abs_diff=diff,
        dense_bytes=(artifact_dir / art.MODEL).stat().st_size,
    )
