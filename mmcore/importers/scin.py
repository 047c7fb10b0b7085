"""SCIN (Google's Skin Condition Image Network): `scin_cases.csv` and `scin_labels.csv` joined on case_id, up to three
images per case (image_1_path .. image_3_path, e.g. "dataset/images/-123.png", relative to --images or found by
name inside it). Each image is one case whose lesion_id is the SCIN case_id, so a split keeps them together.
Column names follow google-research-datasets/scin (dataset_schema.md and the columns scin_demo.ipynb prints).
"""

from __future__ import annotations

import ast
import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mmcore.cases import Case, CaseError, normalise_age, normalise_fitzpatrick, normalise_sex
from mmcore.importers._common import (
    READERS,
    Candidate,
    ImageFinder,
    ImportFailed,
    Rejection,
    check_unique,
    label_key,
    read_table,
)

# SCIN condition names (dermatologists' labels) -> our codes; every other condition is "other".
LABELS = {
    "melanoma": "mel",
    "basal cell carcinoma": "bcc",
    "scc/sccis": "scc",
    "squamous cell carcinoma": "scc",
    "actinic keratosis": "akiec",
    "sk/isk": "bkl",
    "seborrheic keratosis": "bkl",
    "melanocytic nevus": "nv",
    "nevus": "nv",
    "congenital nevus": "nv",
    "atypical nevus": "nv",
    "blue nevus": "nv",
    "halo nevus": "nv",
    "dermatofibroma": "df",
    "hemangioma": "vasc",
    "cherry angioma": "vasc",
    "angioma": "vasc",
    "pyogenic granuloma": "vasc",
    "angiokeratoma": "vasc",
}
# body_parts_* flags -> ISIC general site; a case with several body parts has site "unknown" and lists them.
BODY_PARTS = {
    "head_or_neck": "head/neck",
    "arm": "upper extremity",
    "palm": "palms/soles",
    "back_of_hand": "upper extremity",
    "torso_front": "anterior torso",
    "torso_back": "posterior torso",
    "genitalia_or_groin": "oral/genital",
    "buttocks": "posterior torso",
    "leg": "lower extremity",
    "foot_top_or_side": "lower extremity",
    "foot_sole": "palms/soles",
    "other": "unknown",
}
UNKNOWN = {"", "none_selected", "none_identified", "other_or_unspecified", "age_unknown", "unknown"}
# The CSV writes ..._on_label_name; dataset_schema.md calls it ..._label_name. Either is read.
NAME_COLUMNS = ("dermatologist_skin_condition_on_label_name", "dermatologist_skin_condition_label_name")
LABEL_COLUMNS = ("weighted_skin_condition_label", *NAME_COLUMNS)
CASE_COLUMNS = ("case_id", "age_group", "sex_at_birth", "fitzpatrick_skin_type", "image_1_path", "related_category")
_AGE = re.compile(r"AGE_(\d+)_(?:TO_(\d+)|OR_ABOVE)$", re.IGNORECASE)


def age_of_group(group: str) -> float | None:
    """The middle of a SCIN age band: AGE_30_TO_39 -> 35, AGE_80_OR_ABOVE -> 85; AGE_UNKNOWN is None."""
    if group.strip().lower() in UNKNOWN:
        return None
    m = _AGE.match(group.strip())
    if not m:
        raise CaseError("age_group is not AGE_<from>_TO_<to> or AGE_<n>_OR_ABOVE")
    low = int(m.group(1))
    return normalise_age((low + int(m.group(2)) + 1) / 2 if m.group(2) else low + 5)


def top_label(labels: dict[str, str]) -> str:
    """The condition with the highest weight, else the one most dermatologists named; CaseError when none."""
    weighted = _literal(labels.get("weighted_skin_condition_label", ""), dict, "weighted_skin_condition_label")
    if weighted:
        try:
            return max(weighted, key=lambda k: float(weighted[k]))  # ties: the first written
        except (TypeError, ValueError):
            raise CaseError("weighted_skin_condition_label has a weight that is not a number") from None
    column = next((c for c in NAME_COLUMNS if labels.get(c)), "")
    names = _literal(labels.get(column, ""), list, column) if column else []
    if names:
        return Counter(str(n) for n in names).most_common(1)[0][0]
    raise CaseError("no dermatologist label (not gradable)")


def _literal(text: str, kind: type, column: str) -> Any:
    """SCIN writes Python literals ("{'Eczema': 0.69}"); literal_eval reads them without running anything."""
    if not text.strip():
        return kind()
    for parse in (ast.literal_eval, json.loads):
        try:
            value = parse(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if isinstance(value, kind):
            return value
    raise CaseError(f"{column} is not a {kind.__name__} literal")


def _fitzpatrick(r: dict[str, str]) -> int | None:
    """The first dermatologist's estimate (eFST), else the contributor's own (sFST)."""
    for column in ("dermatologist_fitzpatrick_skin_type_label_1", "fitzpatrick_skin_type"):
        value = r.get(column, "")
        if value.lower() not in UNKNOWN:
            return normalise_fitzpatrick(value)
    return None


def _site(r: dict[str, str]) -> tuple[str, str]:
    parts = [p for p in BODY_PARTS if label_key(r.get(f"body_parts_{p}", "")) in ("yes", "true")]
    if len(parts) == 1:
        return BODY_PARTS[parts[0]], parts[0]
    return "unknown", ",".join(parts)


def _extra(r: dict[str, str], label: str) -> dict[str, Any]:
    def flags(prefix: str) -> list[str]:
        return [
            k.removeprefix(prefix) for k, v in r.items() if k.startswith(prefix) and label_key(v) in ("yes", "true")
        ]

    extra: dict[str, Any] = {"condition": label}
    for key in ("weighted_skin_condition_label", "condition_duration", "related_category", "fitzpatrick_skin_type"):
        if r.get(key):
            extra[key] = r[key]
    for prefix in ("condition_symptoms_", "other_symptoms_", "textures_"):
        if flags(prefix):
            extra[prefix.rstrip("_")] = flags(prefix)
    return extra


@READERS.register("scin")
def read_scin(metadata: Path, images: Path, *, labels: Path | str | None = None) -> Iterator[Candidate | Rejection]:
    """One case per image of every SCIN case that has a dermatologist label."""
    labels_path = Path(labels) if labels else Path(metadata).parent / "scin_labels.csv"
    if not labels_path.is_file():
        raise ImportFailed(f"{labels_path}: no such file (SCIN needs scin_labels.csv; pass --labels)")
    cases = read_table(metadata, "scin", required=("case_id", "image_1_path"), known=CASE_COLUMNS)
    label_table = read_table(labels_path, "scin labels", required=("case_id",), known=LABEL_COLUMNS)
    by_case: dict[str, tuple[int, dict[str, str]]] = {}
    for row, r in label_table.rows:
        if r["case_id"] in by_case:
            reason = f"duplicate case_id (first on row {by_case[r['case_id']][0]})"
            yield Rejection(label_table.file, row, reason)
        else:
            by_case[r["case_id"]] = (row, r)
    case_ids = {r["case_id"] for _, r in cases.rows}
    for case_id, (row, _) in by_case.items():
        if case_id not in case_ids:
            yield Rejection(label_table.file, row, f"case_id: not in {Path(metadata).name}")

    finder = ImageFinder(images, depth=2)
    seen: dict[str, int] = {}
    for row, r in cases.rows:
        try:
            cases.check(row)
            case_id = r["case_id"]
            check_unique(seen, case_id, row, "case_id")
            if case_id not in by_case:
                raise CaseError(f"case_id: no row in {labels_path.name}")
            merged = {**by_case[case_id][1], **r}
            label = top_label(merged)
            site, site_detail = _site(merged)
            sex = merged.get("sex_at_birth", "")
            fields = dict(
                source="scin",
                dx=LABELS.get(label_key(label), "other"),
                lesion_id=case_id,
                age=age_of_group(merged.get("age_group", "")),
                sex=None if sex.lower() in UNKNOWN else normalise_sex(sex),
                site=site,
                site_detail=site_detail,
                fitzpatrick=_fitzpatrick(merged),
                domain="clinical",
                extra=_extra(merged, label),
            )
        except CaseError as e:
            yield Rejection(cases.file, row, str(e))
            continue
        for n in (1, 2, 3):
            rel = r.get(f"image_{n}_path", "")
            if not rel:
                continue
            image = finder.by_path(rel)
            if image is None:
                yield Rejection(cases.file, row, f"image_{n}_path: image file not found")
                continue
            shot = {"shot_type": r[f"image_{n}_shot_type"]} if r.get(f"image_{n}_shot_type") else {}
            case = Case(case_id=f"{case_id}_{n}", **{**fields, "extra": {**fields["extra"], **shot}})  # type: ignore
            yield Candidate(case, image, cases.file, row, f"image_{n}_path")
