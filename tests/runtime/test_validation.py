"""``validate_spec``: every rejection is a ``FieldError`` located at its field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from runtime.costs import cost_model_params
from runtime.training.setup import build_run
from runtime.validation import validate_spec
from spartan.errors import FieldError
from spartan.settings import Settings
from spartan.store import get_store

from .conftest import tiny_spec


def test_tiny_spec_is_valid(settings: Settings) -> None:
    validate_spec(tiny_spec(), settings)


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"model": {"name": "resnet1000"}}, r"model\.name: unknown timm architecture 'resnet1000'"),
        (
            {"model": {"source": "torchvision", "name": "resnet1000"}},
            r"model\.name: unknown torchvision architecture 'resnet1000'; did you mean .*known: ",
        ),
        ({"model": {"num_classes": 5}}, r"model\.num_classes: digits has 10 classes"),
        (
            {"model": {"name": "test_vit", "input_size": [1, 10, 10]}},
            r"model\.input_size: test_vit cannot take an input of shape \[1, 10, 10\]",
        ),
        ({"sparsity": {"include": ["nothing.*"]}}, r"sparsity\.include: no maskable layer"),
        ({"sparsity": {"exclude": ["*"]}}, r"sparsity\.exclude: no maskable layer"),
        ({"sparsity": {"block_shape": [5, 5]}}, r"sparsity\.block_shape: 5x5 blocks do not tile"),
        (
            # every layer but the classifier left dense: 1% cannot be reached
            {"sparsity": {"sparsity": 0.99, "include": ["fc"]}},
            r"sparsity\.sparsity: kept fraction 0\.01 cannot be reached",
        ),
        (
            {"sparsity": {"sparsity": None, "cost_fraction": 0.5}, "cost_model": {"name": "nope"}},
            r"cost_model\.name: unknown cost model 'nope'; known: .*params",
        ),
        (
            {"cost_model": {"name": "params", "params": {"bogus": 1}}},
            r"cost_model\.params\.bogus: cost model 'params' has no parameter 'bogus'",
        ),
        (
            {
                "sparsity": {"sparsity": None, "cost_fraction": 0.5},
                "cost_model": {"name": "memory", "params": {"format": "zip"}},
            },
            r"cost_model\.params\.format: expected one of",
        ),
        ({"training": {"batch_size": 4096}}, r"training\.batch_size: 4096 is larger"),
        ({"resources": {"time_limit_s": 30 * 24 * 3600}}, r"resources\.time_limit_s: "),
        ({"model": {"checkpoint": "/etc/passwd"}}, r"model\.checkpoint: '/etc/passwd' is outside"),
        ({"model": {"checkpoint": "upl_nosuchupload"}}, r"model\.checkpoint: no upload"),
        (
            {"data": {"source": "imagefolder", "path": "/etc"}},
            r"data\.path: '/etc' is outside the data roots",
        ),
    ],
)
def test_rejections_name_the_field(
    settings: Settings, sections: dict[str, dict[str, Any]], message: str
) -> None:
    spec = tiny_spec(**sections)
    with pytest.raises(FieldError, match=f"^{message}") as info:
        validate_spec(spec, settings)
    where = message.split(": ", 1)[0].replace("\\", "")
    assert ".".join(map(str, info.value.loc)) == where  # the location is data, not text


def test_imagefolder_needs_train_and_val(settings: Settings) -> None:
    root = settings.data_roots[0] / "imgs"
    (root / "train" / "a").mkdir(parents=True)
    spec = tiny_spec(data={"source": "imagefolder", "path": str(root)})
    with pytest.raises(ValueError, match=r"^data\.path: '.*imgs' has no val/ folder"):
        validate_spec(spec, settings)
    (root / "val" / "a").mkdir(parents=True)
    validate_spec(spec, settings)


def test_checkpoint_file_types(settings: Settings, tmp_path: Path) -> None:
    bad = settings.data_roots[0] / "weights.bin"
    bad.write_bytes(b"x")
    with pytest.raises(ValueError, match=r"^model\.checkpoint: 'weights\.bin' must be"):
        validate_spec(tiny_spec(model={"checkpoint": str(bad)}), settings)
    store = get_store(settings.database_url)
    upload = store.add_upload(
        owner="alice",
        filename="w.safetensors",
        path=str(bad),
        size=1,
        sha256="0" * 64,
        num_tensors=1,
    )
    spec = tiny_spec(model={"checkpoint": upload.id})
    validate_spec(spec, settings, owner="alice")
    with pytest.raises(ValueError, match=r"^model\.checkpoint: no upload"):
        validate_spec(spec, settings, owner="bob")


def test_cost_model_gets_the_input_size(settings: Settings) -> None:
    spec = tiny_spec(
        sparsity={"sparsity": None, "cost_fraction": 0.3}, cost_model={"name": "flops"}
    )
    validate_spec(spec, settings)
    assert cost_model_params(spec.cost_model, spec.model.input_size, settings) == {
        "input_size": [1, 8, 8]
    }


def test_latency_table_file_must_be_under_a_data_root(settings: Settings) -> None:
    spec = tiny_spec(
        sparsity={"sparsity": None, "cost_fraction": 0.3},
        cost_model={"name": "latency_table", "params": {"table": "/etc/table.json"}},
    )
    with pytest.raises(
        ValueError, match=r"^cost_model\.params\.table: '/etc/table\.json' is outside"
    ):
        validate_spec(spec, settings)


def test_measuring_cost_model_is_not_run_on_the_meta_device(settings: Settings) -> None:
    spec = tiny_spec(
        sparsity={"sparsity": None, "cost_fraction": 0.3}, cost_model={"name": "profiled"}
    )
    validate_spec(spec, settings)


def test_layer_floor_is_a_fraction_and_reaches_the_sparsifier(
    settings: Settings, tmp_path: Path
) -> None:
    for bad in (-0.1, 1.0):
        with pytest.raises(ValidationError, match="layer_floor"):
            tiny_spec(sparsity={"layer_floor": bad})

    def config_of(spec: Any) -> Any:
        # model, data and the SparsifierConfig, no training
        return build_run(spec, settings, owner=None, device=torch.device("cpu")).config

    assert config_of(tiny_spec()).layer_floor == 0.4  # the library default
    assert config_of(tiny_spec(sparsity={"layer_floor": 0.0})).layer_floor == 0.0
