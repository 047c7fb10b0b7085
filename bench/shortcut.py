"""The shortcut check on model versions: how confident the image branch is on SynthDerm scenes drawn without their
lesion (mmcore.shortcut), after the temperature scaling the version ships (fitted on its validation split's image
logits when its card has none), beside the same scenes with the lesion.

    python bench/shortcut.py --home /tmp/ft/home --versions V1 V2 ... [--n 200] [--figure docs/screenshots/x.png]

Writes bench/results/shortcut.md and .json; with --figure, a sheet of scenes with and without their lesion and the
first version's calibrated top class and probability on each.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch

from mmcore.calibrate import fit_temperature
from mmcore.cases import CaseStore
from mmcore.config import load_config
from mmcore.evaluate import case_outputs, select_cases
from mmcore.model_store import load_version
from mmcore.shortcut import shortcut_check

RESULTS = Path(__file__).resolve().parent / "results"


def image_temperature(cfg, loaded) -> tuple[float, str]:
    """The version's image temperature from its card, else fitted on its validation split (as the pipeline does)."""
    temperatures = (loaded.card.calibration or {}).get("temperatures") or {}
    if "image" in temperatures:
        return float(temperatures["image"]), "the version's card"
    with CaseStore(cfg.home) as store:
        cases, _ = select_cases(store, "val", loaded.model.classes, "clinical", 0)
        out = case_outputs(loaded.model, store, cases, "clinical", torch.device("cpu"), cache_dir=cfg.cache_dir)
    return fit_temperature(out.image_logits, out.labels), f"fitted on {len(cases)} validation cases"


def draw_figure(model, temperature: float, path: Path, columns: int = 6) -> None:
    """Pairs of SynthDerm scenes (top row: with the lesion, bottom row: the same scene without it), each titled with
    the model's calibrated top class and probability: what `shortcut_check` averages, shown."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mmcore.shortcut import SHORTCUT_SEED, image_probabilities
    from mmcore.synthderm import generate_one

    size = model.image_spec.image_size
    picks = range(columns)  # the first scenes that shortcut_check scores (each draws its own domain)
    fig, axes = plt.subplots(2, columns, figsize=(2.2 * columns, 5.0))
    for row, lesion in enumerate((True, False)):
        scenes = [generate_one(i, SHORTCUT_SEED, size=size, lesion=lesion) for i in picks]
        probs = image_probabilities(model, [s.image for s in scenes], temperature)  # (columns, C)
        for ax, scene, p in zip(axes[row], scenes, probs, strict=True):
            ax.imshow(scene.image)
            ax.set_xticks([])
            ax.set_yticks([])
            k = int(p.argmax())
            title = f"{model.classes[k]} {p[k]:.2f}"
            ax.set_title(title if not lesion else f"{title} (true {scene.case.dx})", fontsize=9)
        axes[row][0].set_ylabel("with lesion" if lesion else "lesion removed", fontsize=10)
    fig.suptitle(f"Image branch, calibrated top class and probability (chance {1 / len(model.classes):.2f})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", required=True)
    parser.add_argument("--versions", nargs="+", required=True)
    parser.add_argument("--labels", nargs="*", default=[], help="a name per version for the table")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--out", default="shortcut", help="results file stem under bench/results")
    parser.add_argument("--figure", default="", help="PNG path: scenes with and without their lesion (first version)")
    args = parser.parse_args()
    started = time.perf_counter()
    cfg = dataclasses.replace(load_config("demo", env={}), home=Path(args.home))
    rows = []
    for i, version in enumerate(args.versions):
        t0 = time.perf_counter()
        loaded = load_version(cfg, version, device="cpu")
        temperature, source = image_temperature(cfg, loaded)
        result = shortcut_check(loaded.model, temperature, args.n)
        training = loaded.card.training
        label = args.labels[i] if i < len(args.labels) else version
        rows.append(
            {
                "label": label,
                "version": version,
                "finetune": training.finetune,
                "temperature_source": source,
                **result,
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
        print(json.dumps(rows[-1]), file=sys.stderr)
        if args.figure and i == 0:
            draw_figure(loaded.model, temperature, Path(args.figure))
    seconds, load = time.perf_counter() - started, os.getloadavg()
    lines = [
        "# Shortcut check: the image branch on SynthDerm scenes drawn without their lesion",
        "",
        f"Command: `python bench/shortcut.py --home {args.home} --versions {' '.join(args.versions)} --n {args.n}"
        f"{' --labels ' + ' '.join(args.labels) if args.labels else ''}` ({seconds / 60:.1f} min, load average "
        f"{', '.join(f'{x:.2f}' for x in load)}).",
        "",
        f"{args.n} scenes of SynthDerm seed {rows[0]['seed']} (never used for training) in the three domains, each "
        "rendered twice by `generate_one(i, seed, lesion=...)`: the same skin, hair, light, framing and domain, with "
        "and without its lesion. Probabilities after the version's image temperature (temperature scaling fitted on "
        f"the validation split's image logits). Chance: {rows[0]['chance']:.3f}. Aim: mean top probability <= 0.5 "
        "without the lesion.",
        "",
        "| model | fine-tuning | T | no lesion: mean top p | no lesion: uncalibrated | no lesion: share > 0.5 | "
        "no lesion: predicted | with lesion: mean top p | with lesion: accuracy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        free, with_ = r["without_lesion"], r["with_lesion"]
        predicted = ", ".join(f"{k} {v:.0%}" for k, v in sorted(free["predicted"].items(), key=lambda kv: -kv[1]))
        lines.append(
            f"| {r['label']} | {r['finetune']} | {r['temperature']:.2f} | {free['mean_top_probability']:.3f} | "
            f"{free['mean_top_probability_uncalibrated']:.3f} | {free['share_over_0.5']:.1%} | {predicted} | "
            f"{with_['mean_top_probability']:.3f} | {with_['accuracy']:.3f} |"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.md").write_text("\n".join(lines) + "\n")
    (RESULTS / f"{args.out}.json").write_text(json.dumps({"rows": rows, "args": vars(args)}, indent=2) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
