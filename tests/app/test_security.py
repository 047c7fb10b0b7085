"""What a page draws from data is drawn as text (issue 13, item 11), and a plain `streamlit run` listens on loopback
only (item 10)."""

from __future__ import annotations

import re
import tomllib

from app_helpers import ROOT
from streamlit.testing.v1 import AppTest


def _comparison() -> None:
    from mmcore.predictor import SimilarCase
    from pages._lib.widgets import render_comparison, render_similar_strip

    case = SimilarCase(
        case_id="x:![t](http://127.0.0.1:9/track.png)",
        score=0.9,
        dx="nv",
        name="melanocytic nevus",
        malignancy="benign",
        metadata={"sex": "female", "site": "![s](http://127.0.0.1:9/s.png)"},
        image_path=None,
        notes={"P1": "![t](http://127.0.0.1:9/n.png) <img src=x> :red[**alarm**]\n# heading"},
        modality="image",
    )
    render_similar_strip([case], "security")
    render_comparison(case, None, None, "my note ![q](http://127.0.0.1:9/q.png)")


def test_case_ids_notes_and_metadata_are_drawn_as_text():
    """Before: an id of `![x](http://127.0.0.1:P/track.png)` drawn with st.markdown made Chromium fetch that URL."""
    at = AppTest.from_function(_comparison, default_timeout=60).run()
    assert not at.exception
    drawn = [m.value for m in at.markdown] + [c.value for c in at.caption]
    assert drawn
    active = [re.sub(r"\\.", "", d) for d in drawn]  # what markdown still acts on: all but escaped characters
    assert not [a for a in active if "![" in a or "](" in a or "<img" in a or ":red[" in a or "\n#" in a], drawn
    assert any(r"x\:\!\[t\]\(http\:\/\/127\.0\.0\.1\:9\/track\.png\)" in d for d in drawn)  # shown, as text


def test_streamlit_listens_on_loopback_unless_told_otherwise():
    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert cfg["server"]["address"] in ("127.0.0.1", "localhost")
