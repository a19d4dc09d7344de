"""Typed, validated configuration of a ``Sparsifier``.

Strings naming a method or a distribution are checked here and turned into objects by the
registries' ``get_*`` functions. The cost model is an object: callers turn a name into one
with ``cost_models.get(name)`` (spartan_core imports no cost model package; its own
``ParamsCost`` is the default).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from spartan_core.blocks import BlockShape
from spartan_core.costs import CostModel, ParamsCost
from spartan_core.distribution import DISTRIBUTIONS
from spartan_core.methods import METHODS
from spartan_core.nm import NMShape, validate_nm

ANNEALINGS = ("linear", "cosine")
VALUE_SCALES = ("mean", "none")
FORWARDS = ("hard", "soft")
WEIGHT_GRADS = ("dense", "soft")
DEFAULT_BETA_INIT = 10.0
DEFAULT_BETA_MAX = 10.0  # blocks (times sqrt(r * c))
DEFAULT_BETA_MAX_UNSTRUCTURED = 3.0  # 1x1 blocks and N:M (docs/accuracy.md, issue 12)
DEFAULT_LAYER_FLOOR = 0.4  # global distribution, not N:M (docs/accuracy.md, issue 12)


@dataclass(frozen=True, kw_only=True)
class SparsifierConfig:
    """How far and how to sparsify a model.

    Budget accounting: ``target`` is the kept fraction f of the cost of ALL maskable-type
    weights of the model (every Linear / Conv2d weight and MultiheadAttention in-projection
    found by ``spartan_core.layers.maskable_targets``; biases, norms and per-layer fixed costs
    are not counted). When ``include`` / ``exclude`` leave some maskable layers dense, their
    cost counts at full density and the masked layers keep a lower fraction, so that the whole
    model reaches f; when even removing every masked entry cannot reach f the Sparsifier
    raises ValueError with the numbers. Under the ``params`` cost model f = 1 - sparsity.

    Beta scale: the published method applies beta to raw unit values u = v / c, so its effect
    depends on the magnitude of the weights (at |w| ~ 0.05 and beta 10 the soft mask is nearly
    flat). With ``value_scale="mean"`` (the default) the unit values of each budget group are
    divided by a detached scale, their cost-weighted mean sum(v) / sum(c), before the soft
    top-k, which makes beta dimensionless: beta = 10 means the soft mask goes from 0.27 to 0.73
    over +-0.1 mean unit values around the dual. ``value_scale="none"`` is the published
    behaviour. The hard mask does not depend on the scale. For N:M layers S is the layer's
    mean unit value (every layer is its own budget).

    N:M structure (``nm=(n, m)``; 2:4 is what NVIDIA sparse tensor cores run): in every group
    of m consecutive weights along the input dimension of each masked weight viewed as
    (out, in) (conv kernels flattened to in * kh * kw), exactly n are kept after finalize;
    every masked layer's input size must be a multiple of m (one ValueError names every layer
    that is not; exclude them). Every group is its own budget, so the masked layers keep n / m
    of their cost by construction and ``target`` cannot move that: leave it out (None) and
    the Sparsifier uses the whole-model fraction n / m allows, (n / m * masked + dense) /
    (masked + dense) under the cost model, the maskable layers left dense by include/exclude
    counted at full cost as above; a target that is given must equal that fraction (within
    0.001) or the Sparsifier raises ValueError with both numbers. A cost budget still weighs
    layers through include/exclude: which layers are N:M and which stay dense.
    ``distribution`` ``global`` and ``uniform`` mean the same under N:M, ``erk`` and a
    ``layer_floor`` are errors, and ``block_shape`` must be (1, 1).

    N:M schedule: the kept fraction f anneals from 1 to n / m over the warm-up as for the
    other structures, applied per group: the soft budget of each group is k = f * m, the hard
    mask keeps the ceil(k) largest |w| of each group (ties to the lower index), so exactly n
    from the end of warm-up on, and the masks freeze at fine-tune start as usual. All three
    methods take N:M; Spartan's soft mask solves one dual per group, all groups of a layer
    together (``spartan_core.soft_topk_nm``), and nothing couples groups or layers.

    Attributes:
        method: ``spartan`` (soft top-k masks), ``topkast`` (hard mask, straight-through
            backward) or ``magnitude`` (gradual magnitude pruning).
        target: the kept cost fraction f in (0, 1]; 0.1 means 90% sparse under ``params``.
            Required unless ``nm`` is given (see "N:M structure" above).
        distribution: how the budget is spread over layers: ``global`` (one budget and one
            dual variable over all masked layers), ``uniform`` (the same fraction per layer) or
            ``erk`` (Erdos-Renyi-Kernel fractions, as in RigL).
        block_shape: (r, c) blocks over each weight viewed as (out, in), conv kernels
            flattened into ``in``; (1, 1) is unstructured.
        nm: (n, m) integers with 1 <= n < m for N:M structure (see above); None (the
            default) for unstructured or block sparsity.
        beta_init: inverse temperature of the soft top-k at step 0. The published default
            is 1; None (the default) selects min(10, ``beta_max``): 3 for unstructured and
            N:M runs, held constant, and 10 for blocks, annealed to 10 * sqrt(r * c). With
            the soft forward, beta 1 leaves the mean-scaled soft mask at 0.45-0.6 on kept
            weights at the end of warm-up and short runs at 95-98% sparsity collapse
            (docs/accuracy_digits.md: 8 epochs, 4x4 blocks, 98% sparse: 11.0% at beta_init 1,
            92.1% at 10).
        beta_max: inverse temperature reached at fine-tune start for 1x1 blocks; it is
            multiplied by sqrt(r * c) for blocks (block values average over more weights, so
            they spread less). None (the default) selects 3 for unstructured and N:M runs and
            10 for blocks: with the hard forward, beta only shapes the soft top-k's implicit
            gradient, which at beta 10 multiplies the gradient of weights near the threshold
            several times; unstructured runs lost 1.4-3 points to beta 3 on the ViT and the
            plain MLPs of docs/accuracy.md, 4x4 blocks gained from the larger beta.
        warmup_frac: fraction of the steps over which f anneals from 1 to ``target``.
        finetune_frac: fraction of the steps, at the end, trained with the mask frozen.
        annealing: shape of both schedules, ``linear`` or ``cosine`` (see ``schedule``).
        include: glob patterns over module names to mask (all maskable layers when empty).
        exclude: glob patterns over module names to leave dense.
        cost_model: a ``CostModel`` object pricing each kept entry; the default,
            ``ParamsCost``, prices one unit per weight. ``cost_models.get(name)`` builds the
            registered ones (flops, memory, latency tables...) by name.
        value_scale: ``mean`` or ``none``, see "Beta scale" above.
        forward: Spartan's forward weight before the freeze: ``hard``, w * h (the default),
            or ``soft``, (w * m) * h as published. In a network without normalisation the
            soft mask's shrinkage of the kept weights (mean m about 0.5-0.8 on them) changes
            the function it trains; batch norm hides it (docs/accuracy.md, "Why the defaults
            depart from the paper"). The frozen mask and ``finalize()`` follow: h, or m * h.
            A plain CNN (no normalisation) with block sparsity trained better soft
            (docs/accuracy_digits.md, column *spartan, soft forward*: with the hard forward
            one seed of three collapsed at 95% and at 98% with 4x4 blocks), the normalised one
            of the suite worse (docs/accuracy_forward_auto.md: 4x4 blocks at 98%, 88.1% soft
            against 97.9% hard in docs/accuracy.md).
        weight_grad: the gradient reaching w through the masked product: ``dense``, G (the
            default, as Top-KAST's straight-through: pruned weights keep learning at the full
            rate), or ``soft``, G * m as published (a pruned weight learns at the rate of its
            small m). The soft top-k's implicit gradient through m is added in both cases.
        layer_floor: under the ``global`` distribution, every masked layer keeps at least
            about this share of the group's kept fraction f, counted in entries (its
            largest), so that no layer is pruned away and an expensive layer is not starved;
            the rest of the budget is shared globally. None (the default) selects 0.4, and 0
            under N:M (every layer keeps n / m there); 0 is the published behaviour. Without
            a floor, batch-normalised layers (whose weight scale the loss ignores) can be
            pruned away: the suite's BN CNN at 98% with 4x4 blocks kept no block of conv3
            under spartan and fell to 10% (97.8-98.6% with the floor), and the floor removed
            the short-budget collapses and gained 2-5 points in the matched cost-budget runs
            of docs/layer_floor/accuracy.md. Its mask-update cost is small (ResNet-50, one
            thread: 1.66x dense at batch 4 and 1.08x at 32, against 1.79x and 1.06x without).
    """

    method: str = "spartan"
    target: float | None = None  # None: only with nm (n / m of the masked layers)
    distribution: str = "global"
    block_shape: BlockShape = (1, 1)
    nm: NMShape | None = None
    beta_init: float | None = None  # None: min(DEFAULT_BETA_INIT, beta_max)
    beta_max: float | None = None  # None: by structure (DEFAULT_BETA_MAX*)
    warmup_frac: float = 0.2
    finetune_frac: float = 0.2
    annealing: str = "cosine"
    include: tuple[str, ...] = field(default=())
    exclude: tuple[str, ...] = field(default=())
    cost_model: CostModel = field(default_factory=ParamsCost)
    value_scale: str = "mean"
    layer_floor: float | None = None  # None: DEFAULT_LAYER_FLOOR, 0 under nm
    forward: str = "hard"  # "soft": the published (w * m) * h
    weight_grad: str = "dense"  # "soft": the published G * m

    def __post_init__(self) -> None:
        _choice("method", self.method, tuple(METHODS))
        _choice("distribution", self.distribution, tuple(DISTRIBUTIONS))
        _choice("annealing", self.annealing, ANNEALINGS)
        _choice("value_scale", self.value_scale, VALUE_SCALES)
        _choice("forward", self.forward, FORWARDS)
        _choice("weight_grad", self.weight_grad, WEIGHT_GRADS)
        if self.target is None and self.nm is None:
            raise ValueError("target: expected a kept cost fraction in (0, 1], got None")
        if self.target is not None and (not _is_real(self.target) or not 0.0 < self.target <= 1.0):
            raise ValueError(
                f"target: expected a kept cost fraction in (0, 1], got {self.target!r}"
            )
        shape = tuple(self.block_shape) if isinstance(self.block_shape, Sequence) else ()
        if len(shape) != 2 or any(isinstance(b, bool) or int(b) != b or b < 1 for b in shape):
            raise ValueError(
                f"block_shape: expected two positive integers, got {self.block_shape!r}"
            )
        object.__setattr__(self, "block_shape", (int(shape[0]), int(shape[1])))
        if self.nm is not None:
            object.__setattr__(self, "nm", validate_nm(self.nm))
        if self.beta_max is None:
            unstructured = self.block_shape == (1, 1)
            default = DEFAULT_BETA_MAX_UNSTRUCTURED if unstructured else DEFAULT_BETA_MAX
            object.__setattr__(self, "beta_max", default)
        if self.layer_floor is None:
            floor = 0.0 if self.nm is not None else DEFAULT_LAYER_FLOOR
            object.__setattr__(self, "layer_floor", floor)
        if self.beta_init is None:
            valid = _is_real(self.beta_max) and 0.0 < self.beta_max < math.inf
            beta_max = self.beta_max if valid else DEFAULT_BETA_INIT  # beta_max's error below
            object.__setattr__(self, "beta_init", min(DEFAULT_BETA_INIT, beta_max))
        for name in ("beta_init", "beta_max"):
            value = getattr(self, name)
            if not _is_real(value) or not 0.0 < value < math.inf:
                raise ValueError(f"{name}: expected a positive finite number, got {value!r}")
        if self.beta_max < self.beta_init:
            raise ValueError(
                f"beta_max: must be at least beta_init={self.beta_init}, got {self.beta_max!r}"
            )
        if not _is_real(self.layer_floor) or not 0.0 <= self.layer_floor < 1.0:
            raise ValueError(
                f"layer_floor: expected a fraction in [0, 1), got {self.layer_floor!r}"
            )
        for name in ("warmup_frac", "finetune_frac"):
            value = getattr(self, name)
            if not _is_real(value) or not 0.0 <= value < 1.0:
                raise ValueError(f"{name}: expected a fraction in [0, 1), got {value!r}")
        if self.warmup_frac + self.finetune_frac >= 1.0:
            raise ValueError(
                f"finetune_frac: warmup_frac + finetune_frac must be below 1, got "
                f"{self.warmup_frac} + {self.finetune_frac}"
            )
        for name in ("include", "exclude"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(p, str) and p for p in value):
                raise ValueError(f"{name}: expected a list of glob patterns, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        if not isinstance(self.cost_model, CostModel):
            raise ValueError(
                "cost_model: expected a CostModel object (cost_models.get(name) builds one by "
                f"name), got {self.cost_model!r}"
            )
        if self.nm is not None:
            self._check_nm()

    def _check_nm(self) -> None:
        if self.block_shape != (1, 1):
            raise ValueError(
                f"nm: N:M keeps single weights, so block_shape must be (1, 1) with nm; got "
                f"nm={self.nm} and block_shape={self.block_shape}"
            )
        if self.distribution == "erk":
            raise ValueError(
                f"distribution: 'erk' gives layers different fractions, but nm={self.nm} keeps "
                "n/m of every layer; use 'global' or 'uniform'"
            )
        if self.layer_floor > 0.0:
            raise ValueError(
                f"layer_floor: nm={self.nm} keeps n/m of every layer, so a floor does not apply; "
                f"got {self.layer_floor!r}"
            )

    @classmethod
    def from_sparsity(cls, sparsity: float, **kwargs: Any) -> SparsifierConfig:
        """A config removing the fraction ``sparsity`` of the maskable weights (params cost).

        Raises:
            ValueError: if ``sparsity`` is outside [0, 1) or a cost model other than params is
                given (sparsity is a parameter count).
        """
        if not _is_real(sparsity) or not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity: expected a fraction in [0, 1), got {sparsity!r}")
        cost_model = kwargs.get("cost_model", ParamsCost())
        if not isinstance(cost_model, ParamsCost):
            raise ValueError(
                f"cost_model: a sparsity target needs the params cost model, got {cost_model!r}"
            )
        if "target" in kwargs:
            raise ValueError("target: give either sparsity or target, not both")
        return cls(target=1.0 - float(sparsity), **kwargs)

    @property
    def beta_max_effective(self) -> float:
        """beta_max multiplied by sqrt(r * c), the value the schedule reaches."""
        return float(self.beta_max) * math.sqrt(self.block_shape[0] * self.block_shape[1])


def _choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {list(choices)}, got {value!r}")


def _is_real(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
