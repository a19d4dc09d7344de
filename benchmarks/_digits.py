"""Shared pieces of the accuracy benchmark: the digits split, two small models, one training run.

The data are the 1,797 real 8x8 handwritten digits scikit-learn ships (no download), split once
into 1,437 training and 360 validation images, stratified, with a fixed seed, whatever the
training seed. Pixels (0..16) are scaled to zero mean and unit variance with the training
split's statistics.

Both models leave their first and last layer dense in every run (the usual practice in sparse
training papers, and required here: a 4x4 block does not tile the 1-channel 3x3 stem (32 x 9)
or the 10-class head (10 x 256)). Sparsity is the fraction of zero weights in the masked
(hidden) layers; the whole-model figure is reported alongside.
"""

from __future__ import annotations

import functools
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spartan_core import Sparsifier, SparsifierConfig
from spartan_core.layers import maskable_targets
from spartan_core.masking import MaskParametrization
from spartan_core.methods import METHODS, Spartan, register_method
from spartan_core.schedule import warmup_steps

SPLIT_SEED = 0
VAL_SIZE = 360
# Layers left dense per model; "mlp16" masks every layer (its 16-way head, 6 outputs unused,
# lets 4x4 blocks tile it), the setting where soft-mask shrinkage shows (docs/accuracy.md).
DENSE_LAYERS = {
    "cnn": ("stem", "head"),
    "mlp": ("head",),
    "mlp16": (),
    "genmlp": ("head",),
    "cnnbn": ("stem", "head"),
    "vit": ("patch_embed.proj", "head"),
}
# The generated task of the harder suite: sklearn.datasets.make_classification (no download)
GEN_TASK = {
    "n_samples": 6000,
    "n_features": 32,
    "n_informative": 20,
    "n_redundant": 6,
    "n_classes": 10,
    "n_clusters_per_class": 3,
    "class_sep": 1.2,
    "flip_y": 0.02,
    "random_state": 7,
}
GEN_TRAIN = 5000  # the first 5,000 samples train, the last 1,000 validate


@dataclass(frozen=True)
class Digits:
    """The fixed split: images (N, 1, 8, 8) float32, labels (N,) int64."""

    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor


@functools.cache
def load_digits_split() -> Digits:
    """The 1,437 / 360 stratified split of scikit-learn's digits, standardised."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x_tr, x_va, y_tr, y_va = train_test_split(
        data.images,
        data.target,
        test_size=VAL_SIZE,
        stratify=data.target,
        random_state=SPLIT_SEED,
    )
    x_tr = torch.tensor(x_tr, dtype=torch.float32).unsqueeze(1)  # (1437, 1, 8, 8)
    x_va = torch.tensor(x_va, dtype=torch.float32).unsqueeze(1)  # (360, 1, 8, 8)
    mean, std = x_tr.mean(), x_tr.std()
    return Digits(
        (x_tr - mean) / std,
        torch.tensor(y_tr, dtype=torch.int64),
        (x_va - mean) / std,
        torch.tensor(y_va, dtype=torch.int64),
    )


@functools.cache
def load_generated_split() -> Digits:
    """``GEN_TASK`` from make_classification: 5,000 training and 1,000 validation samples of
    32 features (x (N, 32) standardised with the training statistics)."""
    from sklearn.datasets import make_classification

    x, y = make_classification(**GEN_TASK)
    x = torch.tensor(x, dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.int64)
    mean, std = x[:GEN_TRAIN].mean(0), x[:GEN_TRAIN].std(0)
    x = (x - mean) / std
    return Digits(x[:GEN_TRAIN], y[:GEN_TRAIN], x[GEN_TRAIN:], y[GEN_TRAIN:])


def load_data(model: str) -> Digits:
    """The split a model trains on: the generated task for ``genmlp``, digits otherwise."""
    return load_generated_split() if model == "genmlp" else load_digits_split()


class SmallCNN(nn.Module):
    """Three 3x3 convolutions and a linear head, 57,856 weights (the stem and head dense)."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1)  # (B, 32, 8, 8)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)  # (B, 64, 8, 8) -> pool 4x4
        self.conv3 = nn.Conv2d(2 * width, 2 * width, 3, padding=1)  # (B, 64, 4, 4) -> pool 2x2
        self.head = nn.Linear(2 * width * 4, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.stem(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.max_pool2d(F.relu(self.conv3(x)), 2)
        return self.head(x.flatten(1))


class SmallMLP(nn.Module):
    """64-256-256-10 with ReLU, 84,480 weights (the head dense)."""

    def __init__(self, hidden: int = 256, outputs: int = 10) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, outputs)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.fc1(x.flatten(1)))
        x = F.relu(self.fc2(x))
        return self.head(x)


class GenMLP(nn.Module):
    """32-256-256-10 with ReLU and no normalisation, 75,776 weights (the head dense)."""

    def __init__(self, hidden: int = 256) -> None:
        super().__init__()
        self.fc1 = nn.Linear(GEN_TASK["n_features"], hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, GEN_TASK["n_classes"])

    def forward(self, x: Tensor) -> Tensor:  # x (B, 32)
        return self.head(F.relu(self.fc2(F.relu(self.fc1(x)))))


class BNCNN(nn.Module):
    """``SmallCNN`` with batch norm after every convolution."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1, bias=False)  # (B, 32, 8, 8)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1, bias=False)  # (B, 64, 8, 8)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.conv3 = nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False)  # (B, 64, 4, 4)
        self.bn3 = nn.BatchNorm2d(2 * width)
        self.head = nn.Linear(2 * width * 2 * 2, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.stem(x)))
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = F.max_pool2d(F.relu(self.bn3(self.conv3(x))), 2)
        return self.head(x.flatten(1))


def small_vit() -> nn.Module:
    """A timm VisionTransformer (LayerNorm, random init) on 8x8 digits: 2x2 patches (16
    tokens and a class token), width 64, depth 2, 4 heads, MLP ratio 2."""
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        img_size=8,
        patch_size=2,
        in_chans=1,
        num_classes=10,
        embed_dim=64,
        depth=2,
        num_heads=4,
        mlp_ratio=2.0,
    )


MODELS = {
    "cnn": SmallCNN,
    "mlp": SmallMLP,
    "mlp16": functools.partial(SmallMLP, outputs=16),
    "genmlp": GenMLP,
    "cnnbn": BNCNN,
    "vit": small_vit,
}


class SpartanHardFreeze(Spartan):
    """Ablation only: spartan whose frozen mask is the hard mask h, not m * h.

    At fine-tune start the kept weights then jump from w * m to w (the soft mask's scaling of
    the kept weights is dropped) instead of being baked in.
    """

    name = "spartan_hardfreeze"

    def freeze(self, layer: MaskParametrization) -> None:
        with torch.no_grad():
            layer.soft.copy_(layer.hard)
        layer.frozen = True


if SpartanHardFreeze.name not in METHODS:
    register_method(SpartanHardFreeze)


@dataclass(frozen=True)
class Budget:
    """The training budget every method shares.

    SGD with Nesterov momentum 0.9, weight decay 5e-4, batch 128, learning rate warmed up
    linearly over the first epoch and then decayed with a cosine to zero.
    """

    epochs: int = 20
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    optimizer: str = "sgd"  # "sgd" (Nesterov) or "adamw"
    warmup_epochs: int = 1  # linear learning-rate warm-up


@dataclass(frozen=True)
class RunSpec:
    """One training run. ``sparsity`` is over the masked layers; None trains dense."""

    model: str
    method: str
    sparsity: float | None
    block: int
    seed: int
    budget: Budget = field(default_factory=Budget)
    nm: tuple[int, int] | None = None  # N:M instead of blocks (block is then 1)
    options: dict[str, Any] = field(default_factory=dict)  # extra SparsifierConfig fields
    cost_table: dict[str, Any] | None = None  # a latency table to price the result with
    cost_target: float | None = None  # train under cost_table to this kept cost fraction
    label: str = ""  # non-empty for the cost demonstration, the ablation and pretrained starts
    column: str = ""  # the grid column, when not the method's name (a variant of it)
    init_from: str = ""  # a state dict to start from (a dense run's save_to); "": random init
    save_to: str = ""  # where to write the trained (dense) model's state dict


def masked_names(model: nn.Module, model_name: str) -> list[str]:
    """Module names of the layers the benchmark masks (all maskable but the dense ones)."""
    dense = DENSE_LAYERS[model_name]
    return [t.module_name for t in maskable_targets(model) if t.module_name not in dense]


def whole_model_target(model: nn.Module, model_name: str, kept_fraction: float) -> float:
    """The kept fraction of all maskable weights that keeps ``kept_fraction`` of the masked."""
    masked = set(masked_names(model, model_name))
    sizes = {t.module_name: t.numel for t in maskable_targets(model)}
    n_masked = sum(n for name, n in sizes.items() if name in masked)
    n_dense = sum(n for name, n in sizes.items() if name not in masked)
    return (kept_fraction * n_masked + n_dense) / (n_masked + n_dense)


def evaluate(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Top-1 accuracy in [0, 1]."""
    model.eval()
    with torch.no_grad():
        correct = (model(x).argmax(1) == y).sum().item()
    model.train()
    return correct / len(y)


def run(spec: RunSpec, data: Digits | None = None) -> dict[str, Any]:
    """Train one model with one method, finalize it, and measure it.

    Returns:
        the spec's fields plus ``accuracy`` (validation top-1), ``masked_sparsity`` and
        ``model_sparsity`` (fraction of exactly-zero weights in the masked layers and in all
        maskable layers of the finalized model), ``kept_scale`` (mean multiplier the frozen
        mask applies to the kept weights: 1 for the hard methods, the mean soft mask value on
        the survivors for spartan), ``warmup_kept_scale`` (the same at the end of the
        warm-up, when the target is first reached), ``final_train_loss`` (mean over the last
        epoch), ``cost_fraction`` (the kept fraction of the whole model's
        maskable cost under ``cost_table``, when one is given) and ``seconds``.
    """
    data = data or load_data(spec.model)
    b = spec.budget
    torch.manual_seed(spec.seed)
    model = MODELS[spec.model]()
    if spec.init_from:
        model.load_state_dict(torch.load(spec.init_from, weights_only=True))
    steps_per_epoch = math.ceil(len(data.y_train) / b.batch_size)
    total = b.epochs * steps_per_epoch
    if b.optimizer == "adamw":
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(
            model.parameters(), lr=b.lr, weight_decay=b.weight_decay
        )
    else:
        optimizer = torch.optim.SGD(
            model.parameters(),
            lr=b.lr,
            momentum=b.momentum,
            nesterov=True,
            weight_decay=b.weight_decay,
        )
    warmup = b.warmup_epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup, total))
    include = tuple(masked_names(model, spec.model))
    sparsifier = None
    cost_model = None
    if spec.cost_table is not None:
        import cost_models

        cost_model = cost_models.get("latency_table", table=spec.cost_table)
    if spec.method != "dense":
        if spec.cost_target is not None:
            assert cost_model is not None
            target = spec.cost_target
            options = {"cost_model": cost_model}
        elif spec.nm is not None:
            target = None  # the Sparsifier's n / m of the masked layers
            options = {"nm": spec.nm}
        else:
            assert spec.sparsity is not None
            target = whole_model_target(model, spec.model, 1.0 - spec.sparsity)
            options = {}
        config = SparsifierConfig(
            method=spec.method,
            target=target,
            block_shape=(spec.block, spec.block),
            include=include,
            **options,
            **spec.options,
        )
        sparsifier = Sparsifier(model, config, total_steps=total)

    warmup_end = -1
    if sparsifier is not None:
        c = sparsifier.config
        warmup_end = warmup_steps(total, c.warmup_frac, c.finetune_frac)
    warmup_scale = 1.0
    gen = torch.Generator().manual_seed(spec.seed)
    start = time.perf_counter()
    model.train()
    step = 0
    for _ in range(b.epochs):
        order = torch.randperm(len(data.y_train), generator=gen)
        losses = []
        for i in range(0, len(order), b.batch_size):
            idx = order[i : i + b.batch_size]
            loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            if sparsifier is not None:
                try:
                    sparsifier.step()
                except FloatingPointError:
                    return _diverged(spec, data, time.perf_counter() - start)
                step += 1
                if step == warmup_end:
                    warmup_scale = _kept_scale(sparsifier)
    kept_scale = 1.0
    if sparsifier is not None:
        kept_scale = _kept_scale(sparsifier)
        sparsifier.finalize()
    seconds = time.perf_counter() - start
    if spec.save_to:
        partial = f"{spec.save_to}.{os.getpid()}.part"
        torch.save(model.state_dict(), partial)
        os.replace(partial, spec.save_to)

    result = asdict(spec)
    result.pop("budget")
    result.pop("save_to")
    result["init_from"] = "dense" if spec.init_from else ""
    result["epochs"] = b.epochs
    result["accuracy"] = evaluate(model, data.x_val, data.y_val)
    result["kept_scale"] = kept_scale
    result["warmup_kept_scale"] = warmup_scale
    result["final_train_loss"] = sum(losses) / len(losses)
    result.update(sparsity_of(model, include))
    if cost_model is not None:
        result["cost_fraction"] = achieved_cost_fraction(model, cost_model, spec.block, include)
    result["seconds"] = seconds
    return result


def _diverged(spec: RunSpec, data: Digits, seconds: float) -> dict[str, Any]:
    """The record of a run whose weights stopped being finite: a constant predictor's accuracy."""
    result = asdict(spec)
    result.pop("budget")
    result.pop("save_to")
    result["init_from"] = "dense" if spec.init_from else ""
    result["epochs"] = spec.budget.epochs
    result["accuracy"] = data.y_val.bincount().max().item() / len(data.y_val)
    result["diverged"] = True
    result["kept_scale"] = result["warmup_kept_scale"] = float("nan")
    result["final_train_loss"] = float("nan")
    result["masked_sparsity"] = result["model_sparsity"] = None  # no finite model to count
    result["layer_density"] = {}
    if spec.cost_table is not None:
        result["cost_fraction"] = float("nan")
    result["seconds"] = seconds
    return result


def _kept_scale(sparsifier: Sparsifier) -> float:
    """Mean multiplier the forward applies to the weights the hard mask keeps."""
    kept = torch.cat([v[v != 0].flatten() for v in sparsifier.mask_values().values()])
    return float(kept.mean()) if kept.numel() else 0.0


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def sparsity_of(model: nn.Module, masked: tuple[str, ...]) -> dict[str, Any]:
    """Exactly-zero weight fractions of the masked layers and of all maskable layers, and the
    nonzero fraction of each layer (``layer_density``)."""
    zeros = {True: 0, False: 0}
    sizes = {True: 0, False: 0}
    density = {}
    for t in maskable_targets(model):
        weight = getattr(model.get_submodule(t.module_name), t.param_name)
        key = t.module_name in masked
        n_zero = int((weight == 0).sum())
        zeros[key] += n_zero
        sizes[key] += weight.numel()
        density[t.module_name] = 1.0 - n_zero / weight.numel()
    return {
        "masked_sparsity": zeros[True] / sizes[True],
        "model_sparsity": (zeros[True] + zeros[False]) / (sizes[True] + sizes[False]),
        "layer_density": density,
    }


def achieved_cost_fraction(
    model: nn.Module, cost_model: Any, block: int, masked: tuple[str, ...]
) -> float:
    """Kept fraction of the whole model's maskable cost under ``cost_model``."""
    import cost_models

    report = cost_models.cost_report(
        model, cost_model, block_shape=(block, block), include=masked, latency_repeats=0
    )
    return report.totals.cost_fraction
