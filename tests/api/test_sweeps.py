"""Sweeps over REST (no worker: children stay queued unless a test plays the worker): creation,
bad target lists naming the field, owners, cancel, the frontier and its plot, idempotency,
quotas and a broker that is down."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from spartan.keys import create_api_key
from spartan.queue import resend_lost
from spartan.settings import Settings
from spartan.store import get_store
from tests.api.conftest import broker_messages, tiny_spec

REPO = Path(__file__).resolve().parents[2]


def sweep_spec(**overrides: Any) -> dict[str, Any]:
    """The tiny job spec without a target."""
    spec = tiny_spec(**overrides)
    spec["sparsity"] = {k: v for k, v in spec["sparsity"].items() if k != "sparsity"}
    return spec


def _body(**targets: Any) -> dict[str, Any]:
    return {"spec": sweep_spec(), "targets": targets}


def test_a_sweep_makes_one_ordinary_job_per_target(client: TestClient, settings: Settings) -> None:
    r = client.post("/v1/sweeps", json=_body(cost_fraction=[0.5, 0.3, 0.1]))
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["id"].startswith("swp_") and created["status"] == "queued"
    assert r.headers["location"] == f"/v1/sweeps/{created['id']}"
    assert [(j["target"], j["status"]) for j in created["jobs"]] == [
        (0.5, "queued"),
        (0.3, "queued"),
        (0.1, "queued"),
    ]
    ids = [j["id"] for j in created["jobs"]]
    # ordinary jobs: listed, each the spec with its target, each sent to the broker
    listed = client.get("/v1/jobs").json()
    assert listed["count"] == 3 and {j["id"] for j in listed["data"]} == set(ids)
    for job_id, target in zip(ids, [0.5, 0.3, 0.1], strict=True):
        spec = client.get(f"/v1/jobs/{job_id}").json()["spec"]
        assert spec["sparsity"]["cost_fraction"] == target and spec["sparsity"]["sparsity"] is None
        assert spec["model"]["name"] == "resnet18"
    sent = [m["args"][0] for m in broker_messages(settings)]
    assert sorted(sent) == sorted(ids)

    sweep = client.get(f"/v1/sweeps/{created['id']}").json()
    assert sweep["status"] == "queued" and sweep["axis"] == "cost_fraction"
    assert sweep["targets"] == [0.5, 0.3, 0.1]
    assert [j["id"] for j in sweep["jobs"]] == ids
    assert sweep["counts"]["queued"] == 3 and sweep["frontier"] == [] and sweep["points"] == []
    assert "sparsity" not in sweep["spec"]["sparsity"]
    page = client.get("/v1/sweeps").json()
    assert page["count"] == 1 and page["data"][0]["id"] == created["id"]

    r = client.post("/v1/sweeps", json=_body(sparsity=[0.8, 0.9]))
    assert r.status_code == 201, r.text
    children = [client.get(f"/v1/jobs/{j['id']}").json() for j in r.json()["jobs"]]
    assert [c["spec"]["sparsity"]["sparsity"] for c in children] == [0.8, 0.9]


FLOPS = {"name": "flops"}


@pytest.mark.parametrize(
    ("body", "status", "loc"),
    [
        (_body(cost_fraction=[]), 400, ["body", "targets", "cost_fraction"]),
        (_body(cost_fraction=[0.5, 0.3, 0.5]), 400, ["body", "targets", "cost_fraction", 2]),
        (_body(sparsity=[0.5, 1.0]), 400, ["body", "targets", "sparsity", 1]),
        (_body(sparsity=[0.0]), 400, ["body", "targets", "sparsity", 0]),
        (_body(cost_fraction=[0.0]), 400, ["body", "targets", "cost_fraction", 0]),
        (_body(cost_fraction=[0.5, 1.5]), 400, ["body", "targets", "cost_fraction", 1]),
        (
            _body(cost_fraction=[i / 10 for i in range(1, 6)]),
            400,
            ["body", "targets", "cost_fraction"],
        ),
        (_body(sparsity=[0.5], cost_fraction=[0.5]), 400, ["body", "targets"]),
        (_body(), 400, ["body", "targets"]),
        (
            {"spec": tiny_spec(), "targets": {"cost_fraction": [0.5]}},
            400,
            ["body", "spec", "sparsity", "sparsity"],
        ),
        (
            {"spec": sweep_spec(cost_model=FLOPS), "targets": {"sparsity": [0.5]}},
            400,
            ["body", "targets", "sparsity"],
        ),
        (
            {
                "spec": sweep_spec(model={"source": "torchvision", "name": "resnet1000"}),
                "targets": {"cost_fraction": [0.5]},
            },
            400,
            ["body", "spec", "model", "name"],
        ),
        (
            {"spec": sweep_spec(training={"epochs": 0}), "targets": {"cost_fraction": [0.5]}},
            422,
            ["body", "spec", "training", "epochs"],
        ),
        ({"spec": sweep_spec(), "targets": {"cost_fraction": "half"}}, 422, None),
        ({"targets": {"cost_fraction": [0.5]}}, 422, ["body", "spec"]),
    ],
)
def test_bad_sweeps_name_the_field(
    client: TestClient, settings: Settings, body: dict, status: int, loc: list | None
) -> None:
    settings.max_sweep_points = 4
    r = client.post("/v1/sweeps", json=body)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    if loc is not None:
        assert detail[0]["loc"] == loc, detail
    else:
        assert detail[0]["loc"][:3] == ["body", "targets", "cost_fraction"], detail
    assert detail[0]["msg"]
    # nothing was made
    assert client.get("/v1/sweeps").json()["count"] == 0
    assert client.get("/v1/jobs").json()["count"] == 0


def test_a_target_a_child_cannot_reach_is_named(client: TestClient) -> None:
    # only fc masked: the whole model cannot keep a tenth of its weights
    spec = sweep_spec()
    spec["sparsity"]["include"] = ["fc"]
    body = {"spec": spec, "targets": {"cost_fraction": [1.0, 0.1]}}
    r = client.post("/v1/sweeps", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["detail"][0]["loc"] == ["body", "targets", "cost_fraction", 1]


@pytest.fixture
def auth_client(settings: Settings) -> Iterator[TestClient]:
    settings.auth_enabled = True
    with TestClient(create_app(settings)) as c:
        yield c


def test_another_owners_sweep_is_404(auth_client: TestClient, settings: Settings) -> None:
    store = get_store(settings.database_url)
    alice = {"Authorization": f"Bearer {create_api_key(store, owner='alice')}"}
    bob = {"Authorization": f"Bearer {create_api_key(store, owner='bob')}"}
    r = auth_client.post("/v1/sweeps", json=_body(cost_fraction=[0.5, 0.2]), headers=alice)
    assert r.status_code == 201, r.text
    sweep_id = r.json()["id"]
    assert auth_client.get(f"/v1/sweeps/{sweep_id}", headers=alice).status_code == 200
    for method, path in (
        ("GET", f"/v1/sweeps/{sweep_id}"),
        ("GET", f"/v1/sweeps/{sweep_id}/frontier.png"),
        ("POST", f"/v1/sweeps/{sweep_id}/cancel"),
        ("GET", "/v1/sweeps/swp_nope"),
    ):
        r = auth_client.request(method, path, headers=bob)
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["detail"][0]["loc"] == ["path", "sweep_id"]
    assert auth_client.get("/v1/sweeps", headers=bob).json()["count"] == 0
    assert auth_client.get("/v1/sweeps", headers=alice).json()["count"] == 1
    assert auth_client.get("/v1/sweeps").status_code == 401
    # bob's cancel touched nothing
    statuses = {j["status"] for j in auth_client.get("/v1/jobs", headers=alice).json()["data"]}
    assert statuses == {"queued"}


def test_cancel_cascades_to_every_unfinished_child(client: TestClient, settings: Settings) -> None:
    store = get_store(settings.database_url)
    created = client.post("/v1/sweeps", json=_body(cost_fraction=[0.5, 0.3, 0.2, 0.1])).json()
    done, running, *queued = [j["id"] for j in created["jobs"]]
    store.start_attempt(job_id=done, worker="w")
    store.finish(job_id=done, status="succeeded", metrics=_metrics(0.9, 0.5))
    store.start_attempt(job_id=running, worker="w")
    assert client.get(f"/v1/sweeps/{created['id']}").json()["status"] == "running"

    r = client.post(f"/v1/sweeps/{created['id']}/cancel")
    assert r.status_code == 200, r.text
    by_id = {j["id"]: j["status"] for j in r.json()["jobs"]}
    assert by_id[done] == "succeeded"  # finished children are left alone
    assert [by_id[q] for q in queued] == ["cancelled", "cancelled"]  # queued: at once
    flagged = client.get(f"/v1/jobs/{running}").json()  # running: at its next step
    assert flagged["status"] == "running" and flagged["cancel_requested"] is True
    store.finish(job_id=running, status="cancelled")  # as the worker records it
    sweep = client.get(f"/v1/sweeps/{created['id']}").json()
    assert sweep["status"] == "partial"
    assert sweep["counts"] == {
        "queued": 0,
        "running": 0,
        "succeeded": 1,
        "failed": 0,
        "cancelled": 3,
    }


def _metrics(top1: float, cost: float) -> dict[str, Any]:
    """What a succeeded job's metrics hold (``runtime.training.finish``), in short."""
    return {"final": {"top1": top1, "cost_fraction": cost}, "cost": {"cost_fraction": cost}}


def _succeed(settings: Settings, job_id: str, top1: float, cost: float, ms: float) -> None:
    """Play the worker: the job succeeds with these numbers and leaves its cost report."""
    store = get_store(settings.database_url)
    store.start_attempt(job_id=job_id, worker="fake")
    folder = settings.artifact_dir / job_id
    folder.mkdir(parents=True)
    report = {"totals": {"cost_fraction": cost}, "measured_latency": {"sparse_ms": ms}}
    (folder / "cost_report.json").write_text(json.dumps(report))
    store.finish(job_id=job_id, status="succeeded", metrics=_metrics(top1, cost))


def test_the_frontier_of_the_succeeded_children(client: TestClient, settings: Settings) -> None:
    store = get_store(settings.database_url)
    created = client.post("/v1/sweeps", json=_body(cost_fraction=[0.5, 0.4, 0.3, 0.2, 0.1]))
    a, b, c, d, e = [j["id"] for j in created.json()["jobs"]]
    _succeed(settings, a, 0.90, 0.5, 3.0)
    _succeed(settings, b, 0.85, 0.4, 2.5)
    _succeed(settings, c, 0.86, 0.3, 2.0)  # cheaper and better than b: b is dominated
    store.finish(job_id=d, status="failed", error="boom")  # failed: no point
    sweep_id = created.json()["id"]
    sweep = client.get(f"/v1/sweeps/{sweep_id}").json()
    assert sweep["status"] == "running"  # e is still queued
    assert [p["job_id"] for p in sweep["points"]] == [c, b, a]
    assert sweep["frontier"] == [
        {"job_id": c, "target": 0.3, "top1": 0.86, "cost_fraction": 0.3, "latency_ms": 2.0},
        {"job_id": a, "target": 0.5, "top1": 0.90, "cost_fraction": 0.5, "latency_ms": 3.0},
    ]
    assert {j["id"]: j["error"] for j in sweep["jobs"]}[d] == "boom"
    store.request_cancel(job_id=e)
    assert client.get(f"/v1/sweeps/{sweep_id}").json()["status"] == "partial"

    for query in ("", "?x=latency_ms"):
        png = client.get(f"/v1/sweeps/{sweep_id}/frontier.png{query}")
        assert png.status_code == 200, png.text
        assert png.headers["content-type"] == "image/png"
        assert png.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert client.get(f"/v1/sweeps/{sweep_id}/frontier.png?x=top5").status_code == 422


def test_an_empty_frontier_still_plots(client: TestClient) -> None:
    sweep_id = client.post("/v1/sweeps", json=_body(sparsity=[0.9])).json()["id"]
    png = client.get(f"/v1/sweeps/{sweep_id}/frontier.png")
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"


def test_a_retried_sweep_is_the_same_sweep(client: TestClient) -> None:
    key = {"Idempotency-Key": "sweep-1"}
    first = client.post("/v1/sweeps", json=_body(cost_fraction=[0.5, 0.2]), headers=key)
    again = client.post("/v1/sweeps", json=_body(cost_fraction=[0.5, 0.2]), headers=key)
    assert first.status_code == again.status_code == 201
    assert again.headers.get("idempotent-replayed") == "true"
    assert again.json() == first.json()
    assert client.get("/v1/jobs").json()["count"] == 2
    other = client.post("/v1/sweeps", json=_body(cost_fraction=[0.5]), headers=key)
    assert other.status_code == 409, other.text


def test_a_sweep_over_the_queued_quota_is_refused(client: TestClient, settings: Settings) -> None:
    settings.max_queued_jobs_per_owner = 3
    client.post("/v1/jobs", json=tiny_spec())
    r = client.post("/v1/sweeps", json=_body(cost_fraction=[0.5, 0.3, 0.1]))
    assert r.status_code == 429, r.text
    assert "asks for 3 more" in r.json()["detail"][0]["msg"]
    assert client.post("/v1/sweeps", json=_body(cost_fraction=[0.5, 0.3])).status_code == 201


class _DownBroker:
    """A broker that cannot be reached (for sending); holds nothing."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.down = True

    def enqueue(self, job_id: str, *, queue: str, resume: bool = False) -> None:
        if self.down:
            raise ConnectionError("broker down")
        self.sent.append(job_id)

    def pending_jobs(self, queue: str) -> set[str] | None:
        return set(self.sent)

    def ping(self) -> None:
        if self.down:
            raise ConnectionError("broker down")

    def terminate(self, job_id: str) -> bool:
        return False


def test_children_the_broker_missed_are_sent_by_the_reconciler(settings: Settings) -> None:
    broker = _DownBroker()
    settings.resend_interval_s = 0  # no background resend: this test runs it
    with TestClient(create_app(settings, broker=broker)) as client:
        r = client.post("/v1/sweeps", json=_body(cost_fraction=[0.5, 0.2]))
        assert r.status_code == 201, r.text  # stored all the same
        ids = [j["id"] for j in r.json()["jobs"]]
    store = get_store(settings.database_url)
    assert all(store.get_job(job_id=i).enqueued_at is None for i in ids)  # type: ignore[union-attr]
    broker.down = False
    assert sorted(resend_lost(store=store, broker=broker, settings=settings)) == sorted(ids)
    assert sorted(broker.sent) == sorted(ids)


_TORCH_FREE = """
import sys
from fastapi.testclient import TestClient

from api.main import create_app
from spartan.store import get_store

app = create_app()
spec = {"name": "s", "sparsity": {"cost_fraction": 0.5}}
sweep, jobs, _ = get_store().create_sweep(
    owner="local", axis="cost_fraction", targets=[0.5], spec={}, child_specs=[spec]
)
get_store().finish(
    job_id=jobs[0].id, status="succeeded",
    metrics={"final": {"top1": 0.9}, "cost": {"cost_fraction": 0.5}},
)
with TestClient(app) as client:
    assert client.get("/v1/sweeps").json()["count"] == 1
    assert len(client.get(f"/v1/sweeps/{sweep.id}").json()["frontier"]) == 1
    assert client.get(f"/v1/sweeps/{sweep.id}/frontier.png").status_code == 200
    assert client.post(f"/v1/sweeps/{sweep.id}/cancel").status_code == 200
    assert client.get(f"/ui/sweeps/{sweep.id}").status_code == 200
    assert client.get("/ui/sweeps").status_code == 200
assert "torch" not in sys.modules, "torch was imported"
print("torch-free")
"""


def test_reading_sweeps_needs_no_torch(settings: Settings) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _TORCH_FREE], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("torch-free")
