"""The plots of a finished job: ``curves.png`` and ``layers.png`` (matplotlib, optional).

- ``curves.png``: against the training step: train loss (and validation loss per epoch),
  validation top-1 per epoch, weight sparsity, the kept cost fraction with its scheduled
  value, beta and the learning rate: the job's metric series (``spartan.series``);
- ``layers.png``: per maskable layer, the density (kept fraction of entries), and the dense
  against the kept cost under the job's cost model: the cost report's ``layers``.

matplotlib is an optional dependency (``pip install 'spartan[plots]'``); without it no plot
is written, the job's log says so in one line, and the job succeeds all the same.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runtime.checkpoints import atomic_write

log = logging.getLogger(__name__)

CURVES = "curves.png"
LAYERS = "layers.png"
MISSING = "matplotlib is not installed: no curves.png or layers.png (pip install 'spartan[plots]')"
# (axis title, [(series, key, label)]): series "points" (training reports) or "epochs"
_CURVES: tuple[tuple[str, tuple[tuple[str, str, str], ...]], ...] = (
    ("loss", (("points", "loss", "train"), ("epochs", "val_loss", "validation"))),
    ("validation top-1", (("epochs", "val_top1", "top-1"), ("epochs", "val_top5", "top-5"))),
    ("sparsity", (("points", "sparsity", "weights"),)),
    (
        "cost fraction",
        (("points", "cost_fraction", "kept"), ("points", "scheduled_cost_fraction", "target")),
    ),
    ("beta", (("points", "beta", "beta"),)),
    ("learning rate", (("points", "lr", "lr"),)),
)


def write_plots(
    out_dir: Path,
    *,
    points: Sequence[dict[str, Any]],
    epochs: Sequence[dict[str, Any]],
    cost_report: dict[str, Any] | None,
) -> list[Path]:
    """Write ``curves.png`` and (with a cost report) ``layers.png`` into ``out_dir``; returns
    the files written (none without matplotlib)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        log.warning(MISSING)
        return []
    written = [_save(out_dir / CURVES, _curves(Figure, points, epochs))]
    layers = [row for row in (cost_report or {}).get("layers", []) if row.get("masked", True)]
    if layers:
        written.append(_save(out_dir / LAYERS, _layers(Figure, layers)))
    return written


def _curves(figure: type, points: Sequence[dict], epochs: Sequence[dict]) -> Any:
    fig = figure(figsize=(12, 7), layout="constrained")
    axes = fig.subplots(2, 3, sharex=True).ravel()
    series = {"points": points, "epochs": epochs}
    for ax, (title, lines) in zip(axes, _CURVES, strict=True):
        for name, key, label in lines:
            xy = [
                (p["step"], p[key])
                for p in series[name]
                if isinstance(p.get("step"), int | float) and isinstance(p.get(key), int | float)
            ]
            if xy:
                xs, ys = zip(*xy, strict=True)
                ax.plot(xs, ys, marker="o" if name == "epochs" else None, label=label)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if len(lines) > 1 and ax.has_data():
            ax.legend(fontsize="small")
    for ax in axes[3:]:
        ax.set_xlabel("step")
    return fig


def _layers(figure: type, layers: Sequence[dict]) -> Any:
    names = [str(row["name"]) for row in layers]
    height = max(3.0, 0.22 * len(names) + 1.5)
    fig = figure(figsize=(12, height), layout="constrained")
    density_ax, cost_ax = fig.subplots(1, 2, sharey=True)
    at = list(range(len(names)))
    density_ax.barh(at, [row["density"] for row in layers], color="tab:blue")
    density_ax.set_xlim(0, 1)
    density_ax.set_title("density (kept fraction)")
    density_ax.set_yticks(at, names, fontsize=max(4, min(9, 400 // max(len(names), 1))))
    density_ax.invert_yaxis()
    half = 0.4
    cost_ax.barh(
        [i - half / 2 for i in at], [row["dense_cost"] for row in layers], half, label="dense"
    )
    cost_ax.barh(
        [i + half / 2 for i in at], [row["sparse_cost"] for row in layers], half, label="kept"
    )
    cost_ax.set_title("cost per layer")
    cost_ax.legend(fontsize="small")
    for ax in (density_ax, cost_ax):
        ax.grid(axis="x", alpha=0.3)
    return fig


def _save(path: Path, fig: Any) -> Path:
    atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=100))
    return path
