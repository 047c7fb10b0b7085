"""Derm7pt: `meta/meta.csv` with the official split in `meta/{train,valid,test}_indexes.csv` beside it (column
`indexes`: 0-based data rows of meta.csv). Each row is one lesion photographed twice, clinical (`clin`) and
dermoscopic (`derm`), paths relative to the `images/` folder: two cases with the same lesion_id.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from mmcore.cases import Case, CaseError, normalise_sex, normalise_site
from mmcore.importers._common import (
    READERS,
    Candidate,
    ImageFinder,
    Notice,
    Rejection,
    check_unique,
    label_key,
    map_label,
    read_table,
)

# Derm7pt diagnoses -> our codes. Lentigo sits with HAM10000's benign keratosis-like lesions (solar lentigo);
# melanosis and the dataset's own "miscellaneous" have no class of ours.
LABELS = {
    "basal cell carcinoma": "bcc",
    "blue nevus": "nv",
    "clark nevus": "nv",
    "combined nevus": "nv",
    "congenital nevus": "nv",
    "dermal nevus": "nv",
    "recurrent nevus": "nv",
    "reed or spitz nevus": "nv",
    "nevus": "nv",
    "dermatofibroma": "df",
    "lentigo": "bkl",
    "seborrheic keratosis": "bkl",
    "melanoma": "mel",
    "melanoma (in situ)": "mel",
    "melanoma (less than 0.76 mm)": "mel",
    "melanoma (0.76 to 1.5 mm)": "mel",
    "melanoma (more than 1.5 mm)": "mel",
    "melanoma metastasis": "mel",
    "vascular lesion": "vasc",
    "melanosis": "other",
    "miscellaneous": "other",
}
# The seven-point checklist criteria (Argenziano 1998), stored as findings with the dataset's values.
CRITERIA = (
    "pigment_network",
    "streaks",
    "pigmentation",
    "regression_structures",
    "dots_and_globules",
    "blue_whitish_veil",
    "vascular_structures",
)
# management -> ISIC diagnosis_confirm_type: excised lesions have histopathology.
MANAGEMENT = {
    "excision": "histopathology",
    "clinical follow up": "serial imaging showing no change",
    "no further examination": "single contributor clinical assessment",
}
LOCATIONS = {"genital areas": "genital"}  # Derm7pt wording the shared site table does not know
SPLIT_FILES = {"train": "train_indexes.csv", "val": "valid_indexes.csv", "test": "test_indexes.csv"}
VIEWS = (("clin", "clinical"), ("derm", "dermoscopy"))  # column, domain
COLUMNS = (
    "case_num",
    "diagnosis",
    "seven_point_score",
    *CRITERIA,
    "level_of_diagnostic_difficulty",
    "elevation",
    "location",
    "sex",
    "clin",
    "derm",
    "management",
    "notes",
)


def read_official_split(meta_dir: Path, n_rows: int) -> tuple[dict[int, str], list[Rejection], list[str]]:
    """(data row index -> split, rejections of bad index rows, the index files that are missing)."""
    splits: dict[int, str] = {}
    where: dict[int, tuple[str, int]] = {}
    rejections: list[Rejection] = []
    missing = []
    for split, name in SPLIT_FILES.items():
        path = meta_dir / name
        if not path.exists():
            missing.append(name)
            continue
        table = read_table(path, "derm7pt index", required=("indexes",), allow_empty=True)
        for row, r in table.rows:
            value = r["indexes"]
            try:
                index = int(float(value))
            except ValueError:
                rejections.append(Rejection(table.file, row, "indexes: not a row number"))
                continue
            if not 0 <= index < n_rows:
                rejections.append(Rejection(table.file, row, f"indexes: not a data row of meta.csv (0-{n_rows - 1})"))
            elif index in splits:
                first_file, first_row = where[index]
                reason = f"indexes: the same data row is already in {Path(first_file).name} row {first_row}"
                rejections.append(Rejection(table.file, row, reason))
            else:
                splits[index] = split
                where[index] = (table.file, row)
    return splits, rejections, missing


@READERS.register("derm7pt")
def read_derm7pt(metadata: Path, images: Path) -> Iterator[Candidate | Rejection | Notice]:
    """Two cases (clinical and dermoscopic) per row of meta.csv, with the official split of the index files."""
    table = read_table(metadata, "derm7pt", required=("case_num", "diagnosis"), known=COLUMNS)
    splits, index_rejections, missing = read_official_split(Path(metadata).parent, len(table.rows))
    yield from index_rejections
    if missing:
        yield Notice(f"no {', '.join(missing)} beside {metadata}: rows in no index file are split by lesion")
    finder = ImageFinder(images, depth=1)
    seen: dict[str, int] = {}
    for ordinal, (row, r) in enumerate(table.rows):
        try:
            table.check(row)
            check_unique(seen, r["case_num"], row, "case_num")
            site, detail = normalise_site(LOCATIONS.get(label_key(r.get("location", "")), r.get("location")))
            findings: dict[str, object] = {c: r[c] for c in CRITERIA if r.get(c)}
            if r.get("seven_point_score", "").lstrip("-").isdigit():
                findings["seven_point_score"] = int(r["seven_point_score"])
            fields = dict(
                source="derm7pt",
                dx=map_label(LABELS, r["diagnosis"], "diagnosis"),
                lesion_id=r["case_num"],
                sex=normalise_sex(r.get("sex")),
                site=site,
                site_detail=r.get("location", detail),
                dx_type=MANAGEMENT.get(label_key(r.get("management", "")), ""),
                split=splits.get(ordinal, ""),
                findings=findings,
                extra={
                    k: r[k]
                    for k in ("diagnosis", "level_of_diagnostic_difficulty", "elevation", "management", "notes")
                    if r.get(k)
                },
            )
        except CaseError as e:
            yield Rejection(table.file, row, str(e))
            continue
        for column, domain in VIEWS:  # a missing photograph loses that view only, never the other
            rel = r.get(column, "")
            image = finder.by_path(rel) if rel else None
            if image is None:
                reason = f"{column}: image file not found" if rel else f"{column}: no image path"
                yield Rejection(table.file, row, reason)
                continue
            case = Case(case_id=f"{r['case_num']}-{column}", domain=domain, **fields)  # type: ignore[arg-type]
            yield Candidate(case, image, table.file, row, column)
