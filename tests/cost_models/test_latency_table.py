"""latency_table: user tables with globs and a default, from dicts, JSON and CSV files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from torch import nn

import cost_models
from spartan_core.costs import LayerCost
from spartan_core.layers import maskable_targets


class Net(nn.Module):
    """layer1.{0,1}.{conv1,conv2}, layer2.0.conv1 and fc."""

    def __init__(self) -> None:
        super().__init__()
        block = lambda: nn.ModuleDict({"conv1": nn.Conv2d(4, 4, 1), "conv2": nn.Conv2d(4, 4, 1)})  # noqa: E731
        self.layer1 = nn.ModuleList([block(), block()])
        self.layer2 = nn.ModuleList([nn.ModuleDict({"conv1": nn.Conv2d(4, 4, 1)})])
        self.fc = nn.Linear(4, 2)


def costs_of(table: object, block=(1, 1)) -> dict[str, LayerCost]:
    model = Net()
    cm = cost_models.get("latency_table", table=table)
    return cm.layer_costs(model, maskable_targets(model), block)


TABLE = {
    "unit": "ms",
    "default": {"per_block": 1.0, "fixed": 0.0},
    "layers": {
        "layer1.*": {"per_block": 0.5, "fixed": 0.01},
        "layer1.*.conv2": {"per_block": 0.25},
        "layer1.1.conv2": {"per_block": 0.125},
        "layer1.?.conv2": {"per_block": 0.2},
        "fc": {"per_block": 2.0},
    },
}


def test_most_specific_match_wins_and_default_fills_in() -> None:
    costs = costs_of(TABLE)
    assert costs["layer1.0.conv1.weight"] == LayerCost(0.5, 0.01)  # only layer1.*
    # layer1.?.conv2 and layer1.*.conv2 have 13 literal characters each; ? is narrower than *
    assert costs["layer1.0.conv2.weight"] == LayerCost(0.2)
    assert costs["layer1.1.conv2.weight"] == LayerCost(0.125)  # exact name beats patterns
    assert costs["layer2.0.conv1.weight"] == LayerCost(1.0)  # default
    assert costs["fc.weight"] == LayerCost(2.0)


def test_equal_specificity_prefers_the_earlier_row() -> None:
    table = {
        "layers": {
            "layer1.*": {"per_block": 1.0},
            "*.conv1": {"per_block": 3.0},
            "*": {"per_block": 9.0},
        }
    }
    costs = costs_of(table)
    # "layer1.*" has 7 literal characters, "*.conv1" 6, "*" 0
    assert costs["layer1.0.conv1.weight"].per_entry == 1.0
    assert costs["layer2.0.conv1.weight"].per_entry == 3.0
    assert costs["fc.weight"].per_entry == 9.0


def test_parameter_names_and_per_weight() -> None:
    table = {"default": {"per_weight": 0.5}, "layers": {"fc.weight": {"per_block": 4.0}}}
    costs = costs_of(table, block=(2, 2))
    assert costs["fc.weight"].per_entry == 4.0
    assert costs["layer2.0.conv1.weight"].per_entry == 0.5 * 4


def test_units_decide_latency_prediction() -> None:
    assert cost_models.get("latency_table", table=TABLE).predicts_latency
    us = cost_models.get("latency_table", table={"unit": "us", "default": {"per_block": 3.0}})
    assert us.latency_ms(LayerCost(3.0, 1.0), 10) == pytest.approx(0.031)
    energy = cost_models.get("latency_table", table={"unit": "mJ", "default": {"per_block": 1.0}})
    assert not energy.predicts_latency
    assert energy.latency_ms(LayerCost(1.0), 3) is None


def test_json_file(tmp_path: Path) -> None:
    path = tmp_path / "table.json"
    path.write_text(json.dumps(TABLE))
    assert costs_of(str(path)) == costs_of(TABLE)
    assert costs_of(path) == costs_of(TABLE)


def test_csv_file(tmp_path: Path) -> None:
    path = tmp_path / "table.csv"
    path.write_text(
        "# unit: us\nlayer,per_block,fixed\ndefault,1.0,0\nlayer1.*,0.5,0.01\nfc,2.0,\n"
    )
    cm = cost_models.get("latency_table", table=str(path))
    assert cm.unit == "us"
    model = Net()
    costs = cm.layer_costs(model, maskable_targets(model), (1, 1))
    assert costs["layer1.1.conv2.weight"] == LayerCost(0.5, 0.01)
    assert costs["layer2.0.conv1.weight"] == LayerCost(1.0)
    assert costs["fc.weight"] == LayerCost(2.0)


def test_declared_block_shape_must_match(tmp_path: Path) -> None:
    path = tmp_path / "blocks.csv"
    path.write_text("# block_shape: 2x2\nlayer,per_block\ndefault,1.0\n")
    assert costs_of(str(path), block=(2, 2))["fc.weight"].per_entry == 1.0
    with pytest.raises(ValueError, match=r"block_shape.*\[2, 2\].*\[1, 1\]"):
        costs_of(str(path), block=(1, 1))


# errors ----------------------------------------------------------------------------------------
def test_row_naming_a_missing_layer() -> None:
    table = {"default": {"per_block": 1.0}, "layers": {"layer9.*": {"per_block": 1.0}}}
    with pytest.raises(ValueError, match=r"layers\['layer9.\*'\] matches no maskable layer"):
        costs_of(table)


def test_unpriced_layer_without_default() -> None:
    with pytest.raises(ValueError, match=r"no row prices layer 'layer2.0.conv1'"):
        costs_of({"layers": {"layer1.*": {"per_block": 1.0}, "fc": {"per_block": 1.0}}})


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"per_block": 0.0}, "per_block must be > 0"),
        ({"per_block": -1.0}, "per_block must be > 0"),
        ({"per_weight": 0}, "per_weight must be > 0"),
        ({"per_block": 1.0, "fixed": -0.5}, "fixed must be >= 0"),
        ({"per_block": "fast"}, "per_block must be a finite number"),
        ({"per_block": float("nan")}, "per_block must be a finite number"),
        ({"per_block": 1.0, "per_weight": 1.0}, "exactly one of per_block and per_weight"),
        ({"fixed": 1.0}, "exactly one of per_block and per_weight"),
        ({"per_block": 1.0, "slow": 2}, "unknown key"),
        (3.0, "expected an object"),
    ],
)
def test_bad_rows_are_located(row: object, message: str) -> None:
    with pytest.raises(ValueError, match=rf"layers\['fc'\].*{message}"):
        cost_models.get("latency_table", table={"layers": {"fc": row}})


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"default": {"per_block": 1}, "rows": {}}, "unknown key"),
        ({"unit": "", "default": {"per_block": 1}}, "'unit' must be a non-empty string"),
        ({"block_shape": [0, 2], "default": {"per_block": 1}}, "'block_shape'"),
        ({"layers": {}}, "nothing is priced"),
        ({"layers": []}, "'layers' must be an object"),
        ({"default": {"per_block": 0}}, "'default'.*per_block must be > 0"),
    ],
)
def test_bad_tables(table: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cost_models.get("latency_table", table=table)


def test_malformed_json_says_where(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"default": {"per_block": 1.0},\n "layers": {"fc": {"per_block": }}}\n')
    with pytest.raises(ValueError, match=r"bad.json: invalid JSON at line 2 column"):
        cost_models.get("latency_table", table=str(path))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("layer,per_block\nfc,abc\n", r"line 2: per_block 'abc' is not a number"),
        ("layer,per_block\ndefault,1\nfc,1,2\n", r"line 3: expected 2 cells"),
        ("# unit: ms\nname,per_block\nfc,1\n", r"line 2: the header must name 'layer'"),
        ("layer,per_block\nfc,-1\n", r"line 2: per_block must be > 0"),
        ("layer,per_block\nfc,1\nfc,2\n", r"line 3: layer 'fc' given twice"),
        ("# colour: red\nlayer,per_block\n", r"line 1: expected '# unit"),
        ("# block_shape: big\nlayer,per_block\n", r"line 1: block_shape must look like"),
        ("", r"no header line"),
    ],
)
def test_malformed_csv_says_which_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"bad.csv.*{message}"):
        cost_models.get("latency_table", table=str(path))


def test_missing_or_unknown_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is not a file"):
        cost_models.get("latency_table", table=str(tmp_path / "none.json"))
    path = tmp_path / "table.yaml"
    path.write_text("default: 1")
    with pytest.raises(ValueError, match=r"expected a .json or .csv file"):
        cost_models.get("latency_table", table=str(path))
    with pytest.raises(ValueError, match="table: expected a dict"):
        cost_models.get("latency_table", table=[1, 2])
