"""Model report page (AppTest): metric tables, confusion matrix, calibration, retrieval curves, embedding map."""

from __future__ import annotations

from app_helpers import open_page

PAGE = "pages/3_Model_report.py"


def test_report_shows_every_section(app_env):
    at = open_page(PAGE)
    assert not at.exception
    titles = " ".join(c.proto.spec for c in at.get("plotly_chart"))
    for title in ("Confusion", "Calibration", "precision at k", "Shared embedding space"):
        assert title in titles
    assert len(at.dataframe) >= 4  # per modality, per domain, per Fitzpatrick group, retrieval
    assert any("test cases" in m.value for m in at.markdown)


def test_report_switches_modality(app_env):
    at = open_page(PAGE)
    at.radio(key="report_modality").set_value("image").run()
    assert not at.exception
    assert "Image only" in " ".join(c.proto.spec for c in at.get("plotly_chart"))
