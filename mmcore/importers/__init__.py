"""Dataset importers: one module per format, each a `read_<format>` generator of candidates and rejections registered
by format name, and `import_dataset`, which decodes every image through the intake and stores the cases all or nothing.

The images are decoded by worker threads and written as they come (mmcore.importers._files); the cases are written
in one transaction at the end, so a failed or cancelled import stores no case. Each finished batch of decoded files
is recorded in the case store's image_files table, which is what makes a run after a crash or cancel resume (it
decodes only the files no finished batch covered) and a re-import of unchanged files fast (it reads none of them).
An error of the store (disk full) undoes the image files the import wrote; a cancel or crash keeps them, unused by
any case, for the next run.

Given import roots (what an import job gets), every file an import reads (the CSV, its companions, the images) must
resolve, symlinks followed, under one of them; images must also stay inside the images folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmcore.cases import Case, CaseError, CaseStore, validate_case
from mmcore.config import Config, DataConfig, resolve_path
from mmcore.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, ImageRejected
from mmcore.importers._common import (
    DEFAULT_MAX_CSV_BYTES,
    READERS,
    Candidate,
    ImportFailed,
    Notice,
    Rejection,
    confine,
    reading_limits,
)
from mmcore.importers._files import Refused, store_image_files
from mmcore.importers.derm7pt import read_derm7pt
from mmcore.importers.fitzpatrick17k import read_fitzpatrick17k
from mmcore.importers.folder import read_folder
from mmcore.importers.ham10000 import read_ham10000
from mmcore.importers.isic import read_isic
from mmcore.importers.pad_ufes_20 import read_pad_ufes_20
from mmcore.importers.scin import read_scin

__all__ = [
    "READERS",
    "Candidate",
    "ImportFailed",
    "ImportResult",
    "Notice",
    "Rejection",
    "confine",
    "import_dataset",
    "import_roots",
    "preview_import",
    "read_derm7pt",
    "read_fitzpatrick17k",
    "read_folder",
    "read_ham10000",
    "read_isic",
    "read_pad_ufes_20",
    "read_scin",
]

_SOURCE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass
class ImportResult:
    imported: int = 0  # new cases
    updated: int = 0  # cases already stored whose fields changed
    skipped_duplicates: int = 0  # rows already stored as they are, or whose image another case already has
    rejected: list[Rejection] = field(default_factory=list)
    duplicates: list[Rejection] = field(default_factory=list)  # which rows had an image stored under another case
    warnings: list[str] = field(default_factory=list)
    source: str = ""
    splits: dict[str, int] = field(default_factory=dict)  # the source's cases by split, after the import
    files_decoded: int = 0  # image files decoded by this import
    files_reused: int = 0  # image files decoded before (unchanged, or the same bytes elsewhere): not decoded again

    def to_json(self, detail: bool = True) -> dict[str, Any]:
        """The result as JSON: with every reason (the admins' rejections file), or with only the file name and row
        of each rejected row (what `python -m mmcore import --json` prints into a job's log)."""
        return {
            "imported": self.imported,
            "updated": self.updated,
            "skipped_duplicates": self.skipped_duplicates,
            "rejected": [_row(r, detail) for r in self.rejected],
            "duplicates": [_row(r, detail) for r in self.duplicates],
            "warnings": self.warnings,
            "source": self.source,
            "splits": self.splits,
            "files_decoded": self.files_decoded,
            "files_reused": self.files_reused,
        }


def _row(r: Rejection, detail: bool) -> dict[str, Any]:
    return dataclasses.asdict(r) if detail else {"file": Path(r.file).name, "row": r.row}


def import_roots(cfg: Config) -> list[Path]:
    """Where import jobs may read: intake.import_roots (MMDERM_IMPORT_ROOTS, comma-separated; relative to the data
    home), else <home>/imports."""
    roots = cfg.intake.import_roots or ("imports",)
    return [resolve_path(r, base=cfg.home) for r in roots]


def import_dataset(
    store: CaseStore,
    fmt: str,
    metadata: str | Path,
    images: str | Path,
    *,
    source: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_csv_bytes: int = DEFAULT_MAX_CSV_BYTES,
    roots: Sequence[Path] | None = None,
    split_fractions: Sequence[float] = DataConfig.split_fractions,
    progress: Callable[[int, int], None] | None = None,
    workers: int | None = None,
    **opts: Any,
) -> ImportResult:
    """Read a dataset, decode every image through the intake and upsert all its cases in one transaction.

    Case ids are "<source>:<the dataset's id>". Cases without an official split are split by lesion and patient
    afterwards. A row whose image cannot be read or decoded, for whatever reason, is a rejected row; ImportFailed
    when the input is unusable; an error of the store leaves it as it was. `roots`: see the module docstring.
    `workers`: decoding threads (default: one per core, at most 4); `progress(files done, files)`.
    """
    if fmt not in READERS:
        raise ImportFailed(f"unknown format {fmt!r}; choose one of: {', '.join(READERS.names())}")
    source = source or fmt
    if not _SOURCE.match(source):
        raise ImportFailed(f"source {source!r} must be letters, digits, '.', '_' or '-' (at most 64)")
    result = ImportResult(source=source)
    with reading_limits(max_csv_bytes, roots):
        metadata, images = _inputs(metadata, images, roots)
        candidates = _read_rows(fmt, metadata, images, result, **opts)  # the whole CSV first: fails before any image
    written: set[str] = set()
    try:
        staged = _stage(
            store, candidates, source, Path(images), max_bytes, max_pixels, result, written, progress, workers
        )
        with store.transaction():  # every row or none; resplit inside so splits never see half an import
            outcome = store.upsert(c.case for c in staged)
            if outcome.inserted or outcome.updated:
                store.resplit(source, split_fractions)
    except Exception:  # an error: undo the files too (a cancel keeps them, unused, for the next run to reuse)
        with contextlib.suppress(Exception):  # never hide the error that got us here
            for path in written:  # image files this import wrote that no stored case uses (after the rollback)
                if not store.count(image_path=path):
                    (store.home / path).unlink(missing_ok=True)
        raise

    where = {c.case.case_id: c for c in staged}
    result.imported, result.updated = outcome.inserted, outcome.updated
    result.skipped_duplicates = outcome.unchanged + len(outcome.duplicates)
    for new_id, stored_id in outcome.duplicates:
        c = where[new_id]
        result.duplicates.append(Rejection(c.file, c.row, f"same image as case {stored_id}, already stored"))
    result.rejected.sort(key=lambda r: (r.file, r.row))
    result.splits = _count_splits(store, source)
    return result


def _inputs(metadata: str | Path, images: str | Path, roots: Sequence[Path] | None) -> tuple[Path, Path]:
    """The metadata CSV and images folder, confined to the import roots (resolved) when there are roots."""
    if roots is None:
        return Path(metadata), Path(images).resolve()
    return confine(metadata, roots, "metadata CSV"), confine(images, roots, "images folder")


def _read_rows(
    fmt: str, metadata: str | Path, images: str | Path, result: ImportResult, **opts: Any
) -> list[Candidate]:
    """Run the format's reader over the whole CSV: candidates returned, rejections and warnings into `result`."""
    metadata, images = Path(metadata), Path(images)
    if not metadata.is_file():
        raise ImportFailed(f"{metadata}: no such file")
    if not images.is_dir():
        raise ImportFailed(f"{images}: no such folder of images")
    reader = READERS.get(fmt)
    try:
        inspect.signature(reader).bind(metadata, images, **opts)
    except TypeError:
        raise ImportFailed(f"the {fmt} format takes no option {', '.join(map(repr, opts))}") from None
    candidates: list[Candidate] = []
    for item in reader(metadata, images, **opts):
        if isinstance(item, Candidate):
            candidates.append(item)
        elif isinstance(item, Rejection):
            result.rejected.append(item)
        else:
            result.warnings.append(item.message)
    return candidates


def preview_import(
    fmt: str,
    metadata: str | Path,
    images: str | Path,
    *,
    max_csv_bytes: int = DEFAULT_MAX_CSV_BYTES,
    roots: Sequence[Path] | None = None,
    **opts: Any,
) -> dict[str, Any]:
    """What an import would do, storing nothing: rows read, importable candidates, and the rejected rows.

    Reads the CSV and checks that each image file exists inside the images folder; images are decoded only by the
    real import. `roots` as for import_dataset.
    """
    if fmt not in READERS:
        raise ImportFailed(f"unknown format {fmt!r}; choose one of: {', '.join(READERS.names())}")
    result = ImportResult(source=fmt)
    with reading_limits(max_csv_bytes, roots):
        metadata, images = _inputs(metadata, images, roots)
        candidates = _read_rows(fmt, metadata, images, result, **{k: v for k, v in opts.items() if v is not None})
    rows = len(candidates) + len(result.rejected)
    importable = []
    for c in candidates:
        if _regular_file_inside(c.image, images):
            importable.append(c)
        else:
            result.rejected.append(Rejection(c.file, c.row, f"{c.column}: image file not found"))
    result.rejected.sort(key=lambda r: (r.file, r.row))
    return {
        "rows": rows,
        "candidates": len(importable),
        "rejected": [dataclasses.asdict(r) for r in result.rejected],
        "warnings": result.warnings,
    }


def _regular_file_inside(path: Path, folder: Path) -> bool:
    try:
        real = path.resolve(strict=True)
        return real.is_relative_to(folder.resolve()) and real.is_file()
    except (OSError, RuntimeError):
        return False


def _stage(
    store: CaseStore,
    candidates: list[Candidate],
    source: str,
    images: Path,
    max_bytes: int,
    max_pixels: int,
    result: ImportResult,
    written: set[str],
    progress: Callable[[int, int], None] | None,
    workers: int | None,
) -> list[Candidate]:
    """Decode and store each candidate's image; the candidates whose image and fields passed, ids prefixed.

    Reading and decoding an image is the untrusted part: any exception there rejects that row and the import goes
    on. Writing to the store is ours: an exception there ends the import (and the caller undoes it).
    """
    valid: list[tuple[Candidate, Case]] = []
    for c in candidates:
        case = dataclasses.replace(c.case, case_id=f"{source}:{c.case.case_id}", source=source)
        try:
            validate_case(case)
        except CaseError as e:
            result.rejected.append(Rejection(c.file, c.row, str(e)))
            continue
        valid.append((c, case))
    outcomes = store_image_files(
        store,
        [c.image for c, _ in valid],
        images,
        max_bytes,
        max_pixels,
        workers=workers,
        written=written,
        progress=progress,
    )
    staged = []
    for (c, case), outcome in zip(valid, outcomes, strict=True):
        if isinstance(outcome, Refused):
            e = outcome.error
            reason = str(e) if isinstance(e, CaseError) else f"{c.column}: {_message(e)}"
            result.rejected.append(Rejection(c.file, c.row, reason))
            continue
        result.files_decoded += outcome.decoded
        result.files_reused += not outcome.decoded
        stored = dataclasses.replace(case, image_sha256=outcome.image_sha256, image_path=outcome.image_path)
        staged.append(dataclasses.replace(c, case=stored))
    return staged


def _message(e: Exception) -> str:
    """Why an image was refused, without its file name (the name is data)."""
    if isinstance(e, ImageRejected):
        return str(e)
    if isinstance(e, OSError):
        return f"image file cannot be read ({e.strerror or type(e).__name__})"
    return f"image file cannot be read ({type(e).__name__})"


def _count_splits(store: CaseStore, source: str) -> dict[str, int]:
    counts = Counter(case.split or "(none)" for case in store.cases(source=source))
    return {split: counts[split] for split in sorted(counts)}
