"""N:M structure: in every group of m consecutive weights along the input dimension, n are kept.

A masked weight is viewed as (out, K), conv kernels flattened (K = in * kh * kw), and split into
groups of m consecutive inputs, ``weight.reshape(out, K // m, m)``. For a contiguous weight
that is ``weight.reshape(-1, m)``: (G, m) with G = out * K / m groups in row-major order, which
is how every function here sees a layer. 2:4 is what NVIDIA sparse tensor cores run.

Every group is its own budget: the hard mask keeps the n largest unit values of each group
(ties to the lower index), so a finished layer keeps exactly n / m of its weights whatever its
cost; the soft top-k of Spartan solves one dual per group (``spartan_core.soft_topk_nm``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from spartan_core.layers import MaskTarget

NMShape = tuple[int, int]

_KEPT_SLACK = 1e-9  # a kept mass within this of an integer keeps that many entries


def validate_nm(nm: object) -> NMShape:
    """Check that ``nm`` is two integers with 1 <= n < m.

    Raises:
        ValueError: naming ``nm`` and the value.
    """
    message = f"nm: expected two integers n, m with 1 <= n < m (such as 2, 4), got {nm!r}"
    if isinstance(nm, str | bytes) or not isinstance(nm, Sequence) or len(nm) != 2:
        raise ValueError(message)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in nm):
        raise ValueError(message)
    n, m = int(nm[0]), int(nm[1])
    if not 1 <= n < m:
        raise ValueError(message)
    return n, m


def check_nm_tiling(targets: Sequence[MaskTarget], nm: NMShape) -> None:
    """Check that m divides the input size K of every target.

    Raises:
        ValueError: naming ``nm`` and every layer whose K is not a multiple of m, in one
            message (exclude them, or choose another m).
    """
    n, m = validate_nm(nm)
    bad = [t for t in targets if t.matrix_shape[1] % m]
    if bad:
        layers = ", ".join(
            f"{t.module_name!r} ({t.kind}, weight {tuple(t.shape)}, K={t.matrix_shape[1]})"
            for t in bad
        )
        raise ValueError(
            f"nm: {n}:{m} needs an input size K (in * kh * kw for a conv) that is a multiple of "
            f"{m}; not so for {len(bad)} layer(s): {layers}; exclude them or choose another m"
        )


def group_view(tensor: Tensor, m: int) -> Tensor:
    """A weight-shaped tensor as its (G, m) groups (a view of a contiguous tensor)."""
    return tensor.reshape(-1, m)


def kept_count(kept: float, m: int) -> int:
    """Entries the hard mask keeps per group for a kept mass ``kept`` in (0, m]: ceil(kept).

    As the hard top-k of DESIGN 1.1 keeps entries until their cost first reaches the budget;
    a mass within 1e-9 of an integer counts as that integer (rounding of f * m).
    """
    return min(m, max(1, math.ceil(kept - _KEPT_SLACK)))


def sort_groups(values: Tensor) -> tuple[Tensor, Tensor]:
    """Each group's values in descending order, equal values by index: (sorted, indices)."""
    return torch.sort(values, dim=1, descending=True, stable=True)


def nm_hard_mask(values: Tensor, count: int, *, order: Tensor | None = None) -> Tensor:
    """Keep the ``count`` largest values of every group (ties to the lower index).

    Args:
        values: (G, m) unit values.
        count: entries kept per group, 1 <= count <= m.
        order: the indices from :func:`sort_groups` of ``values``, when already known.

    Returns:
        (G, m) bool with exactly ``count`` True per row.
    """
    groups, m = values.shape
    if not 1 <= count <= m:
        raise ValueError(f"count: expected an integer in [1, {m}], got {count!r}")
    if count == m:
        return torch.ones((groups, m), dtype=torch.bool, device=values.device)
    if order is None:
        order = sort_groups(values)[1]
    hard = torch.zeros((groups, m), dtype=torch.bool, device=values.device)
    return hard.scatter_(1, order[:, :count], True)


def nm_target(
    nm: NMShape,
    masked_cost: float,
    dense_cost: float,
    target: float | None = None,
    *,
    field: str = "target",
    tol: float = 1e-3,
) -> float:
    """The whole-model kept cost fraction of an N:M model, checked against a given ``target``.

    Each N:M layer keeps n / m of its entries, and within a layer every entry costs the same,
    so the masked layers keep n / m of their cost and the maskable layers left dense keep all
    of theirs: f = (n / m * masked_cost + dense_cost) / (masked_cost + dense_cost).

    Args:
        nm: (n, m).
        masked_cost: cost of the N:M layers' entries.
        dense_cost: cost of the maskable layers left dense.
        target: the fraction asked for, or None (then f is the answer).
        field: the name to give the target in an error.
        tol: accepted absolute difference between ``target`` and f.

    Raises:
        ValueError: naming ``field`` and both numbers when ``target`` differs from f.
    """
    n, m = validate_nm(nm)
    total = masked_cost + dense_cost
    fraction = (n / m * masked_cost + dense_cost) / total
    if target is not None and abs(float(target) - fraction) > tol:
        raise ValueError(
            f"{field}: {n}:{m} keeps n/m = {n / m:.6g} of the masked layers' cost; with the "
            f"layers left dense ({dense_cost / total:.4%} of the maskable cost) the model keeps "
            f"{fraction:.6g}, not {float(target):.6g}; give {fraction:.6g} or leave the target "
            f"out with nm"
        )
    return fraction
