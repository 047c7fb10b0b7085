"""`import --format F --metadata CSV --images DIR`: a dataset into the case store, all or nothing; bad rows are
listed with file, row and reason. Exit 0 when a row was imported or already there, 1 when none was."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mmcore.cases import CaseStore
from mmcore.commands import CliError, emit
from mmcore.config import Config
from mmcore.importers import READERS, ImportFailed, ImportResult, import_dataset


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", required=True, choices=READERS.names())
    p.add_argument("--metadata", required=True, help="the dataset's metadata CSV")
    p.add_argument("--images", required=True, help="folder holding the image files")
    p.add_argument("--labels", help="SCIN: scin_labels.csv (default: beside --metadata)")
    p.add_argument("--columns", help="folder format: image=COL,dx=COL,... mapping our fields to your columns")
    p.add_argument("--source", help="the source name to record (default: the format)")


def run(args: argparse.Namespace, cfg: Config) -> int:
    opts: dict[str, Any] = {}
    if args.labels:
        opts["labels"] = Path(args.labels)
    if args.columns:
        opts["columns"] = args.columns
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
                **opts,
            )
        except ImportFailed as e:
            raise CliError(str(e)) from None
    emit(args, result.to_json(), _summary(result, cfg))
    return 0 if (result.imported or result.updated or result.skipped_duplicates) else 1


def _summary(result: ImportResult, cfg: Config, limit: int = 20) -> str:
    lines = [
        f"{result.source} into {cfg.home}: imported {result.imported}, updated {result.updated}, skipped"
        f" {result.skipped_duplicates} already stored, rejected {len(result.rejected)}"
    ]
    if result.splits:
        lines.append("  splits: " + ", ".join(f"{k} {v}" for k, v in result.splits.items()))
    lines += [f"  warning: {w}" for w in result.warnings]
    for title, items in (("rejected", result.rejected), ("duplicate images", result.duplicates)):
        if items:
            lines.append(f"  {title}:")
            lines += [f"    {Path(r.file).name} row {r.row}: {r.reason}" for r in items[:limit]]
            if len(items) > limit:
                lines.append(f"    ... and {len(items) - limit} more (--json lists them all)")
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
