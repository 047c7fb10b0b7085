"""`python -m mmcore ...`: the command-line contract. Parsing lives here; each command's work lives in its module.

Every command takes `--config NAME|PATH` and `--set section.key=value`; `--json` prints one JSON object.
Unusable input exits 2 with a one-line message on stderr and no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from mmcore.config import Config, ConfigError, load_config


class CliError(Exception):
    """Unusable input: the message is printed as one line and the command exits 2."""


# command -> "module:function"; each function takes (args, cfg) and returns an exit code.
HANDLERS = {
    "import": "mmcore.importers:cli_import",
    "cases": "mmcore.cli:cli_cases",
    "check-image": "mmcore.cli:cli_check_image",
    "synth": "mmcore.synthderm:cli_synth",
    "notes": "mmcore.notes:cli_notes",
    "train": "mmcore.train:cli_train",
    "eval": "mmcore.evaluate:cli_eval",
    "models": "mmcore.model_store:cli_models",
    "index": "mmcore.index:cli_index",
    "demo": "mmcore.demo:cli_demo",
    "jobs": "mmcore.jobs:cli_jobs",
}


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=None, help="preset name (default, demo, tiny, paper) or TOML path")
    common.add_argument("--set", dest="sets", action="append", default=[], metavar="SECTION.KEY=VALUE")
    common.add_argument("--json", action="store_true", help="print one JSON object")

    parser = argparse.ArgumentParser(
        prog="python -m mmcore", description="mmderm: multimodal dermatology AI for research (never a diagnosis)."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("import", parents=[common], help="import a dataset into the case store")
    p.add_argument(
        "--format",
        required=True,
        choices=["ham10000", "isic", "pad-ufes-20", "derm7pt", "fitzpatrick17k", "scin", "folder"],
    )
    p.add_argument("--metadata", required=True, help="the dataset's metadata CSV")
    p.add_argument("--images", required=True, help="folder holding the image files")
    p.add_argument("--labels", help="SCIN: scin_labels.csv (default: beside --metadata)")
    p.add_argument("--columns", help="folder format: image=COL,dx=COL,... mapping our fields to your columns")
    p.add_argument("--source", help="the source name to record (default: the format)")

    sub.add_parser("cases", parents=[common], help="counts of cases by source, diagnosis, domain and split")

    p = sub.add_parser("check-image", parents=[common], help="run the image intake on one file")
    p.add_argument("file")

    p = sub.add_parser("synth", parents=[common], help="generate SynthDerm cases with notes into the case store")
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--domains", default="dermoscopy,clinical,atlas")
    p.add_argument("--balanced", action="store_true", help="equal class prevalence instead of HAM10000-like")
    p.add_argument("--size", type=int, default=224, help="image side in pixels")

    p = sub.add_parser("notes", parents=[common], help="generate notes or check their fidelity")
    p.add_argument("action", choices=["generate", "fidelity"])
    p.add_argument("--strategy", required=True, help="M, P1, P2, P3 or clinical")
    p.add_argument("--backend", choices=["template", "llm"], default="template")
    p.add_argument("--llm-path", help="local transformers causal-LM directory")
    p.add_argument("--llm-url", help="OpenAI-compatible chat endpoint (key from MMDERM_LLM_API_KEY)")
    p.add_argument("--llm-model", default="", help="model name sent to the endpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--drop-contradictions", action="store_true", help="fidelity: delete notes that contradict")

    p = sub.add_parser("train", parents=[common], help="train a model; registers a model version when it finishes")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --run-dir")
    p.add_argument("--run-dir", help="where checkpoints and metrics go (default: MMDERM_HOME/runs/<time>)")
    p.add_argument("--promote", action="store_true", help="make the new version active")

    p = sub.add_parser("eval", parents=[common], help="evaluate a model version on a split")
    p.add_argument("--model", help="model version (default: the active one)")
    p.add_argument("--split", default="test")
    p.add_argument("--text-strategy", default="clinical")
    p.add_argument("--explanations", action="store_true", help="score saliency against SynthDerm lesion masks")
    p.add_argument("--limit", type=int, default=0, help="at most this many cases (0: all)")

    p = sub.add_parser("models", parents=[common], help="list, show or promote model versions")
    p.add_argument("action", choices=["list", "show", "promote", "verify"])
    p.add_argument("version", nargs="?")

    p = sub.add_parser("index", parents=[common], help="build, query or rebuild the case index")
    p.add_argument("action", choices=["build", "query", "rebuild"])
    p.add_argument("--model", help="model version (default: the active one)")
    p.add_argument("--text", help="query: a clinical note")
    p.add_argument("--image", help="query: an image file")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--modality", choices=["image", "text"], default="image", help="query: which collection")
    p.add_argument("--where", help='query: JSON metadata filter, e.g. {"dx": "mel"}')

    p = sub.add_parser("demo", parents=[common], help="build the demo: SynthDerm, train, evaluate, promote, index")
    p.add_argument("--n", type=int, default=0, help="number of SynthDerm cases (0: the preset's)")

    p = sub.add_parser("jobs", parents=[common], help="list, start, cancel or follow background jobs")
    p.add_argument("action", choices=["list", "start", "cancel", "show", "reap", "run"])
    p.add_argument("job", nargs="?", help="job id (cancel, show, run) or kind (start)")
    p.add_argument("job_args", nargs=argparse.REMAINDER, help="start: the command's own arguments")
    return parser


def _resolve(target: str) -> Callable[[argparse.Namespace, Config], int]:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.config, args.sets)
        return int(_resolve(HANDLERS[args.command])(args, cfg) or 0)
    except (CliError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def emit(args: argparse.Namespace, payload: dict[str, Any], text: str) -> None:
    """Print the JSON object with --json, else the human summary."""
    print(json.dumps(payload, default=str) if args.json else text)


def cli_cases(args: argparse.Namespace, cfg: Config) -> int:
    from mmcore.cases import CaseStore

    with CaseStore(cfg.home) as store:
        counts = store.counts()
        notes = store.note_strategies()
        total = store.count()
    lines = [f"{total} cases in {cfg.home}"]
    for field_name, table in counts.items():
        lines.append(f"  by {field_name}: " + (", ".join(f"{k} {v}" for k, v in table.items()) or "-"))
    lines.append("  notes: " + (", ".join(f"{k} {v}" for k, v in notes.items()) or "-"))
    emit(args, {"total": total, **counts, "notes": notes}, "\n".join(lines))
    return 0


def cli_check_image(args: argparse.Namespace, cfg: Config) -> int:
    from pathlib import Path

    from mmcore.images import ImageRejected, load_image

    path = Path(args.file)
    if not path.is_file():
        raise CliError(f"{path}: no such file")
    try:
        decoded = load_image(path.read_bytes(), cfg.intake.max_bytes, cfg.intake.max_pixels)
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
    emit(args, payload, f"accepted: {decoded.format.upper()} {w} x {h}, sha256 {decoded.sha256[:16]}")
    return 0
