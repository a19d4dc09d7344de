"""Fixtures of the worker tests: tiny job specs and settings with fast progress."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from spartan.settings import Settings, get_settings
from spartan.spec import JobSpec

# A 0.37M-parameter timm test network on the 8x8 digits: 11 steps per epoch at batch 128.
TINY: dict[str, Any] = {
    "model": {"source": "timm", "name": "test_resnet", "input_size": [1, 8, 8]},
    "data": {"source": "digits"},
    "sparsity": {"sparsity": 0.5},
    "training": {"epochs": 1, "batch_size": 128, "lr": 0.05, "checkpoint_every_steps": 3},
}


def tiny_spec(**sections: dict[str, Any]) -> JobSpec:
    """The tiny job spec with some sections updated (merged key by key)."""
    body = {k: dict(v) for k, v in TINY.items()}
    for name, values in sections.items():
        body[name] = {**body.get(name, {}), **values}
    return JobSpec.model_validate(body)


@pytest.fixture
def wsettings(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Settings of a temporary home with progress and cancel polling every 0.1 s."""
    monkeypatch.setenv("SPARTAN_PROGRESS_INTERVAL_S", "0.1")
    get_settings.cache_clear()
    current = get_settings()
    current.ensure_dirs()
    yield current
    get_settings.cache_clear()
