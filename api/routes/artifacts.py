"""Artifacts of a job: list them, download one (streamed from the shared artifact folder)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import FileResponse

from api import services
from api.deps import OwnedJobDep, SettingsDep
from api.schemas import ArtifactPublic, ArtifactsPublic, ErrorPublic

router = APIRouter(prefix="/v1/jobs", tags=["artifacts"])

_ERRORS = {
    400: {"model": ErrorPublic, "description": "artifact name with a path separator or '..'"},
    401: {"model": ErrorPublic},
    404: {"model": ErrorPublic, "description": "no such job or artifact for this owner"},
}

_MEDIA_TYPES = {
    ".json": "application/json",
    ".csv": "text/csv",
    ".safetensors": "application/octet-stream",
    ".txt": "text/plain",
    ".log": "text/plain",
}


@router.get("/{job_id}/artifacts", response_model=ArtifactsPublic, responses=_ERRORS)
def list_artifacts(job: OwnedJobDep, settings: SettingsDep) -> ArtifactsPublic:
    """Files the job has written so far (all of them once it has succeeded)."""
    items = [
        ArtifactPublic(name=name, size=size, url=f"/v1/jobs/{job.id}/artifacts/{name}")
        for name, size in services.list_artifacts(settings, job.id)
    ]
    return ArtifactsPublic(data=items, count=len(items))


@router.get(
    "/{job_id}/artifacts/{name:path}",
    response_class=FileResponse,
    responses={**_ERRORS, 200: {"content": {"application/octet-stream": {}}}},
)
def download_artifact(
    job: OwnedJobDep,
    settings: SettingsDep,
    name: Annotated[str, Path(description="a bare file name such as model.safetensors")],
) -> FileResponse:
    """Download one artifact (streamed)."""
    path = services.artifact_path(settings, job.id, name)
    return FileResponse(
        path,
        filename=path.name,
        media_type=_MEDIA_TYPES.get(path.suffix, "application/octet-stream"),
    )
