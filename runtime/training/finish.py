"""The end of a run: finalize, evaluate, deploy, price, and write the artifacts."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import cost_models
from runtime import artifacts as art
from runtime.training.setup import RunSetup
from runtime.training.state import TrainState
from runtime.training.stats import mask_stats
from spartan.spec import JobSpec
from spartan_core import Sparsifier

log = logging.getLogger(__name__)


def finish_run(
    spec: JobSpec,
    setup: RunSetup,
    sparsifier: Sparsifier,
    state: TrainState,
    *,
    out_dir: Path,
    device: torch.device,
    mask_sha256: list[str],
    evaluate: Callable[[], dict[str, float]],
    emit: Callable[[str], None],
    elapsed: Callable[[], float],
) -> tuple[dict[str, Any], dict[str, Path], dict[str, Any]]:
    """Finalize the masks into the weights and write every artifact into ``out_dir``.

    Args:
        mask_sha256: the final masks' hash on each rank, in rank order (one on one device;
            ``stats.masks_sha256``), written to the metrics.
        evaluate: validation of the current model (stoppable).
        emit: reports a phase (``finalizing``, ``deploying``).
        elapsed: the run time so far (s).

    Returns:
        (metrics, artifact paths, the final mask statistics).
    """
    emit("finalizing")
    masks = sparsifier.masks()
    final_masks = mask_stats(sparsifier, setup.maskable_weights)
    sparsifier.finalize()
    final = evaluate()
    emit("deploying")
    deployment = deploy(setup, device)
    sp = spec.sparsity
    report = cost_models.cost_report(
        setup.model,
        setup.cost_model,
        input_size=spec.model.input_size,
        block_shape=tuple(sp.block_shape),
        nm=None if sp.nm is None else tuple(sp.nm),
        masks=masks,
        deployment=deployment,
    )
    metrics = {
        "dense": state.dense,
        "final": {**final, **final_masks},
        "history": state.history,
        "cost": report.to_dict().get("totals"),
        "steps": setup.total_steps,
        "epochs": spec.training.epochs,
        "train_time_s": round(elapsed(), 3),
        "device": str(device),
        "devices": len(mask_sha256),
        "mask_sha256": mask_sha256,
    }
    paths = art.write_artifacts(
        out_dir,
        model=setup.model,
        masks=masks,
        cost_report=report,
        metrics=metrics,
        spec=resolved_spec(spec, setup),
        deployment=deployment,
    )
    return metrics, paths, final_masks


def deploy(setup: RunSetup, device: torch.device) -> dict[str, Any]:
    """Deploy the final model on one validation batch, measured on this device; returns the
    deploy report. The batch is the spec's, or the cost model's own ``batch_size`` where it
    predicts latency for one (``profiled``), so prediction and measurement compare."""
    images, _ = next(iter(setup.val_loader))
    batch = getattr(setup.cost_model, "batch_size", None)
    if isinstance(batch, int) and batch > 0:
        repeats = -(-batch // images.shape[0])
        images = images.repeat(repeats, *[1] * (images.dim() - 1))[:batch]
    report = cost_models.deploy(setup.model, images.to(device)).deploy_report
    totals = report["totals"]
    log.info(
        "deployed on %s at batch %d: %.3f ms dense, %.3f ms deployed (%.2fx), kernels %s",
        report["device"],
        report["batch_size"],
        totals["dense_ms"],
        totals["deployed_ms"],
        totals["speedup"] or 0.0,
        totals["kernels"],
    )
    return report


def resolved_spec(spec: JobSpec, setup: RunSetup) -> dict[str, Any]:
    """The job spec with every default the run resolved filled in (``spec.json``)."""
    body = spec.model_dump(mode="json")
    body["sparsity"]["beta_max"] = float(setup.config.beta_max)
    body["sparsity"]["beta_init"] = float(setup.config.beta_init)
    body["sparsity"]["layer_floor"] = float(setup.config.layer_floor)
    body["training"]["checkpoint_every_steps"] = setup.checkpoint_every
    body["cost_model"]["params"] = setup.cost_params
    return body
