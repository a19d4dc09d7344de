"""Tiny deterministic models shared by the cost model tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn

INPUT_SIZE = (3, 8, 8)


class TinyConvNet(nn.Module):
    """conv (3->8, 3x3, pad 1) -> conv (8->16, 3x3, stride 2, pad 1) -> pool -> fc (16->10)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        return self.fc(self.pool(x).flatten(1))


@pytest.fixture
def tiny_convnet() -> TinyConvNet:
    torch.manual_seed(0)
    return TinyConvNet()


def twin_linear(cols: int = 32) -> nn.Sequential:
    """Two Linear(cols, cols) layers with identical weights (the same value distribution)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(cols, cols), nn.ReLU(), nn.Linear(cols, cols))
    with torch.no_grad():
        model[2].weight.copy_(model[0].weight)
    return model
