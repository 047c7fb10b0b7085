"""Fixtures every test may use. Tests never touch the real data home: MMDERM_HOME points into a temporary folder."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty data home; MMDERM_HOME points at it for code that reads the environment."""
    path = tmp_path / "home"
    path.mkdir()
    monkeypatch.setenv("MMDERM_HOME", str(path))
    return path
