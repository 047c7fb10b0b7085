"""HAM10000: `HAM10000_metadata.csv` (lesion_id, image_id, dx, dx_type, age, sex, localization, optional dataset) and
`<image_id>.jpg` files, directly in --images or one folder down (HAM10000_images_part_1/2). All dermoscopy.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from mmcore.cases import Case, CaseError, normalise_age, normalise_sex, normalise_site
from mmcore.importers._common import (
    READERS,
    Candidate,
    ImageFinder,
    Rejection,
    check_unique,
    map_label,
    read_table,
    require_image,
)

# HAM10000's dx codes are ours.
LABELS = {
    "akiec": "akiec",
    "bcc": "bcc",
    "bkl": "bkl",
    "df": "df",
    "mel": "mel",
    "nv": "nv",
    "vasc": "vasc",
}
# dx_type -> ISIC diagnosis_confirm_type (cases.DX_TYPES), as the HAM10000 paper defines its four kinds.
DX_TYPES = {
    "histo": "histopathology",
    "follow_up": "serial imaging showing no change",
    "consensus": "single image expert consensus",
    "confocal": "confocal microscopy with consensus dermoscopy",
}
COLUMNS = ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization", "dataset")


@READERS.register("ham10000")
def read_ham10000(metadata: Path, images: Path) -> Iterator[Candidate | Rejection]:
    """One case per row of HAM10000_metadata.csv; bad rows come out as rejections."""
    table = read_table(metadata, "ham10000", required=("image_id", "dx"), known=COLUMNS)
    finder = ImageFinder(images, depth=1)
    seen: dict[str, int] = {}
    for row, r in table.rows:
        try:
            table.check(row)
            check_unique(seen, r["image_id"], row, "image_id")
            dx_type = r.get("dx_type", "")
            if dx_type and dx_type.lower() not in DX_TYPES:
                raise CaseError(f"dx_type is not one of {', '.join(DX_TYPES)}")
            site, site_detail = normalise_site(r.get("localization"))
            case = Case(
                case_id=r["image_id"],
                source="ham10000",
                dx=map_label(LABELS, r["dx"], "diagnosis"),
                lesion_id=r.get("lesion_id", ""),
                age=normalise_age(r.get("age")),
                sex=normalise_sex(r.get("sex")),
                site=site,
                site_detail=site_detail,
                dx_type=DX_TYPES.get(dx_type.lower(), ""),
                domain="dermoscopy",
                extra={k: r[k] for k in ("dataset",) if r.get(k)},
            )
            found = finder.by_name(f"{r['image_id']}.jpg") or finder.by_stem(r["image_id"])
            yield Candidate(case, require_image(found, "image_id"), table.file, row, "image_id")
        except CaseError as e:
            yield Rejection(table.file, row, str(e))
