"""`import --format F --metadata CSV --images DIR`: a dataset into the case store, all or nothing. Exit 0 when a row was
imported or already there, 1 when none was. `--dry-run` reads the CSV and checks the image files, storing nothing.

What it prints (a job's log, shown on the Admin page) holds counts and row numbers only; each rejected row's reason
goes to a rejections file only its owner can read (`--rejections`, which import jobs point into their folder). Both
the import and the dry run are written to the audit log with the acting user. `--confine` (import jobs always pass it)
reads only under the import roots.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mmcore.audit import AuditLog, acting_user
from mmcore.cases import CaseStore
from mmcore.commands import CliError, emit
from mmcore.config import Config
from mmcore.importers import READERS, ImportFailed, ImportResult, import_dataset, import_roots, preview_import


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", required=True, choices=READERS.names())
    p.add_argument("--metadata", required=True, help="the dataset's metadata CSV")
    p.add_argument("--images", required=True, help="folder holding the image files")
    p.add_argument("--labels", help="SCIN: scin_labels.csv (default: beside --metadata)")
    p.add_argument("--columns", help="folder format: image=COL,dx=COL,... mapping our fields to your columns")
    p.add_argument("--source", help="the source name to record (default: the format)")
    p.add_argument("--dry-run", action="store_true", help="read the CSV and check the image files; store nothing")
    p.add_argument(
        "--rejections",
        help="write each rejected row with its reason here, mode 0600 (default: <home>/import_rejections/)",
    )
    p.add_argument(
        "--workers",
        type=int,
        help="threads decoding images (default: one per core, at most 4; each may hold 8 bytes per pixel of the cap)",
    )
    p.add_argument(
        "--confine",
        action="store_true",
        help="read only under the import roots (intake.import_roots, MMDERM_IMPORT_ROOTS); import jobs always do",
    )


def run(args: argparse.Namespace, cfg: Config) -> int:
    if args.workers is not None and not 1 <= args.workers <= 64:
        raise CliError("--workers must be between 1 and 64")
    opts: dict[str, Any] = {}
    if args.labels:
        opts["labels"] = Path(args.labels)
    if args.columns:
        opts["columns"] = args.columns
    roots = import_roots(cfg) if args.confine else None
    limits = {"max_csv_bytes": cfg.intake.max_csv_bytes, "roots": roots}
    audit = AuditLog(cfg.audit_path)
    user = acting_user()
    source = args.source or args.format
    if args.dry_run:
        try:
            preview = preview_import(args.format, args.metadata, args.images, **limits, **opts)
        except ImportFailed as e:
            raise CliError(str(e)) from None
        where = write_rejections(_rejections_path(args, cfg, source), {"dry_run": True, "source": source, **preview})
        audit.append(
            "import_preview",
            user,
            format=args.format,
            source=source,
            rows=preview["rows"],
            candidates=preview["candidates"],
            rejected=len(preview["rejected"]),
        )
        rows = _rows(preview["rejected"])
        payload = {**preview, "rejected": rows, "dry_run": True, "rejections_file": str(where)}
        text = (
            f"dry run of {source}: {preview['rows']} rows read, {preview['candidates']} importable, "
            f"{len(rows)} rejected{_row_list(rows)}; reasons in {where}"
        )
        emit(args, payload, "\n".join([text, *(f"  warning: {w}" for w in preview["warnings"])]))
        return 0
    with CaseStore(cfg.home) as store, _progress_bar(enabled=not args.json) as progress:
        try:
            result = import_dataset(
                store,
                args.format,
                args.metadata,
                args.images,
                source=args.source,
                max_bytes=cfg.intake.max_bytes,
                max_pixels=cfg.intake.max_pixels,
                split_fractions=cfg.data.split_fractions,
                progress=progress,
                workers=args.workers,
                **limits,
                **opts,
            )
        except ImportFailed as e:
            raise CliError(str(e)) from None
    where = write_rejections(_rejections_path(args, cfg, result.source), result.to_json(detail=True))
    audit.append(
        "import",
        user,
        format=args.format,
        source=result.source,
        metadata_sha256=_file_sha256(args.metadata),
        imported=result.imported,
        updated=result.updated,
        skipped_duplicates=result.skipped_duplicates,
        rejected=len(result.rejected),
    )
    emit(args, {**result.to_json(detail=False), "rejections_file": str(where)}, _summary(result, cfg, where))
    return 0 if (result.imported or result.updated or result.skipped_duplicates) else 1


def write_rejections(path: Path, payload: dict[str, Any]) -> Path:
    """Write the detail of an import (every rejected row with its reason) readable by its owner only (0600)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
    os.fchmod(fd, 0o600)  # a file that was already there keeps no looser mode
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=1, default=str)
    return path


def _rejections_path(args: argparse.Namespace, cfg: Config, source: str) -> Path:
    if args.rejections:
        return Path(args.rejections)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return cfg.home / "import_rejections" / f"{stamp}-{source}{'-dry-run' if args.dry_run else ''}.json"


def _file_sha256(path: str) -> str:
    """What the audit log keeps of the CSV: its hash (not its path, which may name a clinic or a person)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return ""
    return digest.hexdigest()


def _rows(rejected: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"file": Path(r["file"]).name, "row": r["row"]} for r in rejected]


def _row_list(rows: list[dict[str, Any]], limit: int = 30) -> str:
    """ " (HAM10000_metadata.csv rows 7, 8, 9)": where to look, never what was there."""
    if not rows:
        return ""
    by_file: dict[str, list[int]] = {}
    for r in rows:
        by_file.setdefault(r["file"], []).append(r["row"])
    parts = []
    for name, numbers in by_file.items():
        shown = ", ".join(map(str, numbers[:limit])) + (
            f", ... {len(numbers) - limit} more" if len(numbers) > limit else ""
        )
        parts.append(f"{name} row{'s' if len(numbers) > 1 else ''} {shown}")
    return " (" + "; ".join(parts) + ")"


def _summary(result: ImportResult, cfg: Config, where: Path) -> str:
    lines = [
        f"{result.source} into {cfg.home}: imported {result.imported}, updated {result.updated}, skipped"
        f" {result.skipped_duplicates} already stored, rejected {len(result.rejected)}"
    ]
    if result.files_reused:
        lines.append(
            f"  image files: {result.files_decoded} decoded, {result.files_reused} not decoded again (imported before)"
        )
    if result.splits:
        lines.append("  splits: " + ", ".join(f"{k} {v}" for k, v in result.splits.items()))
    lines += [f"  warning: {w}" for w in result.warnings]
    for title, items in (("rejected", result.rejected), ("duplicate images", result.duplicates)):
        if items:
            lines.append(f"  {title}:{_row_list(_rows([{'file': r.file, 'row': r.row} for r in items]))}")
    if result.rejected or result.duplicates:
        lines.append(f"  reasons in {where} (readable by its owner only)")
    return "\n".join(lines)


@contextlib.contextmanager
def _progress_bar(enabled: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A tqdm bar on stderr while images are decoded: none with --json, and tqdm hides it off a terminal."""
    if not enabled:
        yield None
        return
    from tqdm import tqdm

    bar: Any = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, unit="image", desc="importing", file=sys.stderr, disable=None)
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        if bar is not None:
            bar.close()
