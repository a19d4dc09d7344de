"""Pretrained starts over REST and ``spartan upload``: a local Hugging Face cache, offline."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save
from typer.testing import CliRunner

from cli import service as service_cli
from cli.main import app as cli_app
from spartan.client import SpartanClient
from tests.api.conftest import tiny_spec
from tests.hf_cache import offline, write_repo

TAG = "test_resnet.r160_in1k"
MODEL = {"source": "timm", "input_size": [3, 16, 16], "pretrained": True}


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return offline(monkeypatch, tmp_path / "hf")


def test_cached_pretrained_job_is_accepted(client: TestClient, cache: Path) -> None:
    weights = timm.create_model("test_resnet", pretrained=False).state_dict()
    write_repo(cache, f"timm/{TAG}", weights)
    response = client.post("/v1/jobs", json=tiny_spec(model={**MODEL, "name": TAG}))
    assert response.status_code == 201, response.text


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("test_resnet.no_such_tag", "unknown pretrained tag"),
        (TAG, "not in the Hugging Face cache"),
        ("hf-hub:someone/absent", "someone/absent"),
    ],
)
def test_wrong_tag_or_missing_cache_is_a_400_at_model_name(
    client: TestClient, cache: Path, name: str, reason: str
) -> None:
    response = client.post("/v1/jobs", json=tiny_spec(model={**MODEL, "name": name}))
    assert response.status_code == 400, response.text
    (item,) = response.json()["detail"]
    assert item["loc"] == ["body", "model", "name"]
    assert reason in item["msg"]


def test_torchvision_pretrained_is_a_400(client: TestClient) -> None:
    model = {"source": "torchvision", "name": "resnet18", "pretrained": True}
    response = client.post("/v1/jobs", json=tiny_spec(model=model))
    assert response.status_code == 400
    assert response.json()["detail"][0]["loc"] == ["body", "model", "pretrained"]


def test_pretrained_with_checkpoint_is_a_422(client: TestClient) -> None:
    model = {**MODEL, "name": TAG, "checkpoint": "upl_x"}
    response = client.post("/v1/jobs", json=tiny_spec(model=model))
    assert response.status_code == 422
    assert "model.checkpoint" in response.text


def test_cli_upload_prints_the_id_a_job_can_use(
    client: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service_cli, "_client", lambda: SpartanClient(http=client))
    ckpt = tmp_path / "resnet18.safetensors"
    ckpt.write_bytes(save({"fc.bias": torch.zeros(10)}))
    result = CliRunner().invoke(cli_app, ["upload", str(ckpt)])
    assert result.exit_code == 0, result.output
    upload_id = result.stdout.strip()
    assert client.get(f"/v1/uploads/{upload_id}").json()["num_tensors"] == 1
    model = {"source": "torchvision", "name": "resnet18", "input_size": [3, 16, 16]}
    job = client.post("/v1/jobs", json=tiny_spec(model={**model, "checkpoint": upload_id}))
    assert job.status_code == 201, job.text
    missing = CliRunner().invoke(cli_app, ["upload", str(tmp_path / "absent.safetensors")])
    assert missing.exit_code != 0
