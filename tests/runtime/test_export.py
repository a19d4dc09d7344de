"""``spartan export`` on the artifacts of a real ``spartan train`` run, the ONNX check, and the
errors for bad folders, specs and devices."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

import cost_models
from cli.main import app
from cost_models import deployment
from runtime.export import export_onnx, load_artifacts
from spartan.settings import get_settings

from .conftest import TINY

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# deploy() times each candidate kernel for up to 150 ms; the tests check what is written, not
# the timings, so a short budget per candidate keeps them quick on a busy machine.
_SHORT_BUDGET_MS = 5.0


def _short_deploy_budget(mp: pytest.MonkeyPatch) -> None:
    mp.setattr(deployment, "TIME_BUDGET_MS", _SHORT_BUDGET_MS)


@pytest.fixture(autouse=True)
def _quick_deploy(monkeypatch: pytest.MonkeyPatch) -> None:
    _short_deploy_budget(monkeypatch)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The artifact folder of one ``spartan train`` run of the tiny spec (1 epoch)."""
    root = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as mp:
        _short_deploy_budget(mp)
        mp.setenv("SPARTAN_HOME", str(root / "home"))
        get_settings.cache_clear()
        spec = root / "tiny.yaml"
        spec.write_text(yaml.safe_dump(TINY))
        result = CliRunner().invoke(app, ["train", str(spec), "--out", str(root / "run")])
        assert result.exit_code == 0, result.output
        yield root / "run"
    get_settings.cache_clear()


def test_export_writes_sparse_deploy_and_onnx(trained: Path, tmp_path: Path) -> None:
    import onnxruntime

    out = tmp_path / "exported"
    result = CliRunner().invoke(
        app, ["export", str(trained), "--out", str(out), "--device", "cpu", "--batch-size", "2"]
    )
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {
        "model.sparse.safetensors",
        "deploy.json",
        "model.onnx",
    }
    assert "deployed on cpu at batch 2" in result.output and "model.onnx" in result.output
    report = json.loads((out / "deploy.json").read_text())
    assert report["batch_size"] == 2 and report["input_shape"] == [2, 1, 8, 8]
    assert report["totals"]["deployed_ms"] > 0

    _, model = load_artifacts(trained)
    loaded = cost_models.load_sparse(out / "model.sparse.safetensors")  # deployed: same device
    kernels = {row["name"]: row["kernel"] for row in report["layers"]}
    assert cost_models.deployed_kernels(loaded) == cost_models.deployed_kernels(
        cost_models.apply_kernels(model, kernels)
    )
    x = torch.randn(3, 1, 8, 8)
    with torch.inference_mode():
        want = model(x)
        torch.testing.assert_close(loaded(x), want, rtol=1e-4, atol=1e-5)
    session = onnxruntime.InferenceSession(str(out / "model.onnx"))
    (got,) = session.run(None, {"input": x.numpy()})  # another batch size: dynamic
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4)


def test_export_onnx_of_a_pruned_vit(tmp_path: Path) -> None:
    import onnxruntime
    import timm

    from spartan_core import Sparsifier, SparsifierConfig

    torch.manual_seed(0)
    vit = timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=10, depth=2
    )
    config = SparsifierConfig(target=0.1, block_shape=(16, 16), include=("blocks.*",))
    sparsifier = Sparsifier(vit, config, total_steps=1)
    sparsifier.step()
    vit = sparsifier.finalize().eval()
    diff = export_onnx(vit, torch.randn(1, 3, 32, 32), tmp_path / "vit.onnx")
    assert diff <= 1e-4
    x = torch.randn(2, 3, 32, 32)
    (got,) = onnxruntime.InferenceSession(str(tmp_path / "vit.onnx")).run(
        None, {"input": x.numpy()}
    )
    with torch.no_grad():
        np.testing.assert_allclose(got, vit(x).numpy(), rtol=1e-4, atol=1e-4)


def _export(artifact_dir: Path, out: Path, *extra: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["export", str(artifact_dir), "--out", str(out), *extra])
    return result.exit_code, " ".join(result.output.split())  # rich wraps long lines


def test_export_errors_name_the_bad_input(trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, output = _export(tmp_path / "nowhere", out)
    assert code == 2 and "artifact_dir:" in output and "is not a folder" in output

    no_model = tmp_path / "no_model"
    no_model.mkdir()
    shutil.copy(trained / "spec.json", no_model / "spec.json")
    code, output = _export(no_model, out)
    assert code == 2 and "has no model.safetensors" in output

    no_spec = tmp_path / "no_spec"
    no_spec.mkdir()
    shutil.copy(trained / "model.safetensors", no_spec / "model.safetensors")
    code, output = _export(no_spec, out)
    assert code == 2 and "has no spec.json" in output

    other = tmp_path / "other"
    shutil.copytree(trained, other)
    spec = json.loads((other / "spec.json").read_text())
    spec["model"]["num_classes"] = 7
    (other / "spec.json").write_text(json.dumps(spec))
    code, output = _export(other, out)
    assert code == 2
    assert "spec.json: its model timm/test_resnet (7 classes" in output
    assert "does not match model.safetensors" in output and "fc.weight" in output

    code, output = _export(trained, out, "--device", "tpu")
    assert code == 2 and "device: unknown device 'tpu'" in output
    code, output = _export(trained, out, "--batch-size", "0")
    assert code == 2 and "batch_size: expected an integer >= 1, got 0" in output
    assert not out.exists()  # nothing written for bad input
