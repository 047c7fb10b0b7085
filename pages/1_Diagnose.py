"""Diagnose: a lesion photo and a clinical note -> model scores per modality, the findings the model sees, explanations,
similar cases, and the analysis as a consult PDF."""

from __future__ import annotations

import streamlit as st

from pages._lib import loaders
from pages._lib.feedback import render_feedback_form
from pages._lib.findings import finding_map_ui, render_finding_map, render_findings
from pages._lib.verdict import render_similar_warning, render_verdict
from pages._lib.widgets import (
    case_inputs_ui,
    explain_with_progress,
    explanation_ui,
    page_setup,
    render_attention,
    render_explanation,
    render_prediction,
    render_score_chart,
    render_similar_strip,
    render_word_attributions,
)

user = page_setup("Diagnose")
st.title("Diagnose")
predictor = loaders.require_predictor()

image_bytes, note, metadata = case_inputs_ui("diagnose")
inputs = (image_bytes, note, metadata)
# Never disabled: a note typed and not yet committed still counts on the first click (the click commits it).
if st.button("Analyse", type="primary", key="diagnose_run"):
    if image_bytes is None and not note:
        st.warning("Add a photo, a note, or both, then press **Analyse**.")
    else:
        st.session_state["diagnose_request"] = inputs
request = st.session_state.get("diagnose_request")
if request is None:
    if image_bytes is None and not note:
        st.caption("Add a photo, a note, or both, then press **Analyse**. No photo at hand? Choose **Example**.")
    else:  # says what the click will send: an upload still in flight is not in it yet
        parts = [
            name for name, present in (("the photo", image_bytes is not None), ("the note", bool(note))) if present
        ]
        what = " and ".join(parts)
        st.caption(f"Ready to analyse {what}: press **Analyse**.")
    st.stop()
if request != inputs:  # results stay, marked, until the user asks again
    st.info("Inputs changed: press **Analyse** to update. The results below are for the previous inputs.")
image_bytes, note, metadata = request

# One prediction (and one audit entry) per request: reruns from the explanation widgets reuse it.
cached = st.session_state.get("diagnose_result")
if cached is not None and cached[0] == (predictor.version, request):
    result = cached[1]
else:
    with st.spinner("Scoring…"):
        result = loaders.safe_call(predictor.predict, image_bytes, note, metadata, user=user.name)
    if result is None:
        st.stop()
    st.session_state["diagnose_result"] = ((predictor.version, request), result)
# Whether the inputs are like the training data comes first; scores of out-of-distribution inputs stay hidden.
shown = render_verdict(result.check, key=f"diagnose_show_scores_{result.image_sha256[:12]}_{result.note_sha256[:12]}")
if shown:
    render_prediction(result)
    chart_slot = st.container()  # the score chart, drawn last (render_prediction says why)


# The similar-case search starts now, beside the explanation, and is collected below (one search per request).
if st.session_state.get("diagnose_similar", (None,))[0] != (predictor.version, request):
    future = loaders.get_executor().submit(predictor.similar, image_bytes, note, k=8)
    st.session_state["diagnose_similar"] = ((predictor.version, request), future)


@st.fragment
def why() -> None:
    """Explanations rerun alone: moving the opacity or choosing a method never predicts or searches again. A slow
    method shows a progress bar against its last measured time; choosing another one cancels it."""
    st.subheader("Why")
    has_image = bool(result.image_sha256)
    method, target, opacity = explanation_ui("diagnose", predictor.classes, result.top[0].dx, has_image=has_image)
    # Each modality is explained through its own logits, so the photo's map and the note's attributions are two
    # independent calls: the overlay draws as soon as it is ready (a few hundredths of a second for Grad-CAM) instead
    # of waiting for the note's Integrated Gradients (about 0.25 s alone on 2 cores, more beside the similar-case
    # search). The note's part does not depend on the image method, so switching methods never recomputes it.
    if has_image:
        picture = explain_with_progress(predictor, image_bytes, None, method, target, key="diagnose_image")
        if picture is not None:
            render_explanation(picture, opacity)
    if note:
        words = explain_with_progress(
            predictor, None, note, "gradcam", target, key="diagnose_note", label="Integrated Gradients on the note"
        )
        if words is not None:
            render_word_attributions(words)
            render_attention(words, "diagnose")
    similar_future = st.session_state["diagnose_similar"][1]

    def consult() -> bytes:
        """Built when the button is pressed (and audited then): this analysis, with the explanation chosen above."""
        from mmcore.consult import consult_pdf

        similar = similar_future.result() if similar_future.exception() is None else None
        return consult_pdf(
            predictor,
            image_bytes,
            note,
            user=user.name,
            method=method,
            target=target,
            opacity=opacity,
            show_scores_anyway=shown,
            metadata=metadata,
            prediction=result,
            similar=similar,
        )

    st.download_button(
        "Download consult PDF",
        data=consult,
        file_name=f"consult_{(result.image_sha256 or result.note_sha256)[:12]}.pdf",
        mime="application/pdf",
        on_click="ignore",
        key="diagnose_consult",
        help="This analysis as a PDF: the verdict first, scores, overlay, findings, similar cases, model and input "
        "hashes; the research-use disclaimer on every page. The export is written to the audit log.",
    )


@st.fragment
def findings() -> None:
    """The findings the model sees; choosing a finding's map reruns this panel alone."""
    from mmcore.explain_findings import explain_finding

    scores = loaders.safe_call(predictor.findings, image_bytes) if result.image_sha256 and shown else None
    with st.container(key="diagnose_findings_panel"):
        names = render_findings(scores, shown)
        if names:
            fmap = loaders.safe_call(explain_finding, predictor, image_bytes, finding_map_ui("diagnose", names))
            if fmap is not None:
                render_finding_map(fmap)


# What a clinician waits for draws first: the overlay and the similar cases, then the findings panel and the score
# chart in their places above them (the finding's own Grad-CAM would delay the overlay by a tenth of a second or more,
# the chart's drawing in the browser by about a second).
findings_slot = st.container()
why()

st.subheader("Similar past cases")
similar = loaders.safe_call(st.session_state["diagnose_similar"][1].result)
if similar is not None:
    st.session_state["similar_last_query"] = (image_bytes, note)  # the comparison on Similar cases reuses it
    render_similar_warning(result.check)
    render_similar_strip(similar, "diagnose")
with findings_slot:
    findings()
if shown:
    with chart_slot:
        render_score_chart(result)

if result.image_sha256 and st.button("Draft a description", key="diagnose_draft"):
    draft = loaders.safe_call(predictor.draft_note, image_bytes, user=user.name)
    if draft:
        st.session_state["diagnose_draft_text"] = draft  # the widget's own state: it survives edits and reruns
if "diagnose_draft_text" in st.session_state:
    st.text_area(
        "Draft (edit before use; written by the model, not a clinician)", key="diagnose_draft_text", height=160
    )
if result.image_sha256 and result.in_distribution is not False:
    render_feedback_form(result, image_bytes, note, metadata, user)
