"""`check-image FILE`: run the upload intake on one file (the upload pixel cap, a full-size decode); exit 0 accepted,
2 rejected (with the reason)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mmcore.commands import CliError, emit
from mmcore.config import Config
from mmcore.images import ImageRejected, load_image


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file")


def run(args: argparse.Namespace, cfg: Config) -> int:
    path = Path(args.file)
    if not path.is_file():
        raise CliError(f"{path}: no such file")
    try:
        decoded = load_image(path.read_bytes(), cfg.intake.max_bytes, cfg.intake.upload_max_pixels)
    except ImageRejected as e:
        emit(args, {"file": str(path), "accepted": False, "reason": str(e)}, f"rejected: {e}")
        return 2
    w, h = decoded.size
    payload = {
        "file": str(path),
        "accepted": True,
        "format": decoded.format,
        "width": w,
        "height": h,
        "sha256": decoded.sha256,
    }
    if decoded.warnings:  # e.g. an unreadable EXIF orientation: accepted, used as stored
        payload["warnings"] = list(decoded.warnings)
    text = f"accepted: {decoded.format.upper()} {w} x {h}, sha256 {decoded.sha256[:16]}"
    emit(args, payload, "\n".join([text, *(f"warning: {note}" for note in decoded.warnings)]))
    return 0
