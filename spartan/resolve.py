"""What a job spec names, resolved in one place: files, folders and the queue.

A spec holds strings: a checkpoint reference (an upload id or a path), a latency table path,
an imagefolder path, a queue name. Submission, plans and training all turn them into files and
folders here, so the rules (paths must lie under a data root, an upload must be the owner's)
are written once. Errors are ``FieldError``s located in the spec; an upload id that does not
exist for the owner is an ``UnknownReference`` (the API's 404).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from spartan.errors import FieldError, UnknownReference
from spartan.joblog import LOG_NAME
from spartan.settings import Settings
from spartan.store import JobStore, get_store, is_upload_id

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth")
CHECKPOINT_LOC = ("model", "checkpoint")
TABLE_LOC = ("cost_model", "params", "table")


def data_path(path: str, settings: Settings, *, loc: Sequence[str | int]) -> Path:
    """The real path of a user-supplied file or folder, which must lie under a data root.

    Raises:
        FieldError: at ``loc``, if it is outside every root or does not exist.
    """
    resolved = Path(path).expanduser().resolve()
    roots = [Path(r).expanduser().resolve() for r in settings.data_roots]
    if not any(resolved == r or resolved.is_relative_to(r) for r in roots):
        raise FieldError(loc, f"{path!r} is outside the data roots {[str(r) for r in roots]}")
    if not resolved.exists():
        raise FieldError(loc, f"{path!r} does not exist")
    return resolved


def checkpoint_file(
    ref: str | None, *, settings: Settings, owner: str | None, store: JobStore | None = None
) -> Path | None:
    """The file ``model.checkpoint`` names: an upload of ``owner`` or a path under a data root.

    Args:
        ref: the reference; None gives None.
        owner: whose uploads count (any owner's when None, e.g. a worker running a stored job).
        store: where uploads are recorded (default: the store of ``settings``).

    Raises:
        UnknownReference: for an upload id that is not the owner's.
        FieldError: for a path outside the data roots, missing, or not a checkpoint file.
    """
    if ref is None:
        return None
    if is_upload_id(ref):
        store = store if store is not None else get_store(settings.database_url)
        upload = store.get_upload(upload_id=ref, owner=owner)
        if upload is None:
            raise UnknownReference(CHECKPOINT_LOC, f"no upload {ref!r}")
        return Path(upload.path)  # checked as safetensors when it was uploaded
    path = data_path(ref, settings, loc=CHECKPOINT_LOC)
    if not path.name.lower().endswith(CHECKPOINT_SUFFIXES):
        raise FieldError(
            CHECKPOINT_LOC, f"{Path(ref).name!r} must be a .safetensors, .pt or .pth file"
        )
    return path


def cost_model_paths(params: Mapping[str, Any], settings: Settings) -> dict[str, Any]:
    """Cost-model parameters with a latency table given as a path resolved under a data root.

    Raises:
        FieldError: at ``cost_model.params.table`` for a path outside the data roots.
    """
    resolved = dict(params)
    if isinstance(resolved.get("table"), str):
        resolved["table"] = str(data_path(resolved["table"], settings, loc=TABLE_LOC))
    return resolved


def artifact_dir(settings: Settings, job_id: str) -> Path:
    """The job's folder in the artifact store."""
    assert settings.artifact_dir is not None  # filled in by Settings
    return settings.artifact_dir / job_id


def job_log_path(settings: Settings, job_id: str) -> Path:
    """The job's log (``spartan.joblog``), an artifact of the job."""
    return artifact_dir(settings, job_id) / LOG_NAME


def checkpoint_path(settings: Settings, job_id: str) -> Path:
    """Where a job's training checkpoint lives."""
    assert settings.checkpoint_dir is not None  # filled in by Settings
    return settings.checkpoint_dir / job_id / "checkpoint.pt"


def queue_name(spec: Mapping[str, Any], settings: Settings) -> str:
    """The queue a stored job spec is routed to (``resources.queue``, else the default)."""
    return spec.get("resources", {}).get("queue", settings.default_queue)
