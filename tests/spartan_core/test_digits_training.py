"""Two epochs of Spartan on scikit-learn's digits: the target is met and accuracy is high."""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from torch import nn

from spartan_core import Sparsifier, SparsifierConfig

TARGET = 0.1  # keep 10% of the weights: 90% sparse
EPOCHS = 2
BATCH = 32


def _data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    split = int(0.8 * len(y))
    return x[:split], y[:split], x[split:], y[split:]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),  # (B, 32, 4, 4)
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


def test_two_epochs_of_spartan_on_digits_reach_the_target() -> None:
    torch.manual_seed(0)
    x_train, y_train, x_val, y_val = _data()
    model = _model()
    steps_per_epoch = -(-len(y_train) // BATCH)
    total = EPOCHS * steps_per_epoch
    sparsifier = Sparsifier(model, SparsifierConfig(method="spartan", target=TARGET), total)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    generator = torch.Generator().manual_seed(1)
    for _ in range(EPOCHS):
        model.train()
        order = torch.randperm(len(y_train), generator=generator)
        for i in range(0, len(order), BATCH):
            batch = order[i : i + BATCH]
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x_train[batch]), y_train[batch]).backward()
            optimizer.step()
            sparsifier.step()
    assert sparsifier.current_step == total and sparsifier.frozen
    sparsifier.finalize()

    weights = [m.weight for m in model if isinstance(m, nn.Linear | nn.Conv2d)]
    total_weights = sum(w.numel() for w in weights)
    kept = sum(int((w != 0).sum()) for w in weights)
    assert TARGET * total_weights <= kept < TARGET * total_weights + 1  # exactly the target
    model.eval()
    with torch.no_grad():
        accuracy = (model(x_val).argmax(1) == y_val).float().mean().item()
    assert accuracy > 0.8, accuracy  # chance is 0.1
