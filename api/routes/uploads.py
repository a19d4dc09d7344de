"""Uploads: checkpoints in safetensors format, to start a job or a plan from."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Path, UploadFile

from api import services
from api.deps import OwnerDep, SettingsDep, StoreDep
from api.errors import not_found
from api.schemas import ErrorPublic, UploadPublic

router = APIRouter(prefix="/v1/uploads", tags=["uploads"])


@router.post(
    "",
    status_code=201,
    response_model=UploadPublic,
    responses={
        400: {"model": ErrorPublic, "description": "not a consistent safetensors file"},
        401: {"model": ErrorPublic},
        413: {"model": ErrorPublic, "description": "larger than the configured limit"},
        415: {"model": ErrorPublic, "description": "a pickle (.pt/.pth/.pkl) or other format"},
    },
)
def create_upload(
    file: Annotated[UploadFile, File(description="a .safetensors checkpoint")],
    settings: SettingsDep,
    store: StoreDep,
    owner: OwnerDep,
) -> UploadPublic:
    """Store a checkpoint; its id can be given as ``model.checkpoint`` of a job or a plan.

    The header is parsed and checked against the file size; tensors are not loaded. Pickled
    checkpoints are refused (loading them can run arbitrary code).
    """
    upload = services.store_upload(
        file.file, filename=file.filename or "", settings=settings, store=store, owner=owner
    )
    return UploadPublic.from_upload(upload)


@router.get(
    "/{upload_id}",
    response_model=UploadPublic,
    responses={401: {"model": ErrorPublic}, 404: {"model": ErrorPublic}},
)
def get_upload(
    upload_id: Annotated[str, Path(min_length=1, max_length=40)],
    store: StoreDep,
    owner: OwnerDep,
) -> UploadPublic:
    """One of the owner's uploads."""
    upload = store.get_upload(upload_id=upload_id, owner=owner)
    if upload is None:
        raise not_found("upload", ["path", "upload_id"])
    return UploadPublic.from_upload(upload)
