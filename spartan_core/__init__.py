"""Spartan: sparse training with soft top-k masks (Tai, Tian and Lim, NeurIPS 2022).

A plain PyTorch library with no service dependencies: the bottom layer of the project, it
imports nothing from ``cost_models``, ``runtime``, ``worker``, ``api``, ``cli`` or ``spartan``
(checked by tests/spartan_core/test_imports.py and the import-linter contracts). Cost models
come in as objects (``SparsifierConfig.cost_model``); ``ParamsCost`` is the default.
"""

from spartan_core.blocks import block_values, expand_block_mask
from spartan_core.config import SparsifierConfig
from spartan_core.costs import CostModel, LayerCost, ParamsCost
from spartan_core.dual import hard_threshold_and_dual, soft_mask, solve_dual
from spartan_core.layers import MaskTarget, find_targets, layer_predicate, maskable_targets
from spartan_core.nm import check_nm_tiling, nm_hard_mask, nm_target, validate_nm
from spartan_core.soft_topk import SoftTopKResult, soft_topk
from spartan_core.soft_topk_nm import SoftTopKNMResult, soft_topk_nm
from spartan_core.sparsifier import Sparsifier, SparsifierSummary
from spartan_core.threshold import hard_threshold

__all__ = [
    "CostModel",
    "LayerCost",
    "MaskTarget",
    "ParamsCost",
    "SoftTopKNMResult",
    "SoftTopKResult",
    "Sparsifier",
    "SparsifierConfig",
    "SparsifierSummary",
    "block_values",
    "check_nm_tiling",
    "expand_block_mask",
    "find_targets",
    "hard_threshold",
    "hard_threshold_and_dual",
    "layer_predicate",
    "maskable_targets",
    "nm_hard_mask",
    "nm_target",
    "soft_mask",
    "soft_topk",
    "soft_topk_nm",
    "solve_dual",
    "validate_nm",
]
