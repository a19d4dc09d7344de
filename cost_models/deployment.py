"""Deployment: a finalized sparse model running the fastest measured kernel per layer.

``deploy(model, example_input)`` reads each Linear / Conv2d layer's sparsity structure from
its zeros (``cost_models.layouts``), records the input each layer sees for ``example_input``,
and times every kernel that can run that layer on the target device against the dense layer
on the same input, in the same process. A layer keeps the dense kernel unless a sparse one
is measured faster by ``min_speedup``, so no layer is slower than dense (up to timing noise)
and a 30%-sparse layer simply stays dense. Every candidate's output is checked against the
dense layer's before it is timed; one that disagrees is rejected with the reason.

Candidates (see ``cost_models.sparse_layers`` and ``cost_models.kernels``):

- CPU: ``native_bsr`` (Linear, r x c blocks with r in 8..32), ``native_csr`` (Linear and
  Conv2d, any zeros), ``torch_sparse`` (torch's CSR/BSR, MKL);
- CUDA: ``cuda_bsr`` (Linear, blocks, torch's BSR / Triton), ``semi_structured`` (Linear,
  2:4, cuSPARSELt).

The projections inside ``nn.MultiheadAttention`` stay dense (its forward reads them as dense
tensors). The result is a copy; the model passed in is not changed.
"""

from __future__ import annotations

import copy
import logging
import math
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from cost_models import native
from cost_models.kernels import no_attention_fastpath, sparse_module, timed_ms
from cost_models.layouts import Layout, detect_layout, weight_matrix
from cost_models.sparse_layers import (
    CudaBsrLinear,
    NativeBsrLinear,
    NativeCsrConv2d,
    NativeCsrLinear,
    SemiStructuredLinear,
)
from spartan_core.device import resolve_device

logger = logging.getLogger(__name__)

REPORT_VERSION = 1
TIME_BUDGET_MS = 150.0  # default per candidate and layer: repeats = budget / one run, in limits
_REPEATS = (5, 50)


@dataclass(frozen=True)
class Kernel:
    """A way to run a Linear / Conv2d layer: where it applies and how it is built."""

    name: str
    devices: tuple[str, ...]
    applies: Callable[[nn.Module, Layout, torch.dtype], bool]
    build: Callable[[nn.Module, Layout], nn.Module]


def _native_ok(dtype: torch.dtype) -> bool:
    return dtype == torch.float32 and native.available()


KERNELS: tuple[Kernel, ...] = (
    Kernel(
        "native_bsr",
        ("cpu",),
        lambda m, lay, dt: (
            isinstance(m, nn.Linear)
            and lay.kind == "blocks"
            and lay.block[0] in native.BSR_ROWS
            and _native_ok(dt)
        ),
        NativeBsrLinear,
    ),
    Kernel(
        "native_csr",
        ("cpu",),
        lambda m, lay, dt: lay.kind != "dense" and _native_ok(dt),
        lambda m, lay: (
            NativeCsrLinear(m, lay) if isinstance(m, nn.Linear) else NativeCsrConv2d(m, lay)
        ),
    ),
    Kernel(
        "torch_sparse",
        ("cpu",),
        lambda m, lay, dt: lay.kind != "dense",
        lambda m, lay: _tag(sparse_module(m, lay.block), "torch_sparse"),
    ),
    Kernel(
        "cuda_bsr",
        ("cuda",),
        lambda m, lay, dt: isinstance(m, nn.Linear) and lay.kind == "blocks",
        CudaBsrLinear,
    ),
    Kernel(
        "semi_structured",
        ("cuda",),
        lambda m, lay, dt: (
            isinstance(m, nn.Linear)
            and lay.kind == "nm"
            and lay.nm is not None
            and lay.nm[1] == 4
            and lay.nm[0] <= 2
        ),
        SemiStructuredLinear,
    ),
)


def sparse_candidates(
    module: nn.Module,
    layout: Layout,
    device: torch.device,
    rejected: dict[str, str] | None = None,
) -> list[tuple[str, nn.Module]]:
    """Every sparse kernel that can run ``module`` with ``layout`` on ``device``, built there.

    A kernel whose construction fails is left out, with the reason in ``rejected``.
    """
    out = []
    for kernel in KERNELS:
        if device.type not in kernel.devices or not kernel.applies(
            module, layout, module.weight.dtype
        ):
            continue
        try:
            with torch.no_grad():
                out.append((kernel.name, kernel.build(module, layout).to(device).eval()))
        except (RuntimeError, ValueError, TypeError, NotImplementedError) as exc:
            if rejected is not None:
                rejected[kernel.name] = f"{type(exc).__name__}: {exc}"[:300]
    return out


def kernel_names() -> list[str]:
    """Every kernel deployment can choose, ``dense`` first."""
    return ["dense", *(k.name for k in KERNELS)]


def deploy(
    model: nn.Module,
    example_input: Tensor,
    *,
    device: str | torch.device | None = None,
    min_speedup: float = 1.03,
    time_budget_ms: float | None = None,
) -> nn.Module:
    """A copy of a finalized model running the kernel measured fastest for each layer.

    Args:
        model: a finalized model (plain modules, zeros in the weights; no parametrizations).
        example_input: one input batch as the deployment will see it (its batch size counts).
        device: where to deploy and measure (``cpu``, ``cuda``, ``cuda:1``...); default: the
            device of the model's parameters.
        min_speedup: a sparse kernel replaces the dense one only when it is at least this
            many times faster on the layer (timing noise must not pick a slower kernel).
        time_budget_ms: about how long to time each candidate of each layer (ms; default
            ``TIME_BUDGET_MS``): repeats are this divided by one run, 5 to 50. Less is quicker
            and noisier.

    Returns:
        the deployed copy in eval mode, with ``deploy_report``: per layer the layout, the
        kernel chosen, dense and deployed times and every candidate's time; totals with the
        end-to-end dense and deployed latency of the whole model on ``example_input``. Where
        the deployed copy is not ``min_speedup`` times faster than dense end to end (the layers'
        own timings can mislead when the layers are tiny), every layer stays dense and
        ``totals["fallback"]`` says why; otherwise it is None.

    Raises:
        ValueError: for an unknown or absent device, a model still carrying masks, or an
            input the model cannot run.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example_input, Tensor):
        raise ValueError(f"example_input: expected a tensor, got {type(example_input).__name__}")
    if not math.isfinite(min_speedup) or min_speedup < 1.0:
        raise ValueError(f"min_speedup: expected a number >= 1, got {min_speedup!r}")
    budget = TIME_BUDGET_MS if time_budget_ms is None else time_budget_ms
    if isinstance(budget, bool) or not isinstance(budget, int | float) or not budget > 0:
        raise ValueError(f"time_budget_ms: expected a positive number, got {time_budget_ms!r}")
    if any(parametrize.is_parametrized(m) for m in model.modules()):
        raise ValueError("model: it still carries masks; call Sparsifier.finalize() first")
    target = _device_of(model) if device is None else resolve_device(device)
    dense = copy.deepcopy(model).to(target).eval()
    x = example_input.to(target)
    inputs = _layer_inputs(dense, x)
    deployed = copy.deepcopy(dense)
    rows = []
    with torch.inference_mode(), no_attention_fastpath():
        for name, module in _deployable(dense):
            if name not in inputs:
                continue
            row, replacement = _choose(name, module, inputs[name], target, min_speedup, budget)
            rows.append(row)
            if replacement is not None:
                _set_submodule(deployed, name, replacement)
        dense_ms, deployed_ms = _end_to_end_ms(dense, deployed, x, target, budget)
    fallback = None
    if deployed_ms * min_speedup >= dense_ms and any(r["kernel"] != "dense" for r in rows):
        fallback = "the deployed model measured no faster than dense end to end"
        logger.info("deploy: %s (%.3f ms against %.3f); keeping dense", fallback, deployed_ms,
                    dense_ms)  # fmt: skip
        deployed, deployed_ms = copy.deepcopy(dense), dense_ms
        for row in rows:
            row.update(kernel="dense", deployed_ms=row["dense_ms"], speedup=1.0)
    kernels: dict[str, int] = {}
    for row in rows:
        kernels[row["kernel"]] = kernels.get(row["kernel"], 0) + 1
    layer_dense = math.fsum(r["dense_ms"] for r in rows)
    layer_deployed = math.fsum(r["deployed_ms"] for r in rows)
    deployed.deploy_report = {
        "version": REPORT_VERSION,
        "device": str(target),
        "threads": torch.get_num_threads() if target.type == "cpu" else None,
        "dtype": str(x.dtype).removeprefix("torch."),
        "input_shape": list(x.shape),
        "batch_size": int(x.shape[0]) if x.dim() else 1,
        "layers": rows,
        "totals": {
            "dense_ms": dense_ms,
            "deployed_ms": deployed_ms,
            "speedup": dense_ms / deployed_ms if deployed_ms > 0 else None,
            "layers_dense_ms": layer_dense,
            "layers_deployed_ms": layer_deployed,
            "other_ms": max(dense_ms - layer_dense, 0.0),
            "kernels": kernels,
            "fallback": fallback,
        },
    }
    return deployed


def _end_to_end_ms(
    dense: nn.Module, deployed: nn.Module, x: Tensor, device: torch.device, budget_ms: float
) -> tuple[float, float]:
    """Dense and deployed forward times (ms): the median of three alternating rounds, so a
    burst of load on a shared machine does not decide between them."""
    rounds = [
        (_time(lambda: dense(x), device, budget_ms), _time(lambda: deployed(x), device, budget_ms))
        for _ in range(3)
    ]
    return statistics.median(r[0] for r in rounds), statistics.median(r[1] for r in rounds)


def apply_kernels(
    model: nn.Module, kernels: Mapping[str, str], *, device: str | torch.device | None = None
) -> nn.Module:
    """A copy of a finalized model with the given kernel per layer, without measuring.

    This replays a choice ``deploy`` made (``deployed_kernels`` of its result, or the
    ``kernel`` of each row of its report) where the same kind of device runs the model. Layers
    not named, or named with ``dense``, stay dense; a kernel that cannot run a layer here (a
    CUDA kernel on CPU, a layout it does not take) leaves that layer dense too.

    Raises:
        ValueError: for a kernel name that does not exist, or a layer the model lacks.
    """
    by_name = {k.name: k for k in KERNELS}
    unknown = sorted(set(kernels.values()) - {"dense", *by_name})
    if unknown:
        raise ValueError(f"kernels: unknown kernel(s) {unknown}, expected {kernel_names()}")
    target = _device_of(model) if device is None else resolve_device(device)
    out = copy.deepcopy(model).to(target).eval()
    layers = dict(_deployable(out))
    missing = sorted(set(kernels) - set(layers))
    if missing:
        raise ValueError(f"kernels: the model has no Linear/Conv2d layer(s) {missing}")
    for name, kernel_name in kernels.items():
        kernel = by_name.get(kernel_name)
        if kernel is None:
            continue
        module = layers[name]
        layout = detect_layout(weight_matrix(module))
        if target.type not in kernel.devices or not kernel.applies(
            module, layout, module.weight.dtype
        ):
            continue
        with torch.no_grad():
            _set_submodule(out, name, kernel.build(module, layout).to(target).eval())
    return out


def deployed_kernels(model: nn.Module) -> dict[str, str]:
    """``{module name: kernel}`` of every Linear / Conv2d or deployed layer in ``model``."""
    out = {}
    for name, module in model.named_modules():
        kernel = getattr(module, "kernel", None)
        if isinstance(kernel, str):
            out[name] = kernel
        elif isinstance(module, nn.Linear | nn.Conv2d):
            out[name] = "dense"
    return out


# ----------------------------------------------------------------------------- internals


def _tag(module: nn.Module, kernel: str) -> nn.Module:
    module.kernel = kernel
    return module


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _deployable(model: nn.Module) -> list[tuple[str, nn.Module]]:
    attention = {n for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)}
    out = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear | nn.Conv2d):
            continue
        if name.rpartition(".")[0] in attention:  # read as dense tensors by MHA's forward
            continue
        out.append((name, module))
    return out


def _layer_inputs(model: nn.Module, x: Tensor) -> dict[str, Tensor]:
    """The first input each deployable layer sees in one forward on ``x``."""
    inputs: dict[str, Tensor] = {}
    handles = []
    for name, module in _deployable(model):

        def hook(mod: nn.Module, args: tuple, name: str = name) -> None:
            if name not in inputs and args and isinstance(args[0], Tensor):
                inputs[name] = args[0].detach().clone()

        handles.append(module.register_forward_pre_hook(hook))
    try:
        with torch.inference_mode(), no_attention_fastpath():
            model(x)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ValueError(
            f"example_input: the model's forward failed on shape {tuple(x.shape)}: {exc}"
        ) from exc
    finally:
        for h in handles:
            h.remove()
    return inputs


def _time(fn: Callable[[], object], device: torch.device, budget_ms: float) -> float:
    return timed_ms(fn, device=device, budget_ms=budget_ms, repeats=_REPEATS)


def _close(got: Tensor, want: Tensor) -> bool:
    if got.shape != want.shape:
        return False
    scale = float(want.abs().max()) if want.numel() else 0.0
    tol = 1e-2 if want.dtype in (torch.float16, torch.bfloat16) else 1e-4
    return bool(torch.allclose(got.to(want.dtype), want, rtol=tol, atol=tol * max(scale, 1e-6)))


def _choose(
    name: str,
    module: nn.Module,
    x: Tensor,
    device: torch.device,
    min_speedup: float,
    budget_ms: float,
) -> tuple[dict[str, Any], nn.Module | None]:
    """Time the candidates for one layer; returns its report row and the replacement."""
    layout = detect_layout(weight_matrix(module))
    want = module(x)
    dense_ms = _time(lambda: module(x), device, budget_ms)
    times: dict[str, float] = {"dense": dense_ms}
    rejected: dict[str, str] = {}
    built: dict[str, nn.Module] = {}
    for kernel_name, candidate in sparse_candidates(module, layout, device, rejected):
        try:
            if not _close(candidate(x), want):
                rejected[kernel_name] = "output differs from the dense layer"
                continue
            times[kernel_name] = _time(lambda c=candidate: c(x), device, budget_ms)
            built[kernel_name] = candidate
        except (RuntimeError, ValueError, TypeError, NotImplementedError) as exc:
            rejected[kernel_name] = f"{type(exc).__name__}: {exc}"[:300]
    best = min(built, key=times.__getitem__, default=None)
    chosen = best if best is not None and times[best] * min_speedup < dense_ms else "dense"
    row = {
        "name": name,
        "type": type(module).__name__,
        "input_shape": list(x.shape),
        "layout": layout.to_dict(),
        "kernel": chosen,
        "dense_ms": dense_ms,
        "deployed_ms": times[chosen],
        "speedup": dense_ms / times[chosen] if times[chosen] > 0 else None,
        "candidates_ms": times,
        "rejected": rejected,
    }
    logger.info(
        "deploy %s (%s): %s %.3f ms (dense %.3f)",
        name,
        layout.kind,
        chosen,
        times[chosen],
        dense_ms,
    )
    return row, built.get(chosen)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)
