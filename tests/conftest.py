"""Fixtures shared by every test folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from spartan.settings import Settings, get_settings


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Settings rooted in a fresh temporary SPARTAN_HOME (embedded defaults)."""
    monkeypatch.setenv("SPARTAN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SPARTAN_DATA_ROOTS", f'["{tmp_path / "data"}"]')
    (tmp_path / "data").mkdir()
    get_settings.cache_clear()
    current = get_settings()
    current.ensure_dirs()
    yield current
    get_settings.cache_clear()


@pytest.fixture(autouse=True)
def _torch_threads_restored() -> Iterator[None]:
    """Give every test the process's thread count back: a test that pins it would otherwise
    change the float sums of every later in-process run (the resume tests compare bits)."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
