"""Linear per-entry cost models, the cost report and one-shot plans (DESIGN 1.3).

A cost model prices each kept weight (or r x c block) of every masked layer in its own unit:
``params`` (weights), ``flops`` (multiply-accumulates for an input size), ``memory`` (bytes in a
sparse format), ``latency_table`` (a user table, e.g. ms measured on the deployment device) and
``profiled`` (ms measured here with sparse kernels and fitted per layer)::

    import cost_models
    cm = cost_models.get("flops", input_size=(3, 224, 224))
    report = cost_models.cost_report(model, cm, input_size=(3, 224, 224))
    allocation = cost_models.plan(model, cm, target=0.3, structure=(1, 1))

Registering is importing: every module below registers its class with ``@register``; a new
cost model is a class with ``name``, ``unit`` and ``layer_costs`` registered the same way.
Only torch is needed (no service dependencies).
"""

from cost_models import flops, latency_table, memory, params, profiled  # noqa: F401 (registers)
from cost_models.base import CostModelBase, entry_budget, predicts_latency
from cost_models.deployment import apply_kernels, deploy, deployed_kernels
from cost_models.flops import FlopsCost
from cost_models.latency_table import LatencyTableCost
from cost_models.memory import MemoryCost
from cost_models.params import ParamsCost
from cost_models.plan import Plan, plan
from cost_models.profiled import ProfiledCost
from cost_models.registry import available, describe, get, register, resolve
from cost_models.report import CostReport, cost_report
from cost_models.sparse_format import load_sparse, read_sparse, save_sparse

__all__ = [
    "CostModelBase",
    "CostReport",
    "FlopsCost",
    "LatencyTableCost",
    "MemoryCost",
    "ParamsCost",
    "Plan",
    "ProfiledCost",
    "apply_kernels",
    "available",
    "cost_report",
    "deploy",
    "deployed_kernels",
    "describe",
    "entry_budget",
    "get",
    "load_sparse",
    "plan",
    "predicts_latency",
    "read_sparse",
    "register",
    "resolve",
    "save_sparse",
]
