"""Model report page (AppTest): metric tables, confusion matrix, calibration, retrieval curves, embedding map."""

from __future__ import annotations

import pytest
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


def test_no_none_cell_and_the_chance_line_is_the_class_prevalence(app_env):
    import json

    from mmcore.config import load_config
    from mmcore.evaluate import read_evaluations
    from mmcore.model_store import active_version

    at = open_page(PAGE)
    for frame in at.dataframe:
        values = frame.value.astype(str).to_numpy().ravel().tolist()
        assert "None" not in values and "nan" not in values
    assert any("n/a (no pairs)" in str(v) for f in at.dataframe for v in f.value.to_numpy().ravel())
    result = read_evaluations(load_config("tiny"), active_version(load_config("tiny")))["test_clinical"]
    chance = result["retrieval"]["image_to_image"]["chance"]
    assert 1 / 7 < chance < 1  # prevalence of a case's own class among the others, not 1/7
    spec = next(json.loads(c.proto.spec) for c in at.get("plotly_chart") if "precision at k" in c.proto.spec)
    lines = [s["y0"] for s in spec["layout"]["shapes"]]
    assert lines == [pytest.approx(chance)]


def test_the_confusion_matrix_is_normalised_by_row_with_counts_on_hover(app_env):
    import json

    at = open_page(PAGE)
    spec = next(json.loads(c.proto.spec) for c in at.get("plotly_chart") if "Confusion" in c.proto.spec)
    z = spec["data"][0]["z"]
    for row, counts in zip(z, spec["data"][0]["customdata"], strict=True):
        if sum(counts):
            assert sum(row) == pytest.approx(1.0)
    assert spec["layout"]["height"] >= 600
