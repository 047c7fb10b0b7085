"""Drawing helpers shared by the pages: `*_ui()` returns choices, `render_*()` draws."""

from __future__ import annotations

from typing import Any

import streamlit as st

from mmcore import DISCLAIMER
from pages._lib.auth import User, current_user, login_ui

PAGES = [
    ("app.py", "Home", "🏠", "clinician"),
    ("pages/1_Diagnose.py", "Diagnose", "🔬", "clinician"),
    ("pages/2_Similar_cases.py", "Similar cases", "🗂️", "clinician"),
    ("pages/3_Model_report.py", "Model report", "📊", "clinician"),
    ("pages/9_Admin.py", "Admin", "🛠️", "admin"),
]


def page_setup(title: str) -> User:
    """Every page starts here: config, the research-use banner, sign-in and links by role."""
    st.set_page_config(page_title=f"{title} · mmderm", page_icon="🩺", layout="wide")
    render_banner()
    user = current_user()
    login_ui()
    render_nav(user)
    return user


def render_banner() -> None:
    st.warning(f"**Research use only.** {DISCLAIMER}", icon="⚠️")


def render_nav(user: User) -> None:
    with st.sidebar:
        st.markdown("### mmderm")
        for path, label, icon, role in PAGES:
            if role == "admin" and not user.is_admin:
                continue
            st.page_link(path, label=label, icon=icon)


def render_model_card(meta: dict[str, Any]) -> None:
    """The active model's card from its metadata.json."""
    st.subheader(f"Active model: `{meta.get('version', '?')}`")
    st.caption(meta.get("intended_use", "Research use only; not for diagnostic purposes."))
    encoders = meta.get("encoders", {})
    cols = st.columns(3)
    for col, key in zip(cols, ("image", "text"), strict=False):
        enc = encoders.get(key, {})
        if enc:
            pretrained = "pretrained" if enc.get("pretrained") else "randomly initialised"
            col.metric(f"{key.title()} encoder", str(enc.get("name", "?")), pretrained, delta_color="off")
    data = meta.get("training_data", {})
    if data:
        cols[2].metric("Training cases", data.get("n_train", data.get("cases", "?")))
    metrics = meta.get("metrics", {})
    if metrics:
        st.markdown("**Test metrics** (held-out split; model scores, not diagnoses)")
        st.dataframe(_flat_metrics(metrics), hide_index=True)
    with st.expander("Full model card (metadata.json)"):
        st.json(meta)


def _flat_metrics(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for modality, values in metrics.items():
        if isinstance(values, dict):
            row = {"modality": modality}
            row.update({k: round(v, 3) for k, v in values.items() if isinstance(v, int | float)})
            rows.append(row)
    return rows
