"""Model report: how the active model was evaluated, per modality, domain and skin type; retrieval; calibration."""

from __future__ import annotations

import streamlit as st

from pages._lib import loaders
from pages._lib.feedback import render_agreement
from pages._lib.report import (
    render_calibration,
    render_confusion,
    render_embedding_map,
    render_groups,
    render_headline,
    render_retrieval,
)
from pages._lib.widgets import page_setup, render_model_card

page_setup("Model report")
st.title("Model report")
predictor = loaders.require_predictor()

evaluations = loaders.get_evaluations(predictor.version)
if not evaluations:
    st.info(f"Model `{predictor.version}` has not been evaluated yet: `python -m mmcore eval`.")
    render_model_card(predictor.card)
    st.stop()

name = st.selectbox("Evaluation (split and note strategy)", list(evaluations), key="report_evaluation")
result = evaluations[name]
render_headline(result)
render_groups(result)
modality = st.radio(
    "Modality",
    ["fused", "image", "text"],
    horizontal=True,
    key="report_modality",
    format_func={"fused": "Image + note", "image": "Image only", "text": "Note only"}.get,
)
c1, c2 = st.columns(2)
with c1:
    render_confusion(result, modality)
with c2:
    render_calibration(result, modality)
render_retrieval(result)
colour = st.radio("Colour the map by", ["diagnosis", "domain", "modality"], horizontal=True, key="report_colour")
render_embedding_map(result, colour)
st.subheader("Clinicians' confirmations")
render_agreement()
st.subheader("Model card")
render_model_card(predictor.card)
