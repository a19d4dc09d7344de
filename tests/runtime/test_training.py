"""The training loop in-process: metrics, artifacts, and bit-identical resume from checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import cost_models
from runtime.artifacts import ARTIFACT_NAMES
from runtime.models import create_model
from runtime.training import TrainHooks, TrainResult, lr_factor, run_training
from spartan.settings import Settings
from spartan_core.layers import maskable_targets

from .conftest import tiny_spec


def _run(settings: Settings, out: Path, ckpt: Path | None, **hooks: Any) -> TrainResult:
    return run_training(
        tiny_spec(training={"epochs": 2}),
        out_dir=out,
        checkpoint_path=ckpt,
        settings=settings,
        hooks=TrainHooks(**hooks),
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainResult, Path]:
    """One uninterrupted 2-epoch run (22 steps) shared by the tests of this module."""
    home = tmp_path_factory.mktemp("ref")
    settings = Settings(home=home / "home", progress_interval_s=0.0)
    progress: list[dict[str, Any]] = []
    result = _run(settings, home / "out", home / "ckpt.pt", progress=progress.append)
    result.metrics["_progress"] = progress  # type: ignore[index]
    return result, home / "out"


def test_metrics_have_dense_final_and_history(reference: tuple[TrainResult, Path]) -> None:
    result, out = reference
    assert result.status == "succeeded"
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("dense", "final"):
        assert 0.0 <= metrics[key]["top1"] <= metrics[key]["top5"] <= 1.0
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert metrics["history"][-1]["step"] == metrics["steps"] == 22
    for entry in metrics["history"]:
        assert 0.0 <= entry["val_top1"] <= entry["val_top5"] <= 1.0
    # trained: better than chance on 10 classes
    assert metrics["final"]["top1"] > 0.2
    assert metrics["final"]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert metrics["final"]["cost_fraction"] == pytest.approx(0.5, abs=1e-3)
    assert sorted(p.name for p in out.iterdir()) == sorted(ARTIFACT_NAMES)


def test_progress_fields(reference: tuple[TrainResult, Path]) -> None:
    result, _ = reference
    progress = result.metrics["_progress"]  # type: ignore[index]
    training = [p for p in progress if p["phase"] == "training"]
    assert training, progress
    for key in ("step", "epoch", "loss", "accuracy", "sparsity", "cost_fraction", "beta"):
        assert key in training[-1]
    assert {"throughput", "eta_s", "lr", "total_steps"} <= set(training[-1])
    assert training[-1]["step"] == 22
    assert progress[0]["phase"] == "evaluating_dense"
    assert progress[-1]["phase"] == "done"


def test_model_loads_into_plain_architecture(reference: tuple[TrainResult, Path]) -> None:
    result, out = reference
    model = create_model(tiny_spec().model)
    model.load_state_dict(load_file(out / "model.safetensors"))  # strict: same keys
    masks = load_file(out / "masks.safetensors")
    weights = dict(model.named_parameters())
    total = zeros = 0
    for target in maskable_targets(model):
        weight = weights[target.name]
        assert masks[target.name].dtype == torch.bool
        assert masks[target.name].shape == weight.shape
        assert torch.all(weight[~masks[target.name]] == 0)
        total += weight.numel()
        zeros += int((weight == 0).sum())
    assert zeros / total == pytest.approx(result.metrics["final"]["sparsity"], abs=1e-4)  # type: ignore[index]


def test_cost_report_and_spec(reference: tuple[TrainResult, Path]) -> None:
    _, out = reference
    report = json.loads((out / "cost_report.json").read_text())
    assert report["cost_model"]["name"] == "params"
    assert report["layers"]
    assert (out / "cost_report.csv").read_text().count("\n") >= len(report["layers"])
    spec = json.loads((out / "spec.json").read_text())
    assert spec["sparsity"]["beta_max"] == 3.0  # the unstructured default, resolved
    assert spec["sparsity"]["beta_init"] == 3.0
    assert spec["sparsity"]["layer_floor"] == 0.4
    assert spec["training"]["checkpoint_every_steps"] == 3


def test_sparse_model_and_deployment(reference: tuple[TrainResult, Path]) -> None:
    result, out = reference
    dense = load_file(out / "model.safetensors")
    model = cost_models.load_sparse(out / "model.sparse.safetensors", apply_deployment=False)
    assert type(model) is type(create_model(tiny_spec().model))  # built from the metadata
    for key, value in model.state_dict().items():
        assert torch.equal(value, dense[key]), key
    assert (out / "model.sparse.safetensors").stat().st_size < (
        out / "model.safetensors"
    ).stat().st_size
    report = json.loads((out / "cost_report.json").read_text())
    deployment = report["deployment"]
    assert report["schema_version"] == 2
    assert deployment["device"] == "cpu" and deployment["batch_size"] == 128  # a validation batch
    assert deployment["input_shape"] == [128, 1, 8, 8]
    assert deployment["dense_ms"] > 0 and deployment["deployed_ms"] > 0
    assert {layer["module"] for layer in deployment["layers"]} >= {"conv1.0", "fc"}
    assert report["measured_latency"]["sparse_ms"] == deployment["deployed_ms"]
    _, metadata = cost_models.read_sparse(out / "model.sparse.safetensors")
    kernels = {layer["module"]: layer["kernel"] for layer in deployment["layers"]}
    assert metadata["deployment"]["kernels"] == kernels
    phases = [p["phase"] for p in result.metrics["_progress"]]  # type: ignore[index]
    assert phases.index("finalizing") < phases.index("deploying") < phases.index("done")


def test_resume_is_bit_identical(tmp_path: Path, reference: tuple[TrainResult, Path]) -> None:
    _, ref_out = reference
    settings = Settings(home=tmp_path / "home", progress_interval_s=0.0)
    ckpt = tmp_path / "ckpt.pt"
    calls = {"n": 0}

    def stop_after_some_steps() -> str | None:
        calls["n"] += 1
        # stop call 9 is after training step ~5 (dense evaluation polls first): mid-epoch
        return "preempt" if calls["n"] == 9 else None

    first = _run(settings, tmp_path / "out", ckpt, stop=stop_after_some_steps)
    assert first.status == "preempted"
    assert ckpt.exists()
    saved = torch.load(ckpt, weights_only=True)
    assert 0 < saved["position"]["step"] < 11  # stopped inside the first epoch
    second = _run(settings, tmp_path / "out", ckpt)
    assert second.status == "succeeded"
    assert not ckpt.exists()  # removed once the artifacts are written
    for name in ("model.safetensors", "masks.safetensors"):
        a, b = load_file(ref_out / name), load_file(tmp_path / "out" / name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
    ref_metrics = json.loads((ref_out / "metrics.json").read_text())
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    for key in ("dense", "final", "history", "cost"):
        assert metrics[key] == ref_metrics[key], key


def test_cancel_stops_without_artifacts(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    result = _run(settings, tmp_path / "out", tmp_path / "c.pt", stop=lambda: "cancel")
    assert result.status == "cancelled"
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_checkpoint_of_another_spec_is_refused(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    ckpt = tmp_path / "c.pt"
    calls = {"n": 0}

    def stop() -> str | None:
        calls["n"] += 1
        return "preempt" if calls["n"] == 6 else None

    assert _run(settings, tmp_path / "out", ckpt, stop=stop).status == "preempted"
    other = tiny_spec(training={"epochs": 2, "seed": 1})
    with pytest.raises(ValueError, match=r"checkpoint: .* different job specification"):
        run_training(other, out_dir=tmp_path / "out", checkpoint_path=ckpt, settings=settings)


def test_lr_factor_boundaries() -> None:
    kw = {"total_steps": 100, "warmup_steps": 10, "schedule": "cosine"}
    assert lr_factor(0, **kw) == pytest.approx(0.1)
    assert lr_factor(9, **kw) == pytest.approx(1.0)
    assert lr_factor(10, **kw) == pytest.approx(1.0)
    assert lr_factor(55, **kw) == pytest.approx(0.5)
    assert lr_factor(100, **kw) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(50, total_steps=100, warmup_steps=0, schedule="constant") == 1.0


def test_preempt_while_finalizing_resumes_from_the_last_epoch(
    tmp_path: Path, reference: tuple[TrainResult, Path]
) -> None:
    _, ref_out = reference
    settings = Settings(home=tmp_path / "home", progress_interval_s=0.0)
    ckpt = tmp_path / "ckpt.pt"
    phase = {"now": ""}

    def progress(p: dict[str, Any]) -> None:
        phase["now"] = p["phase"]

    def stop() -> str | None:
        return "preempt" if phase["now"] == "finalizing" else None

    first = _run(settings, tmp_path / "out", ckpt, progress=progress, stop=stop)
    assert first.status == "preempted"
    assert torch.load(ckpt, weights_only=True)["position"] == {"epoch": 2, "batch": 0, "step": 22}
    assert _run(settings, tmp_path / "out", ckpt).status == "succeeded"
    a, b = (
        load_file(ref_out / "model.safetensors"),
        load_file(tmp_path / "out" / "model.safetensors"),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)
