"""ISIC Archive downloads made by isic-cli: `metadata.csv` (isic_id, attribution, copyright_license, then whatever
fields the images have) and `<isic_id>.jpg|.png`. Both the old fields (diagnosis, benign_malignant,
anatom_site_general, ...) and the new hierarchical ones (diagnosis_1..5, anatom_site_1..5) are read.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from isic_metadata.fields import LegacyDxEnum

from mmcore.cases import (
    DX_TYPES,
    Case,
    CaseError,
    normalise_age,
    normalise_fitzpatrick,
    normalise_sex,
    normalise_site,
)
from mmcore.importers._common import (
    READERS,
    Candidate,
    ImageFinder,
    Rejection,
    check_unique,
    label_key,
    read_table,
    require_image,
)

# ISIC diagnosis terms -> our codes, in one table: the old `diagnosis` values and the terms of the new hierarchy
# (diagnosis_1..5, isic-metadata's DiagnosisEnum). The most specific diagnosis_N found here wins; a term of the
# ISIC vocabulary missing here is "other". HAM10000's akiec includes Bowen's disease, hence SCC in situ -> akiec.
LABELS = {
    # the old `diagnosis` column
    "actinic keratosis": "akiec",
    "basal cell carcinoma": "bcc",
    "seborrheic keratosis": "bkl",
    "solar lentigo": "bkl",
    "lentigo nos": "bkl",
    "lichenoid keratosis": "bkl",
    "pigmented benign keratosis": "bkl",
    "dermatofibroma": "df",
    "melanoma": "mel",
    "melanoma metastasis": "mel",
    "nevus": "nv",
    "nevus spilus": "nv",
    "vascular lesion": "vasc",
    "angioma": "vasc",
    "angiokeratoma": "vasc",
    "pyogenic granuloma": "vasc",
    "squamous cell carcinoma": "scc",
    # diagnosis_2: broad groups, used when nothing more specific maps
    "malignant melanocytic proliferations (melanoma)": "mel",
    "benign melanocytic proliferations": "nv",
    "benign soft tissue proliferations - vascular": "vasc",
    "hemorrhagic lesions": "vasc",
    # diagnosis_3..5
    "solar or actinic keratosis": "akiec",
    "solar or actinic cheilitis": "akiec",
    "squamous cell carcinoma in situ": "akiec",
    "squamous cell carcinoma in situ, bowens disease": "akiec",
    "squamous cell carcinoma, invasive": "scc",
    "squamous cell carcinoma, nos": "scc",
    "keratoacanthoma": "scc",
    "verrucous carcinoma": "scc",
    "melanoma invasive": "mel",
    "melanoma in situ": "mel",
    "melanoma, nos": "mel",
    "seborrheic keratosis, clonal": "bkl",
    "lichen planus like keratosis": "bkl",
    "ink-spot lentigo": "bkl",
    "hemangioma": "vasc",
    "hemorrhage": "vasc",
}
# diagnosis_1 / benign_malignant -> malignancy, kept for cases that map to "other".
MALIGNANCY = {"benign": "benign", "malignant": "malignant", "indeterminate": "indeterminate"}
# image_type -> acquisition domain; RCM tiles and mosaics are confocal microscopy, not photographs of skin.
DOMAINS = {
    "dermoscopic": "dermoscopy",
    "clinical: overview": "clinical",
    "clinical: close-up": "clinical",
    "clinical": "clinical",
    "tbp tile: close-up": "clinical",
    "tbp tile: overview": "clinical",
    "rcm: macroscopic": "clinical",
}
# anatom_site_1..5 terms -> anatom_site_general, when the general field is blank; the most specific term wins.
SITE_TERMS = {
    "palm of hand": "palms/soles",
    "sole of foot": "palms/soles",
    "oral mucosa": "oral/genital",
    "anterior trunk": "anterior torso",
    "posterior trunk": "posterior torso",
    "lateral trunk": "lateral torso",
    "head and neck": "head/neck",
    "upper extremity": "upper extremity",
    "lower extremity": "lower extremity",
    "anogenital region": "oral/genital",
    "trunk": "torso",
}
LEVELS = tuple(f"diagnosis_{i}" for i in range(1, 6))
SITE_LEVELS = tuple(f"anatom_site_{i}" for i in range(1, 6))
LEGACY = {label_key(e.value) for e in LegacyDxEnum}
COLUMNS = (
    "isic_id",
    "attribution",
    "copyright_license",
    "diagnosis",
    "benign_malignant",
    *LEVELS,
    "anatom_site_general",
    *SITE_LEVELS,
    "age_approx",
    "sex",
    "lesion_id",
    "patient_id",
    "image_type",
    "fitzpatrick_skin_type",
    "diagnosis_confirm_type",
)
_USED = {*COLUMNS} - {"attribution", "copyright_license", "benign_malignant"}  # those stay in extra


def isic_dx(levels: list[str], legacy: str = "") -> tuple[str, str]:
    """(our code, the diagnosis as ISIC wrote it) from diagnosis_1..5, else the old `diagnosis` value.

    The most specific non-empty level that maps wins; a path under Benign/Malignant/Indeterminate that does not map,
    or an old ISIC diagnosis we have no class for, is "other"; anything else is a CaseError.
    """
    levels = [v for v in levels if v]
    if not levels and ":" in legacy:  # a fully qualified diagnosis written in one column
        levels = [v.strip() for v in legacy.split(":") if v.strip()]
    if levels:
        path = ":".join(levels)
        for term in reversed(levels):
            if label_key(term) in LABELS:
                return LABELS[label_key(term)], path
        if label_key(levels[0]) in MALIGNANCY:
            return "other", path
        raise CaseError("unknown diagnosis: diagnosis_1..5 name no term of the ISIC table")
    if not legacy or label_key(legacy) == "unknown":
        raise CaseError("no diagnosis")
    key = label_key(legacy)
    if key in LABELS:
        return LABELS[key], legacy
    if key in LEGACY:
        return "other", legacy
    raise CaseError("unknown diagnosis: not a label this format knows")


def _domain(image_type: str) -> str:
    if not image_type:
        return ""
    key = label_key(image_type)
    if key in DOMAINS:
        return DOMAINS[key]
    if key.startswith("rcm"):
        raise CaseError("image_type is confocal microscopy, not a photograph of the skin")
    raise CaseError("image_type is not dermoscopic, clinical or TBP tile")


def _site(r: dict[str, str]) -> tuple[str, str]:
    if r.get("anatom_site_general"):
        return normalise_site(r["anatom_site_general"])
    terms = [r[c] for c in SITE_LEVELS if r.get(c)]
    for term in reversed(terms):
        if label_key(term) in SITE_TERMS:
            return SITE_TERMS[label_key(term)], terms[-1]
    return "unknown", (terms[-1] if terms else "")


@READERS.register("isic")
def read_isic(metadata: Path, images: Path) -> Iterator[Candidate | Rejection]:
    """One case per row of an isic-cli metadata.csv; unknown columns are kept in the case's extra."""
    table = read_table(metadata, "isic", required=("isic_id",), known=COLUMNS)
    finder = ImageFinder(images, depth=1)
    seen: dict[str, int] = {}
    for row, r in table.rows:
        try:
            table.check(row)
            isic_id = r["isic_id"]
            check_unique(seen, isic_id, row, "isic_id")
            dx, diagnosis = isic_dx([r.get(c, "") for c in LEVELS], r.get("diagnosis", ""))
            confirm = label_key(r.get("diagnosis_confirm_type", ""))
            if confirm and confirm not in DX_TYPES:
                raise CaseError("diagnosis_confirm_type is not an ISIC value")
            site, site_detail = _site(r)
            stated = label_key(r.get("diagnosis_1") or r.get("benign_malignant", "")).split("/")[0]
            case = Case(
                case_id=isic_id,
                source="isic",
                dx=dx,
                malignancy=MALIGNANCY.get(stated, "") if dx == "other" else "",
                lesion_id=r.get("lesion_id", ""),
                patient_id=r.get("patient_id", ""),
                age=normalise_age(r.get("age_approx", "").removesuffix("+")),  # ISIC writes 85+ for the oldest
                sex=normalise_sex(r.get("sex")),
                site=site,
                site_detail=site_detail,
                fitzpatrick=normalise_fitzpatrick(r.get("fitzpatrick_skin_type")),
                dx_type=confirm,
                domain=_domain(r.get("image_type", "")),
                extra={
                    "diagnosis": diagnosis,
                    **{k: v for k, v in r.items() if v and k not in _USED},
                },
            )
            image = require_image(finder.by_stem(isic_id, (".jpg", ".jpeg", ".png")), "isic_id")
            yield Candidate(case, image, table.file, row, "isic_id")
        except CaseError as e:
            yield Rejection(table.file, row, str(e))
