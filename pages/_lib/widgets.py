"""Drawing helpers shared by the pages: `*_ui()` returns choices, `render_*()` draws."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import streamlit as st

from mmcore import DISCLAIMER
from pages._lib.auth import GUEST, User, login_ui, session_user, sign_in_required

ASSETS = Path(__file__).resolve().parents[2] / "assets"  # the logo, the style sheet and the example cases

PAGES = [
    ("app.py", "Home", "clinician"),
    ("pages/1_Diagnose.py", "Diagnose", "clinician"),
    ("pages/2_Similar_cases.py", "Similar cases", "clinician"),
    ("pages/3_Model_report.py", "Model report", "clinician"),
    ("pages/9_Admin.py", "Admin", "admin"),
]


def page_setup(title: str) -> User:
    """Every page starts here: config, the research-use banner, sign-in and links by role. When sign-in is required
    (by default with OIDC), a visitor who is not signed in sees the banner and the sign-in button, nothing else."""
    st.set_page_config(page_title=f"{title} · mmderm", layout="wide")
    render_brand()
    render_banner()
    user = session_user()
    login_ui()
    if user == GUEST and sign_in_required():
        st.info("Sign in (in the sidebar) to use mmderm.")
        st.stop()
    render_nav(user)
    return user


def render_brand() -> None:
    """The logo (top left and in the sidebar; it links home) and our few style rules, on every page."""
    st.logo(str(ASSETS / "logo.svg"), size="large")
    st.html(f"<style>{style_sheet()}</style>")  # style alone: Streamlit adds it without taking any space


@functools.cache
def style_sheet() -> str:
    """assets/style.css, read once: every rerun of every page draws it."""
    return (ASSETS / "style.css").read_text()


def render_banner() -> None:
    st.warning(f"**Research use only.** {DISCLAIMER}", icon="⚠️")


def render_nav(user: User) -> None:
    with st.sidebar:  # the logo above names the app
        for path, label, role in PAGES:
            if role == "admin" and not user.is_admin:
                continue
            st.page_link(path, label=label)


def render_model_card(card: Any) -> None:
    """The active model's card (a ModelCard): what it learned from first, then its towers and test scores."""
    st.subheader(f"Active model: `{card.version}`")
    st.markdown(f"**Trained on:** {card.trained_on or 'not recorded'}")
    st.caption(card.intended_use)
    cols = st.columns(3)
    for col, kind in zip(cols, ("image", "text"), strict=False):
        tower = card.encoders.get(kind)
        if tower is not None:
            trained = ", ".join(tower.trained) or "frozen"
            pretrained = "pretrained" if tower.pretrained else "randomly initialised"
            col.metric(f"{kind.title()} encoder", tower.name, f"{pretrained}; {trained}", delta_color="off")
    train = card.training_data.train
    cols[2].metric(
        "Training cases", f"{train.n:,}", ", ".join(card.training_data.note_strategies) + " notes", delta_color="off"
    )
    head = card.headline
    if head is not None:
        st.markdown(
            f"**Test scores** ({head.n} held-out {head.split} cases, `{head.text_strategy}` notes; model scores, "
            "not diagnoses)"
        )
        rows = [
            {
                "modality": MODALITY_LABELS.get(m, m),
                "balanced accuracy": s.balanced_accuracy,
                "accuracy": s.accuracy,
                "macro-F1": s.macro_f1,
                "ECE": s.ece,
            }
            for m, s in head.modalities.items()
        ]
        st.dataframe(rows, hide_index=True)
    else:
        st.warning("This model has no test evaluation: nobody has measured how it scores.")
    with st.expander("Full model card (metadata.json)"):
        st.json(card.to_dict(), expanded=False)


# ---- inputs ----

METHOD_LABELS = {
    "gradcam": "Grad-CAM",
    "ig": "Integrated Gradients",
    "smoothgrad": "SmoothGrad",
    "occlusion": "Occlusion",
}

SEX_CHOICES = ["unknown", "female", "male"]
FITZPATRICK_CHOICES = ["unknown", "I", "II", "III", "IV", "V", "VI"]


def case_inputs_ui(page: str) -> tuple[bytes | None, str | None, dict[str, Any]]:
    """Photo (upload, camera or one of our examples), clinical note and optional metadata.

    Returns (image bytes, note, metadata); a 0-byte upload comes back as b"" so that the intake says why it cannot
    be used instead of the page ignoring it.
    """
    from mmcore.cases import SITES

    left, right = st.columns([1, 1])
    with left:
        source = st.radio("Photo", ["Upload", "Camera", "Example"], horizontal=True, key=f"{page}_photo_source")
        image_bytes = None
        if source == "Upload":
            file = st.file_uploader(
                "Lesion photo (JPEG, PNG or HEIC)", type=["jpg", "jpeg", "png", "heic", "heif"], key=f"{page}_upload"
            )
            image_bytes = file.getvalue() if file is not None else None
        elif source == "Camera":
            file = st.camera_input("Take a photo of the lesion", key=f"{page}_camera")
            image_bytes = file.getvalue() if file is not None else None
        else:
            image_bytes = example_ui(page)
    with right:
        note = (
            st.text_area(
                "Clinical note",
                key=f"{page}_note",
                height=140,
                placeholder="e.g. 58-year-old man, lesion on the upper back noticed 6 months ago, has grown and "
                "darkened, occasionally itchy, no bleeding.",
            ).strip()
            or None
        )
        with st.expander("Patient details (optional)"):
            st.caption(
                "The model reads only the photo and the note: these fields change no score. They are checked, "
                "kept with the request, and warn you when the model saw few training cases like them."
            )
            c1, c2 = st.columns(2)
            age = c1.number_input("Age", min_value=0, max_value=120, value=None, step=1, key=f"{page}_age")
            sex = c2.selectbox("Sex", SEX_CHOICES, key=f"{page}_sex")
            site = c1.selectbox("Anatomic site", list(SITES), index=list(SITES).index("unknown"), key=f"{page}_site")
            fitz = c2.selectbox("Fitzpatrick skin type", FITZPATRICK_CHOICES, key=f"{page}_fitzpatrick")
    metadata = {
        "age": age,
        "sex": None if sex == "unknown" else sex,
        "site": site,
        "fitzpatrick": None if fitz == "unknown" else FITZPATRICK_CHOICES.index(fitz),
    }
    return image_bytes, note, {k: v for k, v in metadata.items() if v not in (None, "unknown")}


def example_ui(page: str) -> bytes | None:
    """Our example photos (drawn by our own code): pick one, and its note fills the note box."""
    from pages._lib.loaders import get_examples

    examples = get_examples()
    labels = {e["label"]: e for e in examples}
    chosen = st.selectbox("Example", list(labels), key=f"{page}_example", index=None, placeholder="Choose an example")
    if chosen is None:
        return None
    example = labels[chosen]
    st.image(example["bytes"], width=220, caption=example["caption"])
    if st.session_state.get(f"{page}_example_used") != chosen:  # fill the note once, then let the user edit it
        st.session_state[f"{page}_example_used"] = chosen
        st.session_state[f"{page}_note"] = example["note"]  # allowed: the note box is drawn after this column
    return example["bytes"]


def explanation_ui(
    page: str, classes: list[str] | tuple[str, ...], predicted: str, has_image: bool
) -> tuple[str, str, float]:
    """Method, target class and overlay opacity."""
    from mmcore.cases import DX_NAMES

    c1, c2, c3 = st.columns(3)
    methods = {label: name for name, label in METHOD_LABELS.items()}
    label = c1.selectbox("Saliency method", list(methods), key=f"{page}_method", disabled=not has_image)
    target = c2.selectbox(
        "Explain the score of",
        list(classes),
        index=list(classes).index(predicted),
        format_func=lambda c: f"{DX_NAMES.get(c, c)} ({c})",
        key=f"{page}_target",
    )
    opacity = c3.slider("Overlay opacity", 0.0, 1.0, 0.45, 0.05, key=f"{page}_opacity", disabled=not has_image)
    return methods[label], target, opacity


# ---- results ----

MODALITY_LABELS = {"image": "Image only", "text": "Note only", "fused": "Image + note"}
# Text, not emoji: a server's Chromium often has no emoji font, and colour alone must not carry the meaning.
MALIGNANCY_BADGE = {
    "malignant": ":red[**malignant**]",
    "benign": ":green[**benign**]",
    "indeterminate": ":orange[**indeterminate**]",
}


def render_prediction(result: Any) -> None:
    """Any warnings and the top 3 with malignancy. The plotly bars of the scores are render_score_chart's, for the
    page to draw last in a slot: drawing a plotly chart in the browser blocks its main thread for about a second on a
    2-core machine (measured in chromium), and everything sent after it would wait."""
    for warning in result.warnings:
        st.warning(warning)
    st.markdown(
        f"**Top {len(result.top)}** ({MODALITY_LABELS[result.modality].lower()}; model scores, not a diagnosis)"
    )
    cols = st.columns(len(result.top))
    for col, score in zip(cols, result.top, strict=True):
        col.metric(score.name, f"{score.probability:.0%}")
        col.markdown(f"ISIC files it as {MALIGNANCY_BADGE.get(score.malignancy, score.malignancy)}")


def render_score_chart(result: Any) -> None:
    """Plotly bars of the calibrated scores per modality, and the model version under them."""
    import plotly.graph_objects as go

    from mmcore.cases import DX_NAMES

    fig = go.Figure()
    for modality, probs in result.probabilities.items():
        if probs:
            codes = list(probs)
            fig.add_bar(
                name=MODALITY_LABELS[modality], x=[DX_NAMES.get(c, c) for c in codes], y=[probs[c] for c in codes]
            )
    fig.update_layout(
        barmode="group",
        height=380,
        margin=dict(l=10, r=10, t=70, b=10),  # room for the legend above the plot, never over the class names
        yaxis=dict(title="model score", range=[0, 1], tickformat=".0%"),
        xaxis=dict(automargin=True),
        title="Model scores per modality (calibrated; not probabilities of disease)",
        legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0),
    )
    st.plotly_chart(fig, key=f"scores_{result.image_sha256[:8]}_{result.note_sha256[:8]}")
    st.caption(f"Model `{result.model_version}`. Scores come from a research model trained on research data.")


def explain_with_progress(
    predictor: Any,
    image_bytes: bytes | None,
    note: str | None,
    method: str,
    target: str,
    key: str,
    label: str | None = None,
) -> Any | None:
    """The explanation, computed in a worker thread while a progress bar (titled `label`, else the method's name) runs
    against the last time this method took here; a method chosen meanwhile reruns the caller, and the running one is
    cancelled (mmcore stops it)."""
    import threading
    import time

    from pages._lib import loaders

    running = st.session_state.get(f"{key}_explaining")
    if running is not None:
        running.set()  # whatever was computing before this rerun is no longer wanted
    cancel = threading.Event()
    st.session_state[f"{key}_explaining"] = cancel
    future = loaders.get_executor().submit(
        predictor.explain, image_bytes, note, method=method, target=target, cancel=cancel
    )
    expected = predictor.expected_seconds(method, with_note=bool(note))
    label = label or METHOD_LABELS.get(method, method)
    bar = None
    started = time.perf_counter()
    while not future.done():
        elapsed = time.perf_counter() - started
        if bar is None and elapsed > 0.3:  # only a wait a user notices gets a bar
            bar = st.progress(0.0, text=f"{label}…")
        if bar is not None:
            if expected:
                bar.progress(
                    min(0.99, elapsed / expected), text=f"{label}: about {max(0.0, expected - elapsed):.0f} s left"
                )
            else:
                bar.progress(
                    min(0.9, elapsed / (elapsed + 5)), text=f"{label}: {elapsed:.0f} s (first run of this method)"
                )
        time.sleep(0.15)
    if bar is not None:
        bar.empty()
    if st.session_state.get(f"{key}_explaining") is cancel:
        st.session_state.pop(f"{key}_explaining")
    return loaders.safe_call(future.result)


def render_explanation(explanation: Any, opacity: float) -> None:
    """The photo beside its saliency overlay, with a colour bar."""
    if explanation.image is None:
        return
    c1, c2 = st.columns(2)
    from mmcore.cases import DX_NAMES

    side = 420  # the photo and its overlay at one size, so a clinician can compare them point by point
    c1.image(
        explanation.image.resize((side, round(side * explanation.image.height / explanation.image.width))),
        caption="Photo (upright, as analysed)",
    )

    method = METHOD_LABELS.get(explanation.method, explanation.method)
    target = DX_NAMES.get(explanation.target, explanation.target)
    c2.image(
        explanation.overlay(opacity),
        width=side,
        caption=f"{method}: where the model looked for {target} (outline: top 20%)",
    )
    c2.image(explanation.colorbar(), caption="low → high attribution")


def render_word_attributions(explanation: Any) -> None:
    """The note with each word shaded by its attribution (green: towards the class, red: away)."""
    import html

    if not explanation.words:
        return
    spans = []
    for word, score in explanation.words:
        alpha = min(1.0, abs(score))
        colour = f"rgba(0,150,70,{alpha:.2f})" if score >= 0 else f"rgba(200,30,30,{alpha:.2f})"
        spans.append(
            f'<span title="{score:+.2f}" style="background:{colour};padding:1px 3px;border-radius:3px">'
            f"{html.escape(word)}</span>"
        )
    from mmcore.cases import DX_NAMES

    name = DX_NAMES.get(explanation.target, explanation.target)
    st.markdown(f"**Which words moved the note's score** (Integrated Gradients; green towards *{name}*, red away)")
    st.markdown(" ".join(spans), unsafe_allow_html=True)


def render_attention(explanation: Any, page: str) -> None:
    """Attention of the text encoder: one layer/head as a heat map, or the rollout over layers."""
    import plotly.graph_objects as go

    if explanation.attentions is None or not explanation.tokens:
        return
    # A toggle, not an expander: a closed expander's chart is still sent and drawn (plotly in the browser holds its
    # main thread), while most clinicians never open this view.
    if st.toggle("Show the attention in the text encoder", key=f"{page}_attn_show"):
        layers, heads = explanation.attentions.shape[:2]
        c1, c2 = st.columns(2)
        view = c1.radio("View", ["Rollout (all layers)", "One layer and head"], key=f"{page}_attn_view")
        tokens = explanation.tokens
        # Keyed by position: a token that occurs twice is two bars (category axes would merge them into one).
        positions = list(range(len(tokens)))
        axis = dict(tickmode="array", tickvals=positions, ticktext=tokens, tickangle=-60)
        if view.startswith("Rollout") and explanation.rollout is not None:
            fig = go.Figure(go.Bar(x=positions, y=explanation.rollout, hovertext=tokens))
            fig.update_layout(
                height=300,
                margin=dict(l=10, r=10, t=30, b=10),
                xaxis=axis,
                title="How much the note's vector draws on each token (attention rollout)",
            )
        else:
            layer = c2.slider("Layer", 1, layers, layers, key=f"{page}_attn_layer")
            head = c2.slider("Head", 1, heads, 1, key=f"{page}_attn_head") if heads > 1 else 1
            matrix = explanation.attentions[layer - 1, head - 1]
            fig = go.Figure(go.Heatmap(z=matrix, x=positions, y=positions, colorscale="Inferno"))
            fig.update_layout(
                height=460,
                margin=dict(l=10, r=10, t=30, b=10),
                xaxis=axis,
                yaxis=dict(autorange="reversed", **{k: v for k, v in axis.items() if k != "tickangle"}),
                title=f"Layer {layer}, head {head}: rows attend to columns",
            )
        st.plotly_chart(fig, key=f"{page}_attention_chart")


def render_similar_strip(cases: list[Any], page: str, compare: bool = True) -> None:
    """Thumbnails of similar cases with diagnosis, similarity and metadata; a button opens the comparison (when the
    query has a photo or a note to compare with)."""
    if not cases:
        st.info("The case library has no matching cases.")
        return
    cols = st.columns(min(4, len(cases)))
    for i, case in enumerate(cases):
        with cols[i % len(cols)]:
            if case.image_path is not None and case.image_path.exists():
                st.image(str(case.image_path))
            badge = MALIGNANCY_BADGE.get(case.malignancy, plain(case.malignancy))
            st.markdown(f"**{plain(case.name)}** · {badge}")
            meta = case.metadata
            details = [similarity_words(case)]
            if meta.get("age") is not None:
                details.append(f"{meta['age']:.0f} y")
            details += [plain(meta[k]) for k in ("sex", "site") if meta.get(k) not in (None, "", "unknown")]
            if meta.get("domain"):
                details.append(plain(meta["domain"]))
            st.caption(" · ".join(details))
            if compare and st.button("Compare", key=f"{page}_compare_{case.case_id}"):
                st.session_state["similar_compare"] = case.case_id
                st.switch_page("pages/2_Similar_cases.py")


def similarity_words(case: Any) -> str:
    """How near a case is, on the library's own scale (the raw cosine sits near 1 for everything, a cat included)."""
    if case.percentile is None:  # a findings search: the cosine with the findings' direction, no library scale
        return f"cosine {case.score:.3f}"
    return f"nearer than {case.percentile:.0f}% of library neighbours (cosine {case.score:.2f})"


def similar_query_ui(page: str) -> tuple[bytes | None, str | None, str, tuple[float, float]]:
    """The query (photo, text or both, prefilled from Diagnose), the collection searched and the mix weights."""
    carried_image, carried_note = st.session_state.get("similar_last_query", (None, None))
    left, right = st.columns(2)
    with left:
        file = st.file_uploader(
            "Query photo (JPEG, PNG or HEIC)", type=["jpg", "jpeg", "png", "heic", "heif"], key=f"{page}_upload"
        )
        image_bytes = file.getvalue() if file is not None else carried_image
        if file is None and carried_image:
            st.caption("Using the photo from Diagnose.")
    with right:
        note = (
            st.text_area(
                "Query text",
                value=carried_note or "",
                key=f"{page}_note",
                height=100,
                placeholder="e.g. irregular dark brown and blue-grey lesion with streaks",
            ).strip()
            or None
        )
    c1, c2 = st.columns(2)
    collection = c1.radio(
        "Find",
        ["images", "notes"],
        horizontal=True,
        key=f"{page}_collection",
        help="Search the library's images or its notes; either query modality works for both.",
    )
    mix = c2.slider(
        "Weight of the photo when both are given",
        0.0,
        1.0,
        0.5,
        0.1,
        key=f"{page}_mix",
        disabled=not (image_bytes and note),
    )
    return image_bytes, note, "image" if collection == "images" else "text", (mix, 1.0 - mix)


def filters_ui(page: str) -> Any:
    """Metadata filters as a typed CaseFilter (mmcore builds the index's `where` from it)."""
    from mmcore.case_filters import AGE_RANGE, CaseFilter
    from mmcore.cases import DOMAINS, DX_CODES, DX_NAMES, SITES

    with st.expander("Filters"):
        c1, c2, c3 = st.columns(3)
        dx = c1.multiselect("Diagnosis", list(DX_CODES), format_func=lambda c: DX_NAMES.get(c, c), key=f"{page}_f_dx")
        site = c1.multiselect("Site", list(SITES), key=f"{page}_f_site")
        ages = c2.slider("Age", *AGE_RANGE, AGE_RANGE, key=f"{page}_f_age")
        sex = c2.multiselect("Sex", ["female", "male"], key=f"{page}_f_sex")
        fitz = c3.multiselect("Fitzpatrick", [1, 2, 3, 4, 5, 6], key=f"{page}_f_fitz")
        domain = c3.multiselect("Acquisition", list(DOMAINS), key=f"{page}_f_domain")
        source = c3.text_input("Source", key=f"{page}_f_source", placeholder="e.g. synthderm")
    return CaseFilter(tuple(dx), tuple(site), tuple(sex), tuple(fitz), tuple(domain), source, tuple(ages))


def render_comparison(case: Any, why: Any, image_bytes: bytes | None, note: str | None) -> None:
    """The query and a chosen case side by side, each with the heat map of what drives their similarity."""
    from mmcore.overlays import overlay

    left, right = st.columns(2)
    with left:
        st.markdown("**Your query**")
        if why is not None and why.query_image is not None and why.query_heatmap is not None:
            st.image(overlay(why.query_image, why.query_heatmap, 0.45), caption="what drives the similarity")
        if note:
            st.caption(plain(note))
    with right:
        st.markdown(f"**{plain(case.name)}** ({plain(case.case_id)}) · {similarity_words(case)}")
        if why is not None and why.case_image is not None and why.case_heatmap is not None:
            st.image(overlay(why.case_image, why.case_heatmap, 0.45), caption="what drives the similarity")
        elif case.image_path is not None:
            st.image(str(case.image_path))
        st.json({k: v for k, v in case.metadata.items() if v not in (None, "")}, expanded=False)
        for strategy, text in case.notes.items():
            st.caption(f"{plain(strategy)} note: {plain(text)}")


# ---- drawing data as text ----

# ASCII punctuation that markdown, Streamlit's :colour[...] and :material/...: directives, LaTeX or an autolink act on.
_MARKDOWN_ACTIVE = re.compile(r"""([\\`*_{}\[\]()<>#+\-.!|~$:&=^%"'@/])""")


def plain(text: Any) -> str:
    """Data (a case id, a note, a name, a value from a dataset) made safe to put in st.markdown or st.caption: it
    reads as the text it is. Every character markdown could act on is backslash-escaped (an id of
    `![x](http://host/track.png)` made the browser fetch that URL) and line breaks become spaces."""
    return _MARKDOWN_ACTIVE.sub(r"\\\1", " ".join(str(text).split()))
