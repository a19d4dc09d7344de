"""Architecture builders: any timm or torchvision classification network by name.

One place builds networks for the whole project: the worker (``runtime.models.create_model``),
the sparse file loader (``cost_models.load_sparse`` with ``model=None``) and ``spartan
export``. A registry maps a source name (``timm``, ``torchvision``) to a ``ModelSource``;
``build_model`` is the factory. Models are randomly initialised unless ``pretrained=True``.
timm and torchvision are imported only when a model of theirs is built or listed.

Pretrained weights come through timm's own mechanism, ``timm.create_model(name,
pretrained=True)``: a timm name with its tag (``resnet50.a1_in1k``; a bare name means timm's
default tag) or a Hugging Face Hub id (``hf-hub:timm/resnet18.a1_in1k``), read from the Hugging
Face cache (``HF_HOME`` / ``HF_HUB_CACHE``) and downloaded only when not offline
(``HF_HUB_OFFLINE=1``). timm drops a classifier of another class count and adapts the stem to
other input channels. ``check_pretrained`` answers without loading anything: is the tag known,
and, offline, are the files in the cache. torchvision sources have no pretrained start here
(a ``{field}.pretrained`` error points at timm, e.g. ``resnet18.tv_in1k`` holds torchvision's
ImageNet weights).

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

from safetensors import SafetensorError
from torch import nn

from spartan_core.layers import conv2d_like

Builder = Callable[..., nn.Module]  # (name, num_classes, input_size, *, pretrained) -> module
HF_HUB_PREFIX = "hf-hub:"


@dataclass(frozen=True)
class ModelSource:
    """A family of architectures that can be built by name.

    Attributes:
        name: the source's name (``model.source`` in a job spec).
        architectures: returns every buildable architecture name, sorted.
        build: builds one network ``(name, num_classes, input_size, *, pretrained)``, randomly
            initialised unless ``pretrained``.
        check_name: for names not in ``architectures()`` (e.g. timm's tagged names and
            ``hf-hub:`` ids): returns None if the source accepts the name, else the reason.
        check_pretrained: raises ValueError (``pretrained: ...`` or ``name: ...``) when
            pretrained weights of a name cannot be loaded; None: the source has none.
    """

    name: str
    architectures: Callable[[], list[str]]
    build: Builder
    check_name: Callable[[str], str | None] | None = None
    check_pretrained: Callable[[str], None] | None = None


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
    model_source = get_source(source, field=field)
    known = model_source.architectures()
    if name in set(known):
        return
    if model_source.check_name is not None:
        reason = model_source.check_name(name)
        if reason is None:
            return
        if reason:
            raise ValueError(f"{field}.name: {reason}")
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
    pretrained: bool = False,
) -> nn.Module:
    """A network, randomly initialised unless ``pretrained`` (build it under
    ``torch.device("meta")`` to inspect it).

    Args:
        pretrained: load the source's pretrained weights (timm: ``create_model(name,
            pretrained=True)``, from the Hugging Face cache or the Hub).

    Raises:
        ValueError: naming ``{field}.source`` / ``.name`` / ``.input_size`` for an unknown
            source or architecture or an input size the architecture cannot take;
            ``{field}.name`` when pretrained weights (or an ``hf-hub:`` config) cannot be
            loaded; ``{field}.pretrained`` for a source without pretrained weights.
    """
    size = check_input_size(tuple(input_size), field=f"{field}.input_size")
    check_architecture(source, name, field=field)
    if pretrained:
        check_pretrained(source, name, field=field)
    try:
        return get_source(source, field=field).build(name, num_classes, size, pretrained=pretrained)
    except _InputSizeError as exc:
        raise ValueError(f"{field}.input_size: {exc}") from None
    except _NameError as exc:
        raise ValueError(f"{field}.name: {exc}") from None


def check_pretrained(source: str, name: str, *, field: str = "architecture") -> None:
    """Raise ValueError unless pretrained weights of ``name`` can be loaded, loading nothing.

    timm: the name's tag must be one timm knows; offline (``HF_HUB_OFFLINE``), its files must
    be in the Hugging Face cache. Online, missing files are downloaded when the model is built.

    Raises:
        ValueError: ``{field}.name`` for an unknown tag or weights missing from the cache
            offline; ``{field}.pretrained`` for a source without pretrained weights.
    """
    model_source = get_source(source, field=field)
    if model_source.check_pretrained is None:
        raise ValueError(f"{field}.pretrained: {source} models have no pretrained weights here")
    try:
        model_source.check_pretrained(name)
    except _NameError as exc:
        raise ValueError(f"{field}.name: {exc}") from None
    except _PretrainedError as exc:
        raise ValueError(f"{field}.pretrained: {exc}") from None


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


class _NameError(ValueError):
    """A name whose weights or config cannot be loaded (the caller adds the field name)."""


class _PretrainedError(ValueError):
    """A pretrained start a source cannot give (the caller adds the field name)."""


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


def _check_timm_name(name: str) -> str | None:
    """None for an ``hf-hub:`` id or a known ``arch.tag``; else why not ("" when the base name
    is unknown too: the caller lists the known names)."""
    if name.startswith(HF_HUB_PREFIX):
        repo = name.removeprefix(HF_HUB_PREFIX)
        if repo.count("/") != 1 or not all(repo.split("@")[0].split("/")):
            return f"{name!r} is not an hf-hub:<owner>/<repo> id"
        return None
    arch, tag = _import("timm").models.split_model_name_tag(name)
    if not tag or arch not in set(_timm_names()):
        return ""
    tags = _timm_tags(arch)
    if tag not in tags:
        known = ", ".join(f"{arch}.{t}" for t in tags) or "none"
        return f"unknown pretrained tag {tag!r} of timm architecture {arch!r}; known: {known}"
    return None


def _timm_tags(arch: str) -> list[str]:
    timm = _import("timm")
    return [n.partition(".")[2] for n in timm.list_pretrained(f"{arch}.*") if "." in n]


def _timm_hub_files(name: str) -> tuple[str, str | None, tuple[str, ...]]:
    """(repo id, revision, files any one of which holds the weights) for a timm name."""
    if name.startswith(HF_HUB_PREFIX):
        repo, _, revision = name.removeprefix(HF_HUB_PREFIX).partition("@")
        return repo, revision or None, ("model.safetensors", "pytorch_model.bin")
    timm = _import("timm")
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError as exc:  # an unknown tag
        raise _NameError(str(exc)) from None
    if cfg is None or not cfg.hf_hub_id:
        return "", None, ()
    repo, _, revision = cfg.hf_hub_id.partition("@")
    if cfg.hf_hub_filename:
        return repo, revision or None, (cfg.hf_hub_filename,)
    return repo, revision or None, ("model.safetensors", "pytorch_model.bin")


def _check_timm_pretrained(name: str) -> None:
    if not name.startswith(HF_HUB_PREFIX):
        arch, _ = _import("timm").models.split_model_name_tag(name)
        if not _timm_tags(arch):
            raise _NameError(f"timm has no pretrained weights for {name!r}")
    repo, revision, files = _timm_hub_files(name)
    hub = _import("huggingface_hub")
    if not repo or not hub.constants.HF_HUB_OFFLINE:
        return  # online: timm downloads what the cache lacks (or loads from its own URL)
    cached = [
        hub.try_to_load_from_cache(repo, f, cache_dir=hub.constants.HF_HUB_CACHE, revision=revision)
        for f in files
    ]
    config_needed = name.startswith(HF_HUB_PREFIX)
    config = hub.try_to_load_from_cache(
        repo, "config.json", cache_dir=hub.constants.HF_HUB_CACHE, revision=revision
    )
    missing_config = config_needed and not isinstance(config, str)
    if missing_config or not any(isinstance(c, str) for c in cached):
        raise _NameError(
            f"the pretrained weights of {name!r} ({repo}: {' or '.join(files)}) are not in the "
            f"Hugging Face cache {hub.constants.HF_HUB_CACHE} and HF_HUB_OFFLINE is set: "
            f"download them first (hf download {repo}) or unset HF_HUB_OFFLINE"
        )


def _build_timm(
    name: str, num_classes: int, input_size: tuple[int, int, int], *, pretrained: bool = False
) -> nn.Module:
    timm = _import("timm")
    channels, height, width = input_size
    kwargs = {"pretrained": pretrained, "num_classes": num_classes, "in_chans": channels}
    try:
        try:
            # Fixed-resolution models (ViT, Swin, ...) take img_size; convnets reject it.
            return timm.create_model(name, img_size=(height, width), **kwargs)
        except TypeError as exc:
            if "img_size" not in str(exc):
                raise
        return timm.create_model(name, **kwargs)
    except NotImplementedError:
        raise
    except (OSError, RuntimeError, SafetensorError) as exc:
        # OSError: the Hub or the cache (LocalEntryNotFoundError offline, HTTP errors);
        # RuntimeError: timm's unknown model or tag, or weights that do not fit;
        # SafetensorError: a damaged weights file.
        if not (pretrained or name.startswith(HF_HUB_PREFIX)):
            raise
        what = "pretrained weights" if pretrained else "the model"
        raise _NameError(f"cannot load {what} of {name!r}: {exc}") from exc


@cache
def _torchvision_names() -> tuple[str, ...]:
    torchvision = _import("torchvision")
    return tuple(sorted(torchvision.models.list_models(module=torchvision.models)))


def _build_torchvision(
    name: str, num_classes: int, input_size: tuple[int, int, int], *, pretrained: bool = False
) -> nn.Module:
    if pretrained:
        raise _PretrainedError(_TORCHVISION_PRETRAINED)
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


_TORCHVISION_PRETRAINED = (
    "torchvision models start from random weights here: use source timm with a tagged name "
    "(e.g. resnet18.tv_in1k holds torchvision's ImageNet weights), or a checkpoint"
)


def _check_torchvision_pretrained(name: str) -> None:
    raise _PretrainedError(_TORCHVISION_PRETRAINED)


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


register_source(
    ModelSource(
        "timm",
        lambda: list(_timm_names()),
        _build_timm,
        check_name=_check_timm_name,
        check_pretrained=_check_timm_pretrained,
    )
)
register_source(
    ModelSource(
        "torchvision",
        lambda: list(_torchvision_names()),
        _build_torchvision,
        check_pretrained=_check_torchvision_pretrained,
    )
)
