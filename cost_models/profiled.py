"""The ``profiled`` cost model: layer latency measured on this device, fitted per layer.

For each masked layer, with the input shape it sees for ``input_size`` (one shape-probing pass)
and ``batch_size`` samples, the sparse kernels deployment chooses from
(``cost_models.deployment.sparse_candidates``: our block-sparse and column kernels on CPU,
torch's CSR/BSR, the CUDA kernels on a GPU) are timed at several densities, each a random set of
exactly ``kept`` blocks, and the fastest counts, as in deployment. Before each timed run a
buffer is written (4 MB a CPU thread, 64 MB on CUDA) and the input read, so the layer starts as
it does inside the model: its weights no longer in the core's caches, its input just written
(timed hot, the model predictions fell 6-18% under the deployed latency). A least-squares line
``latency = a + b * kept_blocks`` is fitted per layer; ``b`` is the cost per kept block and
``a`` the fixed cost, in ms. The dense layer's time is measured too: deployment keeps it
whenever it is faster, so a layer's predicted deployed latency is the smaller of dense and the
measured times joined by straight lines (``LatencyFit.deployed_ms``); with the time of
everything else in the model (``base_ms``: the forward with every priced Linear and Conv2d
replaced by a stand-in that returns the output it gave, at no cost), ``model_latency_ms``
predicts the deployed model's end-to-end latency, which the cost report puts beside the measured
one. (Subtracting the layers' isolated dense times from the dense forward instead leaves a
difference of two large, noisy numbers, and the other ops run slower beside dense GEMMs than
beside sparse ones.) A negative ``a`` is refitted through the origin, and a ``b <= 0`` (timing
noise larger than the kernel's growth) is floored at 1e-3 of the mean per-block time, with a
warning. Each fit's error (R^2 and RMS relative to the mean time) is kept in ``fits``. Layers
with the same shape, input and conv settings are measured once.
"""

from __future__ import annotations

import bisect
import copy
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from cost_models.base import CostModelBase, check_input_size
from cost_models.deployment import sparse_candidates
from cost_models.kernels import median_ms, no_attention_fastpath, timed_ms
from cost_models.layouts import Layout
from cost_models.probe import LayerCall, probe
from cost_models.registry import register
from spartan_core.blocks import BlockShape, block_grid, expand_block_mask
from spartan_core.costs import LayerCost
from spartan_core.layers import MaskTarget, conv2d_like, get_submodule

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LatencyFit:
    """The fitted line of one layer and its error.

    Attributes:
        fixed_ms: intercept a (ms).
        per_block_ms: slope b (ms per kept block).
        r2: coefficient of determination of the fit (1 is perfect; nan if times are constant).
        rel_rms: root-mean-square residual divided by the mean time.
        kept_blocks: the kept block counts measured.
        times_ms: the measured median times (ms).
        clamped: whether a or b had to be adjusted to stay a valid cost.
        dense_ms: the dense layer's time on the same input (ms), when measured.
        kernels: the fastest sparse kernel at each measured density.
    """

    fixed_ms: float
    per_block_ms: float
    r2: float
    rel_rms: float
    kept_blocks: tuple[int, ...]
    times_ms: tuple[float, ...]
    clamped: bool
    dense_ms: float | None = None
    kernels: tuple[str, ...] = ()

    def deployed_ms(self, kept: int) -> float:
        """Predicted deployed latency with ``kept`` blocks, or dense when that is faster.

        The measured times, joined by straight lines (from ``fixed_ms`` at none kept, and
        along the fitted slope past the last point): the fitted line prices the budget, but a
        kernel's time can grow faster than linearly (unstructured convolutions do), and the
        prediction should pass through what was measured."""
        points = [(0, self.fixed_ms), *zip(self.kept_blocks, self.times_ms, strict=True)]
        i = bisect.bisect_right([k for k, _ in points], kept)
        if i >= len(points):
            k0, t0 = points[-1]
            curve = t0 + self.per_block_ms * (kept - k0)
        else:
            (k0, t0), (k1, t1) = points[i - 1], points[i]
            curve = t0 + (t1 - t0) * (kept - k0) / (k1 - k0)
        return curve if self.dense_ms is None else min(curve, self.dense_ms)

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["kept_blocks"] = list(self.kept_blocks)
        out["times_ms"] = list(self.times_ms)
        out["kernels"] = list(self.kernels)
        out["r2"] = None if math.isnan(self.r2) else self.r2
        return out


def fit_line(kept: Sequence[int], times: Sequence[float], n_blocks: int) -> LatencyFit:
    """Least-squares ``time = a + b * kept`` with a >= 0 and b > 0 enforced (see module doc)."""
    k = torch.tensor(kept, dtype=torch.float64)
    t = torch.tensor(times, dtype=torch.float64)
    design = torch.stack([torch.ones_like(k), k], dim=1)  # (n_points, 2)
    a, b = torch.linalg.lstsq(design, t[:, None]).solution[:, 0].tolist()
    clamped = False
    if a < 0:
        a, b = 0.0, float((k * t).sum() / (k * k).sum())
        clamped = True
    floor = 1e-3 * float(t.mean()) / max(n_blocks, 1)
    if b <= floor:
        b = floor
        a = max(float((t - b * k).mean()), 0.0)
        clamped = True
    pred = a + b * k
    ss_res = float(((t - pred) ** 2).sum())
    ss_tot = float(((t - t.mean()) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else math.nan
    rel_rms = math.sqrt(ss_res / len(kept)) / float(t.mean()) if float(t.mean()) > 0 else 0.0
    return LatencyFit(a, b, r2, rel_rms, tuple(int(x) for x in kept), tuple(times), clamped)


@register("profiled")
class ProfiledCost(CostModelBase):
    """Latency per kept block measured on this device with sparse kernels, fitted per layer.

    Args:
        input_size: one input's shape without the batch, e.g. (3, 224, 224).
        densities: kept fractions of blocks to time each layer at (at least two distinct).
        repeats: timed runs per density (the median is used).
        batch_size: samples per timed forward.
        warmup: untimed runs before each measurement.
        device: where to time ("cpu", "cuda", "cuda:1"); default the model's device.
        seed: seed of the random weights and block choices.
    """

    name = "profiled"
    unit = "ms"
    latency_capable = True

    def __init__(
        self,
        input_size: tuple[int, ...] = (3, 224, 224),
        densities: tuple[float, ...] = (0.05, 0.25, 0.5, 0.75, 1.0),
        repeats: int = 5,
        batch_size: int = 1,
        warmup: int = 1,
        device: str | None = None,
        seed: int = 0,
    ) -> None:
        self.input_size = check_input_size(input_size)
        try:
            dens = tuple(float(d) for d in densities)
        except (TypeError, ValueError):
            raise ValueError(f"densities: expected numbers in (0, 1], got {densities!r}") from None
        if not dens or any(not 0.0 < d <= 1.0 for d in dens) or len(set(dens)) < 2:
            raise ValueError(
                f"densities: expected at least two distinct numbers in (0, 1], got {densities!r}"
            )
        for field, value, low in (("repeats", repeats, 1), ("batch_size", batch_size, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{field}: expected a positive integer, got {value!r}")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f"warmup: expected a non-negative integer, got {warmup!r}")
        if device is not None:
            try:
                torch.device(device)
            except (RuntimeError, TypeError):
                raise ValueError(f"device: not a torch device: {device!r}") from None
        self.densities = dens
        self.repeats = repeats
        self.batch_size = batch_size
        self.warmup = warmup
        self.device = device
        self.seed = int(seed)
        self.fits: dict[str, LatencyFit] = {}
        self.rest_ms: float | None = None  # the forward with the priced layers replayed (ms)
        self._priced: dict[str, MaskTarget] = {}
        self._replayed: set[str] = set()  # module names answered by a _Replay in rest_ms
        self._cache: dict[tuple, LatencyFit] = {}

    def params(self) -> dict[str, object]:
        return {
            "input_size": list(self.input_size),
            "densities": list(self.densities),
            "repeats": self.repeats,
            "batch_size": self.batch_size,
            "warmup": self.warmup,
            "device": self.device,
            "seed": self.seed,
        }

    def layer_details(self, name: str) -> dict[str, object] | None:
        """The latency fit of a layer (for the cost report), once measured."""
        fit = self.fits.get(name)
        return None if fit is None else {"fit": fit.to_dict()}

    def layer_costs(
        self, model: nn.Module, targets: Sequence[MaskTarget], block_shape: BlockShape
    ) -> dict[str, LayerCost]:
        device = self._device(model)
        calls = probe(model, targets, self.input_size)
        costs = {}
        for t in targets:
            if not calls[t.name]:
                raise ValueError(
                    f"cost_model: profiled: layer {t.module_name!r} is not used by the forward "
                    f"pass on input_size {list(self.input_size)}; exclude it"
                )
            fit = self._profile(model, t, calls[t.name], block_shape, device)
            self.fits[t.name] = fit
            self._priced[t.name] = t
            costs[t.name] = LayerCost(per_entry=fit.per_block_ms, fixed=fit.fixed_ms)
        self.rest_ms = self._rest_ms(model, device)
        return costs

    @property
    def base_ms(self) -> float | None:
        """The model's time outside every fitted layer (ms), once measured.

        Every layer ever priced counts (the Sparsifier also prices the layers it leaves
        dense), so the split does not depend on which call came last. A layer that cannot be
        replayed (an attention in-projection, one whose parent reads its weight instead of
        calling it, or the model itself) counts its dense time."""
        if self.rest_ms is None:
            return None
        kept_in = math.fsum(
            self.fits[name].dense_ms or 0.0
            for name, t in self._priced.items()
            if t.module_name not in self._replayed
        )
        return max(self.rest_ms - kept_in, 0.0)

    def layer_latency_ms(self, name: str, kept: int) -> float | None:
        """Predicted deployed latency (ms) of a fitted layer with ``kept`` blocks, else None."""
        fit = self.fits.get(name)
        return None if fit is None else fit.deployed_ms(kept)

    def model_latency_ms(self, kept: Mapping[str, int]) -> float | None:
        """Predicted end-to-end latency (ms) of the deployed model at ``batch_size``.

        ``base_ms`` plus, per fitted layer, ``LatencyFit.deployed_ms`` (deployment keeps the
        dense kernel where it is faster); a layer missing from ``kept`` counts as dense.
        None before ``layer_costs`` has measured the model.
        """
        base = self.base_ms
        if base is None:
            return None
        layers = math.fsum(
            fit.deployed_ms(kept[name]) if name in kept else (fit.dense_ms or 0.0)
            for name, fit in self.fits.items()
        )
        return base + layers

    def _rest_ms(self, model: nn.Module, device: torch.device) -> float:
        """The forward time at ``batch_size`` on ``device`` (ms) with every replayable priced
        layer answering with the output it gave in a first pass."""
        copied = copy.deepcopy(model).to(device).eval()
        gen = torch.Generator().manual_seed(self.seed)
        x = torch.randn((self.batch_size, *self.input_size), generator=gen).to(device)
        names = sorted({t.module_name for t in self._priced.values() if _replayable(t)})
        outputs: dict[str, list[object]] = {name: [] for name in names}
        hooks = [
            get_submodule(copied, name).register_forward_hook(
                lambda _m, _args, out, name=name: outputs[name].append(out)
            )
            for name in names
        ]
        with torch.inference_mode(), no_attention_fastpath():
            copied(x)
            for hook in hooks:
                hook.remove()
            self._replayed = {name for name in names if outputs[name]}  # called as modules
            for name in self._replayed:
                copied.set_submodule(name, _Replay(get_submodule(copied, name), outputs[name]))
            return timed_ms(lambda: copied(x), device=device)

    def _device(self, model: nn.Module) -> torch.device:
        if self.device is not None:
            return torch.device(self.device)
        param = next(model.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    def _profile(
        self,
        model: nn.Module,
        target: MaskTarget,
        calls: Sequence[LayerCall],
        block_shape: BlockShape,
        device: torch.device,
    ) -> LatencyFit:
        module = get_submodule(model, target.module_name)
        settings = _conv_settings(module) if target.kind == "conv2d" else ()
        key = (target.kind, target.shape, tuple(c.input_shape for c in calls), settings)
        key += (tuple(block_shape), device.type, device.index)
        if key in self._cache:
            return self._cache[key]
        n_blocks = math.prod(block_grid(target, block_shape))
        kept = sorted({max(1, round(d * n_blocks)) for d in self.densities})
        if len(kept) < 2:
            raise ValueError(
                f"densities: layer {target.module_name!r} has {n_blocks} block(s), too few to "
                f"time {len(self.densities)} densities"
            )
        gen = torch.Generator().manual_seed(self.seed)
        inputs = [
            torch.randn(_timed_input_shape(target, c, self.batch_size), generator=gen).to(device)
            for c in calls
        ]
        weight = torch.randn(target.shape, generator=gen)
        evict = _cache_evictor(device, inputs)

        def run_all(layer: nn.Module) -> float:
            def run() -> None:
                for x in inputs:
                    layer(x)

            return median_ms(
                run, repeats=self.repeats, warmup=self.warmup, device=device, before=evict
            )

        with torch.inference_mode():
            dense_ms = run_all(_plain_layer(module, target, weight.to(device)))
            times, kernels = [], []
            for k in kept:
                block_mask = torch.zeros(n_blocks)
                block_mask[torch.randperm(n_blocks, generator=gen)[:k]] = 1.0
                masked = weight * expand_block_mask(block_mask, weight.shape, block_shape)
                plain = _plain_layer(module, target, masked.to(device))
                layout = _layout(block_shape, k, n_blocks)
                timed = {name: run_all(c) for name, c in sparse_candidates(plain, layout, device)}
                best = min(timed, key=timed.__getitem__, default="dense")
                times.append(timed.get(best, dense_ms))
                kernels.append(best)
        fit = replace(fit_line(kept, times, n_blocks), dense_ms=dense_ms, kernels=tuple(kernels))
        if fit.clamped:
            logger.warning(
                "profiled: layer %s: fit adjusted to stay a valid cost (a=%.3g ms, b=%.3g ms); "
                "times %s",
                target.name,
                fit.fixed_ms,
                fit.per_block_ms,
                [round(x, 4) for x in times],
            )
        self._cache[key] = fit
        return fit


EVICT_BYTES_PER_THREAD = 4 << 20  # CPU: twice a core's L2 here, written by each thread
EVICT_BYTES_CUDA = 64 << 20  # more than a GPU's L2


def _cache_evictor(device: torch.device, inputs: Sequence[torch.Tensor]) -> Callable[[], None]:
    """Writes a buffer larger than the caches, then reads ``inputs``: a layer timed alone then
    starts as it does inside the model, its weights no longer cached (the other layers'
    passed through since its last call), its input just written by the op before."""
    size = (
        EVICT_BYTES_CUDA
        if device.type == "cuda"
        else EVICT_BYTES_PER_THREAD * max(1, torch.get_num_threads())
    )
    buffer = torch.empty(size // 4, dtype=torch.float32, device=device)

    def evict() -> None:
        buffer.fill_(1.0)
        for x in inputs:
            x.sum()

    return evict


class _Replay(nn.Module):
    """Stands in for a layer while the rest of the model is timed: answers each call with the
    output the layer gave to the same call of the first pass. It keeps the layer's own
    parameters, so a parent that reads ``weight`` or ``bias`` still finds them."""

    def __init__(self, layer: nn.Module, outputs: list[object]) -> None:
        super().__init__()
        for name, param in layer.named_parameters(recurse=False):
            self.register_parameter(name, param)
        self.outputs = outputs
        self.calls = 0

    def forward(self, *args: object, **kwargs: object) -> object:
        out = self.outputs[self.calls % len(self.outputs)]
        self.calls += 1
        return out


def _replayable(target: MaskTarget) -> bool:
    """Whether the target's module can be swapped for a ``_Replay`` (its own Linear/Conv2d)."""
    return target.kind in ("linear", "conv2d") and bool(target.module_name)


def _timed_input_shape(target: MaskTarget, call: LayerCall, batch_size: int) -> tuple[int, ...]:
    """The probed input (batch 1) scaled to ``batch_size`` samples."""
    shape = call.input_shape
    if target.kind == "conv2d":
        return (batch_size, *shape[-3:])  # (N, C, H, W)
    tokens = math.prod(shape[:-1])  # per sample: the probe ran one sample
    return (batch_size, tokens, shape[-1])  # (N, tokens, features)


def _conv_settings(module: nn.Module) -> tuple:
    return (
        tuple(module.stride),
        tuple(module.dilation),
        tuple(module._reversed_padding_repeated_twice),
        module.padding_mode,
        module.groups,
    )


def _plain_layer(module: nn.Module, target: MaskTarget, weight: torch.Tensor) -> nn.Module:
    """A Linear / Conv2d shaped like the target's layer holding ``weight`` (eval mode)."""
    if target.kind == "conv2d":
        layer = conv2d_like(module, device="meta")
    else:  # attention in-projection: one (3E, E) matmul over the query tokens
        layer = nn.Linear(weight.shape[1], weight.shape[0], device="meta")
    layer.weight = nn.Parameter(weight, requires_grad=False)
    if layer.bias is not None:
        layer.bias = nn.Parameter(torch.zeros(weight.shape[0], device=weight.device))
    return layer.eval()


def _layout(block_shape: BlockShape, kept: int, n_blocks: int) -> Layout:
    """The layout a layer with ``kept`` random r x c blocks has, as deployment reads it."""
    density = kept / n_blocks
    if tuple(block_shape) == (1, 1):
        return Layout("unstructured", (1, 1), None, density, kept)
    return Layout("blocks", tuple(block_shape), None, density, kept)
