"""What every importer shares: candidates and rejections, the reader registry, reading a CSV with the row numbers a
spreadsheet shows (header = row 1), finding image files safely, and the diagnosis names several formats share.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from mmcore.cases import DX_CODES, DX_NAMES, Case, CaseError
from mmcore.registry import Registry

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".heic")


class ImportFailed(Exception):
    """The input cannot be imported at all (missing file, wrong format, no recognisable columns); one line."""


@dataclass(frozen=True)
class Rejection:
    """A row, or one image of a row, left out: the file, its spreadsheet row (header = 1) and why."""

    file: str
    row: int
    reason: str


@dataclass(frozen=True)
class Notice:
    """Something the user should know about the whole import that is no single row's fault."""

    message: str


@dataclass
class Candidate:
    """A case read from one row, before its image is decoded; case.case_id is the dataset's own id for the image."""

    case: Case
    image: Path
    file: str
    row: int


Reader = Callable[..., Iterator[Candidate | Rejection | Notice]]
READERS: Registry[Reader] = Registry("dataset format")

# Names a user may write for our classes in a folder CSV, beside the codes and cases.DX_NAMES. Lower case.
COMMON_NAMES: dict[str, str] = {
    **{code: code for code in DX_CODES},
    **{name: code for code, name in DX_NAMES.items()},
    "actinic keratosis": "akiec",
    "actinic keratoses": "akiec",
    "ak": "akiec",
    "ack": "akiec",
    "bowen's disease": "akiec",
    "bowen disease": "akiec",
    "intraepithelial carcinoma": "akiec",
    "squamous cell carcinoma in situ": "akiec",
    "basal cell carcinoma": "bcc",
    "benign keratosis": "bkl",
    "benign keratosis-like lesion": "bkl",
    "seborrheic keratosis": "bkl",
    "seborrhoeic keratosis": "bkl",
    "sk": "bkl",
    "sek": "bkl",
    "solar lentigo": "bkl",
    "lichen planus-like keratosis": "bkl",
    "lichenoid keratosis": "bkl",
    "dermatofibroma": "df",
    "melanoma": "mel",
    "malignant melanoma": "mel",
    "nevus": "nv",
    "naevus": "nv",
    "nev": "nv",
    "melanocytic nevus": "nv",
    "melanocytic naevus": "nv",
    "vascular lesion": "vasc",
    "angioma": "vasc",
    "hemangioma": "vasc",
    "haemangioma": "vasc",
    "angiokeratoma": "vasc",
    "pyogenic granuloma": "vasc",
    "squamous cell carcinoma": "scc",
}


def label_key(value: str) -> str:
    """A label as tables key it: lower case, single spaces."""
    return " ".join(value.strip().lower().split())


def map_label(table: dict[str, str], value: str, what: str = "diagnosis") -> str:
    """Our code for a dataset's label, or CaseError naming the label."""
    if not value.strip():
        raise CaseError(f"{what} is empty")
    try:
        return table[label_key(value)]
    except KeyError:
        raise CaseError(f"unknown {what} {value.strip()!r}") from None


def check_unique(seen: dict[str, int], key: str, row: int, what: str) -> None:
    """Remember the row of each id; a second row with the same id is a CaseError naming the first."""
    if not key:
        raise CaseError(f"{what} is empty")
    if key in seen:
        raise CaseError(f"duplicate {what} {key!r} (first on row {seen[key]})")
    seen[key] = row


def parse_bool(value: str) -> bool | None:
    """True/False as datasets write them ("True", "FALSE", "YES", "no"); blank or UNK is None."""
    v = value.strip().lower()
    if v in ("true", "yes", "y", "1"):
        return True
    if v in ("false", "no", "n", "0"):
        return False
    return None


# ---- CSV tables ----


@dataclass
class Table:
    """A CSV read as strings: columns lower-cased, cells stripped, each row with its spreadsheet row number."""

    path: Path
    columns: list[str]
    rows: list[tuple[int, dict[str, str]]]
    errors: dict[int, str] = field(default_factory=dict)  # row -> why the record itself is malformed

    @property
    def file(self) -> str:
        return str(self.path)

    def check(self, row: int) -> None:
        """Raise CaseError when the record on this row is malformed (more cells than the header)."""
        if row in self.errors:
            raise CaseError(self.errors[row])


def read_table(
    path: Path, fmt: str, required: Sequence[str], known: Iterable[str] = (), allow_empty: bool = False
) -> Table:
    """Read a CSV for `fmt`; ImportFailed when it is missing, not text, empty, or lacks the required columns."""
    path = Path(path)
    if not path.is_file():
        raise ImportFailed(f"{path}: no such file")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImportFailed(f"{path}: cannot be read ({e.strerror or e})") from None
    if b"\x00" in data[:65536]:
        raise ImportFailed(f"{path}: not a CSV text file")
    text = _decode(data)
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise ImportFailed(f"{path}: empty file, no header row")
    try:
        records = list(csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(lines[0])))
    except csv.Error as e:
        raise ImportFailed(f"{path}: not a readable CSV file ({e})") from None

    columns = [label_key(c) for c in records[0]]
    required = [c.lower() for c in required]
    recognised = set(known) | set(required)
    if not recognised & set(columns):
        raise ImportFailed(
            f"{path}: no column of a {fmt} metadata file (expected {', '.join(required)}); found {_show(columns)}"
        )
    missing = [c for c in required if c not in columns]
    if missing:
        raise ImportFailed(f"{path}: lacks the column(s) {', '.join(missing)} that {fmt} needs; found {_show(columns)}")
    dupes = sorted({c for c in columns if c and columns.count(c) > 1})
    if dupes:
        raise ImportFailed(f"{path}: the column(s) {', '.join(dupes)} appear more than once in the header")

    rows: list[tuple[int, dict[str, str]]] = []
    errors: dict[int, str] = {}
    for number, record in enumerate(records[1:], start=2):
        if not any(cell.strip() for cell in record):
            continue  # a blank line is no row of data
        cells = [cell.strip() for cell in record]
        if len(cells) > len(columns) and any(cells[len(columns) :]):
            errors[number] = f"the row has {len(cells)} cells but the header has {len(columns)}"
        cells += [""] * (len(columns) - len(cells))
        rows.append((number, dict(zip(columns, cells, strict=False))))
    if not rows and not allow_empty:
        raise ImportFailed(f"{path}: has a header but no rows of data")
    return Table(path=path, columns=columns, rows=rows, errors=errors)


def _decode(data: bytes) -> str:
    """UTF-8 (with or without BOM), else Windows-1252 as spreadsheets save it, else Latin-1 (never fails)."""
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")


def _delimiter(header: str) -> str:
    """Comma unless the header plainly uses semicolons or tabs (spreadsheets in some locales save those)."""
    counts = {d: header.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] > counts[","] else ","


def _show(columns: Sequence[str], limit: int = 8) -> str:
    shown = [c[:40] for c in columns[:limit] if c] or ["(none)"]
    more = f", ... ({len(columns)} in all)" if len(columns) > limit else ""
    return ", ".join(shown) + more


# ---- image files ----


class ImageFinder:
    """The image files under a folder and its subfolders `depth` levels down, found by name, stem or relative path.

    A path written in a CSV never reaches outside the folder: "../x.jpg" or "/etc/x.jpg" only finds a file of that
    name inside it.
    """

    def __init__(self, root: Path, depth: int = 1) -> None:
        self.root = Path(root).resolve()
        self._by_name: dict[str, Path] = {}
        self._by_lower: dict[str, Path] = {}
        self._scan(self.root, depth)

    def _scan(self, folder: Path, depth: int) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            return
        subfolders = []
        for entry in entries:
            if entry.is_file():
                self._by_name.setdefault(entry.name, Path(entry.path))
                self._by_lower.setdefault(entry.name.lower(), Path(entry.path))
            elif entry.is_dir() and depth > 0 and not entry.name.startswith("."):
                subfolders.append(Path(entry.path))
        for sub in subfolders:  # files nearer the root win over same-named files deeper down
            self._scan(sub, depth - 1)

    def by_name(self, name: str) -> Path | None:
        return self._by_name.get(name) or self._by_lower.get(name.lower())

    def by_stem(self, stem: str, exts: Sequence[str] = IMAGE_EXTS) -> Path | None:
        for ext in exts:
            found = self.by_name(stem + ext)
            if found:
                return found
        return None

    def by_path(self, rel: str) -> Path | None:
        """The file at a relative path inside the root, else the file of that name anywhere in the scan."""
        rel = rel.strip().replace("\\", "/")
        if not rel:
            return None
        candidate = (self.root / rel).resolve()
        if candidate.is_relative_to(self.root) and candidate.is_file():
            return candidate
        return self.by_name(PurePosixPath(rel).name)


def require_image(found: Path | None, name: str) -> Path:
    if found is None:
        raise CaseError(f"image {name} not found")
    return found
