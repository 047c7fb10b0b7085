"""Clinician feedback on the pages: the confirm-or-correct form on Diagnose, the review queue and the cases the model
is least sure about on Admin, agreement over time on the Model report. Every change is one mmcore.feedback call."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from pages._lib import loaders
from pages._lib.widgets import plain


def render_feedback_form(result: Any, image_bytes: bytes, note: str | None, metadata: dict, user: Any) -> None:
    """Confirm or correct the diagnosis of an analysed photo and, with consent, offer it to the case library."""
    from mmcore.cases import DX_CODES, DX_NAMES
    from mmcore.feedback import CONFIRMATIONS, FeedbackError, FeedbackQueue

    with st.expander("Confirm or correct the diagnosis, and add this case to the library"):
        if user.name == "guest":
            st.caption("Sign in to contribute a case: contributions are reviewed by an admin and credited by name.")
            return
        with st.form("diagnose_feedback_form", clear_on_submit=True):
            codes = list(DX_CODES)
            top = result.top[0].dx
            dx = st.selectbox(
                "Diagnosis",
                codes,
                index=codes.index(top),
                format_func=lambda c: DX_NAMES.get(c, c),
                key="diagnose_feedback_dx",
            )
            how = st.selectbox("Confirmed by", CONFIRMATIONS, key="diagnose_feedback_how")
            consent = st.checkbox(
                "The patient consented to this photo and note being kept in the case library for research",
                key="diagnose_feedback_consent",
            )
            sent = st.form_submit_button("Submit for review")
        if not sent:
            return
        try:
            with FeedbackQueue(loaders.get_config()) as queue:
                c = queue.submit(
                    image_bytes,
                    dx=dx,
                    confirmation=how,
                    user=user.name,
                    consent=consent,
                    prediction=result,
                    note=note or "",
                    metadata=metadata,
                )
        except FeedbackError as e:
            st.error(str(e))
            return
        agreed = "agrees with" if c.agrees else "differs from"
        st.success(f"Thank you: contribution {c.id} is waiting for an admin's review (it {agreed} the model).")


def render_review(user: str) -> None:
    """Admin: the pending contributions, each accepted into the library or rejected; and where to look next."""
    from mmcore.cases import DX_NAMES
    from mmcore.feedback import FeedbackError, FeedbackQueue

    cfg = loaders.get_config()
    with FeedbackQueue(cfg) as queue:
        pending = queue.list("pending")
        done = [c for c in queue.list() if c.status != "pending"][:20]
        if not pending:
            st.caption("No contribution is waiting for review.")
        for c in pending:
            left, right = st.columns([1, 3])
            left.image(str(queue.image_path(c)), width=160)
            right.markdown(
                f"**#{c.id}** by {plain(c.user)}: **{plain(DX_NAMES.get(c.dx, c.dx))}** ({plain(c.confirmation)}); "
                f"the model said {plain(DX_NAMES.get(c.model_dx, c.model_dx))}"
            )
            if c.note:
                right.caption(plain(c.note))
            a, r = right.columns(2)
            try:
                if a.button("Accept into the library", key=f"admin_feedback_accept_{c.id}"):
                    accepted = queue.review(c.id, user, accept=True)
                    st.success(f"#{c.id} is case {accepted.case_id}: the next training run learns from it.")
                if r.button("Reject", key=f"admin_feedback_reject_{c.id}"):
                    queue.review(c.id, user, accept=False)
                    st.info(f"#{c.id} rejected; its photo is deleted.")
            except FeedbackError as e:
                st.error(str(e))
    if done:
        rows = [
            {
                "#": c.id,
                "status": c.status,
                "by": c.user,
                "diagnosis": c.dx,
                "model": c.model_dx,
                "reviewer": c.reviewer,
                "case": c.case_id,
            }
            for c in done
        ]
        st.dataframe(pd.DataFrame(rows), hide_index=True)
    st.markdown("#### Where review teaches most")
    st.caption(
        "Library cases the active model is least sure about: out of distribution first, then the smallest gap "
        "between its two top classes."
    )
    if st.button("Find them", key="admin_least_sure"):
        from mmcore.feedback import least_sure
        from mmcore.model_store import load_version

        ranked = loaders.safe_call(lambda: least_sure(cfg, load_version(cfg), limit=20))
        if ranked:
            st.dataframe(pd.DataFrame([r.__dict__ for r in ranked]).round(3), hide_index=True)


def render_agreement() -> None:
    """Model report: how often the model's top class agreed with what clinicians confirmed, month by month."""
    import plotly.graph_objects as go

    from mmcore.feedback import FeedbackQueue

    with FeedbackQueue(loaders.get_config()) as queue:
        months = queue.agreement()
    if not months:
        st.caption("No clinician-confirmed case yet: the agreement between the model and clinicians appears here.")
        return
    fig = go.Figure(
        go.Bar(x=[m["month"] for m in months], y=[m["agreement"] for m in months], text=[f"n={m['n']}" for m in months])
    )
    fig.update_layout(
        height=300,
        yaxis=dict(range=[0, 1], tickformat=".0%", title="model agreed"),
        title="Agreement with clinician-confirmed diagnoses",
        margin=dict(l=10, r=10, t=40, b=10),
    )
    st.plotly_chart(fig, key="report_agreement")
