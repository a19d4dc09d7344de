"""The ``params`` cost model: one unit per weight (a parameter budget).

It is ``spartan_core.costs.ParamsCost`` (the Sparsifier's default), registered here so that
``cost_models.get("params")`` and ``GET /v1/cost-models`` list it with the others.
"""

from __future__ import annotations

from cost_models.registry import register
from spartan_core.costs import ParamsCost

register("params")(ParamsCost)

__all__ = ["ParamsCost"]
