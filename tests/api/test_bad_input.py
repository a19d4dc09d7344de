"""Every kind of bad input gets a 4xx whose body names the field; never a 500."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save

from api.main import create_app
from spartan.settings import Settings
from tests.api.conftest import tiny_spec


def _locs(r) -> list[list[Any]]:
    return [item["loc"] for item in r.json()["detail"]]


def _has_loc(r, *parts: Any) -> bool:
    return any(loc[-len(parts) :] == list(parts) for loc in _locs(r))


@pytest.mark.parametrize(
    ("change", "status", "loc"),
    [
        # wrong types
        ({"model": {"name": "resnet18", "num_classes": "ten"}}, 422, ("model", "num_classes")),
        ({"training": {"epochs": "two"}}, 422, ("training", "epochs")),
        ({"model": {"name": "resnet18", "input_size": [3, 16]}}, 422, ("model", "input_size")),
        # out-of-range targets
        ({"sparsity": {"sparsity": 1.5}}, 422, ("sparsity", "sparsity")),
        ({"sparsity": {"sparsity": 0.0}}, 422, ("sparsity", "sparsity")),
        ({"sparsity": {"cost_fraction": -0.1}}, 422, ("sparsity", "cost_fraction")),
        ({"sparsity": {"sparsity": 0.9, "cost_fraction": 0.1}}, 422, ("body", "sparsity")),
        # unknown fields and enum values
        ({"sparsity": {"sparsity": 0.9, "sparsty": 1}}, 422, ("sparsity", "sparsty")),
        ({"sparsity": {"sparsity": 0.9, "method": "random"}}, 422, ("sparsity", "method")),
        # unknown architecture (checked against the registry)
        ({"model": {"name": "resnet1000"}}, 400, ("model", "name")),
        ({"model": {"source": "timm", "name": "no_such_net"}}, 400, ("model", "name")),
        # unknown cost model
        (
            {"cost_model": {"name": "carbon"}, "sparsity": {"cost_fraction": 0.5}},
            400,
            ("cost_model", "name"),
        ),
        # malformed latency tables
        (
            {
                "cost_model": {"name": "latency_table", "params": {"table": {"layers": 5}}},
                "sparsity": {"cost_fraction": 0.5},
            },
            400,
            ("cost_model",),
        ),
        (
            {
                "cost_model": {
                    "name": "latency_table",
                    "params": {"table": {"default": {"per_block": -1.0}}},
                },
                "sparsity": {"cost_fraction": 0.5},
            },
            400,
            ("cost_model",),
        ),
        # data paths outside the data roots
        ({"data": {"source": "imagefolder", "path": "/etc"}}, 400, ("data", "path")),
        (
            {"data": {"source": "imagefolder", "path": "../../../../etc"}},
            400,
            ("data", "path"),
        ),
        (
            {"model": {"name": "resnet18", "checkpoint": "/etc/passwd"}},
            400,
            ("model", "checkpoint"),
        ),
        # checkpoint upload ids that do not exist
        ({"model": {"name": "resnet18", "checkpoint": "upl_nope"}}, 404, ("model", "checkpoint")),
        # devices: out of bounds, or a global batch that does not split across them
        ({"resources": {"devices": 0}}, 422, ("resources", "devices")),
        ({"resources": {"devices": 65}}, 422, ("resources", "devices")),
        ({"resources": {"devices": 3}}, 400, ("training", "batch_size")),
    ],
)
def test_bad_job_bodies(
    client: TestClient, change: dict[str, Any], status: int, loc: tuple[str, ...]
) -> None:
    spec = tiny_spec()
    for key, value in change.items():
        if key == "model":
            value = {**spec["model"], **value}
        spec[key] = value
    r = client.post("/v1/jobs", json=spec)
    assert r.status_code == status, r.text
    if loc[0] == "body":
        assert any(lc[: len(loc)] == list(loc) for lc in _locs(r)), r.json()
    else:
        assert any(list(loc) == lc[1 : 1 + len(loc)] for lc in _locs(r)), (
            r.json()
        )  # loc starts with "body"
    assert all(item["msg"] for item in r.json()["detail"])
    assert client.get("/v1/jobs").json()["count"] == 0  # nothing was stored


def test_latency_table_with_unknown_layer(client: TestClient) -> None:
    spec = tiny_spec(
        cost_model={
            "name": "latency_table",
            "params": {"table": {"layers": {"no_such_layer": {"per_block": 1.0}}}},
        },
        sparsity={"cost_fraction": 0.5},
    )
    r = client.post("/v1/jobs", json=spec)
    assert r.status_code == 400, r.text
    assert r.json()["detail"][0]["loc"][:2] == ["body", "cost_model"]
    assert "no_such_layer" in r.json()["detail"][0]["msg"]


def test_malformed_json_and_wrong_content(client: TestClient) -> None:
    r = client.post("/v1/jobs", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422
    r = client.post("/v1/jobs", json=[1, 2, 3])
    assert r.status_code == 422
    r = client.post("/v1/jobs", json={})
    assert r.status_code == 422 and _has_loc(r, "model") and _has_loc(r, "sparsity")


def test_oversized_body_is_413(settings: Settings) -> None:
    settings.max_body_bytes = 4096
    with TestClient(create_app(settings)) as client:
        spec = tiny_spec(name="x" * 100)
        spec["sparsity"]["include"] = ["layer*"] * 1000  # ~ 10 kB
        r = client.post("/v1/jobs", json=spec)
        assert r.status_code == 413
        assert r.json()["detail"][0]["loc"] == ["body"]
        # without a Content-Length (chunked), counted while it streams
        chunks = (json.dumps(spec).encode()[i : i + 1024] for i in range(0, 12000, 1024))
        r = client.post("/v1/jobs", content=chunks, headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert r.json()["detail"][0]["loc"] == ["body"]
        assert client.post("/v1/jobs", json=tiny_spec()).status_code == 201


@pytest.mark.parametrize("name", ["..%2Fspec.json", "a%2Fb", "%2E%2E", "sub/x.json"])
def test_artifact_names_with_separators_or_dotdot_are_400(client: TestClient, name: str) -> None:
    job_id = client.post("/v1/jobs", json=tiny_spec()).json()["id"]
    r = client.get(f"/v1/jobs/{job_id}/artifacts/{name}")
    assert r.status_code == 400, (name, r.status_code, r.text)
    assert r.json()["detail"][0]["loc"] == ["path", "name"]


def test_unknown_artifact_is_404(client: TestClient) -> None:
    job_id = client.post("/v1/jobs", json=tiny_spec()).json()["id"]
    r = client.get(f"/v1/jobs/{job_id}/artifacts/model.safetensors")
    assert r.status_code == 404
    assert r.json()["detail"][0]["loc"] == ["path", "name"]


def _safetensors_bytes() -> bytes:
    return save({"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)})


def test_upload_accepts_safetensors(client: TestClient) -> None:
    data = _safetensors_bytes()
    r = client.post("/v1/uploads", files={"file": ("w.safetensors", data)})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["id"].startswith("upl_") and body["size"] == len(data)
    assert body["num_tensors"] == 1 and body["filename"] == "w.safetensors"
    assert client.get(f"/v1/uploads/{body['id']}").json() == body


def _torch_pickle() -> bytes:
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("filename", "content", "status"),
    [
        ("model.pt", _torch_pickle(), 415),  # torch zip pickle
        ("model.pkl", pickle.dumps({"w": [1, 2]}, protocol=4), 415),
        ("model.safetensors", b"\x80\x04K\x01.", 415),  # a pickle renamed
        ("x.safetensors", b"", 400),
        ("x.safetensors", b"garbage bytes that are not safetensors at all", 400),
        ("x.safetensors", (20).to_bytes(8, "little") + b'{"w": 1}' + b" " * 12, 400),
        (
            "x.safetensors",  # header claims more data than the file has
            (lambda h: len(h).to_bytes(8, "little") + h)(
                json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
            )
            + b"\0" * 8,
            400,
        ),
        (
            "x.safetensors",  # offsets inconsistent with the shape
            (lambda h: len(h).to_bytes(8, "little") + h)(
                json.dumps({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}}).encode()
            )
            + b"\0" * 16,
            400,
        ),
    ],
)
def test_bad_uploads(
    client: TestClient, settings: Settings, filename: str, content: bytes, status: int
) -> None:
    r = client.post("/v1/uploads", files={"file": (filename, content)})
    assert r.status_code == status, r.text
    assert r.json()["detail"][0]["loc"] == ["body", "file"]
    assert not [p for p in Path(settings.upload_dir).iterdir()]  # nothing left behind


def test_upload_without_file_is_422(client: TestClient) -> None:
    assert client.post("/v1/uploads", data={"x": "1"}).status_code == 422


def test_oversized_upload_is_413(settings: Settings) -> None:
    settings.max_upload_bytes = 2048
    with TestClient(create_app(settings)) as client:
        big = save({"w": torch.zeros(4096)})  # 16 kB of data
        r = client.post("/v1/uploads", files={"file": ("big.safetensors", big)})
        assert r.status_code == 413
        small = save({"w": torch.zeros(8)})
        assert (
            client.post("/v1/uploads", files={"file": ("s.safetensors", small)}).status_code == 201
        )
    assert len(list(Path(settings.upload_dir).iterdir())) == 1


def test_oversized_upload_within_body_limit_is_413(settings: Settings) -> None:
    # the file alone exceeds the limit though the whole request fits the route's body limit
    settings.max_upload_bytes = 1000
    with TestClient(create_app(settings)) as client:
        data = save({"w": torch.zeros(300)})  # ~1.3 kB < 1000 + multipart slack
        r = client.post("/v1/uploads", files={"file": ("w.safetensors", data)})
        assert r.status_code == 413


COST_FRACTION = {"sparsity": {"cost_fraction": 0.5}}


@pytest.mark.parametrize(
    ("change", "loc"),
    [
        (
            {"cost_model": {"name": "memory", "params": {"format": "zip"}}, **COST_FRACTION},
            ["body", "cost_model", "params", "format"],
        ),
        (
            {"cost_model": {"name": "memory", "params": {"dtype_bytes": -1}}, **COST_FRACTION},
            ["body", "cost_model", "params", "dtype_bytes"],
        ),
        (
            {"cost_model": {"name": "flops", "params": {"colour": 1}}, **COST_FRACTION},
            ["body", "cost_model", "params", "colour"],
        ),
        (
            {"cost_model": {"name": "latency_table"}, **COST_FRACTION},
            ["body", "cost_model", "params", "table"],
        ),
        (
            {
                "cost_model": {"name": "latency_table", "params": {"table": "/etc/t.json"}},
                **COST_FRACTION,
            },
            ["body", "cost_model", "params", "table"],
        ),
        (
            {"sparsity": {"sparsity": 0.9, "block_shape": [5, 5]}},
            ["body", "sparsity", "block_shape"],
        ),
        ({"sparsity": {"sparsity": 0.9, "include": ["nope*"]}}, ["body", "sparsity", "include"]),
        ({"resources": {"time_limit_s": 40 * 24 * 3600}}, ["body", "resources", "time_limit_s"]),
    ],
)
def test_nested_fields_are_located_exactly(
    client: TestClient, change: dict[str, Any], loc: list[Any]
) -> None:
    r = client.post("/v1/jobs", json=tiny_spec(**change))
    assert r.status_code in (400, 422), r.text
    assert _locs(r) == [loc], r.json()
    assert r.json()["detail"][0]["msg"]


def test_plan_errors_are_located_in_the_plan_body(client: TestClient) -> None:
    model = {"source": "torchvision", "name": "resnet18", "input_size": [3, 32, 32]}
    cases = [
        (
            {"cost_fraction": 0.5, "cost_model": {"name": "memory", "params": {"format": "z"}}},
            ["body", "cost_model", "params", "format"],
        ),
        ({"sparsity": 0.9, "block_shape": [5, 5]}, ["body", "block_shape"]),
        ({"sparsity": 0.9, "include": ["nope*"]}, ["body", "include"]),
        ({"sparsity": 0.9, "model": {**model, "name": "resnet1000"}}, ["body", "model", "name"]),
    ]
    for body, loc in cases:
        r = client.post("/v1/plans", json={"model": model, **body})
        assert r.status_code == 400, r.text
        assert _locs(r) == [loc], r.json()
