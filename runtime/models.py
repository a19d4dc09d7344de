"""Model sources for jobs: build any timm or torchvision classification network by name.

The builders and the source registry live in ``cost_models.architectures`` (one place, shared
with ``cost_models.load_sparse`` and ``spartan export``); this module names errors after the
job spec's ``model`` fields and loads user checkpoints. ``create_model`` is the factory the
job runtime, the validation and the CLI share. Models are randomly initialised unless
``create_model(spec, pretrained=True)`` is asked for a spec with ``model.pretrained``: then
timm loads its pretrained weights (``timm.create_model(name, pretrained=True)``: tagged names
such as ``resnet50.a1_in1k`` and ``hf-hub:`` ids, from the Hugging Face cache, offline with
``HF_HUB_OFFLINE=1``). Only the training run asks for them; validation, bounds and export
build the architecture alone. Otherwise weights come from a user checkpoint through
``load_checkpoint``, which reads safetensors or, for ``.pt``/``.pth``, ``torch.load`` with
``weights_only=True`` — user files are never unpickled.

Input channels: timm models take ``in_chans``; for torchvision models with a channel count other
than 3, the first 3-channel ``Conv2d`` is replaced by one with the requested channels (such a
model then needs the same replacement to load its weights; the examples feed 3 channels).
Input size: models that need it (ViTs, Swin) are built for the spec's height and width.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from cost_models import architectures
from cost_models.architectures import ModelSource, register_source, sources
from spartan.errors import FieldError
from spartan.resolve import CHECKPOINT_LOC, CHECKPOINT_SUFFIXES
from spartan.spec import ModelSpec

log = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "ModelSource",
    "check_architecture",
    "check_pretrained",
    "create_model",
    "get_source",
    "list_architectures",
    "load_checkpoint",
    "read_weights",
    "register_source",
    "sources",
]


def get_source(name: str) -> ModelSource:
    """The model source called ``name``.

    Raises:
        ValueError: naming ``model.source`` and the known sources.
    """
    return architectures.get_source(name, field="model")


def list_architectures(source: str) -> list[str]:
    """Every architecture name a source can build."""
    return architectures.list_architectures(source, field="model")


def check_architecture(source: str, name: str) -> None:
    """Raise ValueError (field ``model.name``) unless ``name`` is an architecture of ``source``."""
    architectures.check_architecture(source, name, field="model")


def check_pretrained(spec: ModelSpec) -> None:
    """Check, loading nothing, that the pretrained weights ``spec`` asks for can be loaded.

    Fast and offline: the tag must be known to timm and, with ``HF_HUB_OFFLINE`` set, the files
    must be in the Hugging Face cache. Does nothing when ``spec.pretrained`` is false.

    Raises:
        FieldError: at ``model.name`` (unknown tag, weights not in the cache offline) or
            ``model.pretrained`` (a source without pretrained weights).
    """
    if not spec.pretrained:
        return
    try:
        architectures.check_pretrained(spec.source, spec.name, field="model")
    except ValueError as exc:
        raise _model_field_error(exc) from None


def create_model(spec: ModelSpec, *, pretrained: bool = False) -> nn.Module:
    """The network for ``spec`` (the checkpoint is not loaded here).

    Randomly initialised, unless ``pretrained`` and ``spec.pretrained``: then with timm's
    pretrained weights. Build it under ``with torch.device("meta"):`` to inspect shapes
    without allocating (never with ``pretrained``).

    Raises:
        ValueError: naming the field, for an unknown source or architecture.
        FieldError: at ``model.name`` when pretrained weights cannot be loaded (unknown tag,
            missing from the cache offline, the Hub unreachable), ``model.pretrained`` for a
            source without them.
    """
    if not (pretrained and spec.pretrained):
        return architectures.build_model(
            spec.source, spec.name, spec.num_classes, spec.input_size, field="model"
        )
    try:
        return architectures.build_model(
            spec.source,
            spec.name,
            spec.num_classes,
            spec.input_size,
            field="model",
            pretrained=True,
        )
    except ValueError as exc:
        raise _model_field_error(exc) from None


def _model_field_error(exc: ValueError) -> FieldError:
    """``FieldError`` at ``("model", key)`` for a core message ``model.<key>: reason``."""
    head, sep, reason = str(exc).partition(": ")
    key = head.removeprefix("model.") if sep and head.startswith("model.") else "name"
    return FieldError(("model", key), reason if sep else str(exc))


# checkpoints --------------------------------------------------------------------------------
def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, on the CPU, without unpickling arbitrary objects.

    ``.safetensors`` files are read with safetensors; ``.pt``/``.pth`` with
    ``torch.load(weights_only=True)``, unwrapping a ``state_dict``/``model`` entry and a
    ``module.`` (DataParallel) prefix.

    Raises:
        FieldError: at ``model.checkpoint``, for other suffixes or unreadable content.
    """
    suffix = path.suffix.lower()
    if suffix not in CHECKPOINT_SUFFIXES:
        raise FieldError(
            CHECKPOINT_LOC, f"{path.name!r} is not a {'/'.join(CHECKPOINT_SUFFIXES)} file"
        )
    if suffix == ".safetensors":
        try:
            tensors = load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as exc:
            raise FieldError(CHECKPOINT_LOC, f"cannot read {path.name!r}: {exc}") from exc
    else:
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, OSError, EOFError) as exc:
            # weights_only refuses pickled code and arbitrary objects (UnpicklingError).
            raise FieldError(CHECKPOINT_LOC, f"cannot read {path.name!r}: {exc}") from exc
        if isinstance(loaded, dict):
            for key in ("state_dict", "model", "model_state_dict"):
                if isinstance(loaded.get(key), dict):
                    loaded = loaded[key]
                    break
        if not isinstance(loaded, dict):
            raise FieldError(CHECKPOINT_LOC, f"{path.name!r} does not hold a state dict")
        tensors = {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = {k.removeprefix("module."): v for k, v in tensors.items()}
    if not tensors:
        raise FieldError(CHECKPOINT_LOC, f"{path.name!r} holds no tensors")
    return tensors


def load_checkpoint(model: nn.Module, path: Path) -> dict[str, list[str]]:
    """Load matching weights from ``path`` into ``model``.

    Tensors whose name and shape match are loaded; those with another shape (typically the
    classifier of a model trained for a different number of classes) are skipped and logged.

    Returns:
        ``{"loaded": [...], "skipped": [...], "missing": [...]}`` tensor names.

    Raises:
        FieldError: at ``model.checkpoint`` if the file is unreadable or nothing matches.
    """
    tensors = read_weights(path)
    own = model.state_dict()
    loaded = [k for k, v in tensors.items() if k in own and own[k].shape == v.shape]
    skipped = [k for k, v in tensors.items() if k in own and own[k].shape != v.shape]
    unexpected = [k for k in tensors if k not in own]
    if not loaded:
        raise FieldError(
            CHECKPOINT_LOC,
            f"no tensor of {path.name!r} matches the architecture "
            f"(e.g. {', '.join(sorted(tensors)[:3])})",
        )
    model.load_state_dict({k: tensors[k] for k in loaded}, strict=False)
    missing = [k for k in own if k not in set(loaded)]
    if skipped or unexpected:
        log.warning(
            "checkpoint %s: skipped %d tensors with other shapes (%s), %d unknown names",
            path.name,
            len(skipped),
            ", ".join(skipped[:5]),
            len(unexpected),
        )
    return {"loaded": loaded, "skipped": skipped + unexpected, "missing": missing}
