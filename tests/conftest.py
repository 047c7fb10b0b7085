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


# ---- a tiny SynthDerm home (training, evaluation and demo tests) ----


@pytest.fixture(scope="session")
def tiny_synth_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """84 class-balanced SynthDerm cases at 32 px with a note of every strategy, generated once per session.

    Read-only: tests that write (train, evaluate) take a copy through `synth_home`.
    """
    import argparse
    import contextlib
    import dataclasses
    import io

    from mmcore.config import load_config
    from mmcore.synthderm import cli_synth

    path = tmp_path_factory.mktemp("tiny-synth") / "home"
    cfg = dataclasses.replace(load_config("tiny", env={}), home=path)
    args = argparse.Namespace(n=84, seed=0, domains="dermoscopy,clinical,atlas", balanced=True, size=32, json=True)
    with contextlib.redirect_stdout(io.StringIO()):
        cli_synth(args, cfg)
    return path


@pytest.fixture
def synth_home(tiny_synth_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the tiny SynthDerm home; MMDERM_HOME points at it."""
    import shutil

    path = tmp_path / "synth-home"
    shutil.copytree(tiny_synth_template, path)
    monkeypatch.setenv("MMDERM_HOME", str(path))
    return path
