"""POST /v1/plans: a synchronous one-shot plan from random or uploaded weights."""

from __future__ import annotations

import torch
import torchvision
from fastapi.testclient import TestClient
from safetensors.torch import save

from spartan.settings import Settings

MODEL = {"source": "torchvision", "name": "resnet18", "num_classes": 10, "input_size": [3, 32, 32]}


def test_plan_for_an_architecture(client: TestClient) -> None:
    r = client.post("/v1/plans", json={"model": MODEL, "sparsity": 0.9})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "torchvision/resnet18" and body["cost_model"] == "params"
    assert abs(body["target"] - 0.1) < 1e-12
    layers = body["plan"]["layers"]
    assert len(layers) > 10


def test_plan_under_flops_with_blocks(client: TestClient) -> None:
    r = client.post(
        "/v1/plans",
        json={
            "model": MODEL,
            "cost_fraction": 0.3,
            "cost_model": {"name": "flops"},
            "block_shape": [4, 4],
            "exclude": ["conv1", "fc"],
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["cost_model"] == "flops"


def test_plan_from_uploaded_weights_differs_from_random(client: TestClient) -> None:
    torch.manual_seed(1)
    net = torchvision.models.resnet18(num_classes=10)
    with torch.no_grad():
        net.fc.weight.mul_(1000.0)  # the classifier dominates |w|: a global plan keeps it
    upload = client.post(
        "/v1/uploads", files={"file": ("r18.safetensors", save(net.state_dict()))}
    ).json()
    body = {"model": MODEL, "sparsity": 0.99}
    random_plan = client.post("/v1/plans", json=body).json()["plan"]
    body["model"] = {**MODEL, "checkpoint": upload["id"]}
    r = client.post("/v1/plans", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["plan"] != random_plan


def test_plan_bad_input(client: TestClient, settings: Settings) -> None:
    cases = [
        ({"model": {**MODEL, "name": "resnet1000"}, "sparsity": 0.9}, 400, "name"),
        ({"model": MODEL, "sparsity": 0.9, "cost_fraction": 0.1}, 422, None),
        ({"model": MODEL, "sparsity": 1.2}, 422, "sparsity"),
        ({"model": MODEL, "cost_fraction": 0.5, "cost_model": {"name": "nope"}}, 400, None),
        ({"model": MODEL, "sparsity": 0.9, "cost_model": {"name": "flops"}}, 422, None),
        ({"model": {**MODEL, "checkpoint": "upl_missing"}, "sparsity": 0.9}, 404, "checkpoint"),
        ({"model": {**MODEL, "checkpoint": "/etc/passwd"}, "sparsity": 0.9}, 400, "checkpoint"),
        ({"model": MODEL, "sparsity": 0.9, "surprise": 1}, 422, "surprise"),
    ]
    for body, status, field in cases:
        r = client.post("/v1/plans", json=body)
        assert r.status_code == status, (body, r.text)
        if field:
            assert any(field in item["loc"] for item in r.json()["detail"]), r.json()


def test_a_plan_leaves_the_process_random_state_alone(client: TestClient) -> None:
    body = {"model": MODEL, "sparsity": 0.9}
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    first = client.post("/v1/plans", json=body)
    assert first.status_code == 200, first.text
    assert torch.equal(torch.get_rng_state(), before)
    assert client.post("/v1/plans", json=body).json() == first.json()  # seeded initial weights
