"""The dashboard's pages over HTTP, without a browser: redirects, 404 pages, escaping, owners."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.ui import views
from spartan.keys import create_api_key
from spartan.resolve import artifact_dir
from spartan.settings import Settings
from tests.api.conftest import tiny_spec

XSS = '<script>alert("x")</script><img src=x onerror=alert(1)>'
STATIC = Path(__file__).parents[3] / "api" / "ui" / "static"


@pytest.fixture
def auth_client(settings: Settings) -> Iterator[TestClient]:
    settings.auth_enabled = True
    with TestClient(create_app(settings)) as c:
        yield c


def test_root_redirects_to_the_dashboard(client: TestClient) -> None:
    r = client.get("/", follow_redirects=False)
    assert r.status_code == 307
    assert r.headers["location"] == "/ui/"
    assert client.get("/ui", follow_redirects=False).headers["location"] == "/ui/"
    page = client.get("/ui/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]


def test_pages_are_not_in_the_openapi_schema(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p == "/" or p.startswith("/ui")]


def test_unknown_job_and_page_are_404_pages(client: TestClient) -> None:
    for path in ("/ui/jobs/job_nope", f"/ui/jobs/{'x' * 300}", "/ui/nowhere", "/ui/jobs/a/b/c"):
        r = client.get(path)
        assert r.status_code == 404, path
        assert r.headers["content-type"].startswith("text/html")
        assert 'id="not-found"' in r.text


def test_user_strings_are_escaped(client: TestClient) -> None:
    job_id = client.post("/v1/jobs", json=tiny_spec(name=XSS)).json()["id"]
    for path in ("/ui/", f"/ui/jobs/{job_id}"):
        html = client.get(path).text
        assert XSS not in html
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    # the page data for the scripts is JSON that cannot close its <script> block
    html = client.get(f"/ui/jobs/{job_id}").text
    assert "</script><img" not in html


def test_job_files_are_the_owners_artifacts_only(client: TestClient, settings: Settings) -> None:
    job_id = client.post("/v1/jobs", json=tiny_spec()).json()["id"]
    folder = artifact_dir(settings, job_id)
    folder.mkdir(parents=True)
    (folder / "spec.json").write_text('{"a": 1}')
    (folder / "page.html").write_text("<script>alert(1)</script>")
    r = client.get(f"/ui/jobs/{job_id}/files/spec.json")
    assert r.status_code == 200 and r.json() == {"a": 1}
    html = client.get(f"/ui/jobs/{job_id}/files/page.html")
    assert html.headers["content-disposition"].startswith("attachment")
    assert client.get(f"/ui/jobs/{job_id}/files/..%2Fx").status_code == 404
    assert client.get(f"/ui/jobs/{job_id}/files/missing.json").status_code == 404


def test_with_auth_on_pages_need_a_key_and_show_its_owner_only(
    auth_client: TestClient, settings: Settings
) -> None:
    store = auth_client.app.state.store
    alice = create_api_key(store, owner="alice")
    bob = create_api_key(store, owner="bob")
    headers = {"Authorization": f"Bearer {alice}"}
    job_id = auth_client.post("/v1/jobs", json=tiny_spec(name="alice-job"), headers=headers)
    job_id = job_id.json()["id"]

    for path in ("/ui/", f"/ui/jobs/{job_id}", "/ui/plan", f"/ui/jobs/{job_id}/files/spec.json"):
        r = auth_client.get(path)
        assert r.status_code == 401, path
        assert 'id="login-form"' in r.text and "alice-job" not in r.text
    auth_client.cookies.set("spartan_key", "spk_unknown")
    r = auth_client.get("/ui/")
    assert r.status_code == 401 and 'id="login-rejected"' in r.text

    auth_client.cookies.set("spartan_key", bob)
    jobs = auth_client.get("/ui/")
    assert jobs.status_code == 200 and "alice-job" not in jobs.text and job_id not in jobs.text
    assert auth_client.get(f"/ui/jobs/{job_id}").status_code == 404

    auth_client.cookies.set("spartan_key", alice)
    assert job_id in auth_client.get("/ui/").text
    assert "alice-job" in auth_client.get(f"/ui/jobs/{job_id}").text


def test_target_text() -> None:
    assert views.target_text({"sparsity": {"sparsity": 0.9}}) == "90% sparse"
    spec = {
        "sparsity": {"cost_fraction": 0.25, "block_shape": [4, 4]},
        "cost_model": {"name": "flops"},
    }
    assert views.target_text(spec) == "25% flops, 4x4 blocks"
    assert views.target_text({"sparsity": {"nm": [2, 4]}}) == "2:4"


def test_vendored_chart_js_keeps_its_licence() -> None:
    assert (STATIC / "vendor" / "chart.js.LICENSE.md").read_text().startswith("The MIT License")
    assert "Chart.js v4.6.1" in (STATIC / "vendor" / "chart.umd.min.js").read_text()[:200]


_TORCH_FREE = """
import sys
from fastapi.testclient import TestClient

from api.main import create_app
from spartan.store import get_store

app = create_app()
job, _ = get_store().create_job(owner="local", spec={"name": "j", "model": {}, "sparsity": {}})
with TestClient(app) as client:
    assert client.get("/ui/").status_code == 200
    assert client.get(f"/ui/jobs/{job.id}").status_code == 200
    assert client.get("/ui/jobs/nope").status_code == 404
    assert client.get("/ui/static/dashboard.js").status_code == 200
assert "torch" not in sys.modules, "torch was imported"
print("torch-free")
"""


def test_jobs_and_job_pages_need_no_torch(settings: Settings) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _TORCH_FREE],
        cwd=Path(__file__).parents[3],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("torch-free")
