"""The home page: research-use banner always; the model card when a model is active, a clear hint otherwise."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

APP = "../../app.py"


def test_home_without_a_model_says_so(empty_env):
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    assert any("Research use only" in w.value for w in at.warning)
    assert any("No model is built yet" in i.value for i in at.info)
