"""``spartan train SPEC --out DIR``: a local run writes the artifacts; bad specs exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from cli.main import app
from runtime.artifacts import ARTIFACT_NAMES
from spartan.settings import Settings

from .conftest import TINY


def test_train_writes_artifacts(tmp_path: Path, settings: Settings) -> None:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", str(spec), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "sparse top-1" in result.output
    plots = {"curves.png", "layers.png"}  # drawn from this run's series
    assert {p.name for p in out.iterdir()} == {*ARTIFACT_NAMES, *plots}  # checkpoint removed
    assert all((out / name).read_bytes().startswith(b"\x89PNG") for name in plots)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["final"]["sparsity"] > 0.49


def test_train_rejects_an_invalid_spec(tmp_path: Path, settings: Settings) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text(yaml.safe_dump({**TINY, "model": {**TINY["model"], "name": "resnet1000"}}))
    result = CliRunner().invoke(app, ["train", str(spec), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "model.name: unknown timm architecture 'resnet1000'" in result.output
