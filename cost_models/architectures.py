"""Architecture builders: any timm or torchvision classification network by name.

One place builds networks for the whole project: the worker (``runtime.models.create_model``),
the sparse file loader (``cost_models.load_sparse`` with ``model=None``) and ``spartan
export``. A registry maps a source name (``timm``, ``torchvision``) to a ``ModelSource``;
``build_model`` is the factory. Models are randomly initialised (no pretrained download ever).
timm and torchvision are imported only when a model of theirs is built or listed.

Input channels: timm models take ``in_chans``; for torchvision models with a channel count other
than 3, the first 3-channel ``Conv2d`` is replaced by one with the requested channels (such a
model then needs the same replacement to load its weights; the examples feed 3 channels).
Input size: models that need it (ViTs, Swin) are built for the given height and width.

Error messages name a field: ``{field}.source``, ``{field}.name``, ``{field}.input_size``, with
``field`` the caller's name for the architecture (``model`` in a job spec, ``architecture`` in
a sparse file's metadata).
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from torch import nn

from spartan_core.layers import conv2d_like

Builder = Callable[[str, int, tuple[int, int, int]], nn.Module]


@dataclass(frozen=True)
class ModelSource:
    """A family of architectures that can be built by name.

    Attributes:
        name: the source's name (``model.source`` in a job spec).
        architectures: returns every buildable architecture name, sorted.
        build: builds one randomly initialised network ``(name, num_classes, input_size)``.
    """

    name: str
    architectures: Callable[[], list[str]]
    build: Builder


@dataclass(frozen=True)
class Architecture:
    """Everything needed to rebuild a network: what a sparse file records.

    Attributes:
        source: ``timm`` or ``torchvision`` (a registered source).
        name: the architecture's name in that source, e.g. ``resnet18``.
        num_classes: outputs of the classifier.
        input_size: one input's (channels, height, width); channels other than 3 adapt the
            stem, fixed-resolution models are built for height x width.
    """

    source: str
    name: str
    num_classes: int
    input_size: tuple[int, int, int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "name": self.name,
            "num_classes": self.num_classes,
            "input_size": list(self.input_size),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, field: str = "architecture") -> Architecture:
        """Read ``to_dict()`` output back, checking every field.

        Raises:
            ValueError: naming ``{field}.<key>`` for a missing or malformed value.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"{field}: expected a mapping, got {type(data).__name__}")
        for key in ("source", "name"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise ValueError(f"{field}.{key}: expected a name, got {data.get(key)!r}")
        classes = data.get("num_classes")
        if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
            raise ValueError(f"{field}.num_classes: expected an integer >= 1, got {classes!r}")
        return cls(
            source=data["source"],
            name=data["name"],
            num_classes=classes,
            input_size=check_input_size(data.get("input_size"), field=f"{field}.input_size"),
        )


def check_input_size(value: Any, *, field: str = "input_size") -> tuple[int, int, int]:
    """A (channels, height, width) triple of positive integers.

    Raises:
        ValueError: naming ``field`` otherwise.
    """
    ok = (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    )
    if not ok:
        raise ValueError(f"{field}: expected [channels, height, width] > 0, got {value!r}")
    return (int(value[0]), int(value[1]), int(value[2]))


_SOURCES: dict[str, ModelSource] = {}


def register_source(source: ModelSource) -> ModelSource:
    """Add a model source to the registry (registering is importing)."""
    _SOURCES[source.name] = source
    return source


def sources() -> list[str]:
    """Registered model source names."""
    return sorted(_SOURCES)


def get_source(name: str, *, field: str = "architecture") -> ModelSource:
    """The model source called ``name``.

    Raises:
        ValueError: naming ``{field}.source`` and the known sources.
    """
    if name not in _SOURCES:
        raise ValueError(f"{field}.source: unknown source {name!r}; known: {', '.join(sources())}")
    return _SOURCES[name]


def list_architectures(source: str, *, field: str = "architecture") -> list[str]:
    """Every architecture name a source can build."""
    return get_source(source, field=field).architectures()


def check_architecture(source: str, name: str, *, field: str = "architecture") -> None:
    """Raise ValueError (``{field}.name``) unless ``name`` is an architecture of ``source``."""
    known = list_architectures(source, field=field)
    if name in set(known):
        return
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    listing = ", ".join(known) if len(known) <= 100 else f"{len(known)} names (GET /v1/models)"
    raise ValueError(
        f"{field}.name: unknown {source} architecture {name!r}{hint}; known: {listing}"
    )


def build_model(
    source: str,
    name: str,
    num_classes: int,
    input_size: Sequence[int],
    *,
    field: str = "architecture",
) -> nn.Module:
    """A randomly initialised network (build it under ``torch.device("meta")`` to inspect it).

    Raises:
        ValueError: naming ``{field}.source`` / ``.name`` / ``.input_size`` for an unknown
            source or architecture or an input size the architecture cannot take.
    """
    size = check_input_size(tuple(input_size), field=f"{field}.input_size")
    check_architecture(source, name, field=field)
    try:
        return get_source(source, field=field).build(name, num_classes, size)
    except _InputSizeError as exc:
        raise ValueError(f"{field}.input_size: {exc}") from None


def build(architecture: Architecture, *, field: str = "architecture") -> nn.Module:
    """``build_model`` for an ``Architecture`` record."""
    return build_model(
        architecture.source,
        architecture.name,
        architecture.num_classes,
        architecture.input_size,
        field=field,
    )


class _InputSizeError(ValueError):
    """An input size an architecture cannot take (the caller adds the field name)."""


def _import(package: str) -> Any:
    try:
        return importlib.import_module(package)
    except ImportError as exc:
        raise ValueError(
            f"source: building {package} models needs the {package!r} package "
            f"(pip install {package}): {exc}"
        ) from exc


# sources ------------------------------------------------------------------------------------
@cache
def _timm_names() -> tuple[str, ...]:
    return tuple(sorted(_import("timm").list_models()))


def _build_timm(name: str, num_classes: int, input_size: tuple[int, int, int]) -> nn.Module:
    timm = _import("timm")
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
    torchvision = _import("torchvision")
    return tuple(sorted(torchvision.models.list_models(module=torchvision.models)))


def _build_torchvision(name: str, num_classes: int, input_size: tuple[int, int, int]) -> nn.Module:
    torchvision = _import("torchvision")
    channels, height, width = input_size
    builder = torchvision.models.get_model_builder(name)
    kwargs: dict[str, object] = {"weights": None, "num_classes": num_classes}
    if name in ("googlenet", "inception_v3"):
        kwargs.update(aux_logits=False, init_weights=True)  # plain logits, no auxiliary heads
    if name.startswith("vit_"):
        if height != width:
            raise _InputSizeError(f"{name} needs a square input, got {input_size}")
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
    raise _InputSizeError(f"no 3-channel input convolution to adapt to {channels}")


register_source(ModelSource("timm", lambda: list(_timm_names()), _build_timm))
register_source(ModelSource("torchvision", lambda: list(_torchvision_names()), _build_torchvision))
