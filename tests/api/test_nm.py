"""N:M over REST and the CLI: ``sparsity.nm`` in jobs, ``nm`` in plans, ``spartan plan --nm``."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from cli import service as service_cli
from cli.main import app as cli_app
from spartan.client import SpartanClient
from tests.api.conftest import tiny_spec

MODEL = {"source": "torchvision", "name": "resnet18", "num_classes": 10, "input_size": [3, 32, 32]}
NM = {"method": "spartan", "nm": [2, 4], "exclude": ["conv1"]}  # the stem has K = 147


def _locs(r: Any) -> list[list[Any]]:
    return [item["loc"] for item in r.json()["detail"]]


@pytest.mark.parametrize(
    ("sparsity", "status", "loc"),
    [
        ({**NM, "nm": [2]}, 422, ["body", "sparsity", "nm", 1]),
        ({**NM, "nm": [2, "four"]}, 422, ["body", "sparsity", "nm", 1]),
        ({**NM, "nm": [4, 2]}, 422, ["body", "sparsity", "nm"]),
        ({**NM, "block_shape": [2, 2]}, 422, ["body", "sparsity", "nm"]),
        ({**NM, "exclude": []}, 400, ["body", "sparsity", "nm"]),
        ({**NM, "sparsity": 0.9}, 400, ["body", "sparsity", "sparsity"]),
    ],
)
def test_bad_nm_jobs_are_4xx_naming_the_field(
    client: TestClient, sparsity: dict[str, Any], status: int, loc: list[Any]
) -> None:
    r = client.post("/v1/jobs", json=tiny_spec(sparsity=sparsity))
    assert r.status_code == status, r.text
    assert loc in _locs(r), r.json()
    assert client.get("/v1/jobs").json()["count"] == 0


def test_nm_job_is_accepted(client: TestClient) -> None:
    r = client.post("/v1/jobs", json=tiny_spec(sparsity=NM))
    assert r.status_code == 201, r.text


def test_nm_plan(client: TestClient) -> None:
    r = client.post("/v1/plans", json={"model": MODEL, "nm": [2, 4], "exclude": ["conv1"]})
    assert r.status_code == 200, r.text
    body = r.json()
    plan = body["plan"]
    assert plan["nm"] == [2, 4]
    assert 0.5 < body["target"] == plan["target"] < 0.51  # conv1 stays dense
    masked = [row for row in plan["layers"] if row["masked"]]
    assert masked and all(row["density"] == 0.5 and row["nm"] == [2, 4] for row in masked)


@pytest.mark.parametrize(
    ("change", "status", "loc"),
    [
        ({"nm": [3, 3]}, 422, ["body", "nm"]),
        ({"nm": [2, 4], "block_shape": [4, 4]}, 422, ["body", "nm"]),
        ({"nm": [2, 4]}, 400, ["body", "nm"]),  # conv1 does not tile
        ({"nm": [2, 4], "exclude": ["conv1"], "sparsity": 0.2}, 400, ["body", "sparsity"]),
    ],
)
def test_bad_nm_plans_are_4xx_naming_the_field(
    client: TestClient, change: dict[str, Any], status: int, loc: list[Any]
) -> None:
    r = client.post("/v1/plans", json={"model": MODEL, **change})
    assert r.status_code == status, r.text
    assert loc in _locs(r), r.json()


def test_cli_plan_with_nm(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_cli, "_client", lambda: SpartanClient(http=client))
    args = ["plan", "test_vit", "--source", "timm", "--nm", "2:4", "--num-classes", "10"]
    result = CliRunner().invoke(cli_app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    assert answer["plan"]["nm"] == [2, 4] and answer["target"] == 0.5
    bad = CliRunner().invoke(cli_app, [*args[:-4], "--nm", "2/4"])
    assert bad.exit_code != 0 and "N:M" in bad.output
