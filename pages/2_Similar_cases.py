"""Similar cases: search the case library by image, text or both, across modalities, with filters."""

from __future__ import annotations

import streamlit as st

from pages._lib import loaders
from pages._lib.findings import findings_query_ui
from pages._lib.verdict import render_similar_warning
from pages._lib.widgets import filters_ui, page_setup, render_comparison, render_similar_strip, similar_query_ui

user = page_setup("Similar cases")
st.title("Similar cases")
predictor = loaders.require_predictor()

image_bytes, note, collection, weights = similar_query_ui("similar")
findings = findings_query_ui("similar")
where = filters_ui("similar")
if not (image_bytes or note or findings):
    st.caption(
        "Upload a photo, type a description, or both, or choose findings. A note alone also finds images: image "
        "and text share one embedding space."
    )
    st.stop()

if findings:
    from mmcore.explain_findings import similar_by_findings

    if image_bytes or note:
        st.caption("Searching by the chosen findings: the photo and text above are not used until you clear them.")
    with st.spinner("Searching the case library…"):
        cases = loaders.safe_call(similar_by_findings, predictor, findings, k=12, where=where)
else:
    with st.spinner("Searching the case library…"):
        cases = loaders.safe_call(
            predictor.similar, image_bytes, note, k=12, where=where, modality=collection, weights=weights
        )
if cases is None:
    st.stop()
if findings:
    st.caption(
        f"Images ranked by the model's reading of: {', '.join(findings)}, best first. The number under each is the "
        "cosine of its embedding with those findings' direction in the shared space (research output)."
    )
else:
    st.session_state["similar_last_query"] = (image_bytes, note)
    check = loaders.safe_call(predictor.check, image_bytes, note)
    if check is not None:
        render_similar_warning(check)
render_similar_strip(cases, "similar", compare=not findings)

chosen = st.session_state.get("similar_compare")
if chosen and not findings and chosen in {c.case_id for c in cases}:
    st.subheader("Side by side")
    case = next(c for c in cases if c.case_id == chosen)
    with st.spinner("Explaining the similarity…"):
        why = loaders.safe_call(predictor.explain_similarity, chosen, image_bytes, note)
    render_comparison(case, why, image_bytes, note)
