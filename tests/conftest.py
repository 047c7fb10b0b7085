"""Fixtures every test may use. Tests never touch the real data home: MMDERM_HOME points into a temporary folder."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def audit_key():
    """A fixed audit key for the whole session: tests never create or read the user's ~/.config/mmderm/audit.key."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MMDERM_AUDIT_KEY", "mmderm-tests-audit-key-not-a-secret")
        yield


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty data home; MMDERM_HOME points at it for code that reads the environment."""
    path = tmp_path / "home"
    path.mkdir()
    monkeypatch.setenv("MMDERM_HOME", str(path))
    return path


# ---- a tiny SynthDerm home (training, evaluation and demo tests) ----


@pytest.fixture(scope="session")
def tiny_synth_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """84 class-balanced SynthDerm cases at 32 px with a note of every strategy, generated once per session.

    Read-only: tests that write (train, evaluate) take a copy through `synth_home`.
    """
    from mmcore.cases import CaseStore
    from mmcore.synthderm import generate_into

    path = tmp_path_factory.mktemp("tiny-synth") / "home"
    with CaseStore(path) as store:
        generate_into(store, 84, seed=0, size=32, balanced=True)
    return path


@pytest.fixture
def synth_home(tiny_synth_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the tiny SynthDerm home; MMDERM_HOME points at it."""
    import shutil

    path = tmp_path / "synth-home"
    shutil.copytree(tiny_synth_template, path)
    monkeypatch.setenv("MMDERM_HOME", str(path))
    return path


@pytest.fixture(scope="session")
def tiny_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo pipeline on tiny towers (SynthDerm, training, calibration, OOD gate, evaluation, promotion, index),
    built once per session by `python -m mmcore demo`; tests that change it take a copy."""
    from app_helpers import build_tiny_home

    return build_tiny_home(tmp_path_factory.mktemp("tiny_home"))
