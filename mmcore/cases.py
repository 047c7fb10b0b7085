"""The Case schema, its vocabularies (ISIC metadata where it has one), and the case store.

The store is SQLite (WAL) plus content-addressed image files under the data home; it is the source of truth for
cases, notes and embeddings. Splits are assigned per connected group of lesion and patient, never per image.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from isic_metadata.fields import AnatomSiteGeneralEnum, DiagnosisConfirmTypeEnum, FitzpatrickSkinType
from PIL import Image

from mmcore.images import DecodedImage, encode_image
from mmcore.splits import SPLITS, assign_groups, split_of

# The seven HAM10000 classes the models learn, then the codes other datasets add.
DX_CLASSES: tuple[str, ...] = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
DX_CODES: tuple[str, ...] = (*DX_CLASSES, "scc", "other")
DX_NAMES = {
    "akiec": "actinic keratosis / intraepithelial carcinoma",
    "bcc": "basal cell carcinoma",
    "bkl": "benign keratosis-like lesion",
    "df": "dermatofibroma",
    "mel": "melanoma",
    "nv": "melanocytic nevus",
    "vasc": "vascular lesion",
    "scc": "squamous cell carcinoma",
    "other": "other",
}
# As ISIC's diagnosis hierarchy files them; actinic keratosis sits under "Indeterminate" there.
MALIGNANCY = {
    "akiec": "indeterminate",
    "bcc": "malignant",
    "bkl": "benign",
    "df": "benign",
    "mel": "malignant",
    "nv": "benign",
    "vasc": "benign",
    "scc": "malignant",
    "other": "indeterminate",
}
SEXES = ("male", "female")  # ISIC's vocabulary; None is unknown
# ISIC anatom_site_general, plus the older ISIC value "torso" for datasets that do not say which side.
SITES: tuple[str, ...] = (*(e.value for e in AnatomSiteGeneralEnum), "torso", "unknown")
DX_TYPES: tuple[str, ...] = tuple(e.value for e in DiagnosisConfirmTypeEnum)
FITZPATRICK_ROMAN = {e.value: i + 1 for i, e in enumerate(FitzpatrickSkinType)}  # "I" -> 1 ... "VI" -> 6
DOMAINS = ("dermoscopy", "clinical", "atlas")


class CaseError(ValueError):
    """A field value does not fit the schema; the message names the field and the rule, never the value (it is data,
    and may be a patient's)."""


# A case id is drawn on pages and written in logs: letters, digits, space and . _ - + / : only (no markdown, no HTML).
CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._+/:-]{0,199}$")


@dataclass
class Case:
    case_id: str
    source: str
    dx: str
    image_sha256: str = ""
    image_path: str = ""  # relative to the data home
    mask_path: str = ""
    lesion_id: str = ""
    patient_id: str = ""
    malignancy: str = ""  # from dx when empty
    age: float | None = None
    sex: str | None = None
    site: str = "unknown"  # ISIC anatom_site_general
    site_detail: str = ""  # the dataset's own wording ("face", "scalp")
    fitzpatrick: int | None = None
    dx_type: str = ""
    domain: str = ""
    split: str = ""
    notes: dict[str, str] = field(default_factory=dict)  # strategy -> text
    findings: dict[str, Any] = field(default_factory=dict)  # ABCD attributes when known
    extra: dict[str, Any] = field(default_factory=dict)  # the source's own fields worth keeping

    def __post_init__(self) -> None:
        if not self.malignancy and self.dx in MALIGNANCY:
            self.malignancy = MALIGNANCY[self.dx]


# ---- field normalisers: importers call these so every dataset speaks one vocabulary ----


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == ""


def normalise_age(value: Any) -> float | None:
    """Age in years; blank is unknown; negative, over 120 or non-numeric is an error."""
    if _blank(value):
        return None
    try:
        age = float(value)
    except (TypeError, ValueError):
        raise CaseError("age is not a number") from None
    if not 0 <= age <= 120:
        raise CaseError("age is impossible (must be 0-120)")
    return age


def normalise_sex(value: Any) -> str | None:
    if _blank(value):
        return None
    v = str(value).strip().lower()
    if v in ("male", "m", "man"):
        return "male"
    if v in ("female", "f", "woman"):
        return "female"
    if v in ("unknown", "unk", "nan", "none", "other", "u", "not_specified", "none_selected"):
        return None
    raise CaseError("sex is not male, female or unknown")


def normalise_fitzpatrick(value: Any) -> int | None:
    """Fitzpatrick type 1-6 from 1..6, "I".."VI", "FST3", "type 4"; blank or unknown is None."""
    if _blank(value):
        return None
    v = str(value).strip().upper().removeprefix("FST").removeprefix("TYPE").strip()
    if v in FITZPATRICK_ROMAN:
        return FITZPATRICK_ROMAN[v]
    try:
        n = float(v)
    except ValueError:
        if v in ("UNKNOWN", "UNK", "NAN", "NONE", "-1", "NONE_IDENTIFIED", "NONE_SELECTED"):
            return None
        raise CaseError("Fitzpatrick type is not 1-6 or I-VI") from None
    if n == -1:  # Fitzpatrick17k writes -1 for unknown
        return None
    if n != int(n) or not 1 <= n <= 6:
        raise CaseError("Fitzpatrick type is not 1-6")
    return int(n)


# Sites as datasets write them -> ISIC anatom_site_general. One visible table.
SITE_MAP = {
    **{s: s for s in SITES},
    **dict.fromkeys(
        ("head", "neck", "face", "scalp", "ear", "nose", "lip", "forehead", "head neck", "head and neck"), "head/neck"
    ),
    **dict.fromkeys(("chest", "abdomen", "anterior torso"), "anterior torso"),
    **dict.fromkeys(("back", "posterior torso", "buttocks"), "posterior torso"),
    "trunk": "torso",
    **dict.fromkeys(("arm", "forearm", "hand", "upper limbs", "upper extremity"), "upper extremity"),
    **dict.fromkeys(("thigh", "leg", "foot", "lower limbs", "lower extremity"), "lower extremity"),
    **dict.fromkeys(("acral", "palms soles", "palm", "sole"), "palms/soles"),
    **dict.fromkeys(("genital", "genitalia", "oral genital", "mouth"), "oral/genital"),
}


def normalise_site(value: Any) -> tuple[str, str]:
    """(ISIC general site, the dataset's own wording); unrecognised wording keeps its detail, site "unknown"."""
    if _blank(value):
        return "unknown", ""
    detail = str(value).strip()
    key = detail.lower().replace("_", " ").replace("/", " ").replace("-", " ")
    key = " ".join(key.split())
    if key in SITE_MAP:
        return SITE_MAP[key], detail
    if detail.lower() in SITE_MAP:
        return SITE_MAP[detail.lower()], detail
    return "unknown", detail


def validate_case(case: Case) -> None:
    """Raise CaseError when a field is outside its vocabulary."""
    if not case.case_id:
        raise CaseError("case_id is empty")
    if not CASE_ID.match(case.case_id):
        raise CaseError("case_id may hold only letters, digits, space and . _ - + / : (at most 200)")
    if case.dx not in DX_CODES:
        raise CaseError(f"diagnosis is not one of {', '.join(DX_CODES)}")
    if case.malignancy not in ("benign", "malignant", "indeterminate"):
        raise CaseError("malignancy is not benign, malignant or indeterminate")
    if case.sex is not None and case.sex not in SEXES:
        raise CaseError("sex is not male, female or unknown")
    if case.site not in SITES:
        raise CaseError("site is not an ISIC anatom_site_general value")
    if case.fitzpatrick is not None and case.fitzpatrick not in range(1, 7):
        raise CaseError("Fitzpatrick type is not 1-6")
    if case.age is not None and not 0 <= case.age <= 120:
        raise CaseError("age is impossible (must be 0-120)")
    if case.split and case.split not in SPLITS:
        raise CaseError(f"split is not one of {', '.join(SPLITS)}")


# ---- the store ----

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cases (
    case_id TEXT PRIMARY KEY,
    image_sha256 TEXT NOT NULL UNIQUE,
    image_path TEXT NOT NULL,
    mask_path TEXT NOT NULL DEFAULT '',
    lesion_id TEXT NOT NULL DEFAULT '',
    patient_id TEXT NOT NULL DEFAULT '',
    dx TEXT NOT NULL,
    malignancy TEXT NOT NULL,
    age REAL,
    sex TEXT,
    site TEXT NOT NULL,
    site_detail TEXT NOT NULL DEFAULT '',
    fitzpatrick INTEGER,
    dx_type TEXT NOT NULL DEFAULT '',
    source TEXT NOT NULL,
    domain TEXT NOT NULL DEFAULT '',
    split TEXT NOT NULL DEFAULT '',
    split_fixed INTEGER NOT NULL DEFAULT 0,
    findings TEXT NOT NULL DEFAULT '{}',
    extra TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS cases_source ON cases(source);
CREATE INDEX IF NOT EXISTS cases_split ON cases(split);
CREATE TABLE IF NOT EXISTS notes (
    case_id TEXT NOT NULL REFERENCES cases(case_id) ON DELETE CASCADE,
    strategy TEXT NOT NULL,
    text TEXT NOT NULL,
    backend TEXT NOT NULL DEFAULT 'template',
    PRIMARY KEY (case_id, strategy)
);
CREATE TABLE IF NOT EXISTS embeddings (
    model_version TEXT NOT NULL,
    modality TEXT NOT NULL,
    case_id TEXT NOT NULL REFERENCES cases(case_id) ON DELETE CASCADE,
    vector BLOB NOT NULL,
    input_sha256 TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (model_version, modality, case_id)
);
-- Image files imports decoded (mmcore.importers._files), by the SHA-256 of their resolved path (a name may be data).
CREATE TABLE IF NOT EXISTS image_files (
    path_sha256 TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,
    inode INTEGER NOT NULL, file_sha256 TEXT NOT NULL, image_sha256 TEXT NOT NULL, image_path TEXT NOT NULL,
    pixels INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS image_files_content ON image_files(file_sha256);
"""
_COLUMNS = [f.name for f in dataclasses.fields(Case) if f.name != "notes"]


@dataclass
class UpsertResult:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (new case_id, stored case_id)


class CaseStore:
    """Cases, notes and embeddings in SQLite (WAL), images as content-addressed files under the data home."""

    def __init__(self, home: str | Path) -> None:
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()  # this thread's connection and transaction depth
        self._open: dict[int, tuple[threading.Thread, sqlite3.Connection]] = {}
        self._open_lock = threading.Lock()
        self._db.executescript(_SCHEMA)
        columns = {r["name"] for r in self._db.execute("PRAGMA table_info(embeddings)")}
        if "input_sha256" not in columns:  # stores made before embeddings recorded what they embedded
            self._db.execute("ALTER TABLE embeddings ADD COLUMN input_sha256 TEXT NOT NULL DEFAULT ''")

    @property
    def _db(self) -> sqlite3.Connection:
        """This thread's connection: one shared connection let a thread read another's uncommitted rows."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.home / "cases.sqlite", isolation_level=None, check_same_thread=False)
            db.row_factory = sqlite3.Row
            for pragma in ("journal_mode=WAL", "foreign_keys=ON", "busy_timeout=30000"):
                db.execute(f"PRAGMA {pragma}")
            with self._open_lock:  # close what threads that have ended left open, then remember this one
                for ident, (thread, old) in list(self._open.items()):
                    if not thread.is_alive():
                        old.close()
                        del self._open[ident]
                self._open[threading.get_ident()] = (threading.current_thread(), db)
            self._local.db = db
        return db

    def close(self) -> None:
        with self._open_lock:
            for _, db in self._open.values():
                db.close()
            self._open.clear()

    def __enter__(self) -> CaseStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """All or nothing: an exception inside rolls back every row written since it began."""
        db, depth = self._db, getattr(self._local, "depth", 0)
        if depth == 0:
            db.execute("BEGIN IMMEDIATE")
        self._local.depth = depth + 1
        try:
            yield
        except BaseException:
            self._local.depth = depth
            if depth == 0:
                db.execute("ROLLBACK")
            raise
        self._local.depth = depth
        if depth == 0:
            db.execute("COMMIT")

    # -- files --

    def put_image(self, decoded: DecodedImage, fmt: str | None = None) -> tuple[str, str]:
        """Write the image under images/ by its pixel hash (once); returns (sha256, path relative to home).

        The hash identifies the decoded upload, whatever its metadata. A plain RGB JPEG is stored less its metadata
        (its very pixels); other JPEG and HEIC sources as quality-95 JPEGs (pixels may differ by re-encoding).
        """
        fmt = fmt or decoded.format
        ext = "png" if fmt == "png" else "jpg"
        rel = f"images/{decoded.sha256[:2]}/{decoded.sha256}.{ext}"
        stripped = decoded.stripped_jpeg if fmt == "jpeg" else None  # the same pixels, without re-encoding them
        self._write_once(rel, lambda: stripped if stripped is not None else encode_image(decoded.image, fmt))
        return decoded.sha256, rel

    def put_mask(self, mask: np.ndarray, image_sha256: str) -> str:
        """Store a binary lesion mask (H, W) as PNG beside its image's hash; returns the relative path."""
        rel = f"masks/{image_sha256[:2]}/{image_sha256}.png"
        binary = Image.fromarray((np.asarray(mask) > 0).astype(np.uint8) * 255, mode="L")
        self._write_once(rel, lambda: encode_image(binary, "png"))
        return rel

    def _write_once(self, rel: str, encode: Any) -> None:
        path = self.home / rel
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(encode())
        os.replace(tmp, path)  # atomic: a reader never sees half a file

    def image_path(self, case: Case) -> Path:
        return self.home / case.image_path

    def load_image(self, case: Case) -> Image.Image:
        with Image.open(self.home / case.image_path) as img:
            return img.convert("RGB")

    def load_mask(self, case: Case) -> np.ndarray | None:
        if not case.mask_path:
            return None
        with Image.open(self.home / case.mask_path) as img:
            return np.asarray(img.convert("L")) > 127

    # -- cases --

    def upsert(self, cases: Iterable[Case]) -> UpsertResult:
        """Insert or update cases in one transaction; an image already stored under another id is a duplicate."""
        result = UpsertResult()
        with self.transaction():
            for case in cases:
                validate_case(case)
                if not case.image_sha256 or not case.image_path:
                    raise CaseError(f"case {case.case_id} has no stored image")
                row = self._db.execute(
                    "SELECT case_id FROM cases WHERE image_sha256 = ?", (case.image_sha256,)
                ).fetchone()
                if row and row["case_id"] != case.case_id:
                    result.duplicates.append((case.case_id, row["case_id"]))
                    continue
                values = self._row_values(case, split_fixed=bool(case.split))
                old = self._db.execute("SELECT * FROM cases WHERE case_id = ?", (case.case_id,)).fetchone()
                if old is not None and not case.split:  # a re-import without a split keeps the assigned one
                    values["split"], values["split_fixed"] = old["split"], old["split_fixed"]
                if old is None:
                    cols = ", ".join(values)
                    marks = ", ".join("?" for _ in values)
                    self._db.execute(f"INSERT INTO cases ({cols}) VALUES ({marks})", list(values.values()))
                    result.inserted += 1
                elif {k: old[k] for k in values} == values:
                    result.unchanged += 1
                else:
                    sets = ", ".join(f"{k} = ?" for k in values if k != "case_id")
                    args = [v for k, v in values.items() if k != "case_id"] + [case.case_id]
                    self._db.execute(f"UPDATE cases SET {sets} WHERE case_id = ?", args)
                    result.updated += 1
                if case.notes:
                    self.set_notes((case.case_id, s, t) for s, t in case.notes.items())
        return result

    @staticmethod
    def _row_values(case: Case, split_fixed: bool) -> dict[str, Any]:
        values = {k: getattr(case, k) for k in _COLUMNS}
        values["findings"] = json.dumps(case.findings, sort_keys=True)
        values["extra"] = json.dumps(case.extra, sort_keys=True, default=str)
        values["split_fixed"] = int(split_fixed)
        return values

    def _case_from_row(self, row: sqlite3.Row, notes: dict[str, str] | None = None) -> Case:
        data = {k: row[k] for k in _COLUMNS}
        data["findings"] = json.loads(data["findings"])
        data["extra"] = json.loads(data["extra"])
        return Case(**data, notes=notes or {})

    def get(self, case_id: str, with_notes: bool = False) -> Case | None:
        row = self._db.execute("SELECT * FROM cases WHERE case_id = ?", (case_id,)).fetchone()
        if row is None:
            return None
        notes = self.notes_of(case_id) if with_notes else None
        return self._case_from_row(row, notes)

    @staticmethod
    def _where(filters: dict[str, Any]) -> tuple[str, list[Any]]:
        """A WHERE clause of equality filters (a list, tuple or set means any of)."""
        where, args = [], []
        for key, value in filters.items():
            if key not in _COLUMNS:
                raise KeyError(f"cannot filter cases by {key!r}")
            if isinstance(value, list | tuple | set):
                where.append(f"{key} IN ({', '.join('?' for _ in value)})")
                args.extend(value)
            else:
                where.append(f"{key} = ?")
                args.append(value)
        return (f" WHERE {' AND '.join(where)}" if where else ""), args

    def cases(self, with_notes: bool = False, **filters: Any) -> list[Case]:
        """Every case matching equality filters (split="test", source="synthderm", domain=[...] for any-of)."""
        where, args = self._where(filters)
        rows = self._db.execute(f"SELECT * FROM cases{where} ORDER BY case_id", args).fetchall()
        notes = self._all_notes() if with_notes else {}
        return [self._case_from_row(r, notes.get(r["case_id"])) for r in rows]

    def count(self, **filters: Any) -> int:
        where, args = self._where(filters)
        return self._db.execute(f"SELECT COUNT(*) FROM cases{where}", args).fetchone()[0]

    def counts(self) -> dict[str, dict[str, int]]:
        """Counts by source, dx, domain and split (what `python -m mmcore cases` prints)."""
        out: dict[str, dict[str, int]] = {}
        for col in ("source", "dx", "domain", "split"):
            rows = self._db.execute(f"SELECT {col} AS k, COUNT(*) AS n FROM cases GROUP BY {col} ORDER BY {col}")
            out[col] = {(r["k"] or "(none)"): r["n"] for r in rows}
        return out

    def delete(self, case_ids: Iterable[str]) -> int:
        with self.transaction():
            n = 0
            for cid in case_ids:
                n += self._db.execute("DELETE FROM cases WHERE case_id = ?", (cid,)).rowcount
        return n

    def resplit(self, source: str, fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0) -> Counter:
        """Give a split to a source's cases that have none, by lesion/patient group.

        A case never moves once it has a split (models trained earlier rely on their test set staying test):
        a new image of a lesion or patient already stored joins that group's split.
        """
        with self.transaction():
            cases = self.cases(source=source)
            groups = assign_groups(cases)
            group_split: dict[str, str] = {}
            for c in cases:
                if c.split:
                    group_split.setdefault(groups[c.case_id], c.split)
            for c in cases:
                if not c.split:
                    g = groups[c.case_id]
                    split = group_split.setdefault(g, split_of(g, fractions, seed))
                    self._db.execute("UPDATE cases SET split = ? WHERE case_id = ?", (split, c.case_id))
        return Counter(c.split for c in self.cases(source=source))

    # -- notes --

    def set_notes(self, records: Iterable[tuple[str, str, str]], backend: str = "template") -> int:
        """Write (case_id, strategy, text) notes, replacing any earlier note of that strategy."""
        n = 0
        with self.transaction():
            for case_id, strategy, text in records:
                self._db.execute(
                    "INSERT OR REPLACE INTO notes (case_id, strategy, text, backend) VALUES (?, ?, ?, ?)",
                    (case_id, strategy, text, backend),
                )
                n += 1
        return n

    def notes_of(self, case_id: str) -> dict[str, str]:
        rows = self._db.execute("SELECT strategy, text FROM notes WHERE case_id = ?", (case_id,))
        return {r["strategy"]: r["text"] for r in rows}

    def notes(self, strategy: str) -> dict[str, str]:
        """case_id -> note text for one strategy."""
        rows = self._db.execute("SELECT case_id, text FROM notes WHERE strategy = ?", (strategy,))
        return {r["case_id"]: r["text"] for r in rows}

    def delete_notes(self, case_ids: Iterable[str], strategy: str) -> int:
        sql = "DELETE FROM notes WHERE case_id = ? AND strategy = ?"
        with self.transaction():  # executemany sums the rows each statement deleted
            return self._db.executemany(sql, [(cid, strategy) for cid in case_ids]).rowcount

    def note_strategies(self) -> dict[str, int]:
        rows = self._db.execute("SELECT strategy, COUNT(*) AS n FROM notes GROUP BY strategy ORDER BY strategy")
        return {r["strategy"]: r["n"] for r in rows}

    def _all_notes(self) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        for r in self._db.execute("SELECT case_id, strategy, text FROM notes"):
            out.setdefault(r["case_id"], {})[r["strategy"]] = r["text"]
        return out

    # -- image files imports decoded: a re-import skips the unchanged ones (rows as mmcore.importers._files has them) --

    def image_files(self, column: str, values: Sequence[str]) -> dict[str, dict[str, Any]]:
        """value -> an image_files row whose `column` (path_sha256 or file_sha256) has it, for the values seen."""
        if column not in ("path_sha256", "file_sha256"):
            raise KeyError(f"image_files are looked up by path_sha256 or file_sha256, not {column!r}")
        out: dict[str, dict[str, Any]] = {}
        for start in range(0, len(values), 500):  # SQLite caps the parameters of a statement
            chunk = list(values[start : start + 500])
            sql = f"SELECT * FROM image_files WHERE {column} IN ({', '.join('?' * len(chunk))})"
            out.update((r[column], dict(r)) for r in self._db.execute(sql, chunk))
        return out

    def remember_image_files(self, rows: Sequence[dict[str, Any]]) -> None:
        """Insert or replace image_files rows (dicts of every column) in one transaction."""
        if rows:
            cols = list(rows[0])
            sql = f"INSERT OR REPLACE INTO image_files ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
            with self.transaction():
                self._db.executemany(sql, [[r[c] for c in cols] for r in rows])

    # -- embeddings: kept here so an index can always be rebuilt --

    def put_embeddings(
        self,
        model_version: str,
        modality: str,
        case_ids: Sequence[str],
        vectors: np.ndarray,
        input_hashes: Sequence[str] | None = None,
    ) -> None:
        """Store vectors (N, D); `input_hashes` says what was embedded (image or note SHA-256), so a changed input
        is embedded again and an unchanged one is not."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if len(case_ids) != len(vectors):
            raise ValueError(f"{len(case_ids)} ids but {len(vectors)} vectors")
        hashes = list(input_hashes) if input_hashes is not None else [""] * len(case_ids)
        rows = [
            (model_version, modality, cid, v.tobytes(), h) for cid, v, h in zip(case_ids, vectors, hashes, strict=True)
        ]
        with self.transaction():
            self._db.executemany(
                "INSERT OR REPLACE INTO embeddings (model_version, modality, case_id, vector, input_sha256) "
                "VALUES (?, ?, ?, ?, ?)",
                rows,
            )

    def embedded_inputs(self, model_version: str, modality: str) -> dict[str, str]:
        """case_id -> SHA-256 of the input its stored vector was computed from ("" when not recorded)."""
        rows = self._db.execute(
            "SELECT case_id, input_sha256 FROM embeddings WHERE model_version = ? AND modality = ?",
            (model_version, modality),
        )
        return {r["case_id"]: r["input_sha256"] for r in rows}

    def delete_embeddings(self, model_version: str, modality: str, case_ids: Iterable[str]) -> int:
        """Forget stored vectors (a case whose note was deleted is no longer in the text collection)."""
        sql = "DELETE FROM embeddings WHERE model_version = ? AND modality = ? AND case_id = ?"
        with self.transaction():  # executemany sums the rows each statement deleted
            return self._db.executemany(sql, [(model_version, modality, cid) for cid in case_ids]).rowcount

    def get_embeddings(self, model_version: str, modality: str) -> tuple[list[str], np.ndarray]:
        """(case_ids, vectors (N, D) float32) in case_id order; empty when none are stored."""
        rows = self._db.execute(
            "SELECT case_id, vector FROM embeddings WHERE model_version = ? AND modality = ? ORDER BY case_id",
            (model_version, modality),
        ).fetchall()
        if not rows:
            return [], np.zeros((0, 0), dtype=np.float32)
        return [r["case_id"] for r in rows], np.stack([np.frombuffer(r["vector"], dtype=np.float32) for r in rows])
