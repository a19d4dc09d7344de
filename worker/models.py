"""Model sources: build any timm or torchvision classification network by name.

A registry maps a source name (``timm``, ``torchvision``) to a ``ModelSource``; ``create_model``
is the factory the worker, the validation and the CLI share. Models are randomly initialised
(no pretrained download ever); weights come from a user checkpoint through
``load_checkpoint``, which reads safetensors or, for ``.pt``/``.pth``, ``torch.load`` with
``weights_only=True`` — user files are never unpickled.

Input channels: timm models take ``in_chans``; for torchvision models with a channel count other
than 3, the first 3-channel ``Conv2d`` is replaced by one with the requested channels (such a
model then needs the same replacement to load its weights; the examples feed 3 channels).
Input size: models that need it (ViTs, Swin) are built for the spec's height and width.
"""

from __future__ import annotations

import difflib
import logging
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from torch import nn

from spartan.spec import ModelSpec
from spartan_core.layers import conv2d_like

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth")


@dataclass(frozen=True)
class ModelSource:
    """A family of architectures that can be built by name.

    Attributes:
        name: the ``model.source`` value.
        architectures: returns every buildable architecture name, sorted.
        build: builds one randomly initialised network ``(name, num_classes, input_size)``.
    """

    name: str
    architectures: Callable[[], list[str]]
    build: Callable[[str, int, tuple[int, int, int]], nn.Module]


_SOURCES: dict[str, ModelSource] = {}


def register_source(source: ModelSource) -> ModelSource:
    """Add a model source to the registry (registering is importing)."""
    _SOURCES[source.name] = source
    return source


def sources() -> list[str]:
    """Registered model source names."""
    return sorted(_SOURCES)


def get_source(name: str) -> ModelSource:
    """The model source called ``name``.

    Raises:
        ValueError: naming ``model.source`` and the known sources.
    """
    if name not in _SOURCES:
        raise ValueError(f"model.source: unknown source {name!r}; known: {', '.join(sources())}")
    return _SOURCES[name]


def list_architectures(source: str) -> list[str]:
    """Every architecture name a source can build."""
    return get_source(source).architectures()


def check_architecture(source: str, name: str) -> None:
    """Raise ValueError (field ``model.name``) unless ``name`` is an architecture of ``source``."""
    known = list_architectures(source)
    if name in set(known):
        return
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    listing = ", ".join(known) if len(known) <= 100 else f"{len(known)} names (GET /v1/models)"
    raise ValueError(f"model.name: unknown {source} architecture {name!r}{hint}; known: {listing}")


def create_model(spec: ModelSpec) -> nn.Module:
    """A randomly initialised network for ``spec`` (the checkpoint is not loaded here).

    Build it under ``with torch.device("meta"):`` to inspect shapes without allocating.

    Raises:
        ValueError: naming the field, for an unknown source or architecture.
    """
    check_architecture(spec.source, spec.name)
    return get_source(spec.source).build(spec.name, spec.num_classes, spec.input_size)


# sources ------------------------------------------------------------------------------------
@cache
def _timm_names() -> tuple[str, ...]:
    import timm

    return tuple(sorted(timm.list_models()))


def _build_timm(name: str, num_classes: int, input_size: tuple[int, int, int]) -> nn.Module:
    import timm

    channels, height, width = input_size
    kwargs = {"pretrained": False, "num_classes": num_classes, "in_chans": channels}
    try:
        # Fixed-resolution models (ViT, Swin, ...) take img_size; convnets reject it.
        return timm.create_model(name, img_size=(height, width), **kwargs)
    except TypeError as exc:
        if "img_size" not in str(exc):
            raise
    return timm.create_model(name, **kwargs)


@cache
def _torchvision_names() -> tuple[str, ...]:
    import torchvision

    return tuple(sorted(torchvision.models.list_models(module=torchvision.models)))


def _build_torchvision(name: str, num_classes: int, input_size: tuple[int, int, int]) -> nn.Module:
    import torchvision

    channels, height, width = input_size
    builder = torchvision.models.get_model_builder(name)
    kwargs: dict[str, object] = {"weights": None, "num_classes": num_classes}
    if name in ("googlenet", "inception_v3"):
        kwargs.update(aux_logits=False, init_weights=True)  # plain logits, no auxiliary heads
    if name.startswith("vit_"):
        if height != width:
            raise ValueError(f"model.input_size: {name} needs a square input, got {input_size}")
        kwargs["image_size"] = height
    model = builder(**kwargs)
    if channels != 3:
        _adapt_first_conv(model, channels)
    return model


def _adapt_first_conv(model: nn.Module, channels: int) -> None:
    """Replace the first 3-channel Conv2d with one taking ``channels`` inputs."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3:
            new = conv2d_like(
                module, in_channels=channels, device=module.weight.device, dtype=module.weight.dtype
            )
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, new)
            return
    raise ValueError(f"model.input_size: no 3-channel input convolution to adapt to {channels}")


register_source(ModelSource("timm", lambda: list(_timm_names()), _build_timm))
register_source(ModelSource("torchvision", lambda: list(_torchvision_names()), _build_torchvision))


# checkpoints --------------------------------------------------------------------------------
def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, on the CPU, without unpickling arbitrary objects.

    ``.safetensors`` files are read with safetensors; ``.pt``/``.pth`` with
    ``torch.load(weights_only=True)``, unwrapping a ``state_dict``/``model`` entry and a
    ``module.`` (DataParallel) prefix.

    Raises:
        ValueError: naming ``model.checkpoint``, for other suffixes or unreadable content.
    """
    suffix = path.suffix.lower()
    if suffix not in CHECKPOINT_SUFFIXES:
        raise ValueError(
            f"model.checkpoint: {path.name!r} is not a {'/'.join(CHECKPOINT_SUFFIXES)} file"
        )
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as exc:
            raise ValueError(f"model.checkpoint: cannot read {path.name!r}: {exc}") from exc
    else:
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, OSError, EOFError) as exc:
            # weights_only refuses pickled code and arbitrary objects (UnpicklingError).
            raise ValueError(f"model.checkpoint: cannot read {path.name!r}: {exc}") from exc
        if isinstance(loaded, dict):
            for key in ("state_dict", "model", "model_state_dict"):
                if isinstance(loaded.get(key), dict):
                    loaded = loaded[key]
                    break
        if not isinstance(loaded, dict):
            raise ValueError(f"model.checkpoint: {path.name!r} does not hold a state dict")
        tensors = {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = {k.removeprefix("module."): v for k, v in tensors.items()}
    if not tensors:
        raise ValueError(f"model.checkpoint: {path.name!r} holds no tensors")
    return tensors


def load_checkpoint(model: nn.Module, path: Path) -> dict[str, list[str]]:
    """Load matching weights from ``path`` into ``model``.

    Tensors whose name and shape match are loaded; those with another shape (typically the
    classifier of a model trained for a different number of classes) are skipped and logged.

    Returns:
        ``{"loaded": [...], "skipped": [...], "missing": [...]}`` tensor names.

    Raises:
        ValueError: naming ``model.checkpoint`` if the file is unreadable or nothing matches.
    """
    tensors = read_weights(path)
    own = model.state_dict()
    loaded = [k for k, v in tensors.items() if k in own and own[k].shape == v.shape]
    skipped = [k for k, v in tensors.items() if k in own and own[k].shape != v.shape]
    unexpected = [k for k in tensors if k not in own]
    if not loaded:
        raise ValueError(
            f"model.checkpoint: no tensor of {path.name!r} matches the architecture "
            f"(e.g. {', '.join(sorted(tensors)[:3])})"
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
