"""`python -m mmcore ...`: the command-line contract. One small module per command owns its arguments and its
printing; the work is one call into the library, as a page would make it.

Every command takes `--config NAME|PATH` and `--set section.key=value`; `--json` prints one JSON object.
Unusable input exits 2 with a one-line message on stderr and no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from mmcore.config import ConfigError, load_config


class CliError(Exception):
    """Unusable input: the message is printed as one line and the command exits 2."""


# command -> (module in this package, one-line help). Each module has add_arguments(parser) and run(args, cfg);
# a command imports only its own module, so `cases` or `--help` never pay for torch.
COMMANDS = {
    "import": ("dataimport", "import a dataset into the case store"),
    "cases": ("cases", "counts of cases by source, diagnosis, domain and split"),
    "check-image": ("check_image", "run the image intake on one file"),
    "synth": ("synth", "generate SynthDerm cases with notes into the case store"),
    "notes": ("notes", "generate notes or check their fidelity"),
    "train": ("train", "train a model; registers a model version when it finishes"),
    "eval": ("evaluate", "evaluate a model version on a split"),
    "models": ("models", "list, show, promote, roll back or verify model versions"),
    "embed": ("embed", "embed every case's image and best note with a model version, into the case store"),
    "index": ("index", "build, query or rebuild the case index"),
    "predict": ("predict", "predict the scores of one photo (and note), with the out-of-distribution verdict"),
    "report": ("report", "one analysis as a consult PDF"),
    "demo": ("demo", "build the demo: SynthDerm, train, evaluate, promote, index"),
    "jobs": ("jobs", "list, start, cancel or follow background jobs"),
}


def command_module(name: str) -> ModuleType:
    """The module that implements command `name`."""
    return importlib.import_module(f"{__name__}.{COMMANDS[name][0]}")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser: every command listed, with the arguments of `only` (None: of every command), which is what
    `jobs start` validates against."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=None, help="preset name (default, demo, tiny, paper) or TOML path")
    common.add_argument("--set", dest="sets", action="append", default=[], metavar="SECTION.KEY=VALUE")
    common.add_argument("--json", action="store_true", help="print one JSON object")
    parser = argparse.ArgumentParser(
        prog="python -m mmcore", description="mmderm: multimodal dermatology AI for research (never a diagnosis)."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, text) in COMMANDS.items():
        command = sub.add_parser(name, parents=[common], help=text)
        if only is None or name == only:
            command_module(name).add_arguments(command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, load the config, run the command; 2 for unusable input, 130 when interrupted."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), "")
    args = build_parser(only=command).parse_args(argv)
    try:
        cfg = load_config(args.config, args.sets)
        return int(command_module(args.command).run(args, cfg) or 0)
    except (CliError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def emit(args: argparse.Namespace, payload: dict[str, Any], text: str) -> None:
    """Print the JSON object with --json, else the human summary."""
    print(json.dumps(payload, default=str) if args.json else text)
