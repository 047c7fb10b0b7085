"""The home page: research-use banner always; the model card when a model is active, a clear hint otherwise."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

APP = "../../app.py"


def test_home_without_a_model_says_so(empty_env):
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    assert any("Research use only" in w.value for w in at.warning)
    assert any("No model is built yet" in i.value for i in at.info)


def test_every_page_carries_the_logo_and_the_style_sheet(empty_env, monkeypatch):
    """page_setup draws assets/logo.svg (st.logo: top left and sidebar) and assets/style.css on every page."""
    import base64

    from app_helpers import ROOT
    from streamlit.testing.v1 import local_script_runner as runner

    logos = []
    real_parse = runner.parse_tree_from_messages

    def parse(msgs):
        logos.extend(m.logo for m in msgs if m.HasField("logo"))
        return real_parse(msgs)

    monkeypatch.setattr(runner, "parse_tree_from_messages", parse)
    css = (ROOT / "assets" / "style.css").read_text()
    svg = (ROOT / "assets" / "logo.svg").read_bytes()
    at = AppTest.from_file(APP, default_timeout=60).run()
    for page in (None, "pages/9_Admin.py"):  # the home page, and a page that stops early for a visitor
        if page:
            logos.clear()
            at.switch_page(page).run()
        assert not at.exception
        assert [h.proto.body for h in at.get("html")] == [f"<style>{css}</style>"]
        assert len(logos) == 1 and logos[0].size == "large"
        kind, data = logos[0].image.split(",", 1)
        assert kind == "data:image/svg+xml;base64" and base64.b64decode(data) == svg
