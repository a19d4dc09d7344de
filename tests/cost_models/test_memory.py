"""memory: bytes per kept entry in sparse storage formats."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import cost_models
from cost_models.kernels import to_sparse_matrix
from spartan_core.costs import LayerCost
from spartan_core.layers import maskable_targets


@pytest.fixture
def fc_target():
    (target,) = maskable_targets(nn.Sequential(nn.Linear(12, 8)))  # matrix 8 x 12
    return target


@pytest.mark.parametrize(
    ("fmt", "block", "expected"),
    [
        ("csr", (1, 1), LayerCost(4 + 4, fixed=(8 + 1) * 4)),
        ("auto", (1, 1), LayerCost(4 + 4, fixed=(8 + 1) * 4)),
        ("csr", (2, 3), LayerCost(6 * (4 + 4), fixed=(8 + 1) * 4)),
        ("bsr", (2, 3), LayerCost(6 * 4 + 4, fixed=(4 + 1) * 4)),
        ("auto", (2, 3), LayerCost(6 * 4 + 4, fixed=(4 + 1) * 4)),
        ("coo", (1, 1), LayerCost(4 + 2 * 4)),
        ("bitmask", (1, 1), LayerCost(4, fixed=12)),  # ceil(96 / 8)
    ],
)
def test_formulas(fc_target, fmt: str, block: tuple[int, int], expected: LayerCost) -> None:
    cm = cost_models.get("memory", format=fmt, dtype_bytes=4, index_bytes=4)
    assert cm.layer_cost(fc_target, block) == expected


def test_dtype_and_index_sizes(fc_target) -> None:
    cm = cost_models.get("memory", format="bsr", dtype_bytes=2, index_bytes=8)
    assert cm.layer_cost(fc_target, (4, 4)) == LayerCost(16 * 2 + 8, fixed=(2 + 1) * 8)
    assert cm.unit == "bytes" and not cm.predicts_latency


def test_reported_bytes_match_a_real_csr_tensor() -> None:
    model = nn.Sequential(nn.Linear(12, 8))
    with torch.no_grad():
        model[0].weight[:, ::3] = 0  # 2/3 kept
    csr = to_sparse_matrix(model[0].weight.detach(), (1, 1))
    stored = 4 * (csr.values().numel() + csr.col_indices().numel() + csr.crow_indices().numel())
    report = cost_models.cost_report(model, cost_models.get("memory"), latency_repeats=0)
    row = report.layers[0]
    assert row.sparse_cost + row.fixed_cost == stored


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"format": "dense"}, "format"),
        ({"dtype_bytes": 0}, "dtype_bytes"),
        ({"dtype_bytes": True}, "dtype_bytes"),
        ({"index_bytes": 2.5}, "index_bytes"),
        ({"index_bytes": -4}, "index_bytes"),
    ],
)
def test_bad_parameters(params: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        cost_models.get("memory", **params)


def test_blocks_must_tile(fc_target) -> None:
    with pytest.raises(ValueError, match="block_shape"):
        cost_models.get("memory").layer_cost(fc_target, (3, 3))
