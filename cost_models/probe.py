"""One shape-probing forward pass: what each masked layer sees for a given input size.

The pass runs on the ``meta`` device through ``torch.func.functional_call`` (no arithmetic, no
copy of the weights, the model untouched), so it costs milliseconds even for large models. A
model whose forward cannot run on ``meta`` (an op without a meta kernel, a tensor created on a
fixed device) is probed with a real forward at batch 1 under ``torch.no_grad`` instead.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from spartan_core.layers import MaskTarget, get_submodule

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayerCall:
    """One call of a masked layer during the probe (shapes include the batch of 1).

    Attributes:
        input_shape: shape of the layer's (first) input; for attention, the query.
        output_shape: shape of the layer's (first) output.
        uses_per_weight: how many times each weight is multiplied per sample (MACs per
            weight): conv H_out * W_out, linear tokens, attention in-projection the mean over
            q, k and v of their token counts.
        key_shape: for attention, the key's shape (None otherwise).
    """

    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    uses_per_weight: float
    key_shape: tuple[int, ...] | None = None


def probe(
    model: nn.Module, targets: Sequence[MaskTarget], input_size: Sequence[int]
) -> dict[str, list[LayerCall]]:
    """Run one forward on a (1, *input_size) input and record every call of each target.

    Returns:
        ``{target.name: [LayerCall, ...]}``, one item per call (empty when never called).
    """
    records: dict[str, list[LayerCall]] = {t.name: [] for t in targets}
    handles = []
    for t in targets:
        module = get_submodule(model, t.module_name)
        parent_name, _, child = t.module_name.rpartition(".")
        parent = get_submodule(model, parent_name) if t.module_name else None
        if child == "out_proj" and isinstance(parent, nn.MultiheadAttention):
            # F.multi_head_attention_forward reads out_proj.weight without calling out_proj
            module, hook = parent, _hook(t, records[t.name], kind="mha_out_proj")
        else:
            hook = _hook(t, records[t.name], kind=t.kind)
        handles.append(module.register_forward_hook(hook, with_kwargs=True))
    was_training = model.training
    fastpath = torch.backends.mha.get_fastpath_enabled()
    # the fused transformer fast path skips the submodules' forward (and so the hooks)
    torch.backends.mha.set_fastpath_enabled(False)
    model.eval()
    try:
        try:
            _meta_forward(model, input_size)
        except (RuntimeError, NotImplementedError, TypeError) as exc:
            logger.info("meta-device probe failed (%s); probing with a real forward", exc)
            for calls in records.values():
                calls.clear()
            _real_forward(model, input_size)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return records


def _meta_forward(model: nn.Module, input_size: Sequence[int]) -> None:
    state = {
        name: torch.empty_like(t, device="meta")
        for name, t in [
            *model.named_parameters(remove_duplicate=False),
            *model.named_buffers(remove_duplicate=False),
        ]
    }
    x = torch.empty((1, *input_size), device="meta")
    with torch.inference_mode():
        functional_call(model, state, (x,), strict=False, tie_weights=True)


def _real_forward(model: nn.Module, input_size: Sequence[int]) -> None:
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    x = torch.zeros((1, *input_size), device=device, dtype=dtype)
    try:
        with torch.no_grad():
            model(x)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ValueError(
            f"input_size: the model's forward failed on an input of shape {tuple(x.shape)}: {exc}"
        ) from exc


def _first_tensor(args: tuple, kwargs: dict, key: str) -> torch.Tensor | None:
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    value = kwargs.get(key)
    return value if isinstance(value, torch.Tensor) else None


def _hook(target: MaskTarget, calls: list[LayerCall], kind: str):
    def hook(module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
        out = output[0] if isinstance(output, tuple | list) else output
        if not isinstance(out, torch.Tensor):
            return
        if kind == "mha_out_proj":
            q = _first_tensor(args, kwargs, "query")
            if q is not None:
                tokens_q = q.numel() / q.shape[-1]
                calls.append(LayerCall(tuple(q.shape), tuple(out.shape), tokens_q))
        elif kind == "conv2d":
            x = _first_tensor(args, kwargs, "input")
            # output (N, C_out, H_out, W_out) or unbatched (C_out, H_out, W_out); N = 1
            uses = out.numel() / out.shape[-3]
            calls.append(LayerCall(tuple(x.shape) if x is not None else (), tuple(out.shape), uses))
        elif kind == "linear":
            x = _first_tensor(args, kwargs, "input")
            if x is None:
                return
            uses = x.numel() / x.shape[-1]  # tokens (N = 1)
            calls.append(LayerCall(tuple(x.shape), tuple(out.shape), uses))
        elif kind == "mha_in_proj":
            q = _first_tensor(args, kwargs, "query")
            k = args[1] if len(args) > 1 else kwargs.get("key")
            if q is None:
                return
            k = k if isinstance(k, torch.Tensor) else q
            tokens_q = q.numel() / q.shape[-1]
            tokens_k = k.numel() / k.shape[-1]
            # rows [0, E) project the query, [E, 3E) the key and the value
            uses = (tokens_q + 2 * tokens_k) / 3
            calls.append(LayerCall(tuple(q.shape), tuple(out.shape), uses, tuple(k.shape)))

    return hook


def uses_per_weight(calls: Sequence[LayerCall]) -> float:
    """Total MACs per weight over all calls of a layer (a shared layer counts each call)."""
    return math.fsum(c.uses_per_weight for c in calls)
