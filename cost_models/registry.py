"""The cost model registry: a name-to-class table filled by the ``@register`` decorator.

Registering is importing: ``cost_models/__init__.py`` imports every built-in module, whose
classes register themselves. ``get(name, **params)`` builds one; ``describe()`` gives the
JSON-able description that ``GET /v1/cost-models`` serves.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from cost_models.base import with_input_size
from spartan_core.costs import CostModel

T = TypeVar("T", bound=type)

_REGISTRY: dict[str, _Entry] = {}


@dataclass(frozen=True)
class _Entry:
    name: str
    cls: type


def register(name: str | None = None) -> Callable[[T], T]:
    """Class decorator adding a cost model to the registry under ``name``.

    Args:
        name: the registry name; defaults to the class attribute ``name``.

    Raises:
        ValueError: if the name is already taken by another class.
    """

    def decorator(cls: T) -> T:
        key = name or getattr(cls, "name", None)
        if not key or not isinstance(key, str):
            raise ValueError(f"name: cost model class {cls.__name__} needs a registry name")
        existing = _REGISTRY.get(key)
        if existing is not None and existing.cls is not cls:
            raise ValueError(
                f"name: cost model {key!r} is already registered by {existing.cls.__qualname__}"
            )
        _REGISTRY[key] = _Entry(key, cls)
        return cls

    return decorator


def available() -> list[str]:
    """Names of the registered cost models, sorted."""
    return sorted(_REGISTRY)


def get(name: str, **params: Any) -> CostModel:
    """Build the registered cost model ``name`` with constructor parameters ``params``.

    Raises:
        ValueError: for an unknown name (listing the known ones) or an unknown parameter
            (listing the accepted ones); constructors raise ValueError for bad values.
    """
    entry = _REGISTRY.get(name)
    if entry is None:
        raise ValueError(f"cost_model: unknown cost model {name!r}; known: {available()}")
    accepted = _parameters(entry.cls)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(
            f"cost_model.params: cost model {name!r} has no parameter(s) {unknown}; "
            f"accepted: {sorted(accepted)}"
        )
    missing = [p for p, spec in accepted.items() if spec.default is inspect.Parameter.empty]
    missing = [p for p in missing if p not in params]
    if missing:
        raise ValueError(f"cost_model.params: cost model {name!r} requires {missing}")
    return entry.cls(**params)


def resolve(
    cost_model: CostModel | str | Mapping[str, Any] | None,
    *,
    input_size: Sequence[int] | None = None,
) -> CostModel:
    """Turn a name, a ``{"name": ..., "params": {...}}`` mapping or None into a cost model.

    None means ``params``; an object that already is a cost model is used as is. With
    ``input_size``, a cost model that takes one is priced for it (unless its params name one).
    """
    if cost_model is None:
        cost_model = "params"
    if isinstance(cost_model, str):
        cost_model = {"name": cost_model}
    if isinstance(cost_model, Mapping):
        extra = sorted(set(cost_model) - {"name", "params"})
        if extra or "name" not in cost_model:
            raise ValueError(
                f"cost_model: expected a mapping with 'name' and optional 'params', got keys "
                f"{sorted(cost_model)}"
            )
        name = str(cost_model["name"])
        params = dict(cost_model.get("params") or {})
        entry = _REGISTRY.get(name)
        if input_size is not None and entry is not None and "input_size" in _parameters(entry.cls):
            params.setdefault("input_size", tuple(input_size))
        return get(name, **params)
    if isinstance(cost_model, CostModel):
        return with_input_size(cost_model, input_size)
    raise ValueError(
        f"cost_model: expected a cost model, a registered name or a mapping, got "
        f"{type(cost_model).__name__}"
    )


def describe(name: str | None = None) -> list[dict[str, Any]]:
    """JSON-able description of the registered cost models (or only of ``name``).

    Each item: ``name``, ``unit``, ``predicts_latency``, ``description`` (the class docstring's
    first paragraph) and ``parameters``: a list of ``{name, type, default, required,
    description}`` read from the constructor's signature and the docstring's Args section.
    """
    names = available() if name is None else [name]
    out = []
    for key in names:
        entry = _REGISTRY.get(key)
        if entry is None:
            raise ValueError(f"cost_model: unknown cost model {key!r}; known: {available()}")
        doc = inspect.getdoc(entry.cls) or ""
        arg_docs = _arg_docs(doc)
        params = []
        for pname, spec in _parameters(entry.cls).items():
            required = spec.default is inspect.Parameter.empty
            params.append(
                {
                    "name": pname,
                    "type": _type_name(spec.annotation),
                    "default": None if required else _jsonable(spec.default),
                    "required": required,
                    "description": arg_docs.get(pname, ""),
                }
            )
        out.append(
            {
                "name": key,
                "unit": str(getattr(entry.cls, "unit", "")),
                "predicts_latency": _latency_capable(entry.cls),
                "description": doc.split("\n\n", 1)[0].replace("\n", " ").strip(),
                "parameters": params,
            }
        )
    return out


def _latency_capable(cls: type) -> bool:
    capable = getattr(cls, "latency_capable", None)
    if capable is not None:
        return bool(capable)
    return inspect.getattr_static(cls, "predicts_latency", False) is True


def _parameters(cls: type) -> dict[str, inspect.Parameter]:
    """Keyword parameters of the class constructor (self and *args/**kwargs excluded)."""
    if cls.__init__ is object.__init__:
        return {}
    sig = inspect.signature(cls.__init__)
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {n: p for n, p in list(sig.parameters.items())[1:] if p.kind in kinds}


def _type_name(annotation: Any) -> str:
    if annotation is inspect.Parameter.empty:
        return "any"
    if isinstance(annotation, str):
        return annotation
    return getattr(annotation, "__name__", repr(annotation))


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _arg_docs(doc: str) -> dict[str, str]:
    """``{arg: description}`` from a Google-style ``Args:`` section."""
    match = re.search(r"^Args:\n((?:[ \t]+.*\n?)+)", doc, flags=re.MULTILINE)
    if not match:
        return {}
    docs: dict[str, str] = {}
    current = None
    for line in match.group(1).splitlines():
        item = re.match(r"^\s{4}(\w+)(?:\s*\(.*?\))?:\s*(.*)$", line)
        if item:
            current = item.group(1)
            docs[current] = item.group(2).strip()
        elif current and line.strip():
            docs[current] += " " + line.strip()
    return docs
