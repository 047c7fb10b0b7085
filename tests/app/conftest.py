"""AppTest fixtures: the session's tiny demo home (tests/conftest.py), Streamlit caches cleared per test."""

from __future__ import annotations

import pytest
import streamlit as st


@pytest.fixture
def app_env(tiny_home, monkeypatch):
    """Point the app at the tiny home and start every test with empty Streamlit caches."""
    monkeypatch.setenv("MMDERM_HOME", str(tiny_home))
    monkeypatch.setenv("MMDERM_CONFIG", "tiny")
    st.cache_resource.clear()
    st.cache_data.clear()
    yield tiny_home
    st.cache_resource.clear()
    st.cache_data.clear()


@pytest.fixture
def app_env_copy(tiny_home, tmp_path, monkeypatch):
    """A private copy of the tiny home, for tests that change it (training, promotion)."""
    import shutil

    home = tmp_path / "home"
    shutil.copytree(tiny_home, home, ignore=shutil.ignore_patterns("*.lock", "jobs"))
    monkeypatch.setenv("MMDERM_HOME", str(home))
    monkeypatch.setenv("MMDERM_CONFIG", "tiny")
    st.cache_resource.clear()
    yield home
    st.cache_resource.clear()


@pytest.fixture
def empty_env(tmp_path, monkeypatch):
    monkeypatch.setenv("MMDERM_HOME", str(tmp_path / "empty"))
    monkeypatch.setenv("MMDERM_CONFIG", "tiny")
    st.cache_resource.clear()
    yield tmp_path / "empty"
    st.cache_resource.clear()
