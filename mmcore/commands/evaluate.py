"""`eval [--model V] [--split test] [--text-strategy clinical] [--limit N] [--explanations] [--json]`: score a version
on a split and store the result with it; with --explanations, score its saliency maps against lesion masks."""

from __future__ import annotations

import argparse
import sys

from tqdm import tqdm

from mmcore.commands import CliError, emit
from mmcore.config import Config
from mmcore.evaluate import run_evaluation, summary_text
from mmcore.explain_image import IMAGE_METHODS
from mmcore.explain_quality import SEED_002_IOU, score_version
from mmcore.model_store import ModelStoreError, load_version

EXPLANATION_SAMPLE = 40  # cases scored by --explanations unless --limit says otherwise: about a minute on 2 cores


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model version (default: the active one)")
    p.add_argument("--split", default="test")
    p.add_argument("--text-strategy", default="clinical")
    p.add_argument("--explanations", action="store_true", help="score saliency against SynthDerm lesion masks")
    p.add_argument("--methods", help=f"--explanations: comma-separated subset of {','.join(IMAGE_METHODS)}")
    p.add_argument(
        "--limit",
        type=int,
        default=None,
        help=f"at most this many cases (0: all; --explanations: {EXPLANATION_SAMPLE} by default)",
    )


def run(args: argparse.Namespace, cfg: Config) -> int:
    try:
        if args.explanations:
            return _explanations(args, cfg)
        result = run_evaluation(cfg, args.model, args.split, args.text_strategy, args.limit or 0)
    except (ModelStoreError, ValueError) as e:
        raise CliError(str(e)) from None
    payload = {k: v for k, v in result.items() if k != "embedding_map"}
    print(f"evaluation written to {cfg.models_dir / result['version']}", file=sys.stderr)
    emit(args, payload, summary_text(result))
    return 0


def _explanations(args: argparse.Namespace, cfg: Config) -> int:
    methods = tuple(m.strip() for m in (args.methods or ",".join(IMAGE_METHODS)).split(",") if m.strip())
    unknown = sorted(set(methods) - set(IMAGE_METHODS))
    if unknown:
        raise CliError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(IMAGE_METHODS)}")
    loaded = load_version(cfg, args.model)
    limit = EXPLANATION_SAMPLE if args.limit is None else args.limit
    quality = score_version(
        cfg,
        loaded,
        args.split,
        limit,
        methods,
        progress=lambda it: tqdm(it, desc="explanations", unit="case", file=sys.stderr),
    )
    rows = {**quality["methods"], **quality["baselines"]}
    payload = {
        "model_version": loaded.version,
        "split": quality["split"],
        "cases": quality["n"],
        "methods": rows,
        "reference": {
            "seed_002_lesion_iou": SEED_002_IOU,
            "note": "seed 002 (arXiv 2405.17459) on its own data; its localisation is not a saliency map",
        },
    }
    lines = [
        f"explanation quality: model {loaded.version}, {quality['n']} {quality['split']} cases with lesion masks "
        "(target: the true class, image-only logits)",
        f"{'method':<11} {'pointing':>8} {'IoU@mask':>8} {'IoU@20%':>8} {'deletion':>8}",
    ]
    for name, r in rows.items():
        lines.append(
            f"{name:<11} {r['pointing_game']:>8.3f} {r['iou_mask_area']:>8.3f} {r['iou_top20']:>8.3f} "
            f"{r['deletion_auc']:>8.3f}"
        )
    lines += [
        "pointing, IoU: higher is better; deletion AUC: lower is better. random and centre are baselines.",
        f"reference: seed 002 (arXiv 2405.17459) reports lesion-localisation IoU {SEED_002_IOU:.2f} on its own data "
        "(a trained localiser, not a saliency map: not directly comparable).",
    ]
    emit(args, payload, "\n".join(lines))
    return 0
