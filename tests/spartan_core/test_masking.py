"""Masks as parametrizations and the custom gradients of the masked weight."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.testing import assert_close

from spartan_core import ParamsCost, Sparsifier, SparsifierConfig, soft_topk
from spartan_core.blocks import BlockShape
from spartan_core.costs import LayerCost
from spartan_core.layers import MaskTarget
from spartan_core.masking import DualNode, PendingGrads, SoftMask


class TwoPrices:
    """A test cost model: the first layer costs 1 per weight, every other layer 3."""

    name = "two-prices"
    unit = "units"

    def layer_costs(
        self, model: nn.Module, targets: Sequence[MaskTarget], block_shape: BlockShape
    ) -> dict[str, LayerCost]:
        size = block_shape[0] * block_shape[1]
        return {t.name: LayerCost(size * (1.0 if i == 0 else 3.0)) for i, t in enumerate(targets)}


def _mlp(dtype: torch.dtype = torch.float64) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 4)).to(dtype)


def _config(**kw: object) -> SparsifierConfig:
    base = {
        "target": 0.4,
        "warmup_frac": 0.0,
        "beta_init": 2.0,
        "beta_max": 2.0,
        "layer_floor": 0.0,
        # the published forward (w * m) * h and gradient G * m: the exact derivative checked here
        "forward": "soft",
        "weight_grad": "soft",
    }
    base.update(kw)
    return SparsifierConfig(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("block_shape", [(1, 1), (2, 2)])
@pytest.mark.parametrize("cost_model", [ParamsCost(), TwoPrices()])
def test_gradcheck_of_the_coupled_chain(block_shape: BlockShape, cost_model: object) -> None:
    """SoftMask + DualNode give the exact derivative of w * m(w) (hard mask set to ones).

    The soft masks are recomputed from the perturbed weights inside the function, dual solve
    included, so the numerical Jacobian sees the coupling of the two layers through lam.
    With value_scale="none" the forward has no detached quantity.
    """
    model = _mlp()
    config = _config(block_shape=block_shape, cost_model=cost_model, value_scale="none")
    sparsifier = Sparsifier(model, config, total_steps=10)
    (group,) = sparsifier._groups.values()
    layers = sparsifier.layers
    beta = sparsifier.beta

    def chain(w1: torch.Tensor, w2: torch.Tensor) -> tuple[torch.Tensor, ...]:
        for layer in layers:  # fresh buffers: earlier graphs keep the masks they saved
            layer.soft = torch.empty_like(layer.soft)
            layer.hard = torch.empty_like(layer.hard)
        sparsifier.method.update(
            group, [w1.detach(), w2.detach()], group.fraction, beta, value_scale="none"
        )
        for layer in layers:
            layer.hard.fill_(True)
        group.pending = PendingGrads()
        node = DualNode.apply(group, group.pending, w1, w2)
        return tuple(
            SoftMask.apply(w, node, layer) for w, layer in zip((w1, w2), layers, strict=True)
        )

    weights = [sparsifier._original(i).detach().clone().requires_grad_() for i in range(2)]
    assert group.coupled
    assert torch.autograd.gradcheck(chain, weights, eps=1e-4, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("value_scale", ["mean", "none"])
@pytest.mark.parametrize("block_shape", [(1, 1), (2, 2)])
def test_model_gradient_matches_soft_topk_and_the_formula(
    value_scale: str, block_shape: BlockShape
) -> None:
    """Gradients through a masked 2-layer model equal a reference built from soft_topk."""
    model = _mlp()
    config = _config(block_shape=block_shape, value_scale=value_scale, cost_model=TwoPrices())
    sparsifier = Sparsifier(model, config, total_steps=10)
    (group,) = sparsifier._groups.values()
    x = torch.randn(5, 4, dtype=torch.float64)
    out = model(x)
    loss = (out * torch.arange(4.0, dtype=torch.float64)).sin().sum()
    loss.backward()
    got = [sparsifier._original(i).grad for i in range(2)]
    assert got[0] is not None and got[1] is not None

    # Reference: soft top-k over the concatenated block values / S, straight-through h.
    r, c = block_shape
    ws = [sparsifier._original(i).detach().clone().requires_grad_() for i in range(2)]
    costs = [layer.cost for layer in sparsifier.layers]

    def block_sums(w: torch.Tensor) -> torch.Tensor:
        rows, cols = w.shape
        return w.abs().reshape(rows // r, r, cols // c, c).sum(dim=(1, 3)).reshape(-1)

    values = torch.cat([block_sums(w) for w in ws]) / group.scale
    entry_costs = torch.cat(
        [
            torch.full((block_sums(w).numel(),), cost, dtype=w.dtype)
            for w, cost in zip(ws, costs, strict=True)
        ]
    )
    budget = group.fraction * float(entry_costs.sum())
    result = soft_topk(values, entry_costs, budget, group.beta)
    sizes = [block_sums(w).numel() for w in ws]
    fwd = []
    for w, m, h in zip(ws, result.mask.split(sizes), result.hard_mask.split(sizes), strict=True):
        rows, cols = w.shape
        grid = (rows // r, 1, cols // c, 1)
        soft = (w.reshape(rows // r, r, cols // c, c) * m.reshape(grid)).reshape(w.shape)
        hard = (soft.reshape(rows // r, r, cols // c, c) * h.reshape(grid)).reshape(w.shape)
        fwd.append(soft + (hard - soft).detach())  # h is the identity in the backward
    ref_out = torch.tanh(x @ fwd[0].T + model[0].bias) @ fwd[1].T + model[2].bias
    assert_close(ref_out, out.detach())
    ref_loss = (ref_out * torch.arange(4.0, dtype=torch.float64)).sin().sum()
    ref_grads = torch.autograd.grad(ref_loss, ws)
    for g, ref in zip(got, ref_grads, strict=True):
        assert_close(g, ref, rtol=1e-7, atol=1e-9)

    if block_shape == (1, 1):
        # The closed form: dL/dw = G m + (beta / S) s (G w / c - Lambda) sign(w).
        wf = [f.detach().requires_grad_() for f in fwd]
        ref_out = torch.tanh(x @ wf[0].T + model[0].bias) @ wf[1].T + model[2].bias
        gs = torch.autograd.grad((ref_out * torch.arange(4.0, dtype=torch.float64)).sin().sum(), wf)
        ms = [layer.soft for layer in sparsifier.layers]
        ss = [m * (1 - m) for m in ms]
        gm = [g * w.detach() for g, w in zip(gs, ws, strict=True)]
        lam = sum(float((a * s).sum()) for a, s in zip(gm, ss, strict=True)) / sum(
            cost * float(s.sum()) for cost, s in zip(costs, ss, strict=True)
        )
        for i in range(2):
            formula = gs[i] * ms[i] + group.beta / group.scale * ss[i] * (
                gm[i] / costs[i] - lam
            ) * torch.sign(ws[i])
            assert_close(got[i], formula, rtol=1e-7, atol=1e-9)


def test_module_classes_unchanged_and_weight_works() -> None:
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(4 * 3 * 3, 3))
    weight = model[0].weight
    sparsifier = Sparsifier(model, SparsifierConfig(target=0.5, warmup_frac=0.0), total_steps=3)
    assert isinstance(model[0], nn.Conv2d) and isinstance(model[2], nn.Linear)
    assert parametrize.is_parametrized(model[0], "weight")
    assert model[0].parametrizations.weight.original is weight  # optimizers keep working
    masks = sparsifier.mask_values()
    original = model[0].parametrizations.weight.original
    assert_close(model[0].weight, original * masks["0.weight"])
    assert set(model.state_dict()) >= {"0.parametrizations.weight.original", "0.bias"}
    sparsifier.finalize()
    assert type(model[0]) is nn.Conv2d and type(model[2]) is nn.Linear
    assert not parametrize.is_parametrized(model[0])
    assert set(model.state_dict()) == {"0.weight", "0.bias", "2.weight", "2.bias"}


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.attn(x, x, x, need_weights=False)
        return self.head(y.mean(1))


@pytest.mark.parametrize("method", ["spartan", "topkast", "magnitude"])
def test_multihead_attention_in_projection(method: str) -> None:
    torch.manual_seed(0)
    model = Attention()
    config = SparsifierConfig(method=method, target=0.25, warmup_frac=0.0, block_shape=(4, 4))
    sparsifier = Sparsifier(model, config, total_steps=4)
    names = [t.name for t in sparsifier.targets]
    assert names == ["attn.in_proj_weight", "attn.out_proj.weight", "head.weight"]
    assert isinstance(model.attn, nn.MultiheadAttention)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(3, 5, 8)
    for _ in range(4):
        optimizer.zero_grad()
        model(x).square().mean().backward()
        original = model.attn.parametrizations.in_proj_weight.original
        assert original.grad is not None and torch.isfinite(original.grad).all()
        optimizer.step()
        sparsifier.step()
    model.eval()
    with torch.no_grad():
        before = model(x)
    sparsifier.finalize()
    assert type(model.attn) is nn.MultiheadAttention
    with torch.no_grad():
        assert_close(model(x), before)
    weight = model.attn.in_proj_weight  # (24, 8) in 4x4 blocks
    blocks = weight.reshape(6, 4, 2, 4).abs().sum(dim=(1, 3))
    kept = (blocks > 0).sum()
    assert torch.equal(
        weight.reshape(6, 4, 2, 4) == 0, (blocks == 0)[:, None, :, None].expand(6, 4, 2, 4)
    )
    assert 0 < kept < 12


def test_conv_blocks_flatten_the_kernel() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.Flatten(), nn.Linear(8, 2))
    config = SparsifierConfig(target=0.5, warmup_frac=0.0, block_shape=(2, 9), include=["0"])
    sparsifier = Sparsifier(model, config, total_steps=2)
    sparsifier.finalize()
    weight = model[0].weight.reshape(8, 36).reshape(4, 2, 4, 9)
    zero_blocks = (weight == 0).all(dim=3).all(dim=1)  # (4, 4)
    nonzero_blocks = (weight != 0).any(dim=3).any(dim=1)
    assert torch.equal(zero_blocks, ~nonzero_blocks)
    assert int(nonzero_blocks.sum()) == 8 + 0  # the Linear is dense: 0.5 * (288 + 16) - 16


def test_gradients_of_the_baselines_and_of_the_frozen_mask() -> None:
    x = torch.randn(3, 4, dtype=torch.float64)
    grads = {}
    for method in ("topkast", "magnitude", "spartan"):
        model = _mlp()
        sparsifier = Sparsifier(model, _config(method=method, finetune_frac=0.5), total_steps=2)
        if method == "spartan":
            sparsifier.step()  # reaches the freeze at step 1
            assert sparsifier.frozen
        model(x).sum().backward()
        original = sparsifier._original(0)
        hard = sparsifier.masks()["0.weight"]
        grads[method] = (original.grad, hard)
    grad, hard = grads["magnitude"]
    assert torch.all(grad[~hard] == 0) and torch.any(grad[hard] != 0)
    grad, hard = grads["topkast"]
    assert torch.any(grad[~hard] != 0)  # straight through: pruned weights still learn
    grad, hard = grads["spartan"]
    assert torch.all(grad[~hard] == 0) and torch.any(grad[hard] != 0)


def test_straight_through_gradient_is_the_upstream_gradient() -> None:
    model = _mlp()
    sparsifier = Sparsifier(model, _config(method="topkast"), total_steps=5)
    weight = model[2].weight  # the forward weight, w * h
    upstream = torch.randn_like(weight)
    (weight * upstream).sum().backward()
    assert_close(sparsifier._original(1).grad, upstream)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])  # float32: native kernels
def test_updating_masks_between_forward_and_backward_is_an_error(dtype: torch.dtype) -> None:
    model = _mlp(dtype)
    sparsifier = Sparsifier(model, _config(), total_steps=5)
    loss = model(torch.randn(2, 4, dtype=dtype)).sum()
    sparsifier.step()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_eval_and_no_grad_use_the_same_weights() -> None:
    model = _mlp()
    Sparsifier(model, _config(), total_steps=5)
    x = torch.randn(2, 4, dtype=torch.float64)
    train_out = model(x)
    model.eval()
    with torch.no_grad():
        assert_close(model(x), train_out.detach())


def test_attaching_is_undone_when_it_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2))
    calls = []
    register = parametrize.register_parametrization

    def failing(module: nn.Module, name: str, p: nn.Module) -> nn.Module:
        calls.append(name)
        if len(calls) == 3:
            raise RuntimeError("attach failed")
        return register(module, name, p)

    monkeypatch.setattr(parametrize, "register_parametrization", failing)
    weights = [m.weight for m in model]
    with pytest.raises(RuntimeError, match="attach failed"):
        Sparsifier(model, SparsifierConfig(target=0.5), total_steps=3)
    assert len(calls) == 3
    assert all(type(m) is nn.Linear and not parametrize.is_parametrized(m) for m in model)
    assert all(m.weight is w for m, w in zip(model, weights, strict=True))
    assert not model._forward_pre_hooks and not model._forward_hooks


def test_a_masked_layer_cannot_be_masked_twice() -> None:
    model = _mlp()
    Sparsifier(model, _config(), total_steps=3)
    with pytest.raises(ValueError, match=r"model: 0\.weight already carries a parametrization"):
        Sparsifier(model, _config(), total_steps=3)


def test_a_failing_first_update_leaves_the_model_unmasked() -> None:
    model = _mlp()
    with torch.no_grad():
        model[2].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        Sparsifier(model, _config(), total_steps=3)
    assert all(not parametrize.is_parametrized(m) for m in model)
    assert not model._forward_pre_hooks and not model._forward_hooks


class Twice(nn.Module):
    """Calls its first layer twice, so two SoftMask nodes of one layer share a dual node."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(4, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.inner(torch.tanh(self.inner(x)))))


def test_handing_local_gradients_to_the_dual_node_changes_nothing() -> None:
    """The in-place hand-over (PendingGrads) equals autograd adding the two gradients."""
    grads = []
    x = torch.randn(5, 4, dtype=torch.float64)
    for hand_over in (True, False):
        torch.manual_seed(0)
        model = Twice().double()
        sparsifier = Sparsifier(model, _config(), total_steps=10)
        (group,) = sparsifier._groups.values()
        if not hand_over:

            def drop_pending(module: nn.Module, args: object, group: object = group) -> None:
                group.pending = None  # type: ignore[attr-defined]  # SoftMask then returns its gradient to autograd

            model.inner.register_forward_pre_hook(drop_pending)
        model(x).sin().sum().backward()
        grads.append([sparsifier._original(i).grad.clone() for i in range(2)])
    for a, b in zip(*grads, strict=True):
        assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("block_shape", [(1, 1), (2, 2)])
def test_default_forward_is_hard_and_pruned_weights_get_the_dense_gradient(
    block_shape: BlockShape,
) -> None:
    """forward="hard": w * h; weight_grad="dense" adds G * (1 - m) to the published gradient."""
    grads = {}
    for weight_grad in ("dense", "soft"):
        model = _mlp()
        config = _config(block_shape=block_shape, forward="hard", weight_grad=weight_grad)
        sparsifier = Sparsifier(model, config, total_steps=10)
        sparsifier.step()
        layer = sparsifier.layers[0]
        first = model[0]
        w = first.parametrizations.weight.original
        w_fwd = first.weight
        assert_close(w_fwd, w * layer.expand(layer.hard).to(w.dtype), atol=0, rtol=0)
        w_fwd.retain_grad()
        x = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        out = model[2](torch.tanh(F.linear(x, w_fwd, first.bias)))
        out.square().sum().backward()
        grads[weight_grad] = (w.grad.clone(), w_fwd.grad.clone(), layer.expand(layer.soft))
    (dense, g_out, soft), (published, _, _) = grads["dense"], grads["soft"]
    assert_close(dense - published, g_out * (1.0 - soft))
