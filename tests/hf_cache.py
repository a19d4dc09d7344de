"""A local Hugging Face Hub cache for tests: tiny checkpoints, offline, nothing downloaded.

``write_repo`` lays files out as the Hub cache does (``models--owner--name/refs/main`` naming a
snapshot folder ``snapshots/<commit>/`` with the files); ``offline`` points huggingface_hub at
a cache folder with ``HF_HUB_OFFLINE=1``. huggingface_hub reads those variables once, at
import, into ``huggingface_hub.constants``, so both the environment and the constants are set.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import huggingface_hub
import pytest
import torch
from safetensors.torch import save_file

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def offline(monkeypatch: pytest.MonkeyPatch, home: Path) -> Path:
    """Use ``home/hub`` as the Hugging Face cache, offline; returns the cache folder."""
    cache = home / "hub"
    cache.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HOME", str(home))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def write_repo(
    cache: Path,
    repo_id: str,
    tensors: dict[str, torch.Tensor],
    config: dict[str, Any] | None = None,
) -> Path:
    """Write ``model.safetensors`` (and ``config.json``) of ``repo_id`` into ``cache``."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(snapshot / "model.safetensors"))
    if config is not None:
        (snapshot / "config.json").write_text(json.dumps(config))
    return snapshot
