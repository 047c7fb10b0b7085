"""What every importer shares: candidates and rejections, the reader registry, reading a CSV with the row numbers a
spreadsheet shows (header = row 1), finding and reading image files safely, and the diagnosis names several formats
share.

A rejection's reason names the column and the rule it broke, never the cell's value: reasons reach the Admin page and
the rejections file, and a cell may hold a patient's name (or, read from the wrong file, a secret).
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from mmcore.cases import DX_CODES, DX_NAMES, Case, CaseError
from mmcore.registry import Registry

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".heic")
DEFAULT_MAX_CSV_BYTES = 100_000_000
# The cap on a metadata CSV for the import running in this context (import_dataset sets it from the config).
MAX_CSV_BYTES: ContextVar[int] = ContextVar("max_csv_bytes", default=DEFAULT_MAX_CSV_BYTES)
# The import roots every CSV read in this context must lie under (None: no confinement; a person at the shell).
IMPORT_ROOTS: ContextVar[Sequence[Path] | None] = ContextVar("import_roots", default=None)
_SHOWN_COLUMN = re.compile(r"^[a-z0-9 _.()/-]{1,40}$")  # a header name that looks like a column, not like data


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
    """A case read from one row, before its image is decoded; case.case_id is the dataset's own id for the image.
    `column` is the CSV column that named the image (what a rejection of the image names)."""

    case: Case
    image: Path
    file: str
    row: int
    column: str = "image"


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
    """Our code for a dataset's label, or CaseError naming the column (never the label: it is data)."""
    if not value.strip():
        raise CaseError(f"{what} is empty")
    try:
        return table[label_key(value)]
    except KeyError:
        raise CaseError(f"unknown {what}: not a label this format knows") from None


def check_unique(seen: dict[str, int], key: str, row: int, what: str) -> None:
    """Remember the row of each id; a second row with the same id is a CaseError naming the first row."""
    if not key:
        raise CaseError(f"{what} is empty")
    if key in seen:
        raise CaseError(f"duplicate {what} (first on row {seen[key]})")
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
    roots = IMPORT_ROOTS.get()
    if roots is not None:
        path = confine(path, roots, "metadata CSV")
    if not path.is_file():
        raise ImportFailed(f"{path}: no such file")
    data = _read_capped(path, MAX_CSV_BYTES.get())
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


def _read_capped(path: Path, limit: int) -> bytes:
    """A regular file's bytes, refused (ImportFailed) past `limit` before it is read into memory."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO must not hang the import
    except OSError as e:
        raise ImportFailed(f"{path}: cannot be read ({e.strerror or type(e).__name__})") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ImportFailed(f"{path}: not a regular file")
        if info.st_size > limit:
            raise ImportFailed(
                f"{path}: {info.st_size / 1e6:.1f} MB; a metadata CSV may have at most {limit / 1e6:g} MB"
            )
        data = f.read(limit + 1)
    if len(data) > limit:  # it grew while we read it
        raise ImportFailed(f"{path}: larger than {limit / 1e6:g} MB")
    return data


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
    """The header's column names for a message; a "name" that looks like data (a line of /etc/passwd, a secret) is
    counted, never shown."""
    names = [c for c in columns if _SHOWN_COLUMN.match(c)]
    shown = names[:limit] or ["(no column name)"]
    hidden = len([c for c in columns if c]) - len(names)
    more = f", ... ({len(names)} in all)" if len(names) > limit else ""
    return ", ".join(shown) + more + (f" and {hidden} that do not look like column names" if hidden else "")


# ---- image files ----


class ImageFinder:
    """The image files under a folder and its subfolders `depth` levels down, found by name, stem or relative path.

    Nothing found ever lies outside the folder: a path written in a CSV ("../x.jpg", "/etc/x.jpg") only finds a file of
    that name inside it, and a symlink is followed only when its target is inside it too (every path it returns is
    resolved, so a later read opens that very file).
    """

    def __init__(self, root: Path, depth: int = 1) -> None:
        self.root = Path(root).resolve()
        self._by_name: dict[str, Path] = {}
        self._by_lower: dict[str, Path] = {}
        self.outside = 0  # entries skipped because they resolve outside the folder
        self._scan(self.root, depth)

    def _inside(self, path: Path) -> Path | None:
        try:
            real = path.resolve(strict=True)
        except (OSError, RuntimeError):  # dangling or looping symlink
            return None
        if not real.is_relative_to(self.root):
            self.outside += 1
            return None
        return real

    def _scan(self, folder: Path, depth: int) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            return
        subfolders = []
        for entry in entries:
            if entry.is_file(follow_symlinks=False):
                # A plain file in a resolved folder is its own real path: no resolve() per file (10,015 of them cost
                # 5 s of an import's scan, more than re-importing them; bench/results/scale.md).
                real = folder / entry.name
                self._by_name.setdefault(entry.name, real)
                self._by_lower.setdefault(entry.name.lower(), real)
            elif entry.is_file():  # a symlink to a file: followed only when its target is inside the root
                real = self._inside(Path(entry.path))
                if real is not None:
                    self._by_name.setdefault(entry.name, real)
                    self._by_lower.setdefault(entry.name.lower(), real)
            elif entry.is_dir() and depth > 0 and not entry.name.startswith("."):
                real = self._inside(Path(entry.path))
                if real is not None:
                    subfolders.append(real)
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


def require_image(found: Path | None, column: str) -> Path:
    """The image file a row names, or CaseError naming the column (the file name is data)."""
    if found is None:
        raise CaseError(f"{column}: image file not found")
    return found


def read_image_file(path: Path, root: Path, max_bytes: int) -> bytes:
    """The bytes of an image file that must lie inside `root` (resolved): OSError, or CaseError naming the rule, when
    it left the folder since it was found, is not a regular file, or is larger than max_bytes (read no further)."""
    return read_image_file_stat(path, root, max_bytes)[0]


def read_image_file_stat(path: Path, root: Path, max_bytes: int) -> tuple[bytes, os.stat_result]:
    """read_image_file, with the file's stat taken before reading (a change while it is read shows next time)."""
    real = Path(path).resolve(strict=True)
    if not real.is_relative_to(Path(root).resolve()):
        raise CaseError("image file lies outside the images folder")
    fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise CaseError("image path is not a regular file")
        return f.read(max_bytes + 1), info  # one byte more than allowed: the intake refuses it with its size message


@contextlib.contextmanager
def reading_limits(max_csv_bytes: int, roots: Sequence[Path] | None) -> Iterator[None]:
    """Cap every CSV a reader reads in this block, and confine it to `roots` when given."""
    tokens = MAX_CSV_BYTES.set(max_csv_bytes), IMPORT_ROOTS.set(roots)
    try:
        yield
    finally:
        MAX_CSV_BYTES.reset(tokens[0])
        IMPORT_ROOTS.reset(tokens[1])


def confine(path: str | Path, roots: Sequence[Path], what: str) -> Path:
    """`path` resolved (symlinks followed) when it lies under one of the import roots, else ImportFailed. A relative
    path is taken inside the first root."""
    if not roots:
        raise ImportFailed("no import root is configured (intake.import_roots / MMDERM_IMPORT_ROOTS)")
    resolved_roots = [Path(r).resolve() for r in roots]
    p = Path(path).expanduser()
    if not p.is_absolute():
        p = resolved_roots[0] / p
    try:
        real = p.resolve(strict=True)
    except (OSError, RuntimeError):
        raise ImportFailed(f"{path}: no such {what}") from None
    if not any(real.is_relative_to(root) for root in resolved_roots):
        shown = ", ".join(str(r) for r in resolved_roots)
        raise ImportFailed(f"{path}: the {what} is not under an import root ({shown}); imports read only there")
    return real
