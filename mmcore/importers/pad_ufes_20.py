"""PAD-UFES-20: `metadata.csv` (26 columns, "fitspatrick" spelt as the dataset spells it) and `<img_id>` PNG files,
directly in --images or one folder down (imgs_part_1/2/3). Smartphone photographs: clinical domain.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mmcore.cases import Case, CaseError, normalise_age, normalise_fitzpatrick, normalise_sex, normalise_site
from mmcore.importers._common import (
    READERS,
    Candidate,
    ImageFinder,
    Rejection,
    check_unique,
    map_label,
    parse_bool,
    read_table,
    require_image,
)

# PAD-UFES-20 `diagnostic` -> our codes.
LABELS = {
    "ack": "akiec",  # actinic keratosis
    "bcc": "bcc",
    "mel": "mel",
    "nev": "nv",
    "scc": "scc",
    "sek": "bkl",  # seborrheic keratosis
}
COLUMNS = (
    "patient_id",
    "lesion_id",
    "smoke",
    "drink",
    "background_father",
    "background_mother",
    "age",
    "pesticide",
    "gender",
    "skin_cancer_history",
    "cancer_history",
    "has_piped_water",
    "has_sewage_system",
    "fitspatrick",
    "region",
    "diameter_1",
    "diameter_2",
    "diagnostic",
    "itch",
    "grew",
    "hurt",
    "changed",
    "bleed",
    "elevation",
    "img_id",
    "biopsed",
)
# What the patient reported about the lesion and their history: kept in extra for clinical notes.
LESION_FLAGS = ("itch", "grew", "hurt", "changed", "bleed", "elevation")
HISTORY_FLAGS = (
    "smoke",
    "drink",
    "pesticide",
    "skin_cancer_history",
    "cancer_history",
    "has_piped_water",
    "has_sewage_system",
)


def _extra(r: dict[str, str]) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    for key in (*LESION_FLAGS, *HISTORY_FLAGS, "biopsed"):
        flag = parse_bool(r.get(key, ""))
        if flag is not None:
            extra[key] = flag
    for key in ("diameter_1", "diameter_2"):  # millimetres
        value = r.get(key, "")
        if value:
            try:
                extra[f"{key}_mm"] = float(value)
            except ValueError:
                raise CaseError(f"{key} is not a number of millimetres") from None
    for key in ("background_father", "background_mother"):
        if r.get(key):
            extra[key] = r[key]
    extra["diagnostic"] = r["diagnostic"]
    return extra


@READERS.register("pad-ufes-20")
def read_pad_ufes_20(metadata: Path, images: Path) -> Iterator[Candidate | Rejection]:
    """One case per row of PAD-UFES-20's metadata.csv."""
    table = read_table(metadata, "pad-ufes-20", required=("img_id", "diagnostic"), known=COLUMNS)
    finder = ImageFinder(images, depth=1)
    seen: dict[str, int] = {}
    for row, values in table.rows:
        r = {k: "" if v.upper() == "UNK" else v for k, v in values.items()}  # PAD-UFES-20 writes UNK for unknown
        try:
            table.check(row)
            check_unique(seen, r["img_id"], row, "img_id")
            site, site_detail = normalise_site(r.get("region"))
            biopsied = parse_bool(r.get("biopsed", ""))
            case = Case(
                case_id=r["img_id"],
                source="pad-ufes-20",
                dx=map_label(LABELS, r["diagnostic"], "diagnostic"),
                lesion_id=r.get("lesion_id", ""),
                patient_id=r.get("patient_id", ""),
                age=normalise_age(r.get("age")),
                sex=normalise_sex(r.get("gender")),
                site=site,
                site_detail=site_detail,
                fitzpatrick=normalise_fitzpatrick(r.get("fitspatrick") or r.get("fitzpatrick")),
                # Every cancer in PAD-UFES-20 is biopsy-proven; the rest were diagnosed clinically.
                dx_type={True: "histopathology", False: "single contributor clinical assessment"}.get(biopsied, ""),
                domain="clinical",
                extra=_extra(r),
            )
            image = require_image(finder.by_name(r["img_id"]), "img_id")
            yield Candidate(case, image, table.file, row, "img_id")
        except CaseError as e:
            yield Rejection(table.file, row, str(e))
