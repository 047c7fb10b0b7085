"""Findings the model sees, on Diagnose: a score per ABCD finding of the photo with what the finding means, and where
the photo drives one finding's score (Grad-CAM of its similarity). Research output: a score says what the model's
image-text space reads in the photo, never a finding a clinician has confirmed."""

from __future__ import annotations

from typing import Any

import streamlit as st

from pages._lib.widgets import plain

# What each finding of mmcore.concepts.FINDINGS means at the dermoscope, in one line a clinician can check us against.
MEANINGS = {
    "asymmetry": "Shape or colours not mirror-symmetric about one or both axes (the A of ABCD).",
    "indistinct border": "The edge fades into the skin instead of ending sharply, partly or all round (B of ABCD).",
    "white": "White areas: scar-like depigmentation or regression.",
    "red": "Red: vascular colour, from vessels or inflammation.",
    "light brown": "Light brown: melanin in the upper epidermis.",
    "dark brown": "Dark brown: melanin at the dermo-epidermal junction.",
    "blue-grey": "Blue-grey: melanin deep in the dermis.",
    "black": "Black: melanin high in the epidermis.",
    "pigment network": "A honeycomb of brown lines over lighter holes, typical of melanocytic lesions.",
    "dots": "Small round points of pigment.",
    "globules": "Round to oval structures, larger than dots.",
    "streaks": "Radial lines or pseudopods at the edge of the lesion.",
    "structureless areas": "Areas with no discernible structure.",
    "vessels": "Visible blood vessels.",
    "blue-white veil": "Confluent blue pigment under a ground-glass white haze; a melanoma clue.",
    "regression": "White scar-like areas with blue-grey peppering where pigment has regressed.",
    "atypical pigment network": "A network of thickened, irregular lines and holes, unevenly spread; a melanoma clue.",
    "arborizing vessels": "Sharp, tree-like branching vessels; a basal cell carcinoma clue.",
    "dotted vessels": "Pinpoint vessels.",
    "glomerular vessels": "Coiled vessels like renal glomeruli; seen in squamous cell carcinoma in situ.",
    "comma vessels": "Short, slightly curved vessels; seen in dermal naevi.",
    "blue-grey ovoid nests": "Large, well-defined blue-grey ovoid structures; a basal cell carcinoma clue.",
    "ulceration": "Loss of the epidermis, often with crust.",
    "milia-like cysts": "White or yellow round dots; typical of seborrhoeic keratosis.",
    "comedo-like openings": "Keratin plugs in openings; typical of seborrhoeic keratosis.",
    "fissures": "Fissures and ridges (a brain-like pattern); typical of seborrhoeic keratosis.",
    "lacunae": "Sharply outlined red to blue round areas; typical of vascular lesions.",
    "scale": "Scale on the surface; seen in actinic keratosis and squamous lesions.",
    "strawberry pattern": "A red pseudo-network around follicle openings; typical of facial actinic keratosis.",
    "central white patch": "A central white scar-like patch; typical of dermatofibroma.",
}
WEAK_AUROC = 0.7  # below this validation AUROC a score separates its finding poorly (0.5: chance), and says so
WEAK_TEXT = f"Weak: on held-out cases this score separated the finding poorly (AUROC below {WEAK_AUROC})."
RESEARCH_NOTE = (
    "Research output, not clinical findings: each score (0 to 1) says how strongly the model's shared image-text "
    "space reads the finding in this photo. {how} Validation AUROC: how well the score separated the finding on "
    "held-out cases (0.5 is chance)."
)


def render_findings(findings: list[Any] | None, shown: bool) -> list[str]:
    """Draw the scores per finding (mmcore.concepts.FindingScore), likely and possible first, each with what it means.
    Where the version has a probe, only its calibrated scores are ranked; the zero-shot rest waits in an expander.
    Returns the names of the findings drawn, best first (those a map can be asked for)."""
    st.subheader("Findings the model sees")
    if not shown:
        st.caption("Withheld with the class scores: they come from the same model, which does not know such inputs.")
        return []
    if findings is None:
        st.caption("Findings are read from a photo: add one and press **Analyse**.")
        return []
    ranked = sorted(findings, key=lambda f: -f.score)
    calibrated = [f for f in ranked if f.calibrated]
    how = (
        "Scores come from a probe fitted on the training cases' recorded findings."
        if calibrated
        else "This version has no findings probe: every score is zero-shot prompt similarity, uncalibrated."
    )
    st.caption(RESEARCH_NOTE.format(how=how))
    main = calibrated or ranked
    listed = [f for f in main if not f.label.startswith("unlikely")]
    if not listed:
        st.caption("No finding scores 0.3 or more.")
    for f in listed:
        _finding_row(f)
    unlikely = [f.name for f in main if f.label.startswith("unlikely")]
    if unlikely:
        st.caption("Unlikely (score below 0.3): " + plain(", ".join(unlikely)) + ".")
    zero_shot = [f for f in ranked if not f.calibrated] if calibrated else []
    if zero_shot:
        with st.expander(f"{len(zero_shot)} more findings, zero-shot only (uncalibrated)"):
            st.caption(
                "Too few training cases showed or lacked these findings to fit a probe: their scores are prompt "
                "similarity, not calibrated, and far less reliable than those above."
            )
            st.caption(plain(", ".join(f"{f.name} {f.score:.2f}" for f in zero_shot)))
    return [f.name for f in listed] or [f.name for f in main[:5]]


def _finding_row(f: Any) -> None:
    name, bar, meaning = st.columns([2, 2, 5], vertical_alignment="center")
    name.markdown(f"**{plain(f.name)}**  \n{plain(f.label)}")
    auroc = "" if f.val_auroc is None else f" · validation AUROC {f.val_auroc:.2f}"
    bar.progress(min(max(f.score, 0.0), 1.0), text=f"{f.score:.2f}{auroc}")
    weak = f.val_auroc is not None and f.val_auroc < WEAK_AUROC
    meaning.caption(plain(MEANINGS.get(f.name, "")) + (f"  \n:orange[{WEAK_TEXT}]" if weak else ""))


def finding_map_ui(page: str, names: list[str]) -> str:
    """The finding whose map to show (the best-scoring one by default)."""
    return st.selectbox("Where the model sees", names, key=f"{page}_finding")


def render_finding_map(fmap: Any, opacity: float = 0.45) -> None:
    """A finding's Grad-CAM (mmcore.explain_findings.FindingMap) over the photo, with its colour bar."""
    left, right = st.columns(2)
    left.image(
        fmap.overlay(opacity),
        width=360,
        caption=f"Grad-CAM of the {fmap.target} score: where the photo drives it (outline: top 20%)",
    )
    right.image(fmap.colorbar(), caption="low → high")
    right.caption(MEANINGS.get(fmap.target, ""))


def findings_query_ui(page: str) -> list[str]:
    """Findings to search the case library by, in the vocabulary's order (mmcore.concepts.FINDING_NAMES)."""
    from mmcore.concepts import FINDING_NAMES

    return st.multiselect(
        "Or find cases by findings",
        list(FINDING_NAMES),
        key=f"{page}_findings",
        placeholder="e.g. blue-white veil, atypical pigment network",
        help="Ranks the library's images by how strongly the model's shared space reads all the chosen findings in "
        "them (the directions the findings panel scores). Research output: a model's reading, not findings a "
        "clinician recorded.",
    )
