"""N:M jobs: the spec's ``sparsity.nm``, its validation, and a training run with exact 2:4."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from safetensors.torch import load_file

from runtime.training import run_training
from runtime.validation import validate_spec
from spartan.settings import Settings

from .conftest import tiny_spec

NM = {"sparsity": None, "nm": [2, 4], "exclude": ["conv1.0"]}  # the stem has K = 9


def test_spec_takes_nm_without_a_target() -> None:
    sparsity = tiny_spec(sparsity=NM).sparsity
    assert sparsity.nm == (2, 4) and sparsity.target is None


@pytest.mark.parametrize(
    ("change", "loc", "message"),
    [
        ({"nm": [2, 4, 1]}, ("sparsity", "nm"), "at most 2 items"),
        ({"nm": ["2", 4]}, ("sparsity", "nm", 0), "valid integer"),
        ({"nm": [2.5, 4]}, ("sparsity", "nm", 0), "valid integer"),
        ({"nm": [0, 4]}, ("sparsity", "nm", 0), "greater than or equal to 1"),
        ({"nm": [4, 4]}, ("sparsity", "nm"), "1 <= n < m"),
        ({"nm": [2, 4], "block_shape": [4, 4]}, ("sparsity", "nm"), "block_shape [1, 1]"),
        ({"nm": [2, 4], "distribution": "erk"}, ("sparsity", "nm"), "'erk'"),
        ({"nm": [2, 4], "layer_floor": 0.4}, ("sparsity",), "layer_floor: "),
        ({"nm": None, "sparsity": None}, ("sparsity",), "give exactly one"),
    ],
)
def test_bad_nm_names_the_field(change: dict[str, Any], loc: tuple[Any, ...], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        tiny_spec(sparsity={**NM, **change})
    errors = info.value.errors()
    assert any(tuple(e["loc"]) == loc and message in e["msg"] for e in errors), errors


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"exclude": []}, r"^sparsity\.nm: 2:4 needs .*1 layer\(s\): 'conv1\.0' .*K=9"),
        ({"sparsity": 0.7}, r"^sparsity\.sparsity: 2:4 keeps n/m = 0\.5 .*not 0\.3\b"),
        ({"sparsity": None, "cost_fraction": 0.9}, r"^sparsity\.cost_fraction: 2:4 keeps"),
    ],
)
def test_validation_names_the_layers_and_the_target(
    settings: Settings, change: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        validate_spec(tiny_spec(sparsity={**NM, **change}), settings)


def test_validation_accepts_the_target_nm_gives(settings: Settings) -> None:
    validate_spec(tiny_spec(sparsity=NM), settings)
    validate_spec(tiny_spec(sparsity={**NM, "sparsity": 0.5}), settings)  # the stem is 0.06%
    validate_spec(tiny_spec(sparsity=NM, cost_model={"name": "memory"}), settings)
    validate_spec(tiny_spec(sparsity={**NM, "exclude": ["conv1.0", "fc"]}), settings)


def test_training_gives_exact_2_to_4(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", progress_interval_s=0.0)
    spec = tiny_spec(sparsity={**NM, "method": "topkast"}, training={"epochs": 1})
    result = run_training(spec, out_dir=tmp_path / "out", checkpoint_path=None, settings=settings)
    assert result.status == "succeeded"
    weights = load_file(tmp_path / "out" / "model.safetensors")
    masks = load_file(tmp_path / "out" / "masks.safetensors")
    assert "conv1.0.weight" not in masks and masks
    for name in masks:
        weight = weights[name]
        groups = weight.reshape(weight.shape[0], -1).reshape(weight.shape[0], -1, 4)
        assert ((groups != 0).sum(-1) == 2).all(), name
    report = json.loads((tmp_path / "out" / "cost_report.json").read_text())
    assert report["nm"] == [2, 4]
    rows = {row["name"]: row for row in report["layers"]}
    assert rows["fc.weight"]["nm"] == [2, 4] and rows["fc.weight"]["density"] == 0.5
    assert rows["conv1.0.weight"]["nm"] is None
    spec_out = json.loads((tmp_path / "out" / "spec.json").read_text())
    assert spec_out["sparsity"]["nm"] == [2, 4]
