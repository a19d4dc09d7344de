"""The dashboard's pages: jobs, one job, sweeps, one sweep, the plan explorer, the API-key page,
and 404.

Pages are rendered on the server (Jinja2, autoescaped) for the viewer only: with auth on the
viewer is the owner of the API key the browser stored (sent as the ``spartan_key`` cookie to
these pages and as ``Authorization: Bearer`` to the REST API by the page scripts), and a job or
a sweep of any other owner is a 404 page, as an unknown one is. Live parts (status, curves,
cancel, plans) are the page scripts calling the REST API under ``/v1``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import jinja2
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from api import services, sweeps
from api.auth import owner_for_token
from api.deps import SettingsDep, StoreDep, runtime_services
from api.errors import ApiError
from api.ui import views
from spartan.keys import LOCAL_OWNER
from spartan.settings import Settings
from spartan.store import Job, JobStore, Sweep

HERE = Path(__file__).parent
KEY_COOKIE = "spartan_key"
# No inline script runs on a page: data for the scripts travels as application/json blocks.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)

templates = Jinja2Templates(
    env=jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
)
templates.env.filters["pct"] = views.percent
templates.env.filters["ms"] = lambda v: "-" if v is None else f"{v:.3f}"
templates.env.filters["signed_pct"] = lambda v: "-" if v is None else f"{v * 100:+.1f}%"
templates.env.filters["speedup"] = lambda v: "-" if v is None else f"{v:.2f}x"

router = APIRouter(include_in_schema=False)


async def _viewer(request: Request, settings: SettingsDep, store: StoreDep) -> str | None:
    """The owner the page is for; None when auth is on and no valid key came with it."""
    if not settings.auth_enabled:
        return LOCAL_OWNER
    token = request.cookies.get(KEY_COOKIE)
    header = request.headers.get("authorization", "")
    if not token and header.lower().startswith("bearer "):
        token = header[7:].strip()
    if not token:
        return None
    try:
        return await run_in_threadpool(owner_for_token, store, token, auth_enabled=True)
    except ApiError:
        return None


ViewerDep = Annotated[str | None, Depends(_viewer)]


def _page(
    request: Request,
    template: str,
    *,
    settings: Settings,
    owner: str | None,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    """Render a page with the common context and the security headers."""
    response = templates.TemplateResponse(
        request,
        template,
        {"auth_enabled": settings.auth_enabled, "owner": owner, "active": "", **context},
        status_code=status_code,
    )
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"
    return response


def _login(request: Request, settings: Settings) -> HTMLResponse:
    """The API-key page (401), in place of a page that needs a key; ``rejected`` when the
    browser sent one that is unknown or revoked."""
    return _page(
        request,
        "login.html",
        settings=settings,
        owner=None,
        status_code=401,
        rejected=bool(request.cookies.get(KEY_COOKIE)),
        title="API key",
    )


def _not_found(request: Request, settings: Settings, owner: str | None, what: str) -> HTMLResponse:
    """The 404 page: ``what`` (a job, an artifact, a page) does not exist for this viewer."""
    return _page(
        request,
        "not_found.html",
        settings=settings,
        owner=owner,
        status_code=404,
        what=what,
        title="Not found",
    )


def _viewed_job(
    request: Request, settings: Settings, store: JobStore, owner: str | None, job_id: str
) -> Job | HTMLResponse:
    """The viewer's job, or the page to show instead: the API-key page without a viewer, the
    404 page for an unknown job or another owner's (ids are at most 40 characters)."""
    if owner is None:
        return _login(request, settings)
    job = store.get_job(job_id=job_id, owner=owner) if len(job_id) <= 40 else None
    if job is None:
        return _not_found(request, settings, owner, "job")
    return job


def _viewed_sweep(
    request: Request, settings: Settings, store: JobStore, owner: str | None, sweep_id: str
) -> Sweep | HTMLResponse:
    """The viewer's sweep, or the API-key page (no viewer) or the 404 page (unknown, or
    another owner's) to show instead."""
    if owner is None:
        return _login(request, settings)
    sweep = store.get_sweep(sweep_id=sweep_id, owner=owner) if len(sweep_id) <= 40 else None
    if sweep is None:
        return _not_found(request, settings, owner, "sweep")
    return sweep


@router.get("/")
def root() -> RedirectResponse:
    """The service's front page is the dashboard."""
    return RedirectResponse("/ui/", status_code=307)


@router.get("/ui")
def ui_root() -> RedirectResponse:
    """The dashboard's address with its slash."""
    return RedirectResponse("/ui/", status_code=307)


@router.get("/ui/", response_class=HTMLResponse)
def jobs_page(
    request: Request,
    settings: SettingsDep,
    store: StoreDep,
    owner: ViewerDep,
    status: str | None = None,
) -> HTMLResponse:
    """The viewer's jobs, newest first, optionally of one status."""
    if owner is None:
        return _login(request, settings)
    status = status if status in views.STATUSES else None
    jobs, count = store.list_jobs(owner=owner, status=status, limit=100)
    return _page(
        request,
        "jobs.html",
        settings=settings,
        owner=owner,
        title="Jobs",
        active="jobs",
        jobs=[views.job_summary(j) for j in jobs],
        count=count,
        status=status,
        statuses=views.STATUSES,
    )


@router.get("/ui/login", response_class=HTMLResponse)
def login_page(request: Request, settings: SettingsDep, owner: ViewerDep) -> HTMLResponse:
    """Where the browser is given an API key (stored in it, never on the server)."""
    if owner is None:
        return _login(request, settings)
    return _page(
        request, "login.html", settings=settings, owner=owner, rejected=False, title="API key"
    )


@router.get("/ui/plan", response_class=HTMLResponse)
def plan_page(request: Request, settings: SettingsDep, owner: ViewerDep) -> HTMLResponse:
    """The plan explorer: a form for ``POST /v1/plans`` and the allocation it answers."""
    if owner is None:
        return _login(request, settings)
    runtime = runtime_services()
    cost_models = [item["name"] for item in runtime.list_cost_models()]
    models = {
        source: [m.name for m in runtime.list_models(source=source, q=None)]
        for source in ("torchvision", "timm")
    }
    return _page(
        request,
        "plan.html",
        settings=settings,
        owner=owner,
        title="Plan explorer",
        active="plan",
        cost_models=cost_models,
        models=models,
    )


@router.get("/ui/jobs/{job_id}", response_class=HTMLResponse)
def job_page(
    request: Request, job_id: str, settings: SettingsDep, store: StoreDep, owner: ViewerDep
) -> HTMLResponse:
    """One job: live curves, per-layer density and cost, latency, spec, artifacts, errors."""
    job = _viewed_job(request, settings, store, owner, job_id)
    if isinstance(job, HTMLResponse):
        return job
    artifacts = services.list_artifacts(settings, job.id)
    report = views.read_json_artifact(settings, job.id, views.COST_REPORT) or {}
    names = {name for name, _ in artifacts}
    return _page(
        request,
        "job.html",
        settings=settings,
        owner=owner,
        title=job.name or job.id,
        active="jobs",
        job=job,
        sweep_id=store.sweep_of_job(job_id=job.id),
        progress_pct=views.progress_percent(job),
        summary=views.job_summary(job),
        spec_json=json.dumps(job.spec, indent=2, sort_keys=True),
        progress_json=json.dumps(job.progress or {}, indent=2, sort_keys=True),
        artifacts=artifacts,
        plots=[p for p in views.PLOTS if p in names],
        report=report,
        totals=report.get("totals") or {},
        latency=views.latency_rows(report),
        deployment=views.deployment_facts(report),
        page_data={
            "job_id": job.id,
            "status": job.status,
            "finished": job.finished,
            "layers": views.layer_series(report),
            "cost_unit": (report.get("totals") or {}).get("unit"),
            "history": (job.metrics or {}).get("history") or [],
        },
    )


@router.get("/ui/jobs/{job_id}/files/{name}")
def job_file(
    request: Request,
    job_id: str,
    name: str,
    settings: SettingsDep,
    store: StoreDep,
    owner: ViewerDep,
) -> Response:
    """An artifact for the page (images, downloads), for the viewer's own jobs only."""
    job = _viewed_job(request, settings, store, owner, job_id)
    if isinstance(job, HTMLResponse):
        return job
    try:
        path = services.artifact_path(settings, job.id, name)
    except ApiError:
        return _not_found(request, settings, owner, "artifact")
    inline = path.suffix in {".png", ".json", ".csv", ".txt", ".log"}
    return FileResponse(
        path,
        filename=path.name,
        content_disposition_type="inline" if inline else "attachment",
        headers={"X-Content-Type-Options": "nosniff"},
    )


@router.get("/ui/sweeps", response_class=HTMLResponse)
def sweeps_page(
    request: Request, settings: SettingsDep, store: StoreDep, owner: ViewerDep
) -> HTMLResponse:
    """The viewer's sweeps, newest first, with their status and their children's counts."""
    if owner is None:
        return _login(request, settings)
    data, count = sweeps.list_sweeps(store, owner=owner, limit=100, offset=0)
    return _page(
        request,
        "sweeps.html",
        settings=settings,
        owner=owner,
        title="Sweeps",
        active="sweeps",
        sweeps=[views.sweep_row(s) for s in data],
        count=count,
    )


@router.get("/ui/sweeps/{sweep_id}", response_class=HTMLResponse)
def sweep_page(
    request: Request, sweep_id: str, settings: SettingsDep, store: StoreDep, owner: ViewerDep
) -> HTMLResponse:
    """One sweep: its children with their status, the frontier table and its plot."""
    sweep = _viewed_sweep(request, settings, store, owner, sweep_id)
    if isinstance(sweep, HTMLResponse):
        return sweep
    public = sweeps.sweep_public(store, settings, sweep)
    finished = public.status not in ("queued", "running")
    return _page(
        request,
        "sweep.html",
        settings=settings,
        owner=owner,
        title=sweep.name or sweep.id,
        active="sweeps",
        sweep=public,
        rows=views.sweep_children(public),
        frontier=[views.point_row(p) for p in public.frontier],
        finished=finished,
        spec_json=json.dumps(sweep.spec, indent=2, sort_keys=True),
        page_data={
            "sweep_id": sweep.id,
            "status": public.status,
            "finished": finished,
            "statuses": [j.status for j in public.jobs],
        },
    )


@router.get("/ui/sweeps/{sweep_id}/frontier.png")
def sweep_plot(
    request: Request,
    sweep_id: str,
    settings: SettingsDep,
    store: StoreDep,
    owner: ViewerDep,
    x: str = "cost_fraction",
) -> Response:
    """The sweep's frontier plot for the page (``GET /v1/sweeps/{id}/frontier.png``)."""
    sweep = _viewed_sweep(request, settings, store, owner, sweep_id)
    if isinstance(sweep, HTMLResponse):
        return sweep
    points = sweeps.sweep_points(settings, store.sweep_children(sweep_id=sweep.id))
    axis: sweeps.PlotAxis = "latency_ms" if x == "latency_ms" else "cost_fraction"
    try:
        png = sweeps.frontier_png(sweep, points, x=axis)
    except sweeps.PlotsUnavailable:
        return _not_found(request, settings, owner, "plot (matplotlib is not installed)")
    return Response(
        png,
        media_type="image/png",
        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
    )


@router.get("/ui/{rest:path}", response_class=HTMLResponse)
def unknown_page(request: Request, rest: str, settings: SettingsDep) -> HTMLResponse:
    """Any other address under /ui/."""
    return _not_found(request, settings, None, "page")


def install(app: FastAPI) -> None:
    """Serve the dashboard on ``app``: its static files under /ui/static, then its pages."""
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="ui-static")
    app.include_router(router)
