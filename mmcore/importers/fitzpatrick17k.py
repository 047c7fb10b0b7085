"""Fitzpatrick17k: the CSV (md5hash, fitzpatrick_scale, fitzpatrick_centaur, label, nine_partition_label,
three_partition_label, qc, url, url_alphanum) and the images the user fetched, saved as `<md5hash>.jpg`. Atlas
photographs of 114 conditions: those that fit our classes map to them, every other condition is "other".
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from mmcore.cases import Case, CaseError, normalise_fitzpatrick
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

# Fitzpatrick17k condition names -> our codes; every other condition is "other" (not a rejection).
LABELS = {
    "melanoma": "mel",
    "malignant melanoma": "mel",
    "superficial spreading melanoma ssm": "mel",
    "lentigo maligna": "mel",
    "basal cell carcinoma": "bcc",
    "basal cell carcinoma morpheiform": "bcc",
    "solid cystic basal cell carcinoma": "bcc",
    "squamous cell carcinoma": "scc",
    "actinic keratosis": "akiec",
    "seborrheic keratosis": "bkl",
    "dermatofibroma": "df",
    "pyogenic granuloma": "vasc",
    "port wine stain": "vasc",
    "hemangioma": "vasc",
    "nevocytic nevus": "nv",
    "congenital nevus": "nv",
    "halo nevus": "nv",
    "becker nevus": "nv",
}
# three_partition_label -> malignancy, for conditions that map to "other".
MALIGNANCY = {"malignant": "malignant", "benign": "benign", "non-neoplastic": "benign"}
COLUMNS = (
    "md5hash",
    "fitzpatrick_scale",
    "fitzpatrick_centaur",
    "label",
    "nine_partition_label",
    "three_partition_label",
    "qc",
    "url",
    "url_alphanum",
)


@READERS.register("fitzpatrick17k")
def read_fitzpatrick17k(metadata: Path, images: Path) -> Iterator[Candidate | Rejection]:
    """One case per row whose image file is present; a row without its image is a rejection."""
    table = read_table(metadata, "fitzpatrick17k", required=("md5hash", "label"), known=COLUMNS)
    finder = ImageFinder(images, depth=1)
    seen: dict[str, int] = {}
    for row, r in table.rows:
        try:
            table.check(row)
            check_unique(seen, r["md5hash"], row, "md5hash")
            label = label_key(r["label"])
            if not label:
                raise CaseError("label is empty")
            if r.get("qc", "").startswith("3"):  # the dataset's own review found the label wrong
                raise CaseError("qc: quality control marks the label wrong")
            dx = LABELS.get(label, "other")
            case = Case(
                case_id=r["md5hash"],
                source="fitzpatrick17k",
                dx=dx,
                malignancy=MALIGNANCY.get(label_key(r.get("three_partition_label", "")), "") if dx == "other" else "",
                fitzpatrick=normalise_fitzpatrick(r.get("fitzpatrick_scale")),  # -1 is unknown
                domain="atlas",
                extra={
                    k: r[k]
                    for k in (
                        "label",
                        "nine_partition_label",
                        "three_partition_label",
                        "fitzpatrick_centaur",
                        "qc",
                        "url",
                    )
                    if r.get(k)
                },
            )
            found = finder.by_name(f"{r['md5hash']}.jpg") or finder.by_stem(r["md5hash"])
            yield Candidate(case, require_image(found, "md5hash"), table.file, row, "md5hash")
        except CaseError as e:
            yield Rejection(table.file, row, str(e))
