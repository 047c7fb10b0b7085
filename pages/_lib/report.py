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


# What each number means, in a sentence a clinician can read (shown under the table).
EXPLAINED = {
    "accuracy": "share of cases whose top class is the true diagnosis; flattered by the common classes",
    "balanced acc.": "accuracy averaged over the diagnoses, so a rare melanoma counts as much as a common nevus",
    "macro-F1": "balance of precision and recall, averaged over the diagnoses",
    "Cohen's kappa": "agreement with the truth beyond what chance agreement would give (1 perfect, 0 chance)",
    "AUROC (macro)": "how well the scores rank each diagnosis above the others (0.5 chance, 1 perfect)",
    "ECE (calibrated)": "how far the scores are from the observed hit rate (0 is perfect): 15 bins, top class",
}
NOT_APPLICABLE = "n/a (no pairs)"


def _cell(value: Any) -> Any:
    """A table cell: numbers rounded; a metric that does not apply says so instead of None."""
    if value is None or (isinstance(value, float) and value != value):
        return NOT_APPLICABLE
    return f"{value:.3f}" if isinstance(value, float) else value  # text: a column mixes numbers and "n/a"


def metrics_table(result: dict[str, Any]) -> pd.DataFrame:
    rows = []
    for m, label in MODALITIES.items():
        c = result["classification"][m]
        rows.append({"modality": label, **{name: _cell(c.get(key)) for key, name in HEADLINE.items()}})
    return pd.DataFrame(rows)


def group_table(groups: dict[str, Any], metric: str = "balanced_accuracy") -> pd.DataFrame:
    rows = []
    for group, r in groups.items():
        row = {"group": group, "cases": r["n"]}
        row.update({MODALITIES[m]: _cell(r["classification"][m].get(metric)) for m in MODALITIES})
        row["note → image mAP"] = _cell(r["retrieval"]["text_to_image"].get("mAP"))
        rows.append(row)
    return pd.DataFrame(rows)


SPLIT_WORDS = {
    "test": "held-out **test** cases, never seen in training or model selection: the numbers to trust",
    "val": "**validation** cases, used to pick the epoch and fit the calibration: optimistic, not the ones to quote",
    "train": "**training** cases the model learned from: far too optimistic",
}


def render_headline(result: dict[str, Any]) -> None:
    base = result.get("baselines", {})
    split = SPLIT_WORDS.get(result["split"], result["split"])
    st.markdown(
        f"**{result['n']}** {split}; notes written as `{result['text_strategy']}`. Chance {base.get('chance', 0):.3f}; "
        f"always guessing *{DX_NAMES.get(base.get('majority_class'), base.get('majority_class'))}* is right "
        f"{base.get('majority_rate', 0):.1%} of the time."
    )
    st.dataframe(metrics_table(result), hide_index=True, use_container_width=True)
    with st.expander("What these numbers mean"):
        st.markdown("\n".join(f"- **{name}**: {text}." for name, text in EXPLAINED.items()))


def render_groups(result: dict[str, Any]) -> None:
    c1, c2 = st.columns(2)
    c1.markdown("**Balanced accuracy by acquisition domain**")
    c1.dataframe(group_table(result["by_domain"]), hide_index=True, use_container_width=True)
    c2.markdown("**Balanced accuracy by Fitzpatrick skin type**")
    c2.dataframe(group_table(result["by_fitzpatrick"]), hide_index=True, use_container_width=True)


def render_confusion(result: dict[str, Any], modality: str) -> None:
    """Rows normalised to the share of each true diagnosis (so the majority class does not swamp the colour scale),
    the counts on hover and in each cell."""
    import numpy as np

    counts = np.asarray(result["classification"][modality]["confusion"])
    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    names = [DX_NAMES.get(c, c) for c in result["classes"]]
    text = [
        [f"{s:.0%}<br>({int(n)})" if n else "" for s, n in zip(rs, rn, strict=True)]
        for rs, rn in zip(share, counts, strict=True)
    ]
    fig = go.Figure(
        go.Heatmap(
            z=share.tolist(),
            x=names,
            y=names,
            colorscale="Blues",
            zmin=0,
            zmax=1,
            text=text,
            texttemplate="%{text}",
            customdata=counts.tolist(),
            hovertemplate="true %{y}<br>model %{x}<br>%{z:.0%} of the row (%{customdata} cases)<extra></extra>",
            colorbar=dict(title="share of row", tickformat=".0%"),
        )
    )
    fig.update_layout(
        height=620,
        margin=dict(l=10, r=10, t=40, b=10),
        title=f"Confusion ({MODALITIES[modality]}): share of each true diagnosis",
        xaxis=dict(title="model's top class", automargin=True, tickangle=-30),
        yaxis=dict(title="true diagnosis", autorange="reversed", automargin=True),
    )
    st.plotly_chart(fig, key=f"report_confusion_{modality}", use_container_width=True)


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
            "mAP": _cell(result["retrieval"][key].get("mAP")),
            **{f"R@{k}": _cell(result["retrieval"][key].get(f"R@{k}")) for k in (1, 5, 10)},
        }
        for key, label in PAIRING_LABELS.items()
    ]
    st.dataframe(pd.DataFrame(rows), hide_index=True, use_container_width=True)
    st.caption(
        "mAP: how high the cases of the same diagnosis rank, averaged over queries. R@k: how often a case's own "
        f"pair (its photo for its note, or back) is in the top k; {NOT_APPLICABLE} within one modality, where a "
        "case has no pair."
    )


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
