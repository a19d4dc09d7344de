"""Sparse inference kernels (cost_models.kernels) against the dense kernels, by density.

For a ResNet-50-like 3x3 conv (256 -> 256 channels at 14x14) and a ViT-like Linear
(768 -> 768, 197 tokens), batch 1: dense time (the baseline, measured in the same run), then
CSR / BSR time at several densities as a ratio to dense, and the R^2 of the straight line
latency = a + b * kept_blocks that the ``profiled`` cost model fits.

    .venv/bin/python benchmarks/cost_models_kernels.py [--repeats 10] [--threads N]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from cost_models.kernels import SparseConv2d, SparseLinear, median_ms
from cost_models.profiled import fit_line
from spartan_core.blocks import expand_block_mask

DENSITIES = (0.02, 0.05, 0.1, 0.25, 0.5, 1.0)


def pruned(weight: torch.Tensor, density: float, block: tuple[int, int]) -> torch.Tensor:
    rows = weight.shape[0] // block[0]
    cols = weight[0].numel() // block[1]
    n = rows * cols
    keep = torch.zeros(n)
    keep[torch.randperm(n)[: max(1, round(density * n))]] = 1
    return weight * expand_block_mask(keep, weight.shape, block)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{torch.get_num_threads()} thread(s)")
    torch.manual_seed(0)
    layers = {
        "conv 256->256 3x3 @14x14": (
            nn.Conv2d(256, 256, 3, padding=1),
            torch.randn(1, 256, 14, 14),
        ),
        "linear 768->768 x197 tokens": (nn.Linear(768, 768), torch.randn(1, 197, 768)),
    }
    with torch.inference_mode():
        for name, (layer, x) in layers.items():
            dense = median_ms(lambda layer=layer, x=x: layer(x), repeats=args.repeats)
            print(f"\n{name}: dense {dense:.3f} ms (baseline)")
            for block in [(1, 1), (16, 16)]:
                kept, times = [], []
                cells = []
                for d in DENSITIES:
                    original = layer.weight.data.clone()
                    layer.weight.data = pruned(original, d, block)
                    sparse = (
                        SparseConv2d(layer, block)
                        if isinstance(layer, nn.Conv2d)
                        else SparseLinear.from_dense(layer, block)
                    )
                    layer.weight.data = original
                    ms = median_ms(lambda s=sparse, x=x: s(x), repeats=args.repeats)
                    n = layer.weight.numel() // (block[0] * block[1])
                    kept.append(max(1, round(d * n)))
                    times.append(ms)
                    cells.append(f"{d:g}: {ms / dense:5.2f}")
                fit = fit_line(kept, times, n)
                kernel = "csr" if block == (1, 1) else f"bsr {block[0]}x{block[1]}"
                print(f"  {kernel:10s} time / dense at density  " + "  ".join(cells))
                print(f"  {'':10s} fit R^2 {fit.r2:.3f}, relative RMS {fit.rel_rms:.3f}")


if __name__ == "__main__":
    main()
