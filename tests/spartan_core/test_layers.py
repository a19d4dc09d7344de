"""Helpers of spartan_core.layers."""

from __future__ import annotations

import torch
from torch import nn

from spartan_core.layers import conv2d_like


def test_conv2d_like_copies_every_hyper_parameter() -> None:
    conv = nn.Conv2d(
        4, 8, (3, 5), stride=2, padding=(1, 2), dilation=2, groups=2, padding_mode="reflect"
    )
    new = conv2d_like(conv, in_channels=6, dtype=torch.float64)
    assert (new.in_channels, new.out_channels) == (6, 8)
    for attr in ("kernel_size", "stride", "padding", "dilation", "groups", "padding_mode"):
        assert getattr(new, attr) == getattr(conv, attr), attr
    assert new.weight.dtype == torch.float64 and new.bias is not None
    same = conv2d_like(nn.Conv2d(3, 4, 1, bias=False), device="meta")
    assert same.in_channels == 3 and same.bias is None and same.weight.is_meta
