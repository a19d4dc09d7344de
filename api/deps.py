"""Dependencies shared by the routes, as ``Annotated`` aliases.

Everything comes from ``app.state`` (set by ``api.main.create_app``), so tests build an app
with their own settings, store and broker. ``RuntimeDep`` is the job runtime's services
(``api.runtime_services``: torch and the model registry), imported by the first request that
needs them; every other route runs without torch.
"""

from __future__ import annotations

from functools import lru_cache
from types import ModuleType
from typing import Annotated

from fastapi import Depends, Header, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPBearer
from starlette.requests import HTTPConnection

from api import services
from api.auth import owner_for_token
from api.polls import PollCache
from spartan.queue import Broker
from spartan.settings import Settings
from spartan.store import Job, JobStore


# async: FastAPI runs a plain ``def`` dependency in its threadpool, one hop per request each.
async def _settings(request: Request) -> Settings:
    return request.app.state.settings


async def _store(request: Request) -> JobStore:
    return request.app.state.store


async def _broker(request: Request) -> Broker:
    return request.app.state.broker


async def _polls(request: Request) -> PollCache:
    return request.app.state.polls


SettingsDep = Annotated[Settings, Depends(_settings)]
StoreDep = Annotated[JobStore, Depends(_store)]
BrokerDep = Annotated[Broker, Depends(_broker)]
PollsDep = Annotated[PollCache, Depends(_polls)]


@lru_cache(maxsize=1)
def runtime_services() -> ModuleType:
    """``api.runtime_services``, imported once, on first use."""
    # Deferred on purpose: it imports torch, which health checks, lists and polls never need.
    from api import runtime_services as module

    return module


RuntimeDep = Annotated[ModuleType, Depends(runtime_services)]


class _OwnerBearer(HTTPBearer):
    """The OpenAPI bearer scheme, resolving straight to the request's owner: one dependency
    rather than the scheme and a function of it (every route resolves it; polls per request
    spent a fifth of their time solving the two)."""

    async def __call__(self, request: HTTPConnection) -> str:  # type: ignore[override]
        state = request.app.state
        if not state.settings.auth_enabled:
            return owner_for_token(state.store, None, auth_enabled=False)
        credentials = await super().__call__(request)
        token = credentials.credentials if credentials is not None else None
        return await run_in_threadpool(owner_for_token, state.store, token, auth_enabled=True)


OwnerDep = Annotated[
    str,
    Depends(
        _OwnerBearer(
            auto_error=False,
            scheme_name="HTTPBearer",
            description="an API key from `spartan apikey create`",
        )
    ),
]

JobIdPath = Annotated[str, Path(min_length=1, max_length=40, description="a job id")]


async def _owned_job(job_id: JobIdPath, store: StoreDep, owner: OwnerDep) -> Job:
    return await run_in_threadpool(services.get_owned_job, store, job_id=job_id, owner=owner)


OwnedJobDep = Annotated[Job, Depends(_owned_job)]


IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        description="a retried submit with the same key returns what the first one created",
    ),
]
