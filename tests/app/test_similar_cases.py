"""Similar cases page (AppTest): cross-modal search, filters that hold, side-by-side comparison."""

from __future__ import annotations

from app_helpers import NOTE, lesion_png, open_page
from streamlit.testing.v1 import AppTest

from mmcore.cases import CaseStore

PAGE = "pages/2_Similar_cases.py"


def _captions(at: AppTest) -> str:
    return " ".join(c.value for c in at.caption)


def test_text_query_finds_images(app_env):
    at = open_page(PAGE)
    at.text_area(key="similar_note").input(NOTE).run()
    assert not at.exception
    compare = [b for b in at.button if b.key and b.key.startswith("similar_compare_")]
    assert compare, "a note alone found no images"
    captions = _captions(at)
    assert "of library neighbours (cosine" in captions  # near and far on the library's own scale
    assert "nearer than 0% of library neighbours" not in captions  # a note is measured against library notes


def test_filter_returns_only_matching_cases(app_env):
    at = open_page(PAGE)
    at.file_uploader(key="similar_upload").upload("q.png", lesion_png(), "image/png").run()
    at.multiselect(key="similar_f_dx").set_value(["nv"]).run()
    assert not at.exception
    ids = [b.key.removeprefix("similar_compare_") for b in at.button if b.key and b.key.startswith("similar_compare_")]
    assert ids
    store = CaseStore(app_env)
    assert {store.get(i).dx for i in ids} == {"nv"}


def test_side_by_side_comparison(app_env):
    at = open_page(PAGE)
    at.file_uploader(key="similar_upload").upload("q.png", lesion_png(), "image/png").run()
    first = next(b for b in at.button if b.key and b.key.startswith("similar_compare_"))
    at.session_state["similar_compare"] = first.key.removeprefix("similar_compare_")
    at.run()
    assert not at.exception
    assert any(s.value == "Side by side" for s in at.subheader)
    assert any(
        "what drives the similarity" in (i.proto.imgs[0].caption if i.proto.imgs else "") for i in at.get("image")
    )


def _strip(at: AppTest) -> list[tuple[str, str]]:
    """(diagnosis as drawn, cosine) of each case in the strip, in rank order (AppTest reads the 4-column grid column
    by column: rank i sits in column i % 4)."""
    import re

    names = [m.value.split("**")[1] for m in at.markdown if m.value.startswith("**")]
    scores = [m.group(1) for c in at.caption if (m := re.search(r"cosine (-?\d\.\d+)", c.value))]
    columns = min(4, len(names))
    ranks = [i for col in range(columns) for i in range(col, len(names), columns)]
    drawn = dict(zip(ranks, zip(names, scores, strict=True), strict=True))
    return [drawn[i] for i in range(len(names))]


def test_findings_rank_the_library_as_similar_by_findings_does_and_filters_hold(app_env):
    from mmcore.explain_findings import similar_by_findings
    from pages._lib import loaders
    from pages._lib.widgets import plain

    names = ["blue-white veil", "atypical pigment network"]
    at = open_page(PAGE)
    at.multiselect(key="similar_findings").set_value(names).run()
    assert not at.exception and not at.error
    expected = similar_by_findings(loaders.get_active_predictor(), names, k=12)
    assert len(expected) == 12 and _strip(at) == [(plain(c.name), f"{c.score:.3f}") for c in expected]
    assert not [b for b in at.button if b.key and b.key.startswith("similar_compare_")]  # nothing to compare with

    at.multiselect(key="similar_f_dx").set_value(["mel"]).run()
    filtered = similar_by_findings(loaders.get_active_predictor(), names, k=12, where={"dx": ["mel"]})
    assert filtered and {c.dx for c in filtered} == {"mel"}
    assert _strip(at) == [(plain(c.name), f"{c.score:.3f}") for c in filtered]
