"""The ``latency_table`` cost model: user-supplied costs per block (or per weight) and layer.

A table, given as a dict or as a JSON or CSV file, e.g. measured on the deployment device::

    {"unit": "ms",
     "block_shape": [1, 1],
     "default": {"per_block": 1.0, "fixed": 0.0},
     "layers": {"layer1.*": {"per_block": 0.5, "fixed": 0.01},
                "fc": {"per_block": 2.0}}}

- ``unit`` (default ``ms``): any string; ``s``, ``ms``, ``us`` and ``ns`` make the table
  predict latency.
- ``block_shape`` (optional): the block shape ``per_block`` was measured for; using the table
  with another block shape is then an error for rows given ``per_block``.
- each row gives exactly one of ``per_block`` (cost of one kept block; a block is one weight
  when unstructured) and ``per_weight`` (multiplied by the block size), both > 0, and
  optionally ``fixed`` (>= 0, paid whatever is kept; default 0).
- ``layers`` keys are module names (``layer1.0.conv1``) or parameter names
  (``layer1.0.conv1.weight``) or ``fnmatch`` glob patterns over either (``layer1.*``).
  The most specific row wins: an exact name first; then the pattern with the most literal
  (non-wildcard) characters; then the one with fewer ``*``; then fewer other wildcards
  (``?``, ``[...]``); then the earlier row.
  ``default`` prices layers no row matches; without it such a layer is an error.
  A row that matches no maskable layer of the model is an error (a typo must not go unnoticed).

CSV form: a header naming ``layer`` and ``per_block`` and/or ``per_weight`` (optional
``fixed``), one row per key, the layer ``default`` for the default, and optional leading
comment lines ``# unit: ms`` and ``# block_shape: 16x16``.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from cost_models.base import CostModelBase
from cost_models.registry import register
from spartan_core.blocks import BlockShape, validate_block_shape
from spartan_core.costs import LayerCost
from spartan_core.layers import MaskTarget, maskable_targets

_TOP_KEYS = {"unit", "block_shape", "default", "layers"}
_ROW_KEYS = {"per_block", "per_weight", "fixed"}
_WILDCARDS = re.compile(r"\[[^\]]*\]|[*?]")


@dataclass(frozen=True)
class TableRow:
    """One priced key of a latency table (``where`` locates it for error messages)."""

    key: str
    per_block: float | None
    per_weight: float | None
    fixed: float
    where: str
    order: int

    @property
    def is_pattern(self) -> bool:
        return _WILDCARDS.search(self.key) is not None

    @property
    def specificity(self) -> tuple[int, int, int, int]:
        """Sort key, larger is more specific: (exact, literal characters, -stars, -wildcards)."""
        literal = len(_WILDCARDS.sub("", self.key))
        wildcards = _WILDCARDS.findall(self.key)
        stars = sum(w == "*" for w in wildcards)
        return (0 if self.is_pattern else 1, literal, -stars, -len(wildcards))

    def matches(self, target: MaskTarget) -> bool:
        if not self.is_pattern:
            return self.key in (target.module_name, target.name)
        return fnmatch.fnmatchcase(target.module_name, self.key) or fnmatch.fnmatchcase(
            target.name, self.key
        )

    def cost(self, block_shape: BlockShape) -> LayerCost:
        if self.per_block is not None:
            return LayerCost(per_entry=self.per_block, fixed=self.fixed)
        assert self.per_weight is not None
        size = block_shape[0] * block_shape[1]
        return LayerCost(per_entry=self.per_weight * size, fixed=self.fixed)


@register("latency_table")
class LatencyTableCost(CostModelBase):
    """User-supplied cost per block (or per weight) for each layer, with glob keys and a default.

    Args:
        table: the table as a dict, or the path of a JSON or CSV file (see the module docs).
    """

    name = "latency_table"
    unit = "ms"
    latency_capable = True

    def __init__(self, table: dict[str, Any] | str | Path) -> None:
        if isinstance(table, str | Path):
            self.source = str(table)
            table = _load(Path(table))
        elif isinstance(table, Mapping):
            self.source = "table"
        else:
            raise ValueError(
                f"table: expected a dict or a JSON/CSV file path, got {type(table).__name__}"
            )
        self.unit, self.block_shape, self.default, self.rows = _parse(dict(table), self.source)
        self._table = dict(table)

    def params(self) -> dict[str, object]:
        return {"table": self.source if self.source != "table" else self._table}

    def row_for(self, target: MaskTarget) -> TableRow:
        """The row pricing ``target``: the most specific match, else the default.

        Raises:
            ValueError: if no row matches and there is no default.
        """
        matching = [row for row in self.rows if row.matches(target)]
        if matching:
            return max(matching, key=lambda row: (row.specificity, -row.order))
        if self.default is None:
            raise ValueError(
                f"table: no row prices layer {target.module_name!r} and the table has no 'default'"
            )
        return self.default

    def layer_costs(
        self, model: nn.Module, targets: Sequence[MaskTarget], block_shape: BlockShape
    ) -> dict[str, LayerCost]:
        block_shape = validate_block_shape(block_shape)
        self.check_layers(model)
        costs = {}
        for t in targets:
            row = self.row_for(t)
            if (
                row.per_block is not None
                and self.block_shape is not None
                and self.block_shape != block_shape
            ):
                raise ValueError(
                    f"block_shape: {row.where} gives per_block for {list(self.block_shape)} "
                    f"blocks, but the layers use {list(block_shape)} blocks"
                )
            costs[t.name] = row.cost(block_shape)
        return costs

    def check_layers(self, model: nn.Module) -> None:
        """Check that every row names (or matches) some maskable layer of ``model``."""
        targets = maskable_targets(model)
        for row in self.rows:
            if not any(row.matches(t) for t in targets):
                known = [t.module_name for t in targets[:8]]
                more = ", ..." if len(targets) > 8 else ""
                raise ValueError(
                    f"table: {row.where} matches no maskable layer of the model "
                    f"(layers: {', '.join(repr(k) for k in known)}{more})"
                )


def _parse(
    table: dict[str, Any], source: str
) -> tuple[str, tuple[int, int] | None, TableRow | None, list[TableRow]]:
    unknown = sorted(set(table) - _TOP_KEYS)
    if unknown:
        raise ValueError(f"table: {source}: unknown key(s) {unknown}; expected {sorted(_TOP_KEYS)}")
    unit = table.get("unit", "ms")
    if not isinstance(unit, str) or not unit.strip():
        raise ValueError(f"table: {source}: 'unit' must be a non-empty string, got {unit!r}")
    block_shape = table.get("block_shape")
    if block_shape is not None:
        if isinstance(block_shape, str) or not isinstance(block_shape, Sequence):
            raise ValueError(
                f"table: {source}: 'block_shape' must be two positive integers, got {block_shape!r}"
            )
        try:
            block_shape = validate_block_shape(tuple(block_shape))
        except (ValueError, TypeError):
            raise ValueError(
                f"table: {source}: 'block_shape' must be two positive integers, got {block_shape!r}"
            ) from None
    default = None
    if table.get("default") is not None:
        default = _row("default", table["default"], f"{source}: 'default'", -1)
    layers = table.get("layers", {})
    if not isinstance(layers, Mapping):
        raise ValueError(f"table: {source}: 'layers' must be an object of rows")
    if not layers and default is None:
        raise ValueError(f"table: {source}: no 'layers' and no 'default': nothing is priced")
    rows = []
    for order, (key, value) in enumerate(layers.items()):
        if not isinstance(key, str) or not key:
            raise ValueError(f"table: {source}: layer keys must be non-empty strings, got {key!r}")
        where = getattr(value, "_where", None) or f"{source}: layers[{key!r}]"
        rows.append(_row(key, value, where, order))
    return unit, block_shape, default, rows


class _Located(dict):
    """A CSV row remembering its file and line for error messages."""

    _where: str = ""


def _row(key: str, value: Any, where: str, order: int) -> TableRow:
    if not isinstance(value, Mapping):
        raise ValueError(
            f"table: {where}: expected an object with per_block or per_weight, got {value!r}"
        )
    unknown = sorted(set(value) - _ROW_KEYS)
    if unknown:
        raise ValueError(f"table: {where}: unknown key(s) {unknown}; expected {sorted(_ROW_KEYS)}")
    given = [k for k in ("per_block", "per_weight") if value.get(k) is not None]
    if len(given) != 1:
        raise ValueError(f"table: {where}: give exactly one of per_block and per_weight")
    numbers = {}
    for k in ("per_block", "per_weight", "fixed"):
        v = value.get(k)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ValueError(f"table: {where}: {k} must be a finite number, got {v!r}")
        if k == "fixed" and v < 0:
            raise ValueError(f"table: {where}: fixed must be >= 0 (non-negative cost), got {v!r}")
        if k != "fixed" and v <= 0:
            raise ValueError(f"table: {where}: {k} must be > 0 (costs are positive), got {v!r}")
        numbers[k] = float(v)
    return TableRow(
        key=key,
        per_block=numbers.get("per_block"),
        per_weight=numbers.get("per_weight"),
        fixed=numbers.get("fixed", 0.0),
        where=where,
        order=order,
    )


def _load(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ValueError(f"table: {str(path)!r} is not a file")
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8")
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"table: {path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
            ) from None
        if not isinstance(data, dict):
            raise ValueError(f"table: {path}: the top level must be an object")
        return data
    if suffix == ".csv":
        return _load_csv(text, str(path))
    raise ValueError(f"table: {path}: expected a .json or .csv file")


def _load_csv(text: str, source: str) -> dict[str, Any]:
    table: dict[str, Any] = {"layers": {}}
    lines = text.splitlines()
    start = 0
    # leading "# key: value" comments
    while start < len(lines) and (
        not lines[start].strip() or lines[start].lstrip().startswith("#")
    ):
        comment = lines[start].lstrip().lstrip("#").strip()
        start += 1
        if not comment:
            continue
        key, sep, value = comment.partition(":")
        key, value = key.strip(), value.strip()
        if not sep or key not in ("unit", "block_shape"):
            raise ValueError(
                f"table: {source} line {start}: expected '# unit: ...' or '# block_shape: RxC', "
                f"got {lines[start - 1].strip()!r}"
            )
        if key == "unit":
            table["unit"] = value
        else:
            parts = re.split(r"\s*[x,]\s*", value)
            if len(parts) != 2 or not all(p.isdigit() for p in parts):
                raise ValueError(
                    f"table: {source} line {start}: block_shape must look like 16x16, got {value!r}"
                )
            table["block_shape"] = [int(p) for p in parts]
    reader = csv.reader(io.StringIO("\n".join(lines[start:])))
    header = next(reader, None)
    if header is None:
        raise ValueError(f"table: {source}: no header line (layer,per_block,fixed)")
    header = [h.strip() for h in header]
    header_line = start + 1
    unknown = sorted(set(header) - {"layer", *_ROW_KEYS})
    if "layer" not in header or unknown or len(set(header)) != len(header):
        raise ValueError(
            f"table: {source} line {header_line}: the header must name 'layer' and some of "
            f"{sorted(_ROW_KEYS)} once each, got {header}"
        )
    for offset, cells in enumerate(reader, start=1):
        line = header_line + offset
        if not cells or all(not c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            raise ValueError(
                f"table: {source} line {line}: expected {len(header)} cells, got {len(cells)}"
            )
        row = _Located()
        row._where = f"{source} line {line}"
        layer = ""
        for name, cell in zip(header, cells, strict=True):
            cell = cell.strip()
            if name == "layer":
                layer = cell
                continue
            if not cell:
                continue
            try:
                row[name] = float(cell)
            except ValueError:
                raise ValueError(
                    f"table: {source} line {line}: {name} {cell!r} is not a number"
                ) from None
        if not layer:
            raise ValueError(f"table: {source} line {line}: empty layer name")
        if layer == "default":
            if "default" in table:
                raise ValueError(f"table: {source} line {line}: a second 'default' row")
            table["default"] = dict(row)
            _row("default", row, row._where, -1)  # check now to report the line
        else:
            if layer in table["layers"]:
                raise ValueError(f"table: {source} line {line}: layer {layer!r} given twice")
            table["layers"][layer] = row
    return table
