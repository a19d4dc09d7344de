"""Liveness, readiness (database and broker reachable) and Prometheus metrics."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from api.deps import BrokerDep, StoreDep
from api.schemas import HealthPublic, ReadyPublic
from spartan.queue import BROKER_DOWN

router = APIRouter(tags=["health"])
log = logging.getLogger(__name__)


@router.get("/healthz", response_model=HealthPublic)
async def healthz() -> HealthPublic:
    """The process is up."""
    return HealthPublic(status="ok")


def _check_database(store: StoreDep) -> str:
    try:
        with store.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        return f"error: {type(exc).__name__}: {exc}"[:500]
    return "ok"


def _check_broker(broker: BrokerDep) -> str:
    try:
        broker.ping()
    except BROKER_DOWN as exc:
        return f"error: {type(exc).__name__}: {exc}"[:500]
    return "ok"


@router.get(
    "/readyz",
    response_model=ReadyPublic,
    responses={503: {"model": ReadyPublic, "description": "database or broker unreachable"}},
)
async def readyz(store: StoreDep, broker: BrokerDep) -> Response:
    """Ready to take jobs: the job store and the broker answer."""
    checks = {
        "database": await run_in_threadpool(_check_database, store),
        "broker": await run_in_threadpool(_check_broker, broker),
    }
    ready = all(v == "ok" for v in checks.values())
    body = ReadyPublic(status="ready" if ready else "unavailable", checks=checks)
    if not ready:
        log.warning("not ready: %s", checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
)
def metrics(request: Request) -> Response:
    """Request counts and latency per route, and jobs by status, in Prometheus text format."""
    data = generate_latest(request.app.state.metrics.registry)
    return Response(data, media_type=CONTENT_TYPE_LATEST)
