"""Which weights of a model can be masked, and how each is viewed as an (out, in) matrix.

Maskable weights: ``nn.Linear.weight`` (this covers timm ViT ``qkv``/``proj`` and
``nn.MultiheadAttention.out_proj``), ``nn.Conv2d.weight`` (viewed as out x in*kh*kw) and
``nn.MultiheadAttention.in_proj_weight`` (the packed q/k/v projection).
Layers are chosen with one predicate compiled from include/exclude glob patterns over module
names (``layer1.*``, ``fc``, ``blocks.*.attn.qkv``).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

LayerPredicate = Callable[[str, nn.Module], bool]


@dataclass(frozen=True)
class MaskTarget:
    """One maskable weight tensor of a model.

    Attributes:
        module_name: fully qualified module name, e.g. ``layer1.0.conv1`` ("" for the root).
        param_name: the parameter's attribute on that module (``weight`` or ``in_proj_weight``).
        kind: ``linear``, ``conv2d`` or ``mha_in_proj``.
        shape: the weight's shape as stored.
    """

    module_name: str
    param_name: str
    kind: str
    shape: tuple[int, ...]

    @property
    def name(self) -> str:
        """Fully qualified parameter name, the key of state dicts and masks."""
        return f"{self.module_name}.{self.param_name}" if self.module_name else self.param_name

    @property
    def matrix_shape(self) -> tuple[int, int]:
        """The weight viewed as (out, in); conv kernels are flattened into the input axis."""
        return self.shape[0], math.prod(self.shape[1:])

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def _maskable_param(module: nn.Module) -> tuple[str, str] | None:
    """(param_name, kind) of the module's maskable weight, or None."""
    if isinstance(module, nn.MultiheadAttention):
        if module.in_proj_weight is not None:
            return "in_proj_weight", "mha_in_proj"
        return None
    if isinstance(module, nn.Linear):
        return "weight", "linear"
    if isinstance(module, nn.Conv2d):
        return "weight", "conv2d"
    return None


def layer_predicate(
    include: Sequence[str] | None = None, exclude: Sequence[str] | None = None
) -> LayerPredicate:
    """Compile include/exclude glob patterns over module names into one predicate.

    A module is selected when it matches some include pattern (every module when ``include``
    is empty or None) and no exclude pattern. Patterns use ``fnmatch`` syntax.
    """
    inc = tuple(include or ())
    exc = tuple(exclude or ())

    def predicate(name: str, module: nn.Module) -> bool:
        if inc and not any(fnmatch.fnmatchcase(name, p) for p in inc):
            return False
        return not any(fnmatch.fnmatchcase(name, p) for p in exc)

    return predicate


def maskable_targets(model: nn.Module) -> list[MaskTarget]:
    """Every maskable weight of ``model``, in module registration order."""
    targets = []
    for name, module in model.named_modules():
        found = _maskable_param(module)
        if found is None:
            continue
        param_name, kind = found
        weight = getattr(module, param_name)
        targets.append(MaskTarget(name, param_name, kind, tuple(weight.shape)))
    return targets


def find_targets(
    model: nn.Module,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> list[MaskTarget]:
    """The maskable weights selected by include/exclude patterns.

    Raises:
        ValueError: if no maskable layer is selected (naming the patterns).
    """
    predicate = layer_predicate(include, exclude)
    modules = dict(model.named_modules())
    targets = [
        t for t in maskable_targets(model) if predicate(t.module_name, modules[t.module_name])
    ]
    if not targets:
        raise ValueError(
            f"model: no maskable layer (Linear, Conv2d, MultiheadAttention) selected "
            f"by include={list(include or [])} exclude={list(exclude or [])}"
        )
    return targets


def get_submodule(model: nn.Module, module_name: str) -> nn.Module:
    """The module at a fully qualified name ("" is the model itself)."""
    return model.get_submodule(module_name) if module_name else model


def conv2d_like(conv: nn.Conv2d, *, in_channels: int | None = None, **factory: object) -> nn.Conv2d:
    """A new Conv2d with ``conv``'s hyper-parameters (optionally another input width), freshly
    initialised; ``factory`` takes ``device`` and ``dtype``."""
    return nn.Conv2d(
        conv.in_channels if in_channels is None else in_channels,
        conv.out_channels,
        conv.kernel_size,  # type: ignore[arg-type]
        stride=conv.stride,  # type: ignore[arg-type]
        padding=conv.padding,  # type: ignore[arg-type]
        dilation=conv.dilation,  # type: ignore[arg-type]
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        **factory,  # type: ignore[arg-type]
    )
