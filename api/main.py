"""The FastAPI application: ``create_app()`` wires settings, store, broker and routers.

Run it with ``spartan serve`` (API and an embedded worker) or
``uvicorn --factory api.main:create_app``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from api import errors, services, ui
from api.limits import BodyLimitMiddleware
from api.metrics import Metrics, MetricsMiddleware
from api.polls import PollCache
from api.routes import artifacts, catalog, health, jobs, monitor, plans, sweeps, uploads
from spartan.queue import BROKER_DOWN, Broker, CeleryBroker, resend_lost
from spartan.settings import Settings, get_settings
from spartan.store import get_store

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, *, broker: Broker | None = None) -> FastAPI:
    """Build the service; at startup and every ``settings.resend_interval_s`` it re-sends
    queued jobs whose message the broker lost (``spartan.queue.resend_lost``).

    Args:
        settings: defaults to ``get_settings()``.
        broker: defaults to Celery over the broker of these settings (``spartan.queue``).
    """
    settings = settings or get_settings()
    settings.ensure_dirs()
    store = get_store(settings.database_url)  # creates the schema
    broker = broker or CeleryBroker(settings)
    cancel_watchers: set[asyncio.Task[None]] = set()

    async def _enforce_cancel_later(job_id: str) -> None:
        await asyncio.sleep(settings.cancel_grace_s)
        killed = await run_in_threadpool(
            services.enforce_cancel, store=store, broker=broker, job_id=job_id
        )
        if killed:
            log.warning(
                "job %s did not stop within %.0f s; terminated", job_id, settings.cancel_grace_s
            )

    def watch_cancel(job_id: str) -> None:
        task = asyncio.get_running_loop().create_task(_enforce_cancel_later(job_id))
        cancel_watchers.add(task)
        task.add_done_callback(cancel_watchers.discard)

    async def _resend_periodically() -> None:
        while True:
            await asyncio.sleep(settings.resend_interval_s)
            try:
                await run_in_threadpool(resend_lost, store=store, broker=broker, settings=settings)
            except Exception:  # a store or broker outage must not end the loop
                log.exception("re-sending lost jobs failed; retrying later")

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            await run_in_threadpool(resend_lost, store=store, broker=broker, settings=settings)
        except BROKER_DOWN as exc:
            log.warning("broker unreachable at start; lost jobs are re-sent later: %s", exc)
        resender = None
        if settings.resend_interval_s > 0:
            resender = asyncio.get_running_loop().create_task(_resend_periodically())
        yield
        if resender is not None:
            resender.cancel()
        for task in list(cancel_watchers):
            task.cancel()

    app = FastAPI(
        title="spartan",
        summary="Train neural networks to a sparsity or hardware-cost budget (Spartan).",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.broker = broker
    app.state.metrics = Metrics(store)
    app.state.polls = PollCache(store)
    app.state.watch_cancel = watch_cancel
    errors.install(app)
    app.add_middleware(
        BodyLimitMiddleware,
        max_body_bytes=settings.max_body_bytes,
        max_upload_bytes=settings.max_upload_bytes,
    )
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)

    app.include_router(jobs.router)
    app.include_router(sweeps.router)
    app.include_router(artifacts.router)
    app.include_router(monitor.router)
    app.include_router(uploads.router)
    app.include_router(plans.router)
    app.include_router(catalog.router)
    app.include_router(health.router)
    ui.install(app)  # the dashboard under /ui/ (and / redirects there)
    return app
