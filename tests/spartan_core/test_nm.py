"""N:M structure: validation, tiling errors, the hard mask, the target, the schedule, config."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spartan_core import (
    SparsifierConfig,
    check_nm_tiling,
    maskable_targets,
    nm_hard_mask,
    nm_target,
    validate_nm,
)
from spartan_core.nm import group_view, kept_count
from spartan_core.schedule import nm_kept_at


@pytest.mark.parametrize("nm", [(2, 4), [1, 2], (3, 8)])
def test_validate_nm_accepts_n_below_m(nm: object) -> None:
    assert validate_nm(nm) == tuple(nm)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "nm", [(4, 4), (0, 4), (5, 4), (2,), (2, 4, 1), "2:4", (2.0, 4), (True, 4)]
)
def test_validate_nm_names_the_field(nm: object) -> None:
    with pytest.raises(ValueError, match=r"^nm: expected two integers"):
        validate_nm(nm)


def test_tiling_error_names_every_layer_that_does_not_tile() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3),  # K = 27
        nn.Conv2d(8, 8, 1),  # K = 8
        nn.Flatten(),
        nn.Linear(10, 8),  # K = 10
        nn.Linear(8, 2),
    )
    with pytest.raises(ValueError, match=r"^nm: 2:4 needs .* 2 layer\(s\): '0' .*K=27.*'3' .*K=10"):
        check_nm_tiling(maskable_targets(model), (2, 4))
    check_nm_tiling(maskable_targets(model)[1:2], (2, 4))


def test_group_view_follows_the_input_dimension() -> None:
    weight = torch.arange(2 * 2 * 2 * 2).reshape(2, 2, 2, 2)  # (out, in, kh, kw): K = 8
    groups = group_view(weight, 4)
    assert torch.equal(groups, weight.reshape(2, -1).reshape(2, 2, 4).reshape(-1, 4))


def test_hard_mask_keeps_exactly_count_with_ties_to_the_lower_index() -> None:
    values = torch.tensor([[0.3, 0.3, 0.3, 0.3], [0.0, 2.0, 1.0, 2.0], [5.0, 0.0, 0.0, 0.0]])
    assert nm_hard_mask(values, 2).tolist() == [
        [True, True, False, False],
        [False, True, False, True],
        [True, True, False, False],
    ]
    assert nm_hard_mask(values, 4).all()
    with pytest.raises(ValueError, match="count"):
        nm_hard_mask(values, 0)


def test_kept_count_is_the_ceiling_with_slack() -> None:
    assert kept_count(2.0, 4) == 2
    assert kept_count(2.0 + 1e-12, 4) == 2
    assert kept_count(2.1, 4) == 3
    assert kept_count(4.0, 4) == 4


def test_nm_target_counts_dense_layers_and_checks_a_given_target() -> None:
    assert nm_target((2, 4), 100.0, 0.0) == 0.5
    assert nm_target((2, 4), 100.0, 100.0) == 0.75
    assert nm_target((2, 4), 100.0, 100.0, 0.7504) == 0.75
    with pytest.raises(ValueError, match=r"^sparsity: 2:4 keeps .* 0\.75, not 0\.5"):
        nm_target((2, 4), 100.0, 100.0, 0.5, field="sparsity")


def test_kept_mass_schedule_at_its_boundaries() -> None:
    kw = {"total_steps": 100, "nm": (2, 4), "warmup_frac": 0.2, "finetune_frac": 0.2}
    assert nm_kept_at(0, **kw, annealing="linear") == 4.0
    assert nm_kept_at(10, **kw, annealing="linear") == 3.0
    assert nm_kept_at(10, **kw, annealing="cosine") == pytest.approx(3.0)
    assert nm_kept_at(20, **kw) == 2.0  # end of warm-up: exactly n
    assert nm_kept_at(80, **kw) == 2.0  # fine-tune start
    assert nm_kept_at(100, **kw) == 2.0
    assert nm_kept_at(0, **{**kw, "warmup_frac": 0.0}) == 2.0


def test_config_nm_target_may_be_omitted() -> None:
    config = SparsifierConfig(nm=[2, 4])  # type: ignore[arg-type]
    assert config.nm == (2, 4) and config.target is None
    assert SparsifierConfig(nm=(2, 4), target=0.5, distribution="uniform").target == 0.5
    with pytest.raises(ValueError, match=r"^target: .*got None"):
        SparsifierConfig()


@pytest.mark.parametrize(
    ("changes", "pattern"),
    [
        ({"nm": (4, 4)}, r"^nm: expected two integers"),
        ({"nm": (2, 4), "block_shape": (4, 4)}, r"^nm: .*block_shape.*nm=\(2, 4\).*\(4, 4\)"),
        ({"nm": (2, 4), "distribution": "erk"}, r"^distribution: 'erk'"),
        ({"nm": (2, 4), "layer_floor": 0.4}, r"^layer_floor: "),
        ({"nm": (2, 4), "target": 1.5}, r"^target: "),
    ],
)
def test_config_nm_errors_name_the_field(changes: dict[str, object], pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        SparsifierConfig(**changes)  # type: ignore[arg-type]
