"""Pretrained starts: timm's weights from a local Hugging Face cache, offline.

Every test builds its own cache in a temporary folder (``tests.hf_cache``) with a tiny
checkpoint of random weights and sets ``HF_HUB_OFFLINE=1``: nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from pydantic import ValidationError

from runtime.models import create_model
from runtime.training.setup import build_run
from runtime.validation import check_model
from spartan.errors import FieldError
from spartan.settings import Settings
from spartan.spec import ModelSpec
from tests.hf_cache import offline, write_repo
from tests.runtime.conftest import tiny_spec

TAG = "test_resnet.r160_in1k"  # timm's tiny test network; its weights live in timm/<TAG>
HUB_ID = "hf-hub:someone/tiny-resnet"
HUB_CONFIG = {
    "architecture": "test_resnet",
    "num_classes": 10,
    "pretrained_cfg": {
        "input_size": [3, 160, 160],
        "num_classes": 10,
        "first_conv": "conv1.0",
        "classifier": "fc",
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
    },
}


def _saved(num_classes: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(7)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=num_classes)
    for p in model.parameters():  # not the default init, so a random build cannot match
        torch.nn.init.normal_(p)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return offline(monkeypatch, tmp_path / "hf")


def test_timm_tag_loads_from_the_cache_offline(cache: Path) -> None:
    saved = _saved(1000)
    write_repo(cache, f"timm/{TAG}", saved)
    spec = ModelSpec(
        source="timm", name=TAG, num_classes=10, input_size=(3, 32, 32), pretrained=True
    )
    check_model(spec)
    model = create_model(spec, pretrained=True)
    state = model.state_dict()
    # The 1000-class classifier does not fit 10 classes: timm starts it fresh.
    body = [k for k in saved if not k.startswith("fc.")]
    assert body and state["fc.weight"].shape == (10, saved["fc.weight"].shape[1])
    for key in body:
        torch.testing.assert_close(state[key], saved[key], rtol=0, atol=0, msg=key)
    assert not torch.equal(
        create_model(spec).state_dict()["conv1.0.weight"], saved["conv1.0.weight"]
    )


def test_hf_hub_id_loads_from_the_cache_offline(cache: Path) -> None:
    saved = _saved(10)
    write_repo(cache, "someone/tiny-resnet", saved, config=HUB_CONFIG)
    spec = ModelSpec(
        source="timm", name=HUB_ID, num_classes=10, input_size=(3, 32, 32), pretrained=True
    )
    check_model(spec)
    state = create_model(spec, pretrained=True).state_dict()
    assert state.keys() == saved.keys()
    for key, value in saved.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=key)


def test_training_run_starts_from_the_pretrained_weights(cache: Path, settings: Settings) -> None:
    saved = _saved(1000)
    write_repo(cache, f"timm/{TAG}", saved)
    spec = tiny_spec(model={"name": TAG, "pretrained": True})  # 1 channel: timm sums the stem
    run = build_run(spec, settings, owner=None, device=torch.device("cpu"))
    state = run.model.state_dict()
    torch.testing.assert_close(state["layer1.0.conv1.weight"], saved["layer1.0.conv1.weight"])
    torch.testing.assert_close(
        state["conv1.0.weight"], saved["conv1.0.weight"].sum(1, keepdim=True)
    )


@pytest.mark.parametrize("name", ["test_resnet.no_such_tag", "hf-hub:someone/absent"])
def test_wrong_tag_or_missing_cache_names_model_name(cache: Path, name: str) -> None:
    spec = ModelSpec(source="timm", name=name, input_size=(3, 32, 32), pretrained=True)
    with pytest.raises(FieldError) as submit:
        check_model(spec)
    assert submit.value.loc == ("model", "name")
    with pytest.raises(FieldError) as worker:
        create_model(spec, pretrained=True)
    assert worker.value.loc == ("model", "name")


def test_known_tag_missing_from_the_cache_offline(cache: Path) -> None:
    spec = ModelSpec(source="timm", name=TAG, input_size=(3, 32, 32), pretrained=True)
    with pytest.raises(FieldError, match="not in the Hugging Face cache") as err:
        check_model(spec)
    assert err.value.loc == ("model", "name")
    assert "HF_HUB_OFFLINE" in err.value.msg


def test_worker_load_failure_is_the_same_error(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files in the cache at submission but unreadable when the worker loads them."""
    snapshot = write_repo(cache, f"timm/{TAG}", _saved(1000))
    (snapshot / "model.safetensors").write_bytes(b"not a safetensors file")
    spec = ModelSpec(source="timm", name=TAG, input_size=(3, 32, 32), pretrained=True)
    check_model(spec)  # the cache holds the file
    with pytest.raises(FieldError) as err:
        create_model(spec, pretrained=True)
    assert err.value.loc == ("model", "name")
    assert TAG in err.value.msg


def test_torchvision_pretrained_is_a_clear_error() -> None:
    spec = ModelSpec(source="torchvision", name="resnet18", pretrained=True)
    with pytest.raises(FieldError, match="tv_in1k") as err:
        check_model(spec)
    assert err.value.loc == ("model", "pretrained")


def test_pretrained_and_checkpoint_are_exclusive() -> None:
    with pytest.raises(ValidationError, match=r"model\.checkpoint"):
        ModelSpec(source="timm", name=TAG, pretrained=True, checkpoint="upl_x")
