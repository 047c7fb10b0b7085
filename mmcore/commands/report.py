"""`report FILE [--note TEXT] [--out consult.pdf]`: one analysis of a photo (and note) as a consult PDF, the
out-of-distribution verdict first; scores of inputs the model does not know are withheld unless --show-scores-anyway.
The export is audited. Exit 0 when the PDF was written, 2 for an unusable file."""

from __future__ import annotations

import argparse
import hashlib
import os
from pathlib import Path

from mmcore.audit import acting_user
from mmcore.commands import CliError, emit
from mmcore.config import Config
from mmcore.explain_image import IMAGE_METHODS
from mmcore.images import ImageRejected
from mmcore.model_store import ModelStoreError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="the lesion photo (JPEG, PNG or HEIC)")
    p.add_argument("--note", help="the clinical note")
    p.add_argument("--out", default="consult.pdf", help="where to write the PDF (default: consult.pdf)")
    p.add_argument("--model", help="model version (default: the active one)")
    p.add_argument("--method", choices=IMAGE_METHODS, default="gradcam", help="the image explanation shown")
    p.add_argument("--similar", type=int, default=4, help="how many similar past cases to include")
    p.add_argument(
        "--show-scores-anyway",
        action="store_true",
        help="include the scores of out-of-distribution inputs (marked 'shown on request')",
    )


def run(args: argparse.Namespace, cfg: Config) -> int:
    from mmcore.consult import consult_pdf
    from mmcore.predictor import Predictor

    path, out = Path(args.file), Path(args.out)
    if not path.is_file():
        raise CliError(f"{path}: no such file")
    if not out.parent.is_dir():
        raise CliError(f"{out.parent}: no such folder for --out")
    try:
        predictor = Predictor.from_config(cfg, args.model)
        pdf = consult_pdf(
            predictor,
            path.read_bytes(),
            args.note,
            user=acting_user(),
            method=args.method,
            show_scores_anyway=args.show_scores_anyway,
            k=max(0, args.similar),
        )
    except ImageRejected as e:
        raise CliError(f"{path}: {e}") from None
    except (ModelStoreError, ValueError) as e:
        raise CliError(str(e)) from None
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(pdf)
        os.replace(tmp, out)  # never a half-written report under the asked-for name
    finally:
        tmp.unlink(missing_ok=True)
    payload = {
        "out": str(out),
        "bytes": len(pdf),
        "sha256": hashlib.sha256(pdf).hexdigest(),
        "model_version": predictor.version,
    }
    emit(args, payload, f"wrote {out} ({len(pdf):,} bytes; model {predictor.version})")
    return 0
