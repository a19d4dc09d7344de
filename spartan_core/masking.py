"""Masks as parametrizations, and the custom gradients of Spartan's masked weight.

Every masked weight gets a ``MaskParametrization`` (torch.nn.utils.parametrize), so a Linear
stays a Linear and ``.weight`` / ``.in_proj_weight`` still work. The parametrization holds the
masks in "entry layout": the weight's own shape for 1x1 blocks, (R, 1, C, 1) for r x c blocks
over the weight viewed as (R*r, C*c), which broadcasts against the weight viewed as
(R, r, C, c). Masks are recomputed only in ``Sparsifier.step()``; every forward until the next
step reuses them.

Spartan's forward is w_fwd = (w * m) * h with m = sigmoid(b * (u - lam)) the soft top-k mask of
the unit values u = v / c (v = |w| or block sums of |w|, c the per-entry cost), h the hard
top-k mask and b = beta / S the slope: the scheduled beta divided by the group's detached
value scale S (see ``SparsifierConfig``). In the backward h is the identity. With
G = dL/dw_fwd, g_j = dL/dm_j = sum over block j of G * w and s_j = m_j (1 - m_j):

    dL/dw = G * m + b * s_j * (g_j / c_j - Lambda) * sign(w),
    Lambda = (sum_i g_i s_i) / (sum_i c_i s_i)   over ALL entries of the budget group.

(For 1x1 blocks the local part is G * (m + (b / c) * s * |w|).) The sum couples the layers of
a group. It is computed by autograd, without concatenating the weights: ``DualNode`` is one
scalar node per group whose inputs are all the group's weights and whose value is lam; each
layer's ``SoftMask`` returns its local gradient for w and dL/dlam = -b * sum_j g_j s_j;
autograd adds those over layers, and the dual node's backward sends
dL/dlam * dlam/dw_j = dL/dlam * s_j / (sum_i c_i s_i) * sign(w_j) to every weight (implicit
differentiation of sum_i c_i m_i = budget). To save a full-size gradient per layer, a coupled
layer leaves its local gradient in the group's ``PendingGrads`` and the dual node, which
autograd runs after every layer of the group, completes it in place. At w = 0 exactly the
coupling term uses sign(+-0) = +-1 (``copysign``), a valid subgradient of |w|.

For 1x1 blocks on contiguous float32 CPU weights the forward product, the local gradient with
its share of dL/dlam, and the dual node's term are each one fused pass (:mod:`spartan_core.native`).

N:M layers (``spartan_core.nm``) keep their masks in the weight's shape, viewed as (G, m) groups.
Every group is its own budget with its own dual, so nothing couples groups or layers: Spartan's
``NMSoftMask`` gives the whole gradient locally, with Lambda summed over each group of m only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from spartan_core import native
from spartan_core.blocks import BlockShape, block_grid
from spartan_core.layers import MaskTarget
from spartan_core.nm import NMShape, group_view
from spartan_core.soft_topk_nm import group_soft_backward


class MaskMethod(Protocol):
    """What a parametrization needs of its sparsification method (``spartan_core.methods``)."""

    name: str
    soft: bool  # whether the layers hold a soft mask

    def forward(self, weight: Tensor, layer: MaskParametrization) -> Tensor:
        """The weight the layer uses in its forward pass."""
        ...


class DualGroup:
    """Layers sharing one budget: their dual variable, hard threshold and value scale.

    Attributes:
        layers: the group's parametrizations.
        fraction: kept cost fraction of the group at the last update.
        beta: scheduled inverse temperature at the last update.
        scale: S, the detached divisor of the unit values (1 when not scaled).
        dual: lam in unit values (-inf when everything is kept).
        threshold: hard threshold t in unit values: kept == (u >= t).
        s_cost: sum_i c_i m_i (1 - m_i) over the group, the denominator of Lambda.
        iterations: solver iterations of the last dual solve.
        node: the dual node of the forward pass in progress, or None.
        pending: where that forward's layers leave their local gradients for the node.
    """

    def __init__(self, layers: Sequence[MaskParametrization]) -> None:
        self.layers = list(layers)
        self.fraction = 1.0
        self.beta = 1.0
        self.scale = 1.0
        self.dual = -math.inf
        self.threshold = -math.inf
        self.s_cost = 0.0
        self.iterations = 0
        self.node: Tensor | None = None
        self.pending: PendingGrads | None = None

    @property
    def slope(self) -> float:
        """b = beta / S: the inverse temperature applied to unscaled unit values."""
        return self.beta / self.scale

    @property
    def coupled(self) -> bool:
        """Whether the mask depends on the weights through the dual (soft and not saturated)."""
        return self.s_cost > 0.0 and self.fraction < 1.0

    def scalars(self) -> dict[str, float]:
        """The state needed to resume bit-identically."""
        return {
            "fraction": self.fraction,
            "beta": self.beta,
            "scale": self.scale,
            "dual": self.dual,
            "threshold": self.threshold,
            "s_cost": self.s_cost,
        }

    def load_scalars(self, values: dict[str, float]) -> None:
        """Restore what :meth:`scalars` gave."""
        for key in ("fraction", "beta", "scale", "dual", "threshold", "s_cost"):
            setattr(self, key, float(values[key]))

    def record(
        self,
        fraction: float,
        beta: float,
        *,
        scale: float = 1.0,
        dual: float = -math.inf,
        threshold: float = -math.inf,
        s_cost: float = 0.0,
        iterations: int = 0,
    ) -> None:
        """The outcome of a mask update; the defaults are those of a group that keeps all."""
        self.fraction, self.beta, self.scale = fraction, beta, scale
        self.dual, self.threshold = float(dual), float(threshold)
        self.s_cost, self.iterations = s_cost, int(iterations)

    def open_node(self, weights: Sequence[Tensor]) -> Tensor:
        """The dual node of the coming forward pass (``node``), with a fresh ``pending``."""
        self.pending = PendingGrads()
        self.node = DualNode.apply(self, self.pending, *weights)
        return self.node

    def close_node(self) -> None:
        """Forget the dual node of the last forward pass."""
        self.node = self.pending = None


class Scratch:
    """A reusable temporary buffer shared by the layers of one Sparsifier.

    The backward passes and mask updates of one Sparsifier run one at a time, so one buffer
    the size of the largest layer replaces a fresh allocation per layer and call (fresh large
    allocations cost page faults on CPU). Not for concurrent backward passes of one model.
    """

    def __init__(self) -> None:
        self._buffer: Tensor | None = None

    def like(self, tensor: Tensor) -> Tensor:
        """An uninitialised tensor shaped like ``tensor``, valid until the next call."""
        n = tensor.numel()
        buffer = self._buffer
        if (
            buffer is None
            or buffer.numel() < n
            or buffer.dtype != tensor.dtype
            or buffer.device != tensor.device
        ):
            size = n if buffer is None or buffer.dtype != tensor.dtype else max(n, buffer.numel())
            buffer = self._buffer = torch.empty(size, dtype=tensor.dtype, device=tensor.device)
        return buffer[:n].view(tensor.shape)


class MaskParametrization(nn.Module):
    """The parametrization of one masked weight: returns the method's forward weight.

    Buffers (not persistent, so ``model.state_dict()`` is unchanged; they follow
    ``model.to()``): ``hard`` (bool, entry layout) and, for soft methods, ``soft`` (the
    weight's dtype, entry layout) and, for N:M, ``nm_dual`` (float64, (G,): each group's dual
    from the last update, NaN before the first).
    """

    soft: Tensor | None
    hard: Tensor
    nm_dual: Tensor | None

    def __init__(
        self,
        target: MaskTarget,
        weight: Tensor,
        block_shape: BlockShape,
        cost: float,
        method: MaskMethod,
        scratch: Scratch | None = None,
        nm: NMShape | None = None,
    ) -> None:
        super().__init__()
        rows, cols = block_grid(target, block_shape)
        if nm is not None and block_shape != (1, 1):
            raise ValueError(f"nm: needs block_shape (1, 1), got {block_shape!r}")
        self.name = target.name
        self.nm = nm
        self.block_shape = block_shape
        self.cost = float(cost)
        self.weight_shape = tuple(weight.shape)
        self.unstructured = block_shape == (1, 1)
        self.blocked_shape = (rows, block_shape[0], cols, block_shape[1])  # (R, r, C, c)
        self.entry_shape = self.weight_shape if self.unstructured else (rows, 1, cols, 1)
        self.n_entries = rows * cols
        self.method = method
        self.scratch = scratch if scratch is not None else Scratch()
        self.group: DualGroup | None = None
        self.floor = -math.inf  # unit value of the layer's floor threshold (-inf: select anew)
        self.kept: int | None = None  # entries the hard mask kept at the last update, if counted
        self.frozen = False
        self.dense_grad = False  # Spartan: dL/dw through the product is G, not G * m
        self.scaled_forward = True  # Spartan: forward (w * m) * h; False: w * h
        self.register_buffer(
            "hard", torch.ones(self.entry_shape, dtype=torch.bool, device=weight.device), False
        )
        soft = (
            torch.ones(self.entry_shape, dtype=weight.dtype, device=weight.device)
            if method.soft
            else None
        )
        self.register_buffer("soft", soft, False)
        nm_dual = None
        if nm is not None and method.soft:
            groups = weight.numel() // nm[1]
            nm_dual = torch.full((groups,), math.nan, dtype=torch.float64, device=weight.device)
        self.register_buffer("nm_dual", nm_dual, False)

    def forward(self, weight: Tensor) -> Tensor:
        return self.method.forward(weight, self)

    def blocks(self, tensor: Tensor) -> Tensor:
        """A weight-shaped tensor viewed so that entry-layout masks broadcast against it."""
        return tensor if self.unstructured else tensor.reshape(self.blocked_shape)

    def entry_values(self, weight: Tensor, out: Tensor | None = None) -> Tensor:
        """v: |w| (1x1) or the sum of |w| over each block, in entry layout."""
        if self.unstructured:
            return torch.abs(weight, out=out) if out is not None else weight.abs()
        summed = self.blocks(weight).abs().sum(dim=(1, 3), keepdim=True)  # (R, 1, C, 1)
        if out is None:
            return summed
        return out.copy_(summed)

    def unit_values(self, weight: Tensor) -> tuple[Tensor, float | None]:
        """u = v / c in a new entry-layout tensor, and the largest u when it came for free."""
        u = weight.new_empty(self.entry_shape)
        return u, self._unit_values_into(weight, u)[1]

    def stage_unit_values(self, weight: Tensor) -> tuple[Tensor, float | Tensor, float | None]:
        """u = v / c held in the soft buffer until :meth:`fill_soft_and_hard` (no full-size
        copy); returns u, the sum of the values v and the largest u when it came for free."""
        assert self.soft is not None
        total, largest = self._unit_values_into(weight, self.soft)
        return self.soft, total, largest

    def _unit_values_into(self, weight: Tensor, out: Tensor) -> tuple[float | Tensor, float | None]:
        """u = v / c into ``out``; the sum of v (a 0-d tensor from the PyTorch path, so that
        GPUs are not synchronised layer by layer) and the largest u when it came for free."""
        if self.unstructured and native.usable(weight, out):
            total, _, high_bits = native.abs_scale(weight, out, 1.0 / self.cost)
            return total, native.float_of_bits(high_bits)
        values = self.entry_values(weight, out=out)
        total = values.sum(dtype=torch.float64)
        if self.cost != 1.0:
            values.mul_(1.0 / self.cost)
        return total, None

    def set_hard(self, u: Tensor, threshold: float) -> None:
        """The hard mask ``u >= threshold``, counting what it keeps where that is free."""
        if native.usable(u, self.hard):
            self.kept = native.ge(u, threshold, self.hard)
        else:
            self.kept = None
            torch.ge(u, threshold, out=self.hard)

    def fill_soft_and_hard(self, slope: float, dual: float, threshold: float) -> float:
        """From the staged unit values u: h = (u >= threshold) and m = sigmoid(b (u - lam)),
        b = ``slope``, in place of u; returns sum m (1 - m) over the layer's entries."""
        soft = self.soft
        assert soft is not None
        if native.usable(soft, self.hard):
            s_sum, self.kept = native.fill_masks(
                soft, slope, -slope * dual, threshold, soft, self.hard
            )
            return s_sum
        self.kept = None
        torch.ge(soft, threshold, out=self.hard)
        # m = sigmoid(b (u - lam)) = (1 + tanh(b (u - lam) / 2)) / 2: tanh is the faster kernel
        offset = soft.new_tensor(-0.5 * slope * dual)
        torch.add(offset, soft, alpha=0.5 * slope, out=soft).tanh_()
        torch.add(soft.new_tensor(0.5), soft, alpha=0.5, out=soft)
        # sum of m (1 - m): every term is >= 0, so no cancellation when m saturates
        s = torch.addcmul(soft, soft, soft, value=-1.0, out=self.scratch.like(soft))
        return float(s.sum())

    def set_nm_masks(
        self, hard: Tensor, kept: int, soft: Tensor | None = None, dual: Tensor | None = None
    ) -> None:
        """An N:M layer's masks from (G, m) groups: the hard mask keeping ``kept`` weights
        and, for soft methods, the soft mask and each group's dual (G,)."""
        assert self.nm is not None
        m = self.nm[1]
        if soft is not None:
            assert self.soft is not None and self.nm_dual is not None and dual is not None
            group_view(self.soft, m).copy_(soft)
            self.nm_dual.copy_(dual)
        group_view(self.hard, m).copy_(hard)
        self.kept = kept

    def keep_all(self) -> None:
        """Masks that keep every entry (N:M duals at -inf)."""
        self.hard.fill_(True)
        self.kept = self.n_entries
        if self.soft is not None:
            self.soft.fill_(1.0)
        if self.nm_dual is not None:
            self.nm_dual.fill_(-math.inf)

    def remember_floor(self, threshold: float) -> None:
        """The unit value of the layer's floor, reused by the next updates."""
        self.floor = threshold

    def forget_floor(self) -> None:
        """Select the layer's floor anew at the next update."""
        self.floor = -math.inf

    def freeze(self) -> None:
        """Fix the masks for fine-tuning: the soft mask becomes M = m * h (soft values on the
        survivors, zeros elsewhere)."""
        if self.soft is not None:
            with torch.no_grad():
                self.soft.mul_(self.hard)
        self.frozen = True

    def expand(self, mask: Tensor) -> Tensor:
        """An entry-layout mask broadcast to the weight's shape (a new tensor)."""
        if self.unstructured:
            return mask.clone()
        return mask.expand(self.blocked_shape).reshape(self.weight_shape)

    def extra_repr(self) -> str:
        structure = f"nm={self.nm}" if self.nm is not None else f"block_shape={self.block_shape}"
        return f"{self.name}, method={self.method.name}, {structure}"


def masked_product(weight: Tensor, mask: Tensor, layer: MaskParametrization) -> Tensor:
    """w * mask with plain autograd (gradient masked too); mask in entry layout."""
    if mask.dtype == torch.bool:
        mask = mask.view(torch.uint8)  # float * uint8 is a fast kernel, float * bool is not
    return (layer.blocks(weight) * mask).view(layer.weight_shape)


class PendingGrads:
    """Local weight gradients that the layers of a group hand to its DualNode (one forward).

    When a layer is coupled, its ``SoftMask`` backward does not return its local gradient to
    autograd but leaves it here; the group's ``DualNode`` backward, which autograd runs after
    every ``SoftMask`` of the group, adds the dual term into it in place and returns the sum.
    This saves a full-size gradient per layer and autograd's addition of the two.
    """

    def __init__(self) -> None:
        self.grads: dict[int, Tensor] = {}

    def add(self, index: int, grad: Tensor) -> None:
        if index in self.grads:  # the layer ran twice in one forward
            self.grads[index].add_(grad)
        else:
            self.grads[index] = grad

    def pop(self, index: int) -> Tensor | None:
        return self.grads.pop(index, None)


class SoftMask(torch.autograd.Function):
    """w -> (w * m) * h with Spartan's gradient (see the module docstring).

    ``dual`` is the group's dual node (or None: then the layer is not coupled to the rest of
    its group in the backward). The masks are read from ``layer`` and saved, so an in-place
    update of them between forward and backward is an autograd error rather than a silent
    wrong gradient; the group's scalars are copied for the same reason.
    """

    @staticmethod
    def forward(
        ctx: Any, weight: Tensor, dual: Tensor | None, layer: MaskParametrization
    ) -> Tensor:
        soft, hard = layer.soft, layer.hard
        group = layer.group
        assert soft is not None and group is not None
        if not layer.scaled_forward:
            out = masked_product(weight, hard, layer)
        elif layer.unstructured and native.usable(weight, soft, hard):
            out = native.masked_forward(weight, soft, hard)
        else:
            out = layer.blocks(weight) * soft
            out.mul_(hard.view(torch.uint8))
        ctx.layer = layer
        ctx.coupled, ctx.slope = group.coupled, group.slope
        ctx.pending = group.pending if dual is not None else None
        ctx.index = group.layers.index(layer) if ctx.pending is not None else -1
        ctx.save_for_backward(weight, soft)
        return out.view(layer.weight_shape)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        weight, soft = ctx.saved_tensors
        layer: MaskParametrization = ctx.layer
        want_w, want_dual = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad = layer.blocks(grad_out)
        if not ctx.coupled:
            if not want_w:
                return None, None, None
            local = grad.clone() if layer.dense_grad else grad * soft
            return local.view(layer.weight_shape), None, None
        w = layer.blocks(weight)
        coef = ctx.slope / layer.cost
        grad_dual = None
        if layer.unstructured and want_w and native.usable(weight, soft):
            grad_w, dot = native.soft_backward(grad_out.contiguous(), weight, soft, coef)
            if layer.dense_grad:  # G * (1 - m) more: G + coef * s * |w| * G
                grad_w.addcmul_(grad_out, 1.0 - soft)
            if want_dual:
                grad_dual = weight.new_tensor(-ctx.slope * dot)
            return _hand_over(ctx, grad_w.view(layer.weight_shape), grad_dual)
        s = torch.addcmul(soft, soft, soft, value=-1.0)  # s = m (1 - m), entry layout
        if layer.unstructured:
            g = torch.mul(grad, w, out=layer.scratch.like(w))  # dL/dm per weight
            if want_dual:
                grad_dual = (torch.dot(g.view(-1), s.view(-1)) * -ctx.slope).reshape(())
            if not want_w:
                return None, grad_dual, None
            # G * m + coef * s * (G * w) * sign(w) = G * (m + coef * s * |w|)
            g = torch.abs(w, out=g)
            base = torch.ones_like(soft) if layer.dense_grad else soft
            grad_w = torch.addcmul(base, s, g, value=coef, out=s).mul_(grad)
        else:
            g = torch.mul(grad, w, out=layer.scratch.like(w))  # dL/dm per weight
            g = g.sum(dim=(1, 3), keepdim=True).mul_(s)  # g_j s_j, (R, 1, C, 1)
            if want_dual:
                grad_dual = (g.sum() * -ctx.slope).reshape(())
            if not want_w:
                return None, grad_dual, None
            # h is the identity in the backward
            grad_w = grad.clone() if layer.dense_grad else grad * soft
            grad_w.addcmul_(torch.sign(w), g, value=coef)
        return _hand_over(ctx, grad_w.view(layer.weight_shape), grad_dual)


def _hand_over(ctx: Any, grad_w: Tensor, grad_dual: Tensor | None) -> tuple[Tensor | None, ...]:
    """SoftMask's return: a coupled layer leaves its local gradient to the DualNode."""
    if grad_dual is not None and ctx.pending is not None:
        ctx.pending.add(ctx.index, grad_w)  # the DualNode completes and returns it
        return None, grad_dual, None
    return grad_w, grad_dual, None


class DualNode(torch.autograd.Function):
    """A scalar graph node with value lam that depends on every weight of a group.

    Backward: dL/dw_j = dL/dlam * s_j / (sum_i c_i s_i) * sign(w_j), from implicit
    differentiation of sum_i c_i sigmoid(b * (u_i - lam)) = budget, added to the local
    gradients the layers left in ``pending``.
    """

    @staticmethod
    def forward(ctx: Any, group: DualGroup, pending: PendingGrads, *weights: Tensor) -> Tensor:
        softs = [layer.soft for layer in group.layers]
        ctx.layers = list(group.layers)
        ctx.pending = pending
        ctx.s_cost = group.s_cost
        ctx.save_for_backward(*weights, *softs)
        return weights[0].new_tensor(group.dual)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_dual: Tensor) -> tuple[Tensor | None, ...]:
        layers: list[MaskParametrization] = ctx.layers
        pending: PendingGrads = ctx.pending
        n = len(layers)
        saved = ctx.saved_tensors
        coef = float(grad_dual) / ctx.s_cost
        grads: list[Tensor | None] = []
        for i, layer in enumerate(layers):
            local = pending.pop(i)
            if not ctx.needs_input_grad[2 + i]:
                grads.append(None)
                continue
            weight, soft = saved[i], saved[n + i]
            w = layer.blocks(weight)
            if layer.unstructured and native.usable(weight, soft, local):
                grads.append(native.dual_add(local, weight, soft, coef).view(layer.weight_shape))
                continue
            if layer.unstructured:
                s = torch.addcmul(soft, soft, soft, value=-1.0, out=layer.scratch.like(soft))
                d = torch.copysign(s, w, out=s)  # s * sign(w), up to the sign of zeros
            else:
                s = torch.addcmul(soft, soft, soft, value=-1.0)  # (R, 1, C, 1)
                d = torch.copysign(s.expand(layer.blocked_shape), w, out=layer.scratch.like(w))
            if local is None:
                grads.append(d.mul(coef).view(layer.weight_shape))
            else:
                layer.blocks(local).add_(d, alpha=coef)
                grads.append(local)
        return (None, None, *grads)


class StraightThrough(torch.autograd.Function):
    """w -> w * h with the identity backward (Top-KAST style dense gradient)."""

    @staticmethod
    def forward(ctx: Any, weight: Tensor, layer: MaskParametrization) -> Tensor:
        return masked_product(weight, layer.hard, layer)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, None]:
        return grad_out, None


class NMSoftMask(torch.autograd.Function):
    """w -> (w * m) * h for an N:M layer, with the per-group implicit gradient.

    With G = dL/dw_fwd, g = G * w (dL/dm, h the identity), b the group's slope and c the
    layer's cost per weight, over each group of m weights:

        dL/dw = G * m + (b / c) * s * (g - sum_group g s / sum_group s) * sign(w),

    s = m (1 - m). The masks and the slope are read from ``layer`` and saved, as ``SoftMask``
    does.
    """

    @staticmethod
    def forward(ctx: Any, weight: Tensor, layer: MaskParametrization) -> Tensor:
        soft, hard, group = layer.soft, layer.hard, layer.group
        assert soft is not None and group is not None and layer.nm is not None
        out = weight * soft if layer.scaled_forward else weight.clone()
        out.mul_(hard.view(torch.uint8))
        ctx.dense_grad = layer.dense_grad
        ctx.m = layer.nm[1]
        ctx.coef = group.slope / layer.cost if group.fraction < 1.0 else 0.0
        ctx.save_for_backward(weight, soft)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, None]:
        weight, soft = ctx.saved_tensors
        grad_w = grad_out.clone() if ctx.dense_grad else grad_out * soft
        if ctx.coef == 0.0:
            return grad_w, None
        m = ctx.m
        g = group_view(grad_out * weight, m)  # (G, m) dL/dm
        grad_v = group_soft_backward(g, group_view(soft, m), ctx.coef)  # (G, m) dL/d|w|
        sign = torch.ones_like(weight).copysign_(weight)  # sign(+-0) = +-1, as DualNode
        grad_w.addcmul_(grad_v.view(weight.shape), sign)
        return grad_w, None
