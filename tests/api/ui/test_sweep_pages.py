"""The dashboard's sweep pages: the list, one sweep (children, frontier table, plot), the link
from a child's job page, owners and escaping over HTTP; and the page in a real browser."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from spartan.keys import create_api_key
from spartan.settings import Settings
from spartan.store import get_store
from tests.api.test_sweeps import _succeed, sweep_spec

XSS = '<script>alert("x")</script><img src=x onerror=alert(1)>'
WAIT_MS = 60_000


def _sweep(client: TestClient, targets: list[float], **spec: Any) -> dict[str, Any]:
    r = client.post(
        "/v1/sweeps", json={"spec": sweep_spec(**spec), "targets": {"cost_fraction": targets}}
    )
    assert r.status_code == 201, r.text
    return r.json()


def test_the_sweep_page_shows_children_frontier_and_plot(
    client: TestClient, settings: Settings
) -> None:
    created = _sweep(client, [0.5, 0.3, 0.1], name="my-sweep")
    a, b, c = [j["id"] for j in created["jobs"]]
    _succeed(settings, a, 0.9, 0.5, 3.0)
    _succeed(settings, b, 0.8, 0.3, 2.0)
    get_store(settings.database_url).finish(job_id=c, status="failed", error="out of memory")

    page = client.get(f"/ui/sweeps/{created['id']}")
    assert page.status_code == 200, page.text
    html = page.text
    assert "my-sweep" in html and "partial" in html
    for job_id in (a, b, c):
        assert f'href="/ui/jobs/{job_id}"' in html
    assert "out of memory" in html
    assert 'id="frontier-table"' in html and "90.0%" in html and "3.000" in html
    assert f'src="/ui/sweeps/{created["id"]}/frontier.png"' in html
    assert "script-src 'self'" in page.headers["content-security-policy"]
    png = client.get(f"/ui/sweeps/{created['id']}/frontier.png")
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
    assert client.get(f"/ui/sweeps/{created['id']}/frontier.png?x=latency_ms").status_code == 200

    listing = client.get("/ui/sweeps").text
    assert f'href="/ui/sweeps/{created["id"]}"' in listing and "2 / 3 succeeded" in listing
    assert "cost fraction 0.5, 0.3, 0.1" in listing
    job_page = client.get(f"/ui/jobs/{a}").text  # a child links to its sweep
    assert f'href="/ui/sweeps/{created["id"]}"' in job_page
    assert 'href="/ui/sweeps"' in client.get("/ui/").text  # the navigation


def test_sweep_names_are_escaped(client: TestClient) -> None:
    created = _sweep(client, [0.5], name=XSS)
    for path in ("/ui/sweeps", f"/ui/sweeps/{created['id']}"):
        html = client.get(path).text
        assert XSS not in html
        assert "&lt;script&gt;" in html


def test_unknown_and_other_owners_sweeps_are_404_pages(settings: Settings) -> None:
    settings.auth_enabled = True
    store = get_store(settings.database_url)
    alice, bob = create_api_key(store, owner="alice"), create_api_key(store, owner="bob")
    with TestClient(create_app(settings)) as client:
        r = client.post(
            "/v1/sweeps",
            json={"spec": sweep_spec(), "targets": {"cost_fraction": [0.5]}},
            headers={"Authorization": f"Bearer {alice}"},
        )
        sweep_id = r.json()["id"]
        client.cookies.set("spartan_key", alice)
        assert client.get(f"/ui/sweeps/{sweep_id}").status_code == 200
        client.cookies.set("spartan_key", bob)
        for path in (
            f"/ui/sweeps/{sweep_id}",
            f"/ui/sweeps/{sweep_id}/frontier.png",
            "/ui/sweeps/swp_nope",
            f"/ui/sweeps/{'x' * 300}",
        ):
            r = client.get(path)
            assert r.status_code == 404, path
            assert 'id="not-found"' in r.text
        assert sweep_id not in client.get("/ui/sweeps").text
        client.cookies.clear()
        assert client.get("/ui/sweeps").status_code == 401  # the API-key page


@pytest.mark.slow  # a real browser process
def test_the_sweep_page_in_a_browser(ui_url: str, page: Any, settings: Settings) -> None:
    body = {"spec": sweep_spec(name="browser-sweep"), "targets": {"cost_fraction": [0.5, 0.2]}}
    r = httpx.post(f"{ui_url}/v1/sweeps", json=body, timeout=60)
    assert r.status_code == 201, r.text
    created = r.json()
    first = created["jobs"][0]["id"]
    _succeed(settings, first, 0.9, 0.5, 1.5)
    page.goto(f"{ui_url}/ui/sweeps/{created['id']}")
    assert page.locator("#sweep-name").inner_text() == "browser-sweep"
    assert page.locator("#sweep-status").inner_text() == "running"
    assert page.locator(f'#frontier-table tr[data-job-id="{first}"]').count() == 1
    size = page.locator("#frontier-plot").evaluate("img => img.complete && img.naturalWidth")
    assert size and size > 100  # the plot loaded
    page.locator("#cancel-sweep").click()  # the second child was still queued
    page.wait_for_function(
        "document.getElementById('sweep-status').textContent === 'partial'", timeout=WAIT_MS
    )
    statuses = httpx.get(f"{ui_url}/v1/sweeps/{created['id']}", timeout=30).json()["jobs"]
    assert [j["status"] for j in statuses] == ["succeeded", "cancelled"]
    assert page.errors == []
