"""`demo [--n N] [--json]`: build the demo in MMDERM_HOME; nothing to do when a model is already active.

Without --config (or MMDERM_CONFIG) it uses the `demo` preset.
"""

from __future__ import annotations

import argparse
import os

from mmcore.commands import CliError, emit
from mmcore.config import Config, load_config
from mmcore.demo import build_demo
from mmcore.model_store import ModelStoreError, active_version
from mmcore.train import EXIT_STOPPED, TrainError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, default=0, help="number of SynthDerm cases (0: the preset's)")


def run(args: argparse.Namespace, cfg: Config) -> int:
    if args.config is None and not os.environ.get("MMDERM_CONFIG"):
        cfg = load_config("demo", args.sets)  # the demo's own preset unless another is named
    active = active_version(cfg)
    if active:
        emit(
            args,
            {"status": "exists", "version": active, "home": str(cfg.home)},
            f"demo already built in {cfg.home}: active model {active}; nothing to do "
            "(an empty MMDERM_HOME builds it again)",
        )
        return 0
    try:
        out = build_demo(cfg, args.n)
    except (TrainError, ModelStoreError, ValueError) as e:
        raise CliError(str(e)) from None
    if out["status"] == "stopped":
        return EXIT_STOPPED
    t = out["test"]
    lines = [
        f"demo built in {out['seconds']:.0f} s: {out['cases']} cases, active model {out['version']}",
        f"  trained on: {out['trained_on']}",
        f"  test ({t.get('n', 0)} cases, {t.get('strategy', '?')} notes):",
    ]
    for m in ("fused", "image", "text"):
        if m in t:
            s = t[m]
            lines.append(
                f"    {m:<6} accuracy {_f(s['accuracy'])}  balanced accuracy {_f(s['balanced_accuracy'])}"
                f"  macro-F1 {_f(s['macro_f1'])}  ECE {_f(s['ece'])}"
            )
    emit(args, out, "\n".join(lines))
    return 0


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
