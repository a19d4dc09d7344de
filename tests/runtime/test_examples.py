"""Every ``examples/*.yaml`` parses and passes the worker's validation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from runtime.validation import validate_spec
from spartan.settings import Settings, get_settings
from spartan.spec import load_spec_file
from tests.hf_cache import offline, write_repo

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


def test_the_examples_exist() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"quickstart.yaml", "cost_budget_latency.yaml", "block_sparsity.yaml"} <= names
    assert "imagefolder.yaml" in names
    assert "finetune_pretrained.yaml" in names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_is_valid(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    spec = load_spec_file(path)
    if spec.data.source == "imagefolder":
        # its path is under ~/.spartan/data: give it a home with such a folder
        monkeypatch.setenv("HOME", str(tmp_path))
        assert spec.data.path is not None
        root = Path(spec.data.path).expanduser()
        for split in ("train", "val"):
            (root / split / "cats").mkdir(parents=True)
        monkeypatch.setenv("SPARTAN_DATA_ROOTS", f'["{tmp_path / ".spartan" / "data"}"]')
        get_settings.cache_clear()
        settings = get_settings()
    if spec.model.pretrained:
        # offline, with the weights' file in a cache of our own (validation only looks it up)
        cache = offline(monkeypatch, tmp_path / "hf")
        write_repo(cache, f"timm/{spec.model.name}", {"w": torch.zeros(1)})
    validate_spec(spec, settings)


def test_quickstart_is_the_documented_job() -> None:
    spec = load_spec_file(EXAMPLES[0].parent / "quickstart.yaml")
    assert spec.model.source in ("timm", "torchvision") and "resnet" in spec.model.name
    assert spec.data.source == "digits"
    assert spec.sparsity.sparsity == 0.9


def test_bad_spec_file_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("model: {name: resnet18, colour: red}\nsparsity: {sparsity: 0.9}\n")
    with pytest.raises(ValueError, match=r"model\.colour: Extra inputs are not permitted"):
        load_spec_file(path)
