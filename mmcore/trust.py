"""Whether the model should be trusted on an input, said first and plainly: the out-of-distribution verdict of the
photo and the note (DESIGN section 10), and the checks of the patient details a clinician types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mmcore.cases import normalise_age, normalise_fitzpatrick, normalise_sex, normalise_site
from mmcore.model_card import ModelCard
from mmcore.ood import OODScorer, OODVerdict

FEW_TRAINING_CASES = 20
METADATA_KEYS = ("age", "sex", "site", "fitzpatrick")


@dataclass(frozen=True)
class InputCheck:
    """The verdict on one request's inputs.

    in_distribution: every input given is like the training data (None: this version has no OOD gate).
    ood_score, ood_threshold: the photo's when there is one, else the note's (None without a gate).
    reasons: why an input is out of distribution, in words a clinician reads first; cautions: unusual but passing.
    """

    in_distribution: bool | None
    ood_score: float | None = None
    ood_threshold: float | None = None
    reasons: list[str] = field(default_factory=list)
    cautions: list[str] = field(default_factory=list)
    verdicts: dict[str, OODVerdict] = field(default_factory=dict)  # "image", "note"


def trained_on_short(card: ModelCard) -> str:
    """What the model learned from, without the counts ("SynthDerm: procedurally drawn lesions, ...")."""
    return card.trained_on.split(" (")[0] or "its training data"


def check_inputs(
    scorer: OODScorer | None,
    card: ModelCard,
    image_features: np.ndarray | None,
    note: str | None,
    note_features: np.ndarray | None,
) -> InputCheck:
    """The OOD verdict of a photo's (1, F_img) tower features and a note with its (1, F_txt) pooled features."""
    if scorer is None:
        return InputCheck(None)
    verdicts: dict[str, OODVerdict] = {}
    reasons: list[str] = []
    cautions: list[str] = []
    if image_features is not None and scorer.image is not None:
        verdicts["image"] = scorer.image.verdicts(image_features)[0]
        if not verdicts["image"].in_distribution:
            reasons.append(
                f"This photo is unlike the cases this model learned from ({trained_on_short(card)}); its scores "
                "would mean nothing."
            )
    if note is not None and note_features is not None and scorer.note is not None:
        verdicts["note"] = scorer.note.verdicts([note], note_features)[0]
        reasons += list(verdicts["note"].reasons)
        cautions += list(verdicts["note"].cautions)
    if not verdicts:
        return InputCheck(None)
    lead = verdicts.get("image") or verdicts["note"]
    return InputCheck(
        in_distribution=all(v.in_distribution for v in verdicts.values()),
        ood_score=lead.score,
        ood_threshold=lead.threshold,
        reasons=reasons,
        cautions=cautions,
        verdicts=verdicts,
    )


def check_metadata(card: ModelCard, metadata: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Normalised age/sex/site/Fitzpatrick (CaseError, a ValueError, on an impossible value) and warnings where the
    training data was thin. The model itself reads none of these fields."""
    clean: dict[str, Any] = {}
    warnings = []
    unknown = sorted(set(metadata) - set(METADATA_KEYS))
    if unknown:
        warnings.append(f"ignored metadata fields: {', '.join(unknown)}")
    if "age" in metadata:
        clean["age"] = normalise_age(metadata["age"])
    if "sex" in metadata:
        clean["sex"] = normalise_sex(metadata["sex"])
    if "site" in metadata:
        clean["site"] = normalise_site(metadata["site"])[0]
    if "fitzpatrick" in metadata:
        clean["fitzpatrick"] = normalise_fitzpatrick(metadata["fitzpatrick"])
    train = card.training_data.train
    for key, counts in (("fitzpatrick", train.fitzpatrick), ("site", train.site)):
        value = clean.get(key)
        if counts and value is not None:  # a card that recorded the counts (every version trained since)
            n = int(counts.get(str(value), 0))
            if n < FEW_TRAINING_CASES:
                label = "Fitzpatrick type" if key == "fitzpatrick" else "site"
                warnings.append(
                    f"few training cases with {label} {value} ({n} of {train.n}): scores may be less reliable"
                )
    return {k: v for k, v in clean.items() if v is not None}, warnings
