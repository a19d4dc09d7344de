"""The Sparsifier: trains a model to a cost budget, shaped like an optimizer.

    sparsifier = Sparsifier(model, SparsifierConfig(target=0.1), total_steps)
    for x, y in batches:
        loss_fn(model(x), y).backward()
        optimizer.step()
        sparsifier.step()
    sparsifier.finalize()  # plain modules, weights exactly zero outside the mask

Construction validates every target layer, then attaches one parametrization per masked
weight (undone if attaching fails half-way) and computes the masks of step 0. ``step()``
recomputes the masks from the current weights for the next step's schedule (cost fraction
and beta, see ``schedule``); at fine-tune start the masks freeze. The dual variables couple
the layers of a budget group in the backward through a scalar node per group, created by a
forward pre-hook on the root model while it trains with gradients enabled (see ``masking``).
A layer called on its own, outside the root model's forward, or recomputed by activation
checkpointing during the backward, gets its local gradient only (no coupling through the dual).
N:M layers (``SparsifierConfig.nm``) have no dual node: each layer is updated on its own, one
dual per group of m, kept with the layer for warm starts and in ``state_dict()``.

Build the optimizer from ``model.parameters()`` before or after attaching: the parametrized
weights keep their Parameter objects (now at ``<module>.parametrizations.<name>.original``).
Call ``step()`` only between a backward and the next forward: the masks saved by a forward are
checked by autograd, so updating them before its backward raises instead of giving a wrong
gradient.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.utils.hooks import RemovableHandle

from spartan_core.blocks import block_grid, expand_block_mask, num_entries
from spartan_core.config import SparsifierConfig
from spartan_core.costs import CostModel, LayerCost, price_targets
from spartan_core.distribution import LayerInfo, get_distribution
from spartan_core.layers import MaskTarget, find_targets, get_submodule, maskable_targets
from spartan_core.masking import DualGroup, MaskParametrization, Scratch
from spartan_core.methods import get_method
from spartan_core.nm import check_nm_tiling, nm_target
from spartan_core.schedule import Schedule

logger = logging.getLogger(__name__)

STATE_VERSION = 1


@dataclass(frozen=True)
class SparsifierSummary:
    """Where a Sparsifier stands: its schedule at the current step and what its masks keep.

    Attributes:
        step: completed ``step()`` calls.
        cost_fraction: the scheduled kept fraction of the whole model's maskable cost.
        kept_cost_fraction: the fraction the hard masks keep now (dense layers at full cost).
        beta: the scheduled inverse temperature.
        kept_weights: weights the hard masks keep, over the masked layers.
        masked_weights: weights of the masked layers.
        dual_iterations: the most solver iterations a group's last dual solve took.
        frozen: whether the masks are frozen (fine-tuning).
    """

    step: int
    cost_fraction: float
    kept_cost_fraction: float
    beta: float
    kept_weights: int
    masked_weights: int
    dual_iterations: int
    frozen: bool


class Sparsifier:
    """Masks a model's Linear / Conv2d / MultiheadAttention in-projection weights.

    Args:
        model: the model; its module classes are unchanged (masks are parametrizations).
        config: what to sparsify and how (see ``SparsifierConfig``).
        total_steps: the number of optimizer steps of the whole run (T of the schedules).

    Raises:
        ValueError: for a bad config or ``total_steps``, a model with no selected maskable
            layer, a block shape that does not tile a layer (naming it), N:M groups that do
            not tile some layers (naming them all), a layer already masked, a cost model that
            cannot price a layer, an unreachable target, or a target that N:M cannot give.
    """

    def __init__(self, model: nn.Module, config: SparsifierConfig, total_steps: int) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(config, SparsifierConfig):
            raise ValueError(f"config: expected a SparsifierConfig, got {type(config).__name__}")
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"total_steps: expected a positive integer, got {total_steps!r}")
        self.model = model
        self.config = config
        self.total_steps = total_steps
        self.method = get_method(config.method)
        self._distribution = get_distribution(config.distribution)
        self.cost_model: CostModel = config.cost_model

        # Validate everything before touching the model.
        self.targets: list[MaskTarget] = find_targets(model, config.include, config.exclude)
        if config.nm is not None:
            check_nm_tiling(self.targets, config.nm)
        for target in self.targets:
            block_grid(target, config.block_shape)
            if parametrize.is_parametrized(
                get_submodule(model, target.module_name), target.param_name
            ):
                raise ValueError(
                    f"model: {target.name} already carries a parametrization "
                    "(finalize the previous Sparsifier first)"
                )
        costs = self._price(model, self.targets, config.block_shape, "masked", nm=config.nm)
        self.masked_cost = sum(
            costs[t.name].per_entry * num_entries(t, config.block_shape) for t in self.targets
        )
        selected = {t.name for t in self.targets}
        dense = [t for t in maskable_targets(model) if t.name not in selected]
        self.dense_cost = self._dense_cost(model, dense)
        if config.nm is None:
            assert config.target is not None  # the config requires it without nm
            self.target = float(config.target)
            self._check_reachable(min(costs[t.name].per_entry for t in self.targets))
        else:
            self.target = nm_target(config.nm, self.masked_cost, self.dense_cost, config.target)
        self._infos = [
            LayerInfo(t.name, t.shape, costs[t.name].per_entry * num_entries(t, config.block_shape))
            for t in self.targets
        ]
        self.schedule = Schedule(
            total_steps,
            self.target,
            beta_init=config.beta_init,
            beta_max=config.beta_max_effective,
            warmup_frac=config.warmup_frac,
            finetune_frac=config.finetune_frac,
            annealing=config.annealing,
            nm=config.nm,
        )

        self.layers: list[MaskParametrization] = []
        self._scratch = Scratch()
        self._groups: dict[tuple[int, ...], DualGroup] = {}
        self._step = 0
        self._frozen = False
        self._finalized = False
        self._hooks: list[RemovableHandle] = []
        ready = False
        try:
            self._attach(costs)
            self._hooks = [
                model.register_forward_pre_hook(self._before_forward),
                model.register_forward_hook(self._after_forward, always_call=True),
            ]
            self._update(0)  # e.g. NaN weights fail here: leave the model as it was
            if self._step >= self.freeze_step:
                self._freeze()
            ready = True
        finally:
            if not ready:
                self._detach()
                self.layers = []
                for hook in self._hooks:
                    hook.remove()

    # ----------------------------------------------------------------- schedule

    @property
    def current_step(self) -> int:
        """Completed ``step()`` calls: the schedule step of the masks in use."""
        return self._step

    @property
    def warmup_steps(self) -> int:
        """W: the step from which the cost fraction is at its target."""
        return self.schedule.warmup_steps

    @property
    def freeze_step(self) -> int:
        """F: the step at which the masks freeze (fine-tune start)."""
        return self.schedule.freeze_step

    @property
    def cost_fraction(self) -> float:
        """Scheduled kept fraction of the whole model's maskable cost at the current step."""
        return self.schedule.cost_fraction(self._step)

    @property
    def beta(self) -> float:
        """Scheduled inverse temperature at the current step."""
        return self.schedule.beta(self._step)

    @property
    def frozen(self) -> bool:
        """Whether the masks are frozen (fine-tuning)."""
        return self._frozen

    @property
    def finalized(self) -> bool:
        return self._finalized

    # ----------------------------------------------------------------- training

    def step(self) -> None:
        """Advance the schedule by one step and recompute the masks (call after optimizer.step).

        Raises:
            RuntimeError: after ``finalize()``.
            FloatingPointError: naming the layers, when a masked weight is no longer finite
                (training diverged).
        """
        self._check_live()
        self._step += 1
        if self._frozen:
            return
        try:
            self._update(self._step)
        except ValueError:
            bad = [
                layer.name
                for index, layer in enumerate(self.layers)
                if not torch.isfinite(self._original(index)).all()
            ]
            if not bad:
                raise
            raise FloatingPointError(
                f"step {self._step}: the weights of {', '.join(bad)} are no longer finite "
                "(training diverged)"
            ) from None
        if self._step >= self.freeze_step:
            self._freeze()

    def finalize(self) -> nn.Module:
        """Bake the masks into the weights and remove every parametrization and hook.

        Each weight becomes exactly what its layer used in the forward pass: w * M with M the
        frozen mask, or (w * m) * h before the freeze (w * h for the hard baselines); entries
        outside the hard mask are exactly zero. Module classes are restored.

        Returns:
            the model, now plain torch modules.
        """
        self._check_live()
        with torch.no_grad():
            for group in self._groups.values():
                group.close_node()
            for index, layer in enumerate(self.layers):
                original = self._original(index)
                original.copy_(self.method.forward(original, layer))
        self._detach()
        for hook in self._hooks:
            hook.remove()
        self._finalized = True
        logger.info("finalized: kept cost fraction %.6f", self.kept_cost_fraction())
        return self.model

    # ----------------------------------------------------------------- reading

    def masks(self) -> dict[str, Tensor]:
        """Hard masks (bool, weight-shaped), keyed by fully qualified parameter name."""
        return {
            layer.name: expand_block_mask(
                layer.hard.reshape(-1), layer.weight_shape, self.config.block_shape
            ).clone()
            for layer in self.layers
        }

    def mask_values(self) -> dict[str, Tensor]:
        """The multipliers the forward applies to each weight (float, weight-shaped)."""
        values = {}
        for layer in self.layers:
            mask = layer.hard.to(self._dtype(layer))
            if layer.soft is not None and layer.scaled_forward:
                mask = mask * layer.soft
            values[layer.name] = layer.expand(mask)
        return values

    def layer_densities(self) -> dict[str, float]:
        """Kept fraction of each masked layer's entries (blocks for block sparsity)."""
        return {layer.name: int(layer.hard.sum()) / layer.n_entries for layer in self.layers}

    def kept_cost_fraction(self) -> float:
        """Kept fraction of the whole model's maskable cost under the current hard masks."""
        return self._kept_cost_fraction(self._kept_entries())

    def summary(self) -> SparsifierSummary:
        """The schedule at the current step and what the hard masks keep."""
        kept = self._kept_entries()
        weights_per_entry = [layer.block_shape[0] * layer.block_shape[1] for layer in self.layers]
        return SparsifierSummary(
            step=self._step,
            cost_fraction=self.cost_fraction,
            kept_cost_fraction=self._kept_cost_fraction(kept),
            beta=self.beta,
            kept_weights=sum(k * w for k, w in zip(kept, weights_per_entry, strict=True)),
            masked_weights=sum(
                layer.n_entries * w for layer, w in zip(self.layers, weights_per_entry, strict=True)
            ),
            dual_iterations=max((g.iterations for g in self._groups.values()), default=0),
            frozen=self._frozen,
        )

    def stats(self) -> dict[str, float]:
        """Numbers worth logging: step, schedule values, kept cost fraction, solver work."""
        s = self.summary()
        return {
            "step": float(s.step),
            "cost_fraction": s.cost_fraction,
            "kept_cost_fraction": s.kept_cost_fraction,
            "beta": s.beta,
            "dual_iterations": float(s.dual_iterations),
            "frozen": float(s.frozen),
        }

    # ----------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume bit-identically, keyed by parameter name.

        Layers: the current masks, the layer floor's threshold and the scalars of their budget
        group (dual, hard threshold, value scale...), and for Spartan's N:M layers the duals of
        their groups (``nm_dual``). Restore the model's weights and the optimizer alongside.
        """
        layers = {}
        for index, layer in enumerate(self.layers):
            entry: dict[str, Any] = {"hard": layer.hard.detach().clone(), "floor": layer.floor}
            if layer.soft is not None:
                entry["soft"] = layer.soft.detach().clone()
            if layer.nm_dual is not None:
                entry["nm_dual"] = layer.nm_dual.detach().clone()
            group = self._group_of(index)
            entry["group"] = list(self._group_key(index))
            entry.update(group.scalars() if group is not None else {})
            layers[layer.name] = entry
        return {
            "version": STATE_VERSION,
            "step": self._step,
            "frozen": self._frozen,
            "total_steps": self.total_steps,
            "method": self.config.method,
            "block_shape": list(self.config.block_shape),
            "nm": None if self.config.nm is None else list(self.config.nm),
            "layers": layers,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state from ``state_dict()`` of a Sparsifier built the same way.

        Raises:
            ValueError: if the state does not match this Sparsifier (version, method, block
                shape, N:M, total steps or layer names and shapes).
        """
        self._check_live()
        for key, expected in (
            ("version", STATE_VERSION),
            ("method", self.config.method),
            ("total_steps", self.total_steps),
            ("block_shape", list(self.config.block_shape)),
            ("nm", None if self.config.nm is None else list(self.config.nm)),
        ):
            if state.get(key) != expected:
                raise ValueError(f"state: {key} is {state.get(key)!r}, expected {expected!r}")
        saved = state["layers"]
        names = [layer.name for layer in self.layers]
        if sorted(saved) != sorted(names):
            raise ValueError(f"state: layers {sorted(saved)} do not match {sorted(names)}")
        for layer in self.layers:
            entry = saved[layer.name]
            for key in ("hard", "soft", "nm_dual"):
                buffer = getattr(layer, key)
                if buffer is None:
                    continue
                if key not in entry or tuple(entry[key].shape) != tuple(buffer.shape):
                    raise ValueError(f"state: {key} mask of {layer.name} is missing or misshapen")
        with torch.no_grad():
            for layer in self.layers:
                entry = saved[layer.name]
                layer.hard.copy_(entry["hard"])
                layer.floor = float(entry.get("floor", -math.inf))  # states from before floors
                if layer.soft is not None:
                    layer.soft.copy_(entry["soft"])
                if layer.nm_dual is not None:
                    layer.nm_dual.copy_(entry["nm_dual"])
        self._groups = {}
        for layer in self.layers:
            entry = saved[layer.name]
            key = tuple(int(i) for i in entry["group"])
            if key not in self._groups:
                self._group(key).load_scalars(entry)
        self._step = int(state["step"])
        self._frozen = bool(state["frozen"])
        for layer in self.layers:
            layer.frozen = self._frozen

    # ----------------------------------------------------------------- internals

    def _price(
        self,
        model: nn.Module,
        targets: list[MaskTarget],
        block_shape: tuple[int, int],
        what: str,
        *,
        nm: tuple[int, int] | None = None,
    ) -> dict[str, LayerCost]:
        costs = price_targets(self.cost_model, model, targets, block_shape, nm)
        missing = [t.name for t in targets if t.name not in costs]
        if missing:
            raise ValueError(
                f"cost_model: {self.cost_model.name!r} gives no cost for {what} layer(s) {missing}"
            )
        return costs

    def _dense_cost(self, model: nn.Module, dense: list[MaskTarget]) -> float:
        """Cost of the maskable layers left dense, priced per weight (else per block)."""
        if not dense:
            return 0.0
        try:
            costs = self._price(model, dense, (1, 1), "unmasked", nm=None)
            return sum(costs[t.name].per_entry * t.numel for t in dense)
        except ValueError:
            block = self.config.block_shape
            costs = self._price(model, dense, block, "unmasked")
            return sum(costs[t.name].per_entry * num_entries(t, block) for t in dense)

    def _masked_fraction(self, fraction: float) -> float:
        """The masked layers' kept fraction that makes the whole model keep ``fraction``."""
        if fraction >= 1.0:
            return 1.0
        total = self.masked_cost + self.dense_cost
        return min(1.0, (fraction * total - self.dense_cost) / self.masked_cost)

    def _check_reachable(self, cheapest_entry: float) -> None:
        total = self.masked_cost + self.dense_cost
        budget = self.config.target * total - self.dense_cost
        if budget < cheapest_entry * (1.0 - 1e-9):
            raise ValueError(
                f"target: a kept cost fraction of {self.config.target} of the maskable cost "
                f"{total:.6g} ({self.cost_model.unit}) is unreachable: the layers left dense "
                f"cost {self.dense_cost:.6g} ({self.dense_cost / total:.4%}), leaving "
                f"{budget:.6g} for the masked layers whose cheapest entry costs "
                f"{cheapest_entry:.6g}; raise the target or mask more layers"
            )

    def _attach(self, costs: Mapping[str, LayerCost]) -> None:
        """Register one parametrization per target (the caller undoes them on failure)."""
        for target in self.targets:
            module = get_submodule(self.model, target.module_name)
            weight = getattr(module, target.param_name)
            per_entry = costs[target.name].per_entry
            layer = MaskParametrization(
                target,
                weight,
                self.config.block_shape,
                per_entry,
                self.method,
                self._scratch,
                nm=self.config.nm,
            )
            layer.scaled_forward = self.config.forward == "soft"
            layer.dense_grad = self.config.weight_grad == "dense"
            layer.group = DualGroup([layer])  # placeholder until the first update
            parametrize.register_parametrization(module, target.param_name, layer)
            self.layers.append(layer)

    def _detach(self) -> None:
        """Remove the parametrizations registered so far, keeping the (baked) weights."""
        for target, _layer in zip(self.targets, self.layers, strict=False):
            module = get_submodule(self.model, target.module_name)
            if parametrize.is_parametrized(module, target.param_name):
                parametrize.remove_parametrizations(
                    module, target.param_name, leave_parametrized=False
                )

    def _original(self, index: int) -> Tensor:
        target = self.targets[index]
        module = get_submodule(self.model, target.module_name)
        return module.parametrizations[target.param_name].original

    def _group_key(self, index: int) -> tuple[int, ...]:
        for key in self._groups:
            if index in key:
                return key
        return (index,)

    def _group_of(self, index: int) -> DualGroup | None:
        return self._groups.get(self._group_key(index))

    def _update(self, step: int) -> None:
        """Recompute every mask for the schedule at ``step``."""
        c = self.config
        beta = self.schedule.beta(step)
        if c.nm is not None:
            kept = self.schedule.nm_kept(step)
            with torch.no_grad():
                for index in range(len(self.layers)):
                    weight = self._original(index).detach()
                    group = self._group((index,))
                    self.method.update_nm(group, weight, kept, beta, value_scale=c.value_scale)
            logger.debug(
                "step %d: N:M kept %.6f per group of %d, beta %.4g", step, kept, c.nm[1], beta
            )
            return
        fraction = self._masked_fraction(self.schedule.cost_fraction(step))
        with torch.no_grad():
            for budget in self._distribution(self._infos, fraction):
                weights = [self._original(i).detach() for i in budget.layers]
                self.method.update(
                    self._group(budget.layers),
                    weights,
                    budget.fraction,
                    beta,
                    value_scale=c.value_scale,
                    layer_floor=c.layer_floor,
                )
        logger.debug(
            "step %d: fraction %.6f beta %.4g groups %d", step, fraction, beta, len(self._groups)
        )

    def _group(self, key: tuple[int, ...]) -> DualGroup:
        """The budget group of the layers ``key`` (made on first use); its layers point to it."""
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = DualGroup([self.layers[i] for i in key])
        for layer in group.layers:
            layer.group = group
        return group

    def _kept_entries(self) -> list[int]:
        """Entries each layer's hard mask keeps."""
        return [int(layer.hard.sum()) for layer in self.layers]

    def _kept_cost_fraction(self, kept: list[int]) -> float:
        total = sum(layer.cost * k for layer, k in zip(self.layers, kept, strict=True))
        return (total + self.dense_cost) / (self.masked_cost + self.dense_cost)

    def _freeze(self) -> None:
        for layer in self.layers:
            self.method.freeze(layer)
        self._frozen = True
        logger.info("step %d: masks frozen for fine-tuning", self._step)

    def _before_forward(self, module: nn.Module, args: Any) -> None:
        enabled = torch.is_grad_enabled() and module.training and not self._frozen
        for key, group in self._groups.items():
            group.close_node()
            if enabled:
                self.method.dual_node(group, [self._original(i) for i in key])

    def _after_forward(self, module: nn.Module, args: Any, output: Any) -> None:
        for group in self._groups.values():
            group.close_node()

    def _check_live(self) -> None:
        if self._finalized:
            raise RuntimeError("Sparsifier: already finalized")

    @staticmethod
    def _dtype(layer: MaskParametrization) -> torch.dtype:
        return layer.soft.dtype if layer.soft is not None else torch.float32

    def __repr__(self) -> str:
        return (
            f"Sparsifier(method={self.config.method!r}, target={self.target:.6g}, "
            f"layers={len(self.layers)}, step={self._step}/{self.total_steps})"
        )
