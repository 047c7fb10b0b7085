"""`predict FILE [--note TEXT] [--model V] [--json]`: what the Diagnose page computes, for one photo (and note):
calibrated scores, the out-of-distribution verdict first, warnings, and (with --json) the photo's findings; audited like
the page. Exit 0 whenever a verdict
was produced (in or out of distribution), 2 for an unusable file."""

from __future__ import annotations

import argparse
from pathlib import Path

from mmcore.audit import acting_user
from mmcore.commands import CliError, emit
from mmcore.concepts import FindingScore
from mmcore.config import Config
from mmcore.images import ImageRejected
from mmcore.model_store import ModelStoreError
from mmcore.predictor import Prediction, Predictor


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", nargs="?", help="the lesion photo (JPEG, PNG or HEIC); omit it to score a note alone")
    p.add_argument("--note", help="the clinical note")
    p.add_argument("--model", help="model version (default: the active one)")
    p.add_argument("--top", type=int, default=3, help="how many classes to list")


def run(args: argparse.Namespace, cfg: Config) -> int:
    if not args.file and not (args.note or "").strip():
        raise CliError("give a photo FILE, a --note, or both")
    image_bytes = None
    if args.file:
        path = Path(args.file)
        if not path.is_file():
            raise CliError(f"{path}: no such file")
        image_bytes = path.read_bytes()
    try:
        predictor = Predictor.from_config(cfg, args.model)
        prediction = predictor.predict(image_bytes, args.note, user=acting_user(), top_k=max(1, args.top))
        findings = predictor.findings(image_bytes) if image_bytes is not None and args.json else None
    except ImageRejected as e:
        raise CliError(f"{args.file}: {e}") from None
    except (ModelStoreError, ValueError) as e:
        raise CliError(str(e)) from None
    emit(args, payload(prediction, findings), text(prediction))
    return 0


def payload(p: Prediction, findings: list[FindingScore] | None = None) -> dict:
    """The JSON contract of `predict --json` (calibrated probabilities; the verdict on the inputs beside them;
    "findings": name -> score in [0, 1] for a photo, probe-calibrated where the version has a probe, else null)."""
    scores = p.probabilities[p.modality] or {}
    check = p.check
    return {
        "model_version": p.model_version,
        "modality": p.modality,
        "top": [{"dx": c.dx, "probability": round(c.probability, 6), "malignancy": c.malignancy} for c in p.top],
        "probabilities": {dx: round(v, 6) for dx, v in scores.items()},
        "calibrated": p.calibrated,
        "in_distribution": check.in_distribution,
        "ood_score": check.ood_score,
        "ood_threshold": check.ood_threshold,
        "reasons": list(check.reasons),
        "warnings": list(p.warnings),
        "findings": None if findings is None else {f.name: round(f.score, 4) for f in findings},
    }


def text(p: Prediction) -> str:
    """The verdict first: out-of-distribution inputs get their reasons and no scores."""
    if p.in_distribution is False:
        return "\n".join(["OUT OF DISTRIBUTION: the scores are withheld.", *p.reasons, "(--json shows them anyway)"])
    lines = [f"model {p.model_version}, {p.modality}: " + ", ".join(f"{c.name} {c.probability:.0%}" for c in p.top)]
    lines += [f"warning: {w}" for w in p.warnings]
    return "\n".join(lines)
