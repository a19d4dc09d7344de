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


def test_train_on_two_devices(tmp_path: Path, settings: Settings) -> None:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(TINY))  # resources.devices: 1, overridden below
    out = tmp_path / "run"
    args = ["train", str(spec), "--out", str(out), "--devices", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "trained on 2 devices; the masks were identical on every rank" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["devices"] == 2
    hashes = metrics["mask_sha256"]
    assert len(hashes) == 2 and hashes[0] == hashes[1]
    assert json.loads((out / "spec.json").read_text())["resources"]["devices"] == 2


def test_train_rejects_devices_the_batch_does_not_split_across(
    tmp_path: Path, settings: Settings
) -> None:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(TINY))  # batch 128
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", str(spec), "--out", str(out), "--devices", "3"])
    assert result.exit_code == 2
    assert "training.batch_size: 128 is the global batch" in result.output
    result = CliRunner().invoke(app, ["train", str(spec), "--out", str(out), "--devices", "65"])
    assert result.exit_code == 2  # typer's bound
