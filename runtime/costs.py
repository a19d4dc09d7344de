"""The cost model a job spec or a plan request names, built at one boundary.

``cost_model_params`` completes and checks the parameters (a registered name, accepted
parameter names, the model's input size where the cost model takes one, a latency table path
resolved under a data root); ``build_cost_model`` builds it. Every error is a ``FieldError`` at
``cost_model.name`` or ``cost_model.params.<name>``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import cost_models
from spartan.errors import FieldError, core_reason
from spartan.resolve import cost_model_paths
from spartan.settings import Settings
from spartan.spec import CostModelSpec
from spartan_core.costs import CostModel

PARAMS_LOC = ("cost_model", "params")


def cost_model_params(
    spec: CostModelSpec, input_size: Sequence[int], settings: Settings
) -> dict[str, Any]:
    """The cost model's constructor parameters, completed from the spec.

    A cost model that takes ``input_size`` and was not given one gets the model's input size;
    a latency table given as a file path must lie under a data root.

    Raises:
        FieldError: at ``cost_model.name`` for an unknown cost model, at
            ``cost_model.params.<name>`` for an unknown or missing parameter or a bad path.
    """
    known = cost_models.available()
    if spec.name not in known:
        raise FieldError(
            ("cost_model", "name"),
            f"unknown cost model {spec.name!r}; known: {', '.join(known)}",
        )
    parameters = {p["name"]: p for p in cost_models.describe(spec.name)[0]["parameters"]}
    for name in spec.params:
        if name not in parameters:
            raise FieldError(
                (*PARAMS_LOC, name),
                f"cost model {spec.name!r} has no parameter {name!r}; "
                f"accepted: {sorted(parameters)}",
            )
    for name, parameter in parameters.items():
        if parameter["required"] and name not in spec.params:
            raise FieldError((*PARAMS_LOC, name), f"required by cost model {spec.name!r}")
    params = cost_model_paths(spec.params, settings)
    if "input_size" in parameters and "input_size" not in params:
        params["input_size"] = list(input_size)
    return params


def build_cost_model(name: str, params: Mapping[str, Any]) -> CostModel:
    """The registered cost model ``name`` built with ``params`` (from ``cost_model_params``).

    Raises:
        FieldError: at ``cost_model.params.<name>`` for the parameter the constructor rejects
            (the one without which it builds), or at ``cost_model.params``.
    """
    try:
        return cost_models.get(name, **params)
    except ValueError as exc:
        culprit = _rejected_parameter(name, params)
        if culprit is None:
            raise FieldError(PARAMS_LOC, str(exc)) from None
        raise FieldError((*PARAMS_LOC, culprit), core_reason(exc, culprit)) from None


def _rejected_parameter(name: str, params: Mapping[str, Any]) -> str | None:
    """The parameter a failing constructor rejects: the optional one without which it builds,
    else the only required one given; None when neither singles one out."""
    required = [p["name"] for p in cost_models.describe(name)[0]["parameters"] if p["required"]]
    for candidate in params:
        if candidate in required:
            continue
        try:
            cost_models.get(name, **{k: v for k, v in params.items() if k != candidate})
        except ValueError:
            continue
        return candidate
    given = [p for p in required if p in params]
    return given[0] if len(given) == 1 else None
