"""Regression guard for the method itself: 95%-sparse Spartan still learns real digits.

A small MLP trained for a few epochs on scikit-learn's real 8x8 digits (no download) with
``Sparsifier(method="spartan", target=0.05)`` must end above 80% validation accuracy (dense
reaches about 97%, the defaults about 93%; a broken mask gradient, schedule or budget, or the
raw-beta ``value_scale="none"``, lands near chance) with exactly the requested number of
weights left nonzero; the same with 4x4 blocks over every layer (whole blocks kept).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spartan_core import Sparsifier, SparsifierConfig

EPOCHS = 12
BATCH = 128


@pytest.fixture(scope="module")
def digits() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x_tr, x_va, y_tr, y_va = train_test_split(
        data.data, data.target, test_size=360, stratify=data.target, random_state=0
    )
    x_tr = torch.tensor(x_tr, dtype=torch.float32)  # (1437, 64)
    x_va = torch.tensor(x_va, dtype=torch.float32)  # (360, 64)
    mean, std = x_tr.mean(), x_tr.std()
    return (
        (x_tr - mean) / std,
        torch.tensor(y_tr),
        (x_va - mean) / std,
        torch.tensor(y_va),
    )


def mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)
    )


def train(
    model: nn.Module, config: SparsifierConfig, data: tuple[Tensor, Tensor, Tensor, Tensor]
) -> tuple[Sparsifier, float]:
    """Train with the Sparsifier, finalize, and return it with the validation accuracy."""
    x_tr, y_tr, x_va, y_va = data
    steps_per_epoch = math.ceil(len(y_tr) / BATCH)
    total = EPOCHS * steps_per_epoch
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=total)
    sparsifier = Sparsifier(model, config, total_steps=total)
    gen = torch.Generator().manual_seed(0)
    for _ in range(EPOCHS):
        order = torch.randperm(len(y_tr), generator=gen)
        for i in range(0, len(order), BATCH):
            idx = order[i : i + BATCH]
            loss = F.cross_entropy(model(x_tr[idx]), y_tr[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            sparsifier.step()
    sparsifier.finalize()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x_va).argmax(1) == y_va).float().mean().item()
    return sparsifier, accuracy


def test_spartan_95_percent_sparse_learns_digits(
    digits: tuple[Tensor, Tensor, Tensor, Tensor],
) -> None:
    torch.manual_seed(0)
    model = mlp()
    config = SparsifierConfig(method="spartan", target=0.05)  # every layer, one global budget

    _, accuracy = train(model, config, digits)

    weights = [m.weight for m in model if isinstance(m, nn.Linear)]
    assert all(type(m) in (nn.Linear, nn.ReLU) for m in model)  # plain modules after finalize
    total = sum(w.numel() for w in weights)
    nonzero = sum(int((w != 0).sum()) for w in weights)
    # Hard top-k keeps weights until their cumulative cost first reaches the budget.
    expected = math.ceil(0.05 * total)
    assert nonzero == expected, f"kept {nonzero} weights, expected {expected} of {total}"
    assert accuracy > 0.80, f"validation accuracy {accuracy:.3f} at 95% sparsity"


def test_spartan_95_percent_sparse_4x4_blocks_every_layer_learns_digits(
    digits: tuple[Tensor, Tensor, Tensor, Tensor],
) -> None:
    # beta starting at 10: with beta_init=1 this short budget leaves the soft mask nearly flat
    # during warm-up and the network does not recover (docs/accuracy.md, "Short budget").
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 16)
    )  # a 16-way head (6 classes unused) so that 4x4 blocks tile every layer
    config = SparsifierConfig(method="spartan", target=0.05, block_shape=(4, 4), beta_init=10.0)

    _, accuracy = train(model, config, digits)

    weights = [m.weight for m in model if isinstance(m, nn.Linear)]
    total_blocks = sum(w.numel() for w in weights) // 16
    kept_blocks = sum(
        int((w.reshape(w.shape[0] // 4, 4, -1, 4).abs().sum(dim=(1, 3)) != 0).sum())
        for w in weights
    )
    assert kept_blocks == math.ceil(0.05 * total_blocks)
    assert all(int((w != 0).sum()) % 16 == 0 for w in weights)  # whole blocks only
    assert accuracy > 0.80, f"validation accuracy {accuracy:.3f} at 95% sparsity (4x4 blocks)"
