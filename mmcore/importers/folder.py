"""Any folder of images with a CSV, the user naming the columns: `--columns image=COL,dx=COL,age=COL,...`. Only image
(a file name or a path relative to --images) and dx (our code or a full name) are required.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from mmcore.cases import (
    DOMAINS,
    Case,
    CaseError,
    normalise_age,
    normalise_fitzpatrick,
    normalise_sex,
    normalise_site,
)
from mmcore.importers._common import (
    COMMON_NAMES,
    READERS,
    Candidate,
    ImageFinder,
    ImportFailed,
    Rejection,
    check_unique,
    label_key,
    map_label,
    read_table,
    require_image,
)

# dx values -> our codes: the codes themselves, their full names (cases.DX_NAMES) and common synonyms.
LABELS = COMMON_NAMES
FIELDS = ("image", "dx", "age", "sex", "site", "lesion_id", "patient_id", "fitzpatrick", "domain")
DOMAIN_NAMES = {
    **{d: d for d in DOMAINS},
    "dermoscopic": "dermoscopy",
    "photo": "clinical",
    "clinical photo": "clinical",
}


def parse_columns(spec: str | dict[str, str] | None) -> dict[str, str]:
    """{field: CSV column} from "image=File,dx=Diagnosis"; ImportFailed for an unknown field or a missing one."""
    if not spec:
        raise ImportFailed("the folder format needs --columns image=COL,dx=COL[,age=COL,sex=COL,...]")
    if isinstance(spec, dict):
        pairs = list(spec.items())
    else:
        pairs = []
        for item in spec.split(","):
            field, eq, column = item.partition("=")
            if not eq or not field.strip() or not column.strip():
                raise ImportFailed(f"--columns item {item.strip()!r} must look like field=COLUMN")
            pairs.append((field, column))
    columns: dict[str, str] = {}
    for field, column in pairs:
        field = field.strip().lower()
        if field not in FIELDS:
            raise ImportFailed(f"--columns names an unknown field {field!r}; fields: {', '.join(FIELDS)}")
        columns[field] = label_key(column)
    missing = [f for f in ("image", "dx") if f not in columns]
    if missing:
        raise ImportFailed(f"--columns must name the {' and '.join(missing)} column(s)")
    return columns


@READERS.register("folder")
def read_folder(
    metadata: Path, images: Path, *, columns: str | dict[str, str] | None = None
) -> Iterator[Candidate | Rejection]:
    """One case per row; the columns not named in --columns are kept in the case's extra."""
    names = parse_columns(columns)
    table = read_table(metadata, "folder", required=list(names.values()), known=names.values())
    finder = ImageFinder(images, depth=1)
    seen: dict[str, int] = {}

    def get(r: dict[str, str], field: str) -> str:
        return r.get(names[field], "") if field in names else ""

    for row, r in table.rows:
        try:
            table.check(row)
            check_unique(seen, get(r, "image"), row, "image")
            domain = get(r, "domain")
            if domain and label_key(domain) not in DOMAIN_NAMES:
                raise CaseError(f"domain is not one of {', '.join(DOMAINS)}")
            site, site_detail = normalise_site(get(r, "site"))
            case = Case(
                case_id=get(r, "image"),
                source="folder",
                dx=map_label(LABELS, get(r, "dx"), "diagnosis"),
                lesion_id=get(r, "lesion_id"),
                patient_id=get(r, "patient_id"),
                age=normalise_age(get(r, "age")),
                sex=normalise_sex(get(r, "sex")),
                site=site,
                site_detail=site_detail,
                fitzpatrick=normalise_fitzpatrick(get(r, "fitzpatrick")),
                domain=DOMAIN_NAMES.get(label_key(domain), ""),
                extra={
                    "diagnosis": get(r, "dx"),
                    **{k: v for k, v in r.items() if v and k not in names.values()},
                },
            )
            image = require_image(finder.by_path(get(r, "image")), names["image"])
            yield Candidate(case, image, table.file, row, names["image"])
        except CaseError as e:
            yield Rejection(table.file, row, str(e))
