"""The Model report's charts and tables, drawn from one evaluation result (mmcore.evaluate's JSON)."""

from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from mmcore.cases import DX_NAMES
from mmcore.evaluate import PAIRINGS, PRECISION_AT

# Labels for what mmcore.evaluate computes; the keys come from its results.
MODALITIES = {"image": "Image only", "text": "Note only", "fused": "Image + note"}
HEADLINE = {
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced acc.",
    "macro_f1": "macro-F1",
    "kappa": "Cohen's kappa",
    "auroc_macro": "AUROC (macro)",
    "ece": "ECE (calibrated)",
    "ece_uncalibrated": "ECE before calibration",
}
_WORDS = {"image": "image", "text": "note"}
PAIRING_LABELS = {f"{q}_to_{g}": f"{_WORDS[q]} → {_WORDS[g]}" for q, g in PAIRINGS}


def metrics_table(result: dict[str, Any]) -> pd.DataFrame:
    rows = []
    for m, label in MODALITIES.items():
        c = result["classification"][m]
        rows.append({"modality": label, **{name: c.get(key) for key, name in HEADLINE.items()}})
    return pd.DataFrame(rows).round(3)


def group_table(groups: dict[str, Any], metric: str = "balanced_accuracy") -> pd.DataFrame:
    rows = []
    for group, r in groups.items():
        row = {"group": group, "cases": r["n"]}
        row.update({MODALITIES[m]: r["classification"][m].get(metric) for m in MODALITIES})
        row["note → image mAP"] = r["retrieval"]["text_to_image"].get("mAP")
        rows.append(row)
    return pd.DataFrame(rows).round(3)


def render_headline(result: dict[str, Any]) -> None:
    base = result.get("baselines", {})
    st.markdown(
        f"**{result['n']} {result['split']} cases**, notes written as `{result['text_strategy']}` "
        f"(what clinicians type). Chance {base.get('chance', 0):.3f}; always guessing "
        f"*{DX_NAMES.get(base.get('majority_class'), base.get('majority_class'))}* is right "
        f"{base.get('majority_rate', 0):.1%} of the time."
    )
    st.dataframe(metrics_table(result), hide_index=True)


def render_groups(result: dict[str, Any]) -> None:
    c1, c2 = st.columns(2)
    c1.markdown("**Balanced accuracy by acquisition domain**")
    c1.dataframe(group_table(result["by_domain"]), hide_index=True)
    c2.markdown("**Balanced accuracy by Fitzpatrick skin type**")
    c2.dataframe(group_table(result["by_fitzpatrick"]), hide_index=True)


def render_confusion(result: dict[str, Any], modality: str) -> None:
    matrix = result["classification"][modality]["confusion"]
    names = [DX_NAMES.get(c, c) for c in result["classes"]]
    fig = go.Figure(go.Heatmap(z=matrix, x=names, y=names, colorscale="Blues", text=matrix, texttemplate="%{text}"))
    fig.update_layout(
        height=460,
        margin=dict(l=10, r=10, t=40, b=10),
        title=f"Confusion ({MODALITIES[modality]})",
        xaxis_title="model's top class",
        yaxis_title="true diagnosis",
        yaxis=dict(autorange="reversed"),
    )
    st.plotly_chart(fig, key=f"report_confusion_{modality}")


def render_calibration(result: dict[str, Any], modality: str) -> None:
    bins = [b for b in result["classification"][modality]["calibration"] if b["count"]]
    fig = go.Figure()
    fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dash", color="grey"), name="perfect")
    fig.add_scatter(
        x=[b["confidence"] for b in bins],
        y=[b["accuracy"] for b in bins],
        mode="lines+markers",
        marker=dict(size=[6 + min(20, b["count"] / 5) for b in bins]),
        name=MODALITIES[modality],
    )
    scores = result["classification"][modality]
    ece, before, t = scores["ece"], scores.get("ece_uncalibrated"), scores.get("temperature", 1.0)
    title = f"Calibration: ECE {ece:.3f}" + (
        f" (before temperature scaling {before:.3f}, T = {t:.2f})" if t != 1 else ""
    )
    fig.update_layout(
        height=400,
        margin=dict(l=10, r=10, t=40, b=10),
        title=title,
        xaxis_title="top score",
        yaxis_title="fraction correct",
        xaxis=dict(range=[0, 1]),
        yaxis=dict(range=[0, 1]),
    )
    st.plotly_chart(fig, key=f"report_calibration_{modality}")


def render_retrieval(result: dict[str, Any]) -> None:
    ks = list(PRECISION_AT)
    fig = go.Figure()
    for key, label in PAIRING_LABELS.items():
        r = result["retrieval"][key]
        fig.add_scatter(x=ks, y=[r.get(f"P@{k}") for k in ks], mode="lines+markers", name=label)
    chance = retrieval_chance(result)
    if chance is not None:  # a random ranking's P@k: the share of same-class cases (class prevalence), not 1/C
        fig.add_hline(y=chance, line_dash="dot", annotation_text=f"chance (class prevalence) {chance:.2f}")
    fig.update_layout(
        height=380,
        margin=dict(l=10, r=10, t=40, b=10),
        title="Retrieval: precision at k (same class)",
        xaxis_title="k",
        yaxis_title="P@k",
        yaxis=dict(range=[0, 1]),
    )
    st.plotly_chart(fig, key="report_retrieval")
    rows = [
        {
            "search": label,
            "mAP": result["retrieval"][key].get("mAP"),
            **{f"R@{k}": result["retrieval"][key].get(f"R@{k}") for k in (1, 5, 10)},
        }
        for key, label in PAIRING_LABELS.items()
    ]
    st.dataframe(pd.DataFrame(rows).round(3), hide_index=True)
    st.caption("R@k: how often a case's own pair (its photo for its note, or back) is in the top k.")


def retrieval_chance(result: dict[str, Any]) -> float | None:
    """P@k of a random ranking for this evaluation (older evaluations did not record it)."""
    return result["retrieval"].get("image_to_image", {}).get("chance")


def render_embedding_map(result: dict[str, Any], colour: str) -> None:
    emb = result.get("embedding_map")
    if not emb:
        return
    frame = pd.DataFrame({k: emb[k] for k in ("x", "y", "modality", "dx", "domain", "case_id")})
    frame["diagnosis"] = frame["dx"].map(lambda c: DX_NAMES.get(c, c))
    fig = px.scatter(
        frame,
        x="x",
        y="y",
        color="diagnosis" if colour == "diagnosis" else colour,
        symbol="modality",
        hover_data=["case_id", "domain"],
        opacity=0.7,
    )
    var = emb.get("explained_variance", [0, 0])
    fig.update_layout(
        height=520,
        margin=dict(l=10, r=10, t=40, b=10),
        title=f"Shared embedding space (PCA: {var[0]:.0%} and {var[1]:.0%} of the variance)",
        xaxis_title="PC 1",
        yaxis_title="PC 2",
    )
    st.plotly_chart(fig, key=f"report_embedding_{colour}")
