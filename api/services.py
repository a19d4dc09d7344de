"""What the routes do, as plain keyword-only functions over the store, the broker and settings.

Routes parse and map errors; everything with a decision in it lives here, so the CLI, tests
and the routes share one implementation. Nothing here needs torch: what does (validation
against the model registry, plans, the catalogs) is in ``api.runtime_services``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from api.errors import ApiError, not_found
from spartan.queue import BROKER_DOWN, Broker, send_job
from spartan.resolve import artifact_dir
from spartan.settings import Settings
from spartan.spec import JobSpec
from spartan.store import Job, JobStore, Upload

log = logging.getLogger(__name__)

_ARTIFACT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")


# jobs -----------------------------------------------------------------------------------------
SpecCheck = Callable[[JobSpec], None]


def submit_job(
    spec: JobSpec,
    *,
    validate: SpecCheck,
    settings: Settings,
    store: JobStore,
    broker: Broker,
    owner: str,
    idempotency_key: str | None = None,
) -> tuple[Job, bool]:
    """Validate, store (status queued), then enqueue; returns (job, created).

    Args:
        validate: the checks beyond the schema (``api.runtime_services.validate_job`` for
            this owner); raises ``FieldError`` naming the field.

    The job is committed before its message is sent, so a worker never sees an id the store
    does not know. If the broker is down the job stays queued with no enqueue time and is
    sent by the next reconcile (``spartan.queue.resend_lost``: the API's every
    ``settings.resend_interval_s`` and at start, every worker's every
    ``settings.reconcile_interval_s``). A repeated idempotency key returns the first job,
    also to concurrent submissions; reusing a key with a different body is a 409.
    """
    validate(spec)
    body = spec.model_dump(mode="json")
    job, created = store.create_job(owner=owner, spec=body, idempotency_key=idempotency_key)
    if not created:
        if job.spec != body:
            raise ApiError(
                409,
                "this Idempotency-Key was already used with a different job body",
                loc=["header", "idempotency-key"],
                type="conflict",
            )
        return job, False
    try:
        send_job(job, store=store, broker=broker, settings=settings)
    except BROKER_DOWN as exc:
        log.warning("job %s stored but not enqueued (broker unreachable: %s)", job.id, exc)
    return job, True


def get_owned_job(store: JobStore, *, job_id: str, owner: str) -> Job:
    """The job if it exists and is the owner's; 404 otherwise (also for other owners)."""
    job = store.get_job(job_id=job_id, owner=owner)
    if job is None:
        raise not_found("job", ["path", "job_id"])
    return job


def cancel_job(*, store: JobStore, job_id: str, owner: str) -> Job:
    """Ask a job to stop. Queued jobs are cancelled at once; running ones at their next step."""
    get_owned_job(store, job_id=job_id, owner=owner)
    job = store.request_cancel(job_id=job_id)
    if job is None:  # deleted in between
        raise not_found("job", ["path", "job_id"])
    return job


def enforce_cancel(*, store: JobStore, broker: Broker, job_id: str) -> bool:
    """The hard fallback: if a cancelled job is still running, kill its task and record it.

    Returns True when the task was terminated (the job is then marked cancelled); False when
    it had stopped by itself or no worker reported it (the job is left to the worker).
    """
    job = store.get_job(job_id=job_id)
    if job is None or job.status != "running" or not job.cancel_requested:
        return False
    if not broker.terminate(job_id):
        log.warning("job %s: cancel requested but its task could not be terminated", job_id)
        return False
    store.finish(job_id=job_id, status="cancelled", error="cancelled: task terminated")
    return True


def count_by_status(store: JobStore) -> dict[str, int]:
    """Number of jobs in each status (for /metrics)."""
    counts = {}
    for status in ("queued", "running", "succeeded", "failed", "cancelled"):
        _, counts[status] = store.list_jobs(status=status, limit=0)
    return counts


# artifacts ------------------------------------------------------------------------------------
def check_artifact_name(name: str) -> str:
    """A bare file name: no separators, no ``..``, no leading dot (400 otherwise)."""
    if "/" in name or "\\" in name or ".." in name or "\x00" in name:
        raise ApiError(
            400,
            "artifact names are bare file names (no path separators or '..')",
            loc=["path", "name"],
        )
    if not _ARTIFACT_NAME.match(name):
        raise ApiError(400, f"not a valid artifact name: {name!r}", loc=["path", "name"])
    return name


def list_artifacts(settings: Settings, job_id: str) -> list[tuple[str, int]]:
    """(name, size) of each regular file in the job's artifact folder, sorted by name."""
    folder = artifact_dir(settings, job_id)
    if not folder.is_dir():
        return []
    return sorted(
        (p.name, p.stat().st_size)
        for p in folder.iterdir()
        if p.is_file() and not p.is_symlink() and _ARTIFACT_NAME.match(p.name)
    )


def artifact_path(settings: Settings, job_id: str, name: str) -> Path:
    """The file behind an artifact name (400 for bad names, 404 when absent)."""
    check_artifact_name(name)
    folder = artifact_dir(settings, job_id).resolve()
    path = (folder / name).resolve()
    if path.parent != folder or not path.is_file():
        raise not_found("artifact", ["path", "name"])
    return path


# uploads --------------------------------------------------------------------------------------
_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}  # fmt: skip
_MAX_HEADER = 100 * 1024 * 1024


class UnsupportedCheckpoint(ApiError):
    """415: a pickle or another format that is not safetensors."""

    def __init__(self, msg: str) -> None:
        super().__init__(415, msg, loc=["body", "file"], type="unsupported_media_type")


def _bad_file(msg: str) -> ApiError:
    return ApiError(400, f"not a valid safetensors file: {msg}", loc=["body", "file"])


def check_safetensors(path: Path) -> int:
    """Parse and check a safetensors file's header without loading tensors; returns the
    number of tensors.

    Raises:
        UnsupportedCheckpoint: for pickles (torch .pt/.pth zip or raw pickle) and numpy files.
        ApiError: 400 for anything else that is not a consistent safetensors file.
    """
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if head[:1] == b"\x80" or head[:4] == b"PK\x03\x04" or head[:6] == b"\x93NUMPY":
            raise UnsupportedCheckpoint(
                "pickled or zipped checkpoints are not accepted (they can run code when "
                "loaded); convert with safetensors.torch.save_file and upload that"
            )
        if len(head) < 8:
            raise _bad_file("shorter than the 8-byte header length")
        n = int.from_bytes(head, "little")
        if n < 2 or n > min(_MAX_HEADER, size - 8):
            raise _bad_file(f"header length {n} does not fit a {size}-byte file")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad_file(f"header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise _bad_file("header is not a JSON object")
    data_len = size - 8 - n
    count = 0
    for key, entry in header.items():
        if key == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                raise _bad_file("__metadata__ must map strings to strings")
            continue
        if not isinstance(entry, dict):
            raise _bad_file(f"tensor {key!r}: entry is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in _DTYPE_BYTES:
            raise _bad_file(f"tensor {key!r}: unknown dtype {dtype!r}")
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
            raise _bad_file(f"tensor {key!r}: shape must be a list of non-negative integers")
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(type(o) is int for o in offsets)
            and 0 <= offsets[0] <= offsets[1] <= data_len
        ):
            raise _bad_file(f"tensor {key!r}: data_offsets outside the file")
        if offsets[1] - offsets[0] != math.prod(shape) * _DTYPE_BYTES[dtype]:
            raise _bad_file(f"tensor {key!r}: {offsets[1] - offsets[0]} bytes for shape {shape}")
        count += 1
    return count


def store_upload(
    source: BinaryIO, *, filename: str, settings: Settings, store: JobStore, owner: str
) -> Upload:
    """Copy an uploaded file into the upload folder (content-addressed), check it, record it.

    Raises:
        ApiError: 413 beyond ``settings.max_upload_bytes``, 415 for pickles, 400 otherwise.
    """
    assert settings.upload_dir is not None
    settings.upload_dir.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    fd, tmp_name = tempfile.mkstemp(dir=settings.upload_dir, prefix=".incoming-")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := source.read(1 << 20):
                size += len(chunk)
                if size > settings.max_upload_bytes:
                    raise ApiError(
                        413,
                        f"upload larger than {settings.max_upload_bytes} bytes",
                        loc=["body", "file"],
                        type="too_large",
                    )
                digest.update(chunk)
                out.write(chunk)
        num_tensors = check_safetensors(tmp)
        final = settings.upload_dir / f"{digest.hexdigest()}.safetensors"
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    clean_name = Path(filename or "upload.safetensors").name[:300] or "upload.safetensors"
    return store.add_upload(
        owner=owner,
        filename=clean_name,
        path=str(final),
        size=size,
        sha256=digest.hexdigest(),
        num_tensors=num_tensors,
    )
